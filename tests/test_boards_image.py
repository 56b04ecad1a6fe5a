"""Board data and `relaybox image`: geometry, contents, UF2, and the image booting the relay.

Images are opened again with littlefs-python and mounted in the MicroPython unix port with
os.VfsLfs2 over the image file, the way a board mounts its flash partition.
"""

import contextlib
import json
import os
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from adafruit_uf2 import uf2conv
from littlefs import LittleFS, UserContext
from relaybox_host import ROOT, boards, image, uf2
from relaybox_host.build import compile_firmware
from relayproc import free_port
from upstream_server import Certs, Upstream

MICROPYTHON = Path(sys.executable).parent / "micropython"
RELAYBOX = Path(sys.executable).parent / "relaybox"
FLASH_ROOT = Path(__file__).parent / "flash_root.py"
BOARDS = boards.flashable_boards()
SIZES = [(b, s) for b in BOARDS for s in boards.load(b)["filesystem"]]
FLASH_BYTES = {"2M": 2 << 20, "4M": 4 << 20, "8M": 8 << 20, "16M": 16 << 20}


def mount(path, geometry):
    data = bytearray(Path(path).read_bytes())
    return LittleFS(
        UserContext(len(data), data),
        block_size=geometry.block_size,
        block_count=geometry.block_count,
    )


def test_the_issue_boards_are_all_there():
    assert set(BOARDS) >= {
        "esp32-eth",
        "olimex-esp32-poe",
        "esp32-wifi",
        "pico-w",
        "w5500-evb-pico",
    }
    assert "unix" in boards.board_names()


@pytest.mark.parametrize("board,size", SIZES)
def test_partition_ends_at_end_of_flash(board, size):
    """ESP32 puts "vfs" after the last partition, rp2 at the end: both run to the end."""
    g = boards.geometry(boards.load(board), size)
    assert g.block_size == 4096
    assert g.offset % 4096 == 0
    assert g.offset + g.size == FLASH_BYTES[size], (hex(g.offset), g.block_count)


@pytest.mark.parametrize("board", BOARDS)
def test_port_specific_data(board):
    info = boards.load(board)
    assert (info["name"], (ROOT / "boards" / board / "board.py").is_file()) == (board, True)
    if info["port"] == "esp32":
        assert info["mpy_arch"] == "xtensawin"
        assert int(info["firmware_offset"], 0) == 0x1000  # classic ESP32 bootloader offset
        assert info["esptool"]["chip"] == "esp32"
        assert boards.uf2_settings(info) is None
    else:
        assert info["port"] == "rp2"
        assert info["mpy_arch"] == "armv6m"
        assert boards.uf2_settings(info) == (0xE48BFF56, 0x10000000)  # RP2040 family, XIP base


def test_known_block_counts():
    """The numbers a board refuses to mount with when they are off by one."""
    counts = {b: boards.geometry(boards.load(b)).block_count for b in BOARDS}
    assert counts == {
        "esp32-eth": 512,
        "esp32-wifi": 512,
        "olimex-esp32-poe": 512,
        "pico-w": 212,
        "w5500-evb-pico": 352,
    }


def test_flash_size_spellings():
    assert [boards.normalize_size(s) for s in ("4M", "4mb", "4MiB", "4194304")] == ["4M"] * 4
    with pytest.raises(boards.ToolError, match="write it like 4M"):
        boards.normalize_size("four")


@pytest.mark.parametrize("board,size", SIZES)
def test_image_geometry_and_contents(board, size, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"hostname": "relay.lan", "spool": "spool"}))
    img = image.build(board, tmp_path / "fs.bin", size, config)
    g = img.geometry
    assert img.path.stat().st_size == g.block_size * g.block_count
    fs = mount(img.path, g)
    stat = fs.fs_stat()
    assert (stat.block_size, stat.block_count) == (4096, g.block_count)
    assert stat.disk_version == 0x00020001, hex(stat.disk_version)  # what MicroPython reads

    expected = compile_firmware(board, tmp_path / "build") + ["config.json"]
    found = sorted(
        os.path.join(top, name).lstrip("/") for top, _dirs, names in fs.walk("/") for name in names
    )
    assert found == sorted(expected)
    for rel in expected:
        with fs.open(rel, "rb") as f:
            data = f.read()
        if rel == "config.json":
            assert data == config.read_bytes()
        elif rel.endswith(".mpy"):
            assert data == (tmp_path / "build" / rel).read_bytes()
            assert data[:2] == b"M\x06", (rel, data[:4])
        else:
            assert data == (ROOT / "firmware" / rel).read_bytes()


