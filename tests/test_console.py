"""The firmware's console as a person uses it, over the process's stdin and stdout."""

import json
import subprocess
import time

import pytest

SECRET = "Tr0ub4dor&3-secret"


@pytest.fixture
def relay(relay_factory, tmp_path):
    r = relay_factory(
        start=False,
        upstream={
            "host": "127.0.0.1",
            "port": 9,
            "tls": "starttls",
            "user": "alice@example.net",
            "password": SECRET,
            "ca": "ca.pem",
        },
    )
    r.start(stdin=subprocess.PIPE)
    return r


def test_help_and_status(relay):
    relay.type("help\n")
    relay.wait_log(r"^  test ADDRESS +send a test message")
    relay.type("status\n")
    relay.wait_log(r"^relaybox \d+\.\d+\.\d+ on unix, up \d+s$")
    relay.wait_log(r"^upstream  \S+ 127\.0\.0\.1:9")
    relay.wait_log(r"^queue     0 message\(s\), oldest -; 0 dead letter\(s\)$")
    relay.wait_log(r"^memory    flash free \d+[BKMG], heap free \d+[BKM]$")


def test_secret_is_masked_everywhere(relay):
    relay.type("show\n")
    relay.wait_log(r"^upstream.password +\*{8}$")
    relay.type("get upstream.password\n")
    relay.wait_log(r"^upstream.password = \*{8}$")
    relay.type("set upstream.password\n")
    relay.type("n3w-" + SECRET + "\n")
    # The prompt has no line end of its own: it starts the next line of output.
    relay.wait_log(r"^value for upstream.password \(not shown\): ")
    relay.wait_log(r"console: set upstream.password = \*{8}")
    relay.type('@{"id": 1, "cmd": "export"}\n')
    answer = relay.wait_log(r'^@\{.*"id": 1.*').group(0)
    exported = json.loads(answer[1:])["result"]["config"]
    assert exported["upstream"]["password"] == "********"
    relay.type("logs 100\nsave\n")
    relay.wait_log(r"^saved to ")
    assert SECRET not in relay.log()
    saved = json.loads(relay.config_path.read_text())
    assert saved["upstream"]["password"] == "n3w-" + SECRET  # the file keeps the real one


def test_invalid_values_are_refused(relay):
    relay.type("set listen.port 70000\n")
    relay.wait_log(r"^error: listen.port: must be from 1 to 65535$")
    relay.type("set allow 0.0.0.0/0\n")
    relay.wait_log(r"^error: allow: 0.0.0.0/0 is not a private or loopback range")
    relay.type("set no.such.key 1\n")
    relay.wait_log(r"^error: no.such.key: unknown key$")
    relay.type("unset upstream.user\nsave\n")
    relay.wait_log(r"^error: upstream.user: is required when upstream is set$")
    relay.type("frobnicate\n")
    relay.wait_log(r"^error: unknown command 'frobnicate'")


def test_set_save_and_restart_notice(relay):
    relay.type("set max_recipients 7\n")
    relay.wait_log(r"^ok \(needs save \+ reboot\)$")
    relay.type("set upstream.port 2525\n")
    relay.wait_log(r"^ok \(save to keep it\)$")
    relay.wait_log(r"delivering to 127\.0\.0\.1:2525")  # upstream settings apply at once
    relay.type("save\n")
    relay.wait_log(r"^saved to ")
    saved = json.loads(relay.config_path.read_text())
    assert saved["max_recipients"] == 7 and saved["upstream"]["port"] == 2525
    relay.type("status\n")
    relay.wait_log(r"^note      settings changed that need save \+ reboot$")


def test_queue_test_retry_drop(relay):
    relay.type("test bob@example.net\n")
    id = relay.wait_log(r"^test message queued as ([0-9a-f]{16})$").group(1)
    assert relay.queued() == [id]
    relay.type("queue\n")
    relay.wait_log(r"^  %s .* from <alice@example.net> to bob@example.net" % id)
    relay.type(f"retry {id}\n")
    relay.wait_log(f"^{id}: will be tried now$")
    relay.type(f"drop {id}\n")
    relay.wait_log(f"^{id}: dropped$")
    assert relay.queued() == []
    relay.type("drop 0123456789abcdef\n")
    relay.wait_log(r"^error: no message 0123456789abcdef$")
    relay.type("drop ../spool/x\n")
    relay.wait_log(
        r"^error: not a message ID: '../spool/x' \(16 hex digits, as queue lists them\)$"
    )


