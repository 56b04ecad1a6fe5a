"""The serial link under stress and misuse: secrets in every output, the interactive
terminal, a plain REPL or nothing on the port, junk, over-long lines, SIGKILL during save."""

import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from functools import partial

import pytest
import serial
from consolelink import MICROPYTHON, RELAYBOX, PtyPair, Terminal, relaybox, wait_for
from relaybox_host import ROOT, serialconn
from relaybox_host.remote import SECRET_KEYS
from test_console_host import SECRET, UPSTREAM, WIFI_KEY, board, board_factory  # noqa: F401


def test_secrets_never_reach_any_output(board):  # noqa: F811
    board.ok("config", "set", "log.level", "debug")
    board.relaybox("config", "set", "upstream.password", input="n3w-" + SECRET + "\n")
    board.ok("send-test", "bob@example.net")
    commands = [
        ["status"],
        ["config", "show"],
        ["config", "get", "upstream.password"],
        ["config", "get", "network.wifi.key"],
        ["config", "export"],
        ["config", "set", "upstream.user", "bob@example.net"],
        ["config", "unset", "upstream.auth"],
        ["queue"],
        ["logs"],
    ]
    outputs = []
    for cmd in commands:
        for extra in ([], ["--json"]):
            r = board.relaybox(*cmd, *extra)
            assert r.returncode == 0, (cmd, r.stderr)
            outputs.append(r.stdout + r.stderr)
    every = "\n".join(outputs)
    assert "********" in every
    for secret in (SECRET, WIFI_KEY):
        assert secret not in every
    # The file keeps the real values: masking is for output only.
    assert board.saved()["upstream"]["password"] == "n3w-" + SECRET


def test_secret_keys_match_the_firmware():
    text = (ROOT / "firmware" / "relaybox" / "config.py").read_text()
    m = re.search(r"^SECRETS = (\(.*?\))$", text, re.M)
    assert m and eval(m.group(1)) == SECRET_KEYS, m


def test_interactive_console(board):  # noqa: F811
    t = Terminal([RELAYBOX, "console", "--port", board.tty])
    t.expect(r"relaybox console on .*: type help; Ctrl-D quits")
    t.send("status\n")
    t.expect(r"relaybox 0\.1\.0 on unix, up \d+s")
    t.send("set upstream.password\n")
    t.expect(r"value for upstream\.password \(not shown\): ")
    t.send("typed-" + SECRET + "\n")
    t.expect(r"ok \(save to keep it\)")
    t.send("save\n")
    t.expect(r"saved to ")
    t.send("\x04")  # Ctrl-D at the start of a line: end of input
    assert t.finish() == 0
    assert SECRET.encode() not in t.seen, t.seen
    assert board.saved()["upstream"]["password"] == "typed-" + SECRET


def test_console_with_piped_input(board):  # noqa: F811
    r = board.relaybox("console", input="help\nqueue\n")
    assert r.returncode == 0, r.stderr
    assert "  test ADDRESS" in r.stdout and "dead letters: 0" in r.stdout, r.stdout


@pytest.fixture
def repl(tmp_path):
    """A plain MicroPython REPL (the unix port with no script) on a pty pair."""
    pair = PtyPair(tmp_path)
    fd = os.open(pair.board, os.O_RDWR | os.O_NOCTTY)
    proc = subprocess.Popen([MICROPYTHON], stdin=fd, stdout=fd, stderr=fd)
    os.close(fd)
    yield pair
    proc.kill()
    proc.wait()
    pair.close()


def test_plain_micropython_repl_is_recognised(repl):
    started = time.monotonic()
    r = relaybox("status", "--port", repl.host)
    assert r.returncode == 1 and r.stdout == "", r
    assert r.stderr == (
        f"relaybox: a plain MicroPython REPL answers on {repl.host}, not relaybox: the "
        "firmware is not installed or has stopped; install it with `relaybox deploy`, or look "
        "at what happened with `relaybox console`\n"
    ), r.stderr
    # Recognised from its prompt, without waiting for the full timeout.
    assert time.monotonic() - started < 4
    # And left at a clean prompt: the next statement typed runs.
    with serial.Serial(repl.host, timeout=0.2) as s:
        s.reset_input_buffer()
        s.write(b"6 * 7\r")
        seen = bytearray()
        wait_for(lambda: seen.extend(s.read(4096)) or b"\n>>> " in seen, "a prompt")
    assert re.search(rb"6 \* 7\r?\n42\r?\n>>> $", seen), seen