@pytest.mark.parametrize("board", BOARDS)
def test_wrong_block_count_is_refused(board, tmp_path):
    """What a board does with an image of the wrong geometry: MicroPython's littlefs refuses
    the superblock (EINVAL), and the ESP32 then loops on "filesystem corrupted"."""
    img = image.build(board, tmp_path / "fs.bin")
    g = img.geometry
    progsize = str(boards.load(board)["lfs_progsize"])
    script = "import os\nprint(sorted(os.listdir('/')))\n"
    results = []
    for blocks in (g.block_count, g.block_count + 1):
        results.append(
            subprocess.run(
                [str(MICROPYTHON), str(FLASH_ROOT), str(img.path), str(blocks), progsize]
                + ["exec", script],
                capture_output=True,
                text=True,
                timeout=30,
            )
        )
    good, bad = results
    assert good.returncode == 0 and "['lib', 'main.py']" in good.stdout, good.stdout + good.stderr
    # The unix port prints tracebacks on stdout.
    assert bad.returncode == 1 and "OSError: [Errno 22] EINVAL" in bad.stdout, bad.stdout


@pytest.mark.parametrize("board", [b for b in BOARDS if boards.load(b)["port"] == "rp2"])
def test_uf2_writes_the_image_at_the_partition(board, tmp_path):
    img = image.build(board, tmp_path / "fs.bin")
    blob = img.uf2_path.read_bytes()
    family, base = boards.uf2_settings(boards.load(board))
    start = base + img.geometry.offset
    blocks = uf2.decode(blob)
    assert len(blob) == 512 * len(blocks) == 2 * img.geometry.size
    assert [a for a, _, _ in blocks] == list(range(start, start + img.geometry.size, 256))
    assert {(len(p), f) for _, p, f in blocks} == {(256, family)}
    # An independent reader: microsoft's uf2conv (PyPI adafruit-uf2) gets the image back.
    uf2conv.familyid = family
    assert uf2conv.convert_from_uf2(blob) == img.path.read_bytes()
    assert uf2conv.appstartaddr == start


def test_uf2_merge_makes_one_transfer(tmp_path):
    family = 0xE48BFF56
    stock = uf2.encode(b"\x11" * 1000, 0x10000000, family)
    fs = uf2.encode(b"\x22" * 512, 0x1012C000, family)
    merged = uf2.merge(stock, fs, family)
    n = len(merged) // 512
    assert n == 4 + 2
    for i in range(n):
        head = merged[i * 512 : i * 512 + 32]
        assert int.from_bytes(head[20:24], "little") == i  # block number
        assert int.from_bytes(head[24:28], "little") == n  # blocks in the transfer
    with pytest.raises(ValueError, match="same flash addresses"):
        uf2.merge(fs, fs, family)
    with pytest.raises(ValueError, match="family"):
        uf2.merge(uf2.encode(b"x" * 256, 0, 0xE48BFF59), fs, family)


