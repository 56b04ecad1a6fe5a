"""The outbound client against an upstream that breaks the protocol: a scripted TLS server
answers each command as a test says, so replies no real MTA sends can be tried."""

import socket
import threading
import time

import pytest
from test_submit import drive
from upstream_server import PASSWORD, USER, Certs

MSG = b"From: alice@example.net\r\nSubject: x\r\n\r\nbody\r\n"


class Session:
    """The server side of one connection: what came in, and the bodies received."""

    def __init__(self, sock):
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.commands = []
        self.bodies = []
        self.ended = None

    def send(self, data):
        self.sock.sendall(data)

    def command(self):
        line = self.rfile.readline(4096)
        if line:
            self.commands.append(line.rstrip(b"\r\n").split(b" ")[0].upper())
        return line

    def body(self):
        lines = []
        while True:
            line = self.rfile.readline(4096)
            if not line or line == b".\r\n":
                self.bodies.append(b"".join(lines))
                return
            lines.append(line)


class Scripted:
    """Implicit TLS on loopback; `script(session)` plays the server for each connection."""

    def __init__(self, certs, script):
        self.certs = certs
        self.script = script
        self.sessions = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        ctx = self.certs.server_context()
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(ctx, raw), daemon=True).start()

    def _session(self, ctx, raw):
        s = None
        try:
            with ctx.wrap_socket(raw, server_side=True) as sock:
                s = Session(sock)
                self.sessions.append(s)
                self.script(s)
                s.ended = "script"
                # What the client does once the script is done: hang up, or wait (a leak).
                sock.settimeout(10)
                s.ended = "closed" if not sock.recv(1) else "data"
        except OSError as e:
            if s:
                s.ended = s.ended or repr(e)
        finally:
            raw.close()

    def config(self, **over):
        cfg = {
            "host": "localhost",
            "port": self.port,
            "tls": "implicit",
            "user": USER,
            "password": PASSWORD,
            "ca": self.certs.ca_pem,
            "auth": ["PLAIN"],
            "timeout": 5,
        }
        cfg.update(over)
        return cfg

    def wait_ended(self, timeout=10):
        deadline = time.monotonic() + timeout
        while any(s.ended in (None, "script") for s in self.sessions):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return [s.ended for s in self.sessions]

    def bodies(self):
        return [b for s in self.sessions for b in s.bodies]

    def close(self):
        self.listener.close()


def greet(s, pipelining=True):
    s.send(b"220 scripted ESMTP\r\n")
    s.command()  # EHLO
    s.send(
        b"250-scripted\r\n"
        + (b"250-PIPELINING\r\n" if pipelining else b"")
        + b"250 AUTH PLAIN\r\n"
    )
    s.command()  # AUTH PLAIN ...
    s.send(b"235 2.7.0 ok\r\n")


def serve(s, answers, pipelining=True):
    """A server that answers `answers[COMMAND]` (a list, used up in order) or a plain yes."""
    greet(s, pipelining)
    while True:
        line = s.command()
        if not line:
            return
        cmd = s.commands[-1]
        queue = answers.get(cmd)
        reply = queue.pop(0) if queue else None
        if reply is None:
            defaults = {b"DATA": b"354 go ahead\r\n", b"QUIT": b"221 bye\r\n"}
            reply = defaults.get(cmd, b"250 ok\r\n")
        s.send(reply)
        if cmd == b"QUIT" or reply.startswith(b"421"):
            return
        if reply.startswith(b"354"):
            s.body()
            final = answers.get(b".")
            s.send(final.pop(0) if final else b"250 queued\r\n")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture
def upstream(certs):
    servers = []

    def start(script):
        servers.append(Scripted(certs, script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def msg(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(MSG)
    return str(path)


def sent_count(results):
    return sum(1 for r in results if "sent" in r)


@pytest.mark.parametrize("pipelining", [True, False])
def test_250_to_data_is_not_delivery(upstream, msg, pipelining):
    """DATA must be answered by 354: a 250 there would make an unsent message look sent."""
    up = upstream(lambda s: serve(s, {b"DATA": [b"250 2.0.0 sure\r\n"]}, pipelining))
    results, _ = drive(up.config(), [["a@lan", ["b@example.org"], msg]])
    err = results[1]["error"]
    assert (err["stage"], err["code"], err["temporary"]) == ("data", 0, True), results
    assert "unexpected reply to DATA: 250" in err["text"]
    assert up.bodies() == []


def test_unrequested_reply_ends_the_session(upstream, msg):
    """One reply too many must not be taken as the answer to the next command: every
    message reported sent is one the server received, and nothing is reported twice."""
    up = upstream(lambda s: serve(s, {b".": [b"250 queued\r\n250 stray\r\n"]}))
    results, _ = drive(up.config(), [["a@lan", ["b@example.org"], msg]] * 3)
    assert sent_count(results) == len(up.bodies()) == 3, results
    reset = [r for r in results if "reset" in r]
    assert reset and "unrequested reply" in reset[0]["reset"]["text"], results
    # Each stray line made the client hang up (and close its socket), then come back.
    assert len(up.sessions) == 3
    assert up.wait_ended() == ["closed"] * 3


def test_a_slowly_trickling_reply_times_out(upstream, msg):
    """The timeout holds for a whole reply, not for each byte of it."""

    def trickle(s):
        for b in b"220-scripted ESMTP\r\n220-more\r\n":
            s.send(bytes([b]))
            time.sleep(0.3)
        s.send(b"220 ok\r\n")

    up = upstream(trickle)
    t0 = time.monotonic()
    results, _ = drive(up.config(timeout=2), [["a@lan", ["b@example.org"], msg]])
    took = time.monotonic() - t0
    err = results[0]["open"]
    assert (err["stage"], err["code"]) == ("connect", 0) and "timeout" in err["text"], results
    assert took < 6, took  # the trickle alone lasts 9 s


@pytest.mark.parametrize(
    "reply", [b"999 nine\r\n", b"150 one\r\n", b"\x00\xff junk\r\n", b"250 ok\r"]
)
def test_malformed_replies_are_temporary_failures(upstream, msg, reply):
    up = upstream(lambda s: serve(s, {b"MAIL": [reply]}, pipelining=False))
    results, _ = drive(up.config(timeout=2), [["a@lan", ["b@example.org"], msg]])
    err = results[1]["error"]
    assert (err["stage"], err["code"], err["temporary"]) == ("mail", 0, True), results
    assert results[1]["alive"] is False
    assert up.bodies() == []


@pytest.mark.parametrize("pipelining", [True, False])
def test_421_ends_the_session_with_its_own_text(upstream, msg, pipelining):
    def script(s):
        greet(s, pipelining)
        s.command()
        s.send(b"421 4.7.0 too many messages, slow down\r\n")

    up = upstream(script)
    results, _ = drive(up.config(), [["a@lan", ["b@example.org", "c@example.org"], msg]])
    err = results[1]["error"]
    assert (err["stage"], err["code"], err["temporary"]) == ("mail", 421, True), results
    assert "slow down" in err["text"]
    assert results[1]["alive"] is False


def test_421_to_a_recipient_keeps_the_message(upstream, msg):
    up = upstream(lambda s: serve(s, {b"RCPT": [b"250 ok\r\n", b"421 4.3.2 going down\r\n"]}))
    results, _ = drive(up.config(), [["a@lan", ["b@example.org", "c@example.org"], msg]])
    err = results[1]["error"]
    assert (err["code"], err["temporary"]) == (421, True), results
    assert up.bodies() == []


@pytest.mark.parametrize(
    "auth_line", [b"250 SIZE 1000\r\n", b"250 AUTH LOGIN\r\n"], ids=["no-auth", "no-usable"]
)
def test_refusing_the_server_still_says_quit(upstream, msg, auth_line):
    """No AUTH offered, or none we may use: nothing is sent, and the session ends with
    QUIT over the sound connection (RFC 5321 section 4.1.1.10), not with a hang-up."""

    def script(s):
        s.send(b"220 scripted ESMTP\r\n")
        s.command()  # EHLO
        s.send(b"250-scripted\r\n" + auth_line)
        if s.command():
            s.send(b"221 bye\r\n")

    up = upstream(script)
    results, _ = drive(up.config(), [[USER, ["bob@example.org"], msg]])
    assert results[0]["open"]["stage"] == "auth", results
    up.wait_ended()
    assert [s.commands for s in up.sessions] == [[b"EHLO", b"QUIT"]]