def test_junk_and_overlong_lines(relay):
    relay.type(bytes(range(256)) * 64 + b"\n")
    relay.type(b"x" * 100_000 + b"\n")
    relay.wait_log(r"^error: line too long \(at most 4096 bytes\)$")
    relay.type(b"@" + b"{" * 50_000 + b"\n")
    relay.wait_log(r'^@\{"id": null, "ok": false, "error": "line too long"\}$')
    relay.type(b'@{"id": 5, "cmd": "status"\n')
    relay.wait_log(r'^@\{.*"error": "bad request".*\}$')
    relay.type("status\n")
    relay.wait_log(r"^queue     0 message")
    assert relay.proc.poll() is None


def test_reboot_exits_for_restart(relay):
    relay.type("reboot\n")
    relay.wait_log(r"^rebooting$")
    assert relay.proc.wait(10) == 3


def test_end_of_input_leaves_the_relay_running(relay):
    relay.proc.stdin.close()
    relay.wait_log("console input closed; the relay keeps running")
    import smtplib

    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        assert s.noop()[0] == 250


def test_queue_shows_backoff_and_retry_skips_it(relay):
    relay.type("test bob@example.net\n")
    id = relay.wait_log(r"^test message queued as ([0-9a-f]{16})$").group(1)
    # No CA file: that waits the longest step of the schedule, an hour.
    relay.wait_log(r"upstream session failed .*CA file.*; 1 queued, next try in 3600 s")
    relay.type('@{"id": 9, "cmd": "queue"}\n')
    answer = json.loads(relay.wait_log(r'^@\{.*"id": 9.*').group(0)[1:])
    (msg,) = answer["result"]["queue"]
    assert msg["id"] == id and 3590 <= msg["next"] <= 3600, msg
    relay.type("status\n")
    relay.wait_log(r"^upstream  waiting to retry 127\.0\.0\.1:9 reachable$")
    failures = relay.log().count("upstream session failed")
    relay.type(f"retry {id}\n")
    relay.wait_log(f"^{id}: will be tried now$")
    deadline = time.monotonic() + 10
    while relay.log().count("upstream session failed") == failures:
        assert time.monotonic() < deadline, "retry did not start a session"
        time.sleep(0.1)


def test_crlf_terminal_and_secret_prompt(relay):
    """Terminals such as screen and picocom end lines with CR (LF); the secret typed at the
    prompt must be taken as the value, never echoed as a command."""
    relay.type("set upstream.password\r\nCrLf-" + SECRET + "\r\n")
    relay.wait_log(r"console: set upstream.password = \*{8}")
    relay.type("get upstream.password\rget nope\r\n")
    relay.wait_log(r"^upstream.password = \*{8}$")
    relay.wait_log(r"^error: nope: unknown key$")
    relay.type("test not-an-address\n")
    relay.wait_log(r"^error: not-an-address: must be a mail address like alice@example.net$")
    assert SECRET.lower() not in relay.log().lower()
    assert "error: unknown command" not in relay.log()


def test_secret_typed_at_the_host_terminal_is_not_echoed(relay_factory):
    """Under `relaybox run` the host's terminal echoes what is typed: the firmware switches
    that echo off for the secret prompt and on again after it."""
    from consolelink import RELAYBOX, Terminal

    r = relay_factory(start=False)
    t = Terminal([RELAYBOX, "run", "--config", str(r.config_path)])
    try:
        t.expect(r"listening on")
        t.send("get hostname\r")
        t.expect(r"(?s)get hostname\r\n.*hostname = relaybox\.test")  # echoed, then answered
        t.send("set upstream.password\r")
        t.expect(r"value for upstream\.password \(not shown\): ")
        t.send("Typed-" + SECRET + "\r")
        t.expect(r"console: set upstream\.password = \*{8}")
        t.send("get upstream.password\r")
        t.expect(r"(?s)get upstream\.password\r\n.*upstream\.password = \*{8}")
        t.send("\x03")  # Ctrl-C: a clean stop
        assert t.finish() == 0
    finally:
        if t.proc.poll() is None:
            t.proc.kill()
    assert SECRET.encode() not in t.seen, t.seen


def _answers(relay, id):
    found = [json.loads(x[1:]) for x in list(relay.lines) if x.startswith("@{")]
    return [a for a in found if a.get("id") == id]


