"""`relaybox` console commands end to end: the firmware under MicroPython on one end of a
pty pair, the installed `relaybox` command on the other."""

import json
import queue
import re
import signal
import subprocess
import threading

import pytest
import serial
from consolelink import RELAYBOX, PtyRelay, Terminal, wait_for

SECRET = "s3cret-Tr0ub4dor&3"
WIFI_KEY = "wifi-key-Hunter2!"
UPSTREAM = {
    "host": "127.0.0.1",
    "port": 9,
    "tls": "starttls",
    "user": "alice@example.net",
    "password": SECRET,
    "ca": "ca.pem",
}


@pytest.fixture
def board_factory(build_dir, tmp_path):
    started = []

    def make(name="board", via_run=False, **config):
        b = PtyRelay(build_dir, tmp_path / name, via_run=via_run, **config)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def board(board_factory):
    return board_factory(upstream=dict(UPSTREAM), network={"wifi": {"key": WIFI_KEY}})


def test_status_human_and_json(board):
    out = board.ok("status")
    assert re.search(r"^relaybox +0\.1\.0 on unix, up \d+ s$", out, re.M), out
    assert re.search(r"^upstream +127\.0\.0\.1:9 ", out, re.M), out
    assert re.search(r"^queue +0 messages$", out, re.M), out
    s = board.json("status")
    assert s["version"] == "0.1.0" and s["board"] == "unix", s
    assert s["queue"] == {"count": 0, "oldest_age": None}, s


