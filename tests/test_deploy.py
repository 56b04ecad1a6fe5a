"""`relaybox deploy` against the MicroPython unix port's REPL over a pseudo-terminal.

The unix port plays the board: flash_root.py makes an image file its root filesystem and
`micropython -i` then leaves its REPL on a pty, which the tool opens by its /dev/pts path
like a USB serial port. mpremote's raw REPL works there (Ctrl-A, raw paste, Ctrl-D
framing). Two board behaviours do not exist on the unix port: the soft reset in the raw
REPL (deploy skips it when sys.platform is "linux") and machine.reset() (Ctrl-D at the
normal REPL, which ends the process, stands in for it). The board deployed is `unix`,
since the tool refuses firmware built for another port, as it would on a real board.
"""

import hashlib
import json
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from littlefs import LittleFS, UserContext
from ptyrepl import PtyRepl
from relaybox_host import deploy
from relaybox_host.build import compile_firmware
from relaybox_host.errors import ToolError
from relayproc import free_port
from upstream_server import Certs

RELAYBOX = Path(sys.executable).parent / "relaybox"
MICROPYTHON = Path(sys.executable).parent / "micropython"
FLASH_ROOT = Path(__file__).parent / "flash_root.py"
BLOCKS = 212


def new_image(path, files):
    fs = LittleFS(block_size=4096, block_count=BLOCKS)
    for rel, data in files.items():
        if "/" in rel:
            fs.makedirs(rel.rpartition("/")[0], exist_ok=True)
        with fs.open(rel, "wb") as f:
            f.write(data)
    path.write_bytes(fs.context.buffer)
    return path


def read_image(path):
    data = bytearray(path.read_bytes())
    fs = LittleFS(UserContext(len(data), data), block_size=4096, block_count=BLOCKS)
    out = {}
    for top, _dirs, names in fs.walk("/"):
        for name in names:
            rel = f"{top.rstrip('/')}/{name}".lstrip("/")
            with fs.open(rel, "rb") as f:
                out[rel] = f.read()
    return out


def start_board(img):
    repl = PtyRepl(["-X", "heapsize=1M", "-i", str(FLASH_ROOT), str(img), str(BLOCKS), "256"])
    deadline = time.monotonic() + 10
    while b">>> " not in repl.output:
        if time.monotonic() > deadline or repl.proc.poll() is not None:
            repl.close()
            pytest.fail(f"no REPL from the unix port: {bytes(repl.output)!r}")
        time.sleep(0.05)
    return repl


@pytest.fixture
def firmware(tmp_path_factory):
    out = tmp_path_factory.mktemp("unix-fw")
    return {rel: (out / rel).read_bytes() for rel in compile_firmware("unix", out)}