def test_image_cli_reports_and_fails_cleanly(tmp_path):
    out = tmp_path / "w5500.bin"
    r = subprocess.run(
        [str(RELAYBOX), "image", "--board", "w5500-evb-pico", "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "of 4096 used, for flash offset 0xa0000 (2M flash)" in r.stdout, r.stdout
    assert "image w5500-evb-pico [####" in r.stderr, r.stderr
    assert out.with_suffix(".uf2").is_file()

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for args, message in [
        (["--board", "esp32-eth", "--config", str(bad)], "is not valid JSON"),
        (["--board", "esp32-eth", "--flash-size", "2M"], "choose --flash-size from 4M, 8M, 16M"),
        (["--board", "nosuch"], "unknown board 'nosuch'"),
        (["--board", "unix"], "has no flash filesystem"),
    ]:
        r = subprocess.run(
            [str(RELAYBOX), "image", *args, "-o", str(tmp_path / "x.bin")],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.startswith("relaybox: ") and message in r.stderr, r.stderr


@pytest.mark.parametrize("arch", ["xtensawin", "armv6m", "x64"])
def test_bytecode_for_each_arch_loads_in_unix_port(arch, tmp_path):
    """-march matters only for native code; the firmware has none, so every arch's .mpy
    loads on the unix port. Header byte 2 holds the native arch and is 0 for bytecode."""
    board = {"xtensawin": "esp32-eth", "armv6m": "pico-w", "x64": "unix"}[arch]
    assert boards.load(board)["mpy_arch"] == arch
    files = compile_firmware(board, tmp_path)
    modules = []
    for rel in files:
        if rel.endswith(".mpy"):
            head = (tmp_path / rel).read_bytes()[:4]
            assert head[:3] == b"M\x06\x00", (rel, head)
            modules.append(rel[len("lib/") : -len(".mpy")].replace("/", "."))
    script = "import sys\nfor m in %r:\n    __import__(m)\nprint('loaded', len(sys.modules))\n"
    r = subprocess.run(
        [str(MICROPYTHON), "-X", "heapsize=512K", "-c", script % modules],
        env=dict(os.environ, MICROPYPATH=f"{tmp_path / 'lib'}:.frozen"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.startswith("loaded"), r.stdout + r.stderr


@contextlib.contextmanager
def booted(img, progsize):
    """The relay booted from an image under the unix port, as a board boots it; yields its
    log lines up to "listening on", and the rest is added once it has stopped."""
    g = img.geometry
    proc = subprocess.Popen(
        [str(MICROPYTHON), "-X", "heapsize=256K", str(FLASH_ROOT), str(img.path)]
        + [str(g.block_count), str(progsize), "boot"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = []
    try:
        for line in proc.stdout:
            log.append(line)
            if "listening on" in line:
                break
        else:
            pytest.fail("relay did not start:\n" + "".join(log))
        yield log
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.append(proc.stdout.read())  # through the same reader: nothing it held is lost
        proc.stdout.close()


@pytest.mark.parametrize("board", BOARDS)
def test_image_boots_and_spools_a_message(board, tmp_path):
    """The proof that an image boots: the unix port mounts it as its root filesystem and runs
    /main.py from it, with the board's own board.mpy. That module's Network cannot find the
    `network` module on a Linux host, so bring-up fails, is logged and retried with backoff
    while the relay keeps serving on 127.0.0.1: the same path a board takes with its cable
    unplugged. The message must land in /spool/q inside the image."""
    port = free_port()
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "hostname": "relaybox.test",
                "listen": {"host": "127.0.0.1", "port": port},
                "allow": ["127.0.0.0/8"],
                "spool": "spool",
            }
        )
    )
    info = boards.load(board)
    img = image.build(board, tmp_path / "fs.bin", config=config)
    with booted(img, info["lfs_progsize"]) as log:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            refused = s.sendmail("nas@lan", ["admin@example.net"], b"Subject: boot\r\n\r\nok\r\n")
            code, _ = s.noop()
        assert (refused, code) == ({}, 250)
    text = "".join(log)
    assert "net: " in text and "down:" in text, text  # bring-up reported, not fatal
    fs = mount(img.path, img.geometry)
    queued = [n for n in fs.listdir("/spool/q") if "." not in n]
    assert len(queued) == 1, (fs.listdir("/spool/q"), text)
    with fs.open("/spool/q/" + queued[0], "rb") as f:
        data = f.read()
    assert (
        b"F nas@lan" in data and b"Subject: boot\r\n" in data and data.endswith(b"\r\n\r\nok\r\n")
    ), data


def test_config_the_firmware_refuses_is_never_written(tmp_path):
    """The firmware's own config.py, run under the unix port, judges the config first."""
    cases = [
        ({"listen": {"port": "not-a-port"}}, "listen.port: must be an integer"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"network": {"dhcp": False}}, "network.ip: is required when network.dhcp is false"),
    ]
    for data, problem in cases:
        config = tmp_path / "config.json"
        config.write_text(json.dumps(data))
        out = tmp_path / "x.bin"
        for cmd in (["image", "-o", out], ["flash", "--port", "/dev/null", "--dry-run"]):
            r = subprocess.run(
                [str(RELAYBOX), *map(str, cmd), "--board", "esp32-eth", "--config", str(config)],
                capture_output=True,
                text=True,
            )
            assert r.returncode == 1, r.stdout
            assert r.stderr == (
                f"relaybox: the firmware refuses {config}: config error: {problem}; "
                "fix it and run again\n"
            )
        assert not out.exists()
    static = {"network": {"dhcp": False, "ip": "192.168.1.20"}}
    (tmp_path / "ok.json").write_text(json.dumps(static))
    assert image.read_config(tmp_path / "ok.json") == json.dumps(static).encode()


def test_board_with_a_bad_config_stays_at_the_repl(tmp_path):
    """On a board, leaving main.py soft-resets and runs it again: a config error must end
    at the REPL instead. The unix board keeps exit code 2 for `relaybox run`."""
    img = image.build("pico-w", tmp_path / "fs.bin")
    g = img.geometry
    fs = mount(img.path, g)
    with fs.open("config.json", "w") as f:
        f.write('{"listen": {"port": "x"}}')
    img.path.write_bytes(bytes(fs.context.buffer))
    code = "import relaybox.app\nrelaybox.app.main()\nprint('still at the REPL')"
    r = subprocess.run(
        [str(MICROPYTHON), "-X", "heapsize=256K", str(FLASH_ROOT), str(img.path)]
        + [str(g.block_count), "256", "exec", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stdout) == (
        0,
        "relaybox: config error: listen.port: must be an integer\nstill at the REPL\n",
    ), r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"listen": {"port": "x"}}')
    r = subprocess.run(
        [str(RELAYBOX), "run", "--config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "config error: listen.port" in r.stdout, r.stdout + r.stderr


def test_image_carries_the_upstream_ca_and_the_board_delivers_with_it(tmp_path):
    """upstream.ca names a file beside config.json; the board resolves it against the folder
    of /config.json, its root. The image must hold that file, and the relay booted from the
    image must verify the upstream server with it and deliver."""
    (tmp_path / "certs").mkdir()
    certs = Certs(tmp_path / "certs")
    port = free_port()
    with Upstream(certs) as up:  # STARTTLS on a submission port
        config = tmp_path / "config.json"
        upstream = up.config(ca="certs/upstream-ca.pem", retry={"schedule": [1]})
        config.write_text(
            json.dumps(
                {
                    "hostname": "relaybox.test",
                    "listen": {"host": "127.0.0.1", "port": port},
                    "allow": ["127.0.0.0/8"],
                    "upstream": upstream,
                }
            )
        )
        img = image.build("pico-w", tmp_path / "fs.bin", config=config)
        assert "certs/upstream-ca.pem" in img.files
        g = img.geometry
        fs = mount(img.path, g)
        with fs.open("certs/upstream-ca.pem", "rb") as f:
            assert f.read() == Path(certs.ca_pem).read_bytes()
        with booted(img, 256) as log:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.sendmail("nas@lan", ["admin@example.net"], b"Subject: ca\r\n\r\nvia TLS\r\n")
            deadline = time.monotonic() + 30
            while not up.messages and time.monotonic() < deadline:
                time.sleep(0.2)
        text = "".join(log)
        assert "CA file" not in text, text
        assert len(up.messages) == 1, text
        assert up.messages[0].data.endswith(b"via TLS\r\n"), up.messages[0].data


def test_upstream_ca_missing_or_no_certificate_is_refused(tmp_path):
    config = tmp_path / "config.json"
    upstream = {"host": "smtp.example.net", "user": "me@example.net", "password": "pw"}
    config.write_text(json.dumps({"upstream": {**upstream, "ca": "upstream-ca.pem"}}))
    out = tmp_path / "fs.bin"
    for cmd in (
        ["image", "--board", "pico-w", "-o", out],
        ["flash", "--board", "esp32-eth", "--port", "/dev/null", "--dry-run"],
        ["deploy", "--port", tmp_path / "no-such-tty"],
    ):
        r = subprocess.run(
            [str(RELAYBOX), *map(str, cmd), "--config", str(config)],
            capture_output=True,
            text=True,
        )
        assert (r.returncode, r.stdout) == (1, ""), (cmd, r.stdout, r.stderr)
        assert r.stderr == (
            f"relaybox: upstream.ca: upstream-ca.pem not found beside config.json in {tmp_path}; "
            "put your provider's CA there (it travels with the config), or leave upstream out "
            "of this config and install the CA on the board later with relaybox trust "
            "HOST:PORT\n"
        ), (cmd, r.stderr)
    assert not out.exists() and not out.with_suffix(".uf2").exists()

    ca = tmp_path / "upstream-ca.pem"
    ca.write_text("-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n")
    r = subprocess.run(
        [str(RELAYBOX), "image", "--board", "pico-w", "-o", str(out), "--config", str(config)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and r.stderr.startswith(
        f"relaybox: upstream.ca: {ca} is not a certificate (PEM with -----BEGIN CERTIFICATE"
    ), r.stderr
    config.write_text(json.dumps({"upstream": {**upstream, "ca": "../ca.pem"}}))
    with pytest.raises(image.ToolError, match="outside the folder of config.json"):
        image.build("pico-w", out, config=config)

    # DER works as well as PEM, and an absolute path stays absolute on the board.
    der = Certs(tmp_path).ca_der
    config.write_text(json.dumps({"upstream": {**upstream, "ca": der}}))
    img = image.build("pico-w", out, config=config)
    fs = mount(img.path, img.geometry)
    with fs.open(der, "rb") as f:
        assert f.read() == Path(der).read_bytes()