def test_nothing_answering_times_out(tmp_path):
    pair = PtyPair(tmp_path)  # nobody reads the board end
    try:
        started = time.monotonic()
        r = relaybox("config", "show", "--port", pair.host, "--timeout", "1.5")
        assert r.returncode == 1 and r.stdout == "", r
        assert r.stderr == (
            f"relaybox: no answer from {pair.host} to hello within 1.5 s; check that the board "
            "is powered and runs relaybox, and that nothing else holds the port\n"
        ), r.stderr
        assert 1.5 <= time.monotonic() - started < 6
    finally:
        pair.close()


def test_missing_port_and_busy_port(board, tmp_path):  # noqa: F811
    r = relaybox("status", "--port", str(tmp_path / "ttyNOPE"))
    assert r.returncode == 1
    assert r.stderr.startswith(f"relaybox: {tmp_path / 'ttyNOPE'} does not exist; serial ports"), r
    with serial.Serial(board.tty, exclusive=True):
        r = board.relaybox("status")
    assert r.returncode == 1 and r.stderr.startswith(f"relaybox: cannot open {board.tty} ("), r
    assert "close other programs using it" in r.stderr
    assert r.stderr.count("\n") == 1


def test_socket_url(board):  # noqa: F811
    """A pyserial URL: the board's console behind a TCP port, as a serial server offers it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bridge = subprocess.Popen(
        [
            "socat",
            "-d",
            "-d",
            f"tcp-listen:{port},bind=127.0.0.1,reuseaddr",
            f"file:{board.tty},raw,echo=0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # socat says when it listens; its one connection must be the tool's.
        for line in bridge.stderr:
            if "listening on" in line:
                break
        out = board.ok("status", port=f"socket://127.0.0.1:{port}")
        assert re.search(r"^relaybox +0\.1\.0 on unix", out, re.M), out
    finally:
        bridge.terminate()
        bridge.wait(5)


class _Drain(threading.Thread):
    """Reads the board's output while a test floods its input, so neither side blocks."""

    def __init__(self, ser):
        super().__init__(daemon=True)
        self.ser = ser
        self.data = bytearray()
        self.stop = threading.Event()

    def has(self, data):
        return data in self.data

    def run(self):
        while not self.stop.is_set():
            self.data += self.ser.read(max(1, self.ser.in_waiting))


def test_junk_flood_and_overlong_lines_leave_the_console_working(board):  # noqa: F811
    rng = random.Random(4)
    with serial.Serial(board.tty, timeout=0.1) as ser:
        drain = _Drain(ser)
        drain.start()
        # Random bytes, short lines and a line longer than any buffer, in both modes.
        junk = b"".join(
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))) for _ in range(64)
        )
        board.pair.feed(ser, junk)
        board.pair.feed(ser, b"\n" + b"x" * 200_000 + b"\n")
        board.pair.feed(ser, b'@{"id": 1, "cmd": "status", "pad": "' + b"y" * 200_000 + b'"}\n')
        board.pair.feed(ser, b'@{"id": 2, "cmd": "hello"}\n')
        wait_for(lambda: b'"id": 2' in drain.data, "the answer after the flood", timeout=30)
        drain.stop.set()
        drain.join(5)
    assert b'@{"id": null, "ok": false, "error": "line too long"}' in drain.data
    assert b"error: line too long (at most 4096 bytes)" in drain.data
    # The host tool, which may find leftovers of all this on the line, is not confused.
    assert board.json("status")["queue"]["count"] == 0
    assert board.ok("config", "get", "hostname") == "relaybox.test\n"


def test_junk_from_the_board_side_is_skipped(tmp_path):
    """A scripted peer sends what a noisy board could: binary junk, a line longer than
    the host keeps, half JSON, an echo of the request, a stale answer, then the answer."""
    pair = PtyPair(tmp_path)
    try:
        with serial.Serial(pair.board, timeout=5) as peer:
            console = serialconn.open_port(pair.host, 10)

            def answer():
                line = b""
                while not line.startswith(b"@{"):
                    line = peer.readline().strip()
                rid = json.loads(line[1:])["id"]
                peer.write(bytes(range(256)) + b"\n")
                peer.write(b"z" * (serialconn.MAX_LINE + 10) + b'@{"id": %d}' % rid + b"\n")
                peer.write(b'@{"id": %d, "ok": tr\n' % rid)
                peer.write(line + b"\n")
                peer.write(b'@{"id": %d, "ok": true, "result": "stale"}\n' % (rid - 1))
                peer.write(b'@{"id": %d, "ok": true, "result": {"fine": 1}}\r\n' % rid)

            t = threading.Thread(target=answer)
            t.start()
            seen = []
            console.on_line = seen.append
            assert console.request("status") == {"fine": 1}
            t.join()
            console.close()
        # The half answer and the echo were passed on as ordinary lines; the endless line
        # was dropped whole, its answer-like tail included.
        assert any(s.endswith('"ok": tr') for s in seen), seen
        assert any('"cmd":"status"' in s for s in seen), seen
        assert not any(len(s) > serialconn.MAX_LINE for s in seen)
    finally:
        pair.close()