def test_every_request_is_answered_even_when_the_command_fails(relay):
    """An unexpected error is an answer (ok false, "internal: ..."), never silence."""
    (relay.folder / "config.json.tmp").mkdir()  # the save cannot write its temporary file
    relay.type('@{"id": 1, "cmd": "save"}\n')
    relay.type('@{"id": 2, "cmd": "logs", "args": [1e400]}\n')
    relay.type('@{"id": 3, "cmd": "logs", "args": [-1]}\n')
    relay.type('@{"id": 4, "cmd": "logs", "args": [0]}\n')
    relay.type("save\n")
    relay.wait_log(r'^@\{.*"id": 4\b')
    relay.wait_log(r"^error: internal: OSError 21$")
    assert _answers(relay, 1) == [{"id": 1, "ok": False, "error": "internal: OSError 21"}]
    usage = "usage: logs [N], N the number of last lines (0 or more)"
    assert _answers(relay, 2) == [{"id": 2, "ok": False, "error": usage}]
    assert _answers(relay, 3) == [{"id": 3, "ok": False, "error": usage}]
    assert _answers(relay, 4) == [{"id": 4, "ok": True, "result": {"lines": []}}]
    assert SECRET not in relay.log()


def test_a_full_ring_of_long_lines_fits(relay_factory):
    r = relay_factory(start=False, log={"ring": 1000})
    r.start(stdin=subprocess.PIPE)
    sender = "a" * 240 + "@example.net"
    r.type("".join("set admin %s\n" % sender for _ in range(800)))
    r.type('@{"id": 5, "cmd": "logs"}\n')
    r.wait_log(r'^@\{.*"id": 5\b', timeout=60)
    (answer,) = _answers(r, 5)
    lines = answer["result"]["lines"]
    assert answer["ok"] and 20 < len(lines) < 100, answer
    assert lines[-1].endswith("console: set admin = " + sender), lines[-1]
    assert sum(map(len, lines)) <= 16384
    r.type("logs 2\n")
    r.wait_log(r"^\d{4}-\S+ \S+ info console: set admin = a{240}@example.net$")


def test_secret_prompt_left_by_an_empty_line_or_a_request(relay):
    relay.type("set upstream.password\n\n")
    relay.wait_log(r"^upstream\.password: not changed$")
    relay.type('set upstream.password\n@{"id": 8, "cmd": "hello"}\n')
    relay.wait_log(r'^@\{.*"id": 8\b')
    (answer,) = _answers(relay, 8)
    assert answer["ok"] and answer["result"]["name"] == "relaybox", answer
    assert relay.log().count("upstream.password: not changed") == 2
    # Spaces belong to what was typed; only the line end is not part of the secret.
    relay.type("set network.wifi.key\n  two words  \nsave\n")
    relay.wait_log(r"^saved to ")
    saved = json.loads((relay.folder / "config.json").read_text())
    assert saved["upstream"]["password"] == SECRET
    assert saved["network"]["wifi"]["key"] == "  two words  "
    for bad in ("short", "x" * 64, "tab\there-long"):
        relay.type("set network.wifi.key %s\n" % bad)
    relay.type("set network.wifi.key " + "0123456789abcdef" * 4 + "\nget hostname\n")
    relay.wait_log(r"^hostname = relaybox\.test$")
    assert relay.log().count("console: set network.wifi.key = ********") == 2
    error = "error: network.wifi.key: must be 8 to 63 printable ASCII characters, or 64 hex digits"
    assert relay.log().count(error) == 3, relay.log()


def test_an_echoing_board_says_so_and_shows_inline_secrets_as_stars(relay_factory, tmp_path):
    """A board's serial line (CONSOLE_ECHO) echoes what is typed: hello tells the host tool,
    and the value of `set SECRET VALUE` comes back as stars."""
    script = tmp_path / "echoing.py"
    script.write_text(
        "import board\nboard.CONSOLE_ECHO = True\nimport relaybox.app\nrelaybox.app.main()\n"
    )
    r = relay_factory(start=False, script=script)
    r.start(stdin=subprocess.PIPE)
    r.type('@{"id": 2, "cmd": "hello"}\n')
    r.wait_log(r'^@\{.*"id": 2\b')
    (answer,) = _answers(r, 2)
    assert answer["result"]["echo"] is True, answer
    r.type("set upstream.password " + SECRET + "\nget hostname\n")
    r.wait_log(r"hostname = relaybox\.test")
    assert "set upstream.password " + "*" * len(SECRET) in r.log(), r.log()
    assert SECRET not in r.log()


def test_sizes_read_at_a_glance():
    import mpdriver

    result = mpdriver.run(
        "from relaybox.console import _size\n"
        "print(_size(512), _size(20480), _size(52428800), _size(85899345920))\n"
    )
    assert result.stdout.split() == ["512B", "20K", "50M", "80G"], result.stdout + result.stderr