def _fail(r, message):
    """The command failed with exactly one `relaybox: message` line on stderr."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stderr == f"relaybox: {message}\n", r.stderr


def test_config_show_masks_secrets_and_marks_defaults(board):
    out = board.ok("config", "show")
    assert re.search(r"^upstream\.password +\*{8}$", out, re.M), out
    assert re.search(r"^network\.wifi\.key +\*{8}$", out, re.M), out
    assert re.search(r"^upstream\.port +9$", out, re.M), out
    assert re.search(r"^max_recipients +100 +\(default\)$", out, re.M), out
    r = board.json("config", "show")
    assert r["config"]["upstream.password"] == "********", r
    assert r["config"]["upstream.retry.schedule"] == [60, 300, 900, 1800, 3600], r
    assert "upstream.port" in r["set"] and "max_recipients" not in r["set"], r


def test_config_get(board):
    assert board.ok("config", "get", "upstream.port") == "9\n"
    assert board.ok("config", "get", "upstream.password") == "********\n"
    assert board.ok("config", "get", "allow") == "127.0.0.0/8\n"
    assert board.json("config", "get", "hostname") == {"key": "hostname", "value": "relaybox.test"}
    _fail(board.relaybox("config", "get", "no.such.key"), "no.such.key: unknown key")


def test_config_set_saves_and_says_when_a_restart_is_needed(board):
    out = board.ok("config", "set", "upstream.port", "2525")
    assert out == f"upstream.port = 2525 (saved in {board.config_path})\n", out
    assert board.saved()["upstream"]["port"] == 2525
    out = board.ok("config", "set", "max_recipients", "7")
    assert out.endswith("takes effect after a restart: relaybox reboot\n"), out
    r = board.json("config", "set", "upstream.auth", "CRAM-MD5,PLAIN")
    assert r == {
        "key": "upstream.auth",
        "value": ["CRAM-MD5", "PLAIN"],
        "restart": False,
        "saved": str(board.config_path),
    }, r
    out = board.ok("config", "set", "log.level", "debug", "--no-save")
    assert out == "log.level = debug (not saved)\n", out
    assert "log" not in board.saved()
    assert "restart_needed" in board.ok("status", "--json")
    assert re.search(r"^restart +needed", board.ok("status"), re.M)


def test_invalid_values_are_refused_and_nothing_is_saved(board):
    before = board.config_path.read_text()
    _fail(
        board.relaybox("config", "set", "listen.port", "70000"),
        "listen.port: must be from 1 to 65535",
    )
    _fail(
        board.relaybox("config", "set", "listen.port", "many"), "listen.port: must be an integer"
    )
    _fail(
        board.relaybox("config", "set", "network.dhcp", "perhaps"),
        "network.dhcp: must be true or false",
    )
    _fail(
        board.relaybox("config", "set", "upstream.port", "-1"),
        "upstream.port: must be from 1 to 65535",
    )
    _fail(board.relaybox("config", "set", "no.such.key", "1"), "no.such.key: unknown key")
    r = board.relaybox("config", "set", "allow", "0.0.0.0/0")
    assert r.returncode == 1 and r.stderr.startswith("relaybox: allow: "), r.stderr
    _fail(
        board.relaybox("config", "unset", "upstream.user"),
        "upstream.user: is required when upstream is set",
    )
    _fail(
        board.relaybox("config", "set", "network.dhcp", "false"),
        "network.ip: is required when network.dhcp is false",
    )
    assert board.config_path.read_text() == before
    assert board.ok("config", "get", "listen.port") == f"{board.port}\n"
    # A change the file could not take did not happen in the running relay either.
    assert board.ok("config", "get", "upstream.user") == "alice@example.net\n"
    assert board.ok("config", "get", "network.dhcp") == "true\n"
    assert board.json("status")["upstream"]["configured"] is True


def test_booleans_typed_in_any_case_and_shown_as_typed(board):
    assert board.ok("config", "set", "network.dhcp", "True").startswith("network.dhcp = true")
    assert board.json("config", "get", "network.dhcp")["value"] is True
    with serial.Serial(board.tty, timeout=0.2) as s:
        s.write(b"get network.dhcp\nshow\n")
        seen = bytearray()
        wait_for(lambda: seen.extend(s.read(4096)) or b"upstream.user " in seen, "show")
    assert b"network.dhcp = true\r\n" in seen or b"network.dhcp = true\n" in seen, seen
    assert re.search(rb"network\.dhcp +true\r?\n", seen), seen
    assert b"True" not in seen, seen
    _fail(
        board.relaybox("config", "set", "allow", ""),
        "allow: must list at least one network (an empty list refuses every client)",
    )


def test_status_into_a_closed_pipe(board):
    # `true` has gone before relaybox writes: its output meets a closed pipe.
    r = subprocess.run(
        f"{RELAYBOX} status --port {board.tty} | true; echo ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
    )
    assert r.stdout == b"141\n" and r.stderr == b"", r


def test_config_unset(board):
    board.ok("config", "set", "max_recipients", "7")
    out = board.ok("config", "unset", "max_recipients")
    assert out.startswith(f"max_recipients is back to its default (saved in {board.config_path})")
    assert "max_recipients" not in board.saved()
    assert board.ok("config", "get", "max_recipients") == "100\n"


def test_password_prompt_does_not_echo(board):
    t = Terminal([RELAYBOX, "config", "set", "upstream.password", "--port", board.tty])
    t.expect(r"upstream\.password \(not shown\): $")
    t.send("n3w-" + SECRET + "\n")
    t.expect(r"upstream\.password again: $")
    t.send("n3w-" + SECRET + "\n")
    t.expect(r"upstream\.password = \*{8} \(saved in ")
    assert t.finish() == 0
    assert SECRET.encode() not in t.seen, t.seen
    assert board.saved()["upstream"]["password"] == "n3w-" + SECRET


def test_password_entries_that_differ_change_nothing(board):
    t = Terminal([RELAYBOX, "config", "set", "upstream.password", "--port", board.tty])
    t.expect(r"\(not shown\): $")
    t.send("first-" + SECRET + "\n")
    t.expect(r"again: $")
    t.send("second-" + SECRET + "\n")
    t.expect(r"relaybox: the two entries for upstream.password differ; nothing was changed")
    assert t.finish() == 1
    assert SECRET.encode() not in t.seen
    assert board.saved()["upstream"]["password"] == SECRET


def test_value_from_piped_stdin(board):
    r = board.relaybox("config", "set", "network.wifi.key", input=WIFI_KEY + "2\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("network.wifi.key = ********"), r.stdout
    assert board.saved()["network"]["wifi"]["key"] == WIFI_KEY + "2"


def test_export_and_import_keep_secrets(board, tmp_path):
    out = board.ok("config", "export")
    exported = json.loads(out)
    assert exported["upstream"]["password"] == "********", exported
    assert exported["network"]["wifi"]["key"] == "********", exported
    path = tmp_path / "exported.json"
    assert board.ok("config", "export", str(path)).startswith(f"wrote {path}")
    config = json.loads(path.read_text())
    assert config == exported
    config["max_recipients"] = 12
    config["upstream"]["port"] = 465
    del config["upstream"]["tls"]
    path.write_text(json.dumps(config))
    out = board.ok("config", "import", str(path))
    assert out.startswith(f"{path} imported (saved in {board.config_path})"), out
    assert "relaybox reboot" in out
    saved = board.saved()
    assert saved["max_recipients"] == 12 and saved["upstream"]["port"] == 465, saved
    assert saved["upstream"]["password"] == SECRET, saved
    assert saved["network"]["wifi"]["key"] == WIFI_KEY, saved


def test_import_refusals(board, tmp_path):
    before = board.config_path.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = board.relaybox("config", "import", str(bad))
    assert r.returncode == 1 and r.stderr.startswith(f"relaybox: {bad} is not valid JSON ("), r
    bad.write_text(json.dumps({"listen": {"port": 0}}))
    _fail(board.relaybox("config", "import", str(bad)), "listen.port: must be from 1 to 65535")
    _fail(
        board.relaybox("config", "import", str(tmp_path / "missing.json")),
        f"cannot read {tmp_path / 'missing.json'} (No such file or directory)",
    )
    # Larger than one console line: refused here, before anything is sent.
    bad.write_text(json.dumps({"hostname": "relaybox.test", "allow": ["10.0.0.0/8"] * 400}))
    r = board.relaybox("config", "import", str(bad))
    assert r.returncode == 1, r
    assert re.fullmatch(
        r"relaybox: the import request is \d+ bytes; the board's console takes at most 4096\n",
        r.stderr,
    ), r.stderr
    assert board.config_path.read_text() == before


def test_queue_send_test_retry_and_drop(board):
    assert board.ok("queue") == "queue: empty\ndead letters: empty\n"
    out = board.ok("send-test", "bob@example.net")
    id = re.fullmatch(r"queued test message ([0-9a-f]{16}) for bob@example\.net; .*\n", out)
    assert id, out
    id = id.group(1)
    assert board.queued() == [id]
    out = board.ok("queue")
    assert re.search(rf"^{id} +alice@example\.net +bob@example\.net +\d+ bytes ", out, re.M), out
    q = board.json("queue")
    assert [m["id"] for m in q["queue"]] == [id] and q["dead"] == [], q
    assert q["queue"][0]["rcpt"] == ["bob@example.net"], q
    assert board.ok("queue", "retry", id) == f"{id}: will be tried now\n"
    assert board.ok("queue", "drop", id) == f"{id}: deleted from the queue\n"
    assert board.queued() == []
    _fail(board.relaybox("queue", "drop", "0123456789abcdef"), "no message 0123456789abcdef")
    # An ID is never a path: nothing outside the spool can be removed or touched.
    victim = board.folder / "victim"
    victim.write_text("keep me")
    for action, bad in (("drop", "../../victim"), ("retry", "../../victim"), ("drop", "")):
        _fail(
            board.relaybox("queue", action, bad),
            f"not a message ID: {bad!r} (16 hex digits, as queue lists them)",
        )
    _fail(
        board.relaybox("queue", "drop", id.upper()),
        f"not a message ID: {id.upper()!r} (16 hex digits, as queue lists them)",
    )
    assert victim.read_text() == "keep me"
    _fail(
        board.relaybox("queue", "retry"), "queue retry needs a message ID (see `relaybox queue`)"
    )
    assert board.json("send-test", "carol@example.net").keys() == {"id"}
    r = board.relaybox("send-test", "not an address")
    assert r.returncode == 1 and r.stdout == "", r
    assert re.fullmatch(r"relaybox: .*must be a mail address like alice@example\.net\n", r.stderr)


def test_logs(board):
    board.ok("config", "set", "log.level", "debug")
    out = board.ok("logs")
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d info smtp: listening on ", out, re.M), out
    saved = f"info console: config saved to {board.config_path}\n"
    assert out.endswith(saved + out.splitlines()[-1] + "\n"), out
    assert out.endswith(" info console: set log.level = debug\n"), out
    assert len(board.ok("logs", "-n", "2").splitlines()) == 2
    lines = board.json("logs", "-n", "3")["lines"]
    assert len(lines) == 3 and lines[-1].endswith("console: set log.level = debug"), lines


def test_logs_follow_prints_new_lines(board):
    board.ok("config", "set", "log.level", "debug", "--no-save")
    follow = subprocess.Popen(
        [RELAYBOX, "logs", "-n", "1", "-f", "--port", board.tty],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in follow.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=10)
        assert "info console: set log.level = debug" in first, first
        # Something happens on the LAN side: its log lines come through as they are printed.
        client = board.connect()
        client.reply()
        seen = lines.get(timeout=10)
        assert re.search(r" debug smtp: peer=127\.0\.0\.1 connected$", seen), seen
        client.close()
    finally:
        follow.send_signal(signal.SIGINT)
    assert follow.wait(10) == 0, follow.stderr.read()


def test_reboot_under_relaybox_run(board_factory):
    b = board_factory(via_run=True)
    b.ok("config", "set", "max_recipients", "9")
    firmware = b.firmware_pid()
    assert b.ok("reboot") == "the board is restarting\n"
    wait_for(lambda: b.firmware_pid() not in (None, firmware), "the firmware to start again")
    b.wait_ready()
    s = b.json("status")
    assert s["restart_needed"] is False and s["uptime"] < 10, s
    assert b.ok("config", "get", "max_recipients") == "9\n"
    assert b.proc.poll() is None


def test_status_without_upstream(board_factory):
    b = board_factory(name="bare")
    out = b.ok("status")
    assert re.search(r"^upstream +not configured; mail is held in the queue$", out, re.M), out
    assert b.json("status")["upstream"] == {"configured": False, "state": "not configured"}


def test_secret_prompt_leaves_a_raw_line_without_echo(board):
    """A serial line (here the raw pty) does not echo: after a secret typed at the console,
    the board must put back exactly that, or the host tool's requests come back at it."""
    import termios

    import serial

    with serial.Serial(board.tty, timeout=0.2) as s:
        s.write(b"set upstream.password\nTyped-" + SECRET.encode() + b"\n")
        wait_for(lambda: b"ok (save to keep it)" in s.read(4096), "the secret to be set")
        s.write(b'@{"id": 7, "cmd": "hello"}\n')
        seen = bytearray()
        wait_for(lambda: seen.extend(s.read(4096)) or b'"id": 7, "ok"' in seen, "hello")
    attrs = termios.tcgetattr(board.pair._hold[0])
    assert attrs[3] & termios.ECHO == 0, attrs
    assert b'"cmd"' not in seen and SECRET.encode() not in seen, seen
    assert board.ok("config", "get", "hostname") == "relaybox.test\n"