def test_atomic_save_under_sigkill(board_factory):  # noqa: F811
    """The firmware is killed at random moments while it saves again and again: the file is
    always one whole config, the old one or a new one, and the board starts from it."""
    b = board_factory(name="killed", upstream=dict(UPSTREAM))
    rng = random.Random(7)
    written = {"relaybox.test"}
    for round in range(8):
        with serial.Serial(b.tty, timeout=0.1, write_timeout=1) as ser:
            drain = _Drain(ser)
            drain.start()
            stop = threading.Event()
            writer = threading.Thread(
                target=_save_forever, args=(b.pair, ser, round, written, stop)
            )
            writer.start()
            # Kill once saving is under way, at a random moment of the stream of saves.
            try:
                wait_for(partial(drain.has, b'"path": '), "a save", timeout=20)
            except AssertionError:
                raise AssertionError(
                    f"no save in round {round}: backlog {b.pair.backlog()}, writer alive "
                    f"{writer.is_alive()}, firmware waits in {_wchan(b.proc.pid)}, "
                    f"output so far {bytes(drain.data[-300:])!r}"
                ) from None
            time.sleep(rng.uniform(0, 0.3))
            os.kill(b.proc.pid, signal.SIGKILL)
            b.proc.wait()
            stop.set()
            writer.join(5)
            drain.stop.set()
            drain.join(5)
        saved = json.loads(b.config_path.read_text())  # whole JSON, or this raises
        assert saved["hostname"] in written, saved
        assert saved["upstream"]["password"] == SECRET, saved
        # A fresh pair: requests still buffered in the old one must not reach the new run.
        b.pair.close()
        b.pair = None
        b.start()
        assert b.ok("config", "get", "hostname") == saved["hostname"] + "\n"
        assert b.json("config", "set", "max_clients", str(round + 1))["saved"]
        assert b.saved()["max_clients"] == round + 1


def _wchan(pid):
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f.read()
    except OSError as e:
        return str(e)


def _save_forever(pair, ser, round, written, stop):
    """Set and save hostname after hostname until stopped, at the firmware's pace."""
    i = 0
    while not stop.is_set():
        if pair.backlog() > 256:  # see PtyPair.feed
            time.sleep(0.002)
            continue
        name = f"h{round}-{i}.test"
        written.add(name)
        set_ = {"id": i, "cmd": "set", "args": ["hostname", name]}
        save = {"id": -i, "cmd": "save"}
        ser.write(f"@{json.dumps(set_)}\n@{json.dumps(save)}\n".encode())
        i += 1


def _usb(device, vid=None, pid=None, description="n/a"):
    from serial.tools.list_ports_common import ListPortInfo

    p = ListPortInfo(device, skip_link_detection=True)
    p.vid, p.pid, p.description = vid, pid, description
    return p


def test_auto_port_picks_the_one_board(monkeypatch):
    """USB enumeration is the one thing replaced here: CI has no boards plugged in."""
    from serial.tools import list_ports

    ports = [_usb("/dev/ttyS0"), _usb("/dev/ttyACM0", 0x2E8A, 0x0005, "Board in FS mode")]
    monkeypatch.setattr(list_ports, "comports", lambda: ports)
    assert serialconn.resolve("auto") == "/dev/ttyACM0"
    ports.append(_usb("/dev/ttyUSB0", 0x10C4, 0xEA60, "CP2102 USB to UART"))
    with pytest.raises(serialconn.ConsoleError) as e:
        serialconn.resolve("auto")
    assert str(e.value) == (
        "several boards found: /dev/ttyACM0 (Raspberry Pi Board in FS mode), "
        "/dev/ttyUSB0 (CP210x CP2102 USB to UART); choose one with --port"
    )
    del ports[1:]
    with pytest.raises(serialconn.ConsoleError) as e:
        serialconn.resolve("auto")
    assert str(e.value) == (
        "no MicroPython board found on USB; plug it in or give --port; "
        "serial ports here: /dev/ttyS0"
    )
    assert serialconn.resolve("rfc2217://192.0.2.1:4000") == "rfc2217://192.0.2.1:4000"


def test_refused_socket_url_says_so():
    from upstream_server import free_port

    url = f"socket://127.0.0.1:{free_port()}"
    r = relaybox("status", "--port", url)
    assert r.returncode == 1 and r.stdout == "", r
    assert r.stderr == (
        f"relaybox: cannot connect to {url}: the connection was refused (is the serial "
        "bridge, such as socat or ser2net, running there?)\n"
    ), r.stderr