def test_cli_deploys_everything_and_board_boots(firmware, tmp_path):
    img = new_image(
        tmp_path / "flash.bin",
        {
            "lib/relaybox/retired.mpy": b"M\x06old",  # a module the firmware no longer has
            "lib/board.py": b"raise ImportError\n",  # would shadow board.mpy
            "spool/q/0001": b"RBX1\nkept\n",  # the board's mail is never touched
        },
    )
    port = free_port()
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"listen": {"host": "127.0.0.1", "port": port}, "spool": "spool"})
    )
    board = start_board(img)
    try:
        r = subprocess.run(
            [str(RELAYBOX), "deploy", "--port", board.port, "--board", "unix"]
            + ["--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        n = len(firmware) + 1
        assert r.stdout.startswith(f"unix: sent {n} files ("), r.stdout
        assert r.stdout.endswith(", 0 unchanged, 2 removed; the board restarts now\n"), r.stdout
        assert "deploy unix [####" in r.stderr and "100%" in r.stderr, r.stderr
        assert board.proc.wait(10) == 0  # the reset
    finally:
        board.close()

    files = read_image(img)
    assert files == {
        **firmware,
        "config.json": config.read_bytes(),
        "spool/q/0001": b"RBX1\nkept\n",
    }

    # The deployed filesystem boots the relay, which spools one more message.
    relay = subprocess.Popen(
        [str(MICROPYTHON), "-X", "heapsize=256K", str(FLASH_ROOT), str(img), str(BLOCKS)]
        + ["256", "boot"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in relay.stdout:
            if "listening on" in line:
                break
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            assert s.sendmail("cam@lan", ["me@example.net"], b"Subject: d\r\n\r\nx\r\n") == {}
    finally:
        relay.send_signal(signal.SIGINT)
        relay.communicate(timeout=10)
    assert len([n for n in read_image(img) if n.startswith("spool/q/")]) == 2


def test_only_changed_files_are_sent(firmware, tmp_path):
    on_board = dict(firmware)
    on_board["lib/relaybox/log.mpy"] = b"M\x06stale"
    on_board["config.json"] = b'{"hostname": "mine.lan"}'
    img = new_image(tmp_path / "flash.bin", on_board)
    board = start_board(img)
    try:
        first = deploy.deploy(board.port, "unix", reset=False)
        again = deploy.deploy(board.port, "unix", force=False, reset=True)
        assert board.proc.wait(10) == 0
    finally:
        board.close()
    size = len(firmware["lib/relaybox/log.mpy"])
    assert (first.sent, first.unchanged, first.removed) == (
        [("lib/relaybox/log.mpy", size)],
        len(firmware) - 1,
        [],
    )
    assert (again.sent, again.unchanged) == ([], len(firmware))
    files = read_image(img)
    assert files["config.json"] == b'{"hostname": "mine.lan"}'  # kept without --config
    digest = hashlib.sha256(files["lib/relaybox/log.mpy"]).digest()
    assert digest == hashlib.sha256(firmware["lib/relaybox/log.mpy"]).digest()


def test_config_goes_with_its_upstream_ca(firmware, tmp_path):
    """The CA file named by upstream.ca travels with config.json, to where the firmware
    looks for it: beside config.json, in a folder below it when the name has one."""
    ca = tmp_path / "keys" / "upstream-ca.pem"
    ca.parent.mkdir()
    ca.write_bytes(Path(Certs(tmp_path).ca_pem).read_bytes())
    upstream = {"host": "smtp.example.net", "user": "me@example.net", "password": "pw"}
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"upstream": {**upstream, "ca": "keys/upstream-ca.pem"}}))
    img = new_image(tmp_path / "flash.bin", dict(firmware))
    board = start_board(img)
    try:
        first = deploy.deploy(board.port, "unix", config, reset=False)
        again = deploy.deploy(board.port, "unix", config, reset=False)
        # What the firmware makes of the config on the board: its own path_of.
        code = (
            "from relaybox.config import Config\n"
            "c = Config.load('config.json')\n"
            "print(repr(open(c.path_of('upstream.ca'), 'rb').read()))\n"
        )
        seen = deploy._eval_print(deploy._connect(board.port), code)
    finally:
        board.close()
    assert sorted(first.sent) == [
        ("config.json", config.stat().st_size),
        ("keys/upstream-ca.pem", ca.stat().st_size),
    ]
    assert (again.sent, again.unchanged) == ([], len(firmware) + 2)
    assert seen == ca.read_bytes()
    assert read_image(img)["keys/upstream-ca.pem"] == ca.read_bytes()


def test_wrong_or_unknown_board_is_refused(tmp_path):
    img = new_image(tmp_path / "flash.bin", {})
    before = img.read_bytes()
    board = start_board(img)
    try:
        r = subprocess.run(
            [str(RELAYBOX), "deploy", "--port", board.port, "--board", "pico-w"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 1, r.stderr
        assert r.stderr == (
            "relaybox: the board runs MicroPython for unix, but pico-w is a rp2 board; "
            "pick the right --board\n"
        )
        # No board module on it yet and a machine name no board.json lists.
        with pytest.raises(ToolError, match="matches no board here: pass --board NAME"):
            deploy.deploy(board.port)
    finally:
        board.close()
    assert img.read_bytes() == before


def test_missing_port(tmp_path):
    r = subprocess.run(
        [str(RELAYBOX), "deploy", "--port", str(tmp_path / "ttyACM7")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert r.stderr.startswith(f"relaybox: cannot open {tmp_path / 'ttyACM7'}"), r.stderr
    assert "close other programs using it" in r.stderr
    # A config the firmware refuses stops deploy before it opens the port.
    bad = tmp_path / "config.json"
    bad.write_text('{"network": {"dhcp": false}}')
    r = subprocess.run(
        [str(RELAYBOX), "deploy", "--port", str(tmp_path / "ttyACM7"), "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert (r.returncode, r.stderr) == (
        1,
        f"relaybox: the firmware refuses {bad}: config error: network.ip: is required when "
        "network.dhcp is false; fix it and run again\n",
    )


def test_identify_from_what_the_board_reports():
    pico = "Raspberry Pi Pico W with RP2040"
    rp2 = (4 << 10) | (3 << 8) | 6  # sys.implementation._mpy: armv6m, mpy 6.3 (1.23 on)
    v124 = (1, 24, 1)
    assert deploy.identify("rp2", rp2, v124, pico, None) == "pico-w"
    assert deploy.identify("rp2", rp2, v124, pico, None, "w5500-evb-pico") == "w5500-evb-pico"
    esp = (10 << 10) | (3 << 8) | 6  # xtensawin
    with pytest.raises(ToolError, match="it could be esp32-eth, esp32-wifi: pass --board"):
        deploy.identify("esp32", esp, v124, "Generic ESP32 module with ESP32", None)
    # The stock Olimex build names itself; the first deploy needs no --board.
    olimex = "Olimex ESP32 ETH with ESP32"
    assert deploy.identify("esp32", esp, v124, olimex, None) == "olimex-esp32-poe"
    with pytest.raises(ToolError, match=r"loads \.mpy v5.*flash MicroPython 1\.23 or newer"):
        deploy.identify("rp2", 0x205, (1, 23, 0), pico, None)
    # 1.19 to 1.22 load .mpy v6 too, but lack the tls module the firmware needs.
    for version, sub in [((1, 19, 1), 0), ((1, 22, 2), 2)]:
        mpy = (4 << 10) | (sub << 8) | 6
        with pytest.raises(
            ToolError,
            match=rf"runs MicroPython {'.'.join(map(str, version))}; this firmware needs 1\.23",
        ):
            deploy.identify("rp2", mpy, version, pico, None)
    # A board that already runs relaybox for another board keeps its network module.
    with pytest.raises(ToolError, match="has relaybox for pico-w, not w5500-evb-pico; deploy"):
        deploy.identify("rp2", rp2, v124, pico, "pico-w", "w5500-evb-pico")
    assert deploy.identify("rp2", rp2, v124, pico, "pico-w", "w5500-evb-pico", True) == (
        "w5500-evb-pico"
    )
    assert deploy.identify("rp2", rp2, v124, pico, "pico-w", "pico-w") == "pico-w"


def test_installed_board_module_is_not_swapped_silently(firmware, tmp_path):
    img = new_image(tmp_path / "flash.bin", {"lib/board.py": b"NAME = 'other'\n"})
    before = img.read_bytes()
    board = start_board(img)
    try:
        r = subprocess.run(
            [str(RELAYBOX), "deploy", "--port", board.port, "--board", "unix", "--no-reset"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 1 and r.stderr.startswith(
            "relaybox: the board has relaybox for other, not unix; deploying unix replaces"
        ), r.stderr
        assert img.read_bytes() == before
        done = deploy.deploy(board.port, "unix", replace=True)
        assert board.proc.wait(10) == 0
    finally:
        board.close()
    assert done.board == "unix" and read_image(img)["lib/board.mpy"] == firmware["lib/board.mpy"]
