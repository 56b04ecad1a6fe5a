"""The LAN SMTP server, driven over loopback while the firmware runs under MicroPython."""

import os
import smtplib
import socket
import threading
import time
from pathlib import Path

import pytest
from relayproc import R


def ehlo(c):
    greeting = c.reply()
    assert greeting.startswith(b"220 relaybox.test ESMTP"), greeting
    r = c.cmd("EHLO dev.lan")
    assert r.startswith(b"250-relaybox.test"), r
    return r


def test_ehlo_advertises_extensions(relay):
    c = relay.connect()
    r = ehlo(c)
    lines = r.decode().split("\r\n")
    assert "250-SIZE 10485760" in lines, r
    assert "250-PIPELINING" in lines, r
    assert "250-8BITMIME" in lines, r
    assert "250-ENHANCEDSTATUSCODES" in lines, r
    assert c.cmd("QUIT") == R["CLOSING"]
    assert c.closed()


def test_message_is_spooled_with_added_headers(relay):
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        refused = s.sendmail(
            "printer@lan", ["alice@example.net"], b"Subject: toner low\r\n\r\nhi\r\n"
        )
    assert refused == {}
    (id,) = relay.queued()
    env, body = relay.message(id)
    assert env[0] == "RBX1"
    assert "F printer@lan" in env and "T alice@example.net" in env and "P 127.0.0.1" in env
    head, _, text = body.partition(b"\r\n\r\n")
    fields = head.split(b"\r\n")
    assert fields[0].startswith(b"Received: from dev") or fields[0].startswith(b"Received: from ")
    assert b"by relaybox.test (relaybox) with ESMTP id " + id.encode() in head
    assert sum(1 for f in fields if f.startswith(b"Date: ")) == 1, head
    assert b"Message-ID: <%s@relaybox.test>" % id.encode() in fields, head
    assert text == b"hi\r\n"
    relay.wait_log(r"id=%s from=<printer@lan> rcpt=1 size=\d+ peer=127.0.0.1 result=queued" % id)


def test_existing_date_and_message_id_are_kept(relay):
    msg = (
        b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <abc@cam>\r\n"
        b"Subject: s\r\n\r\nbody\r\n"
    )
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        s.sendmail("cam@lan", ["a@example.net"], msg)
    (id,) = relay.queued()
    _, body = relay.message(id)
    assert body.count(b"\r\nDate: ") == 1 and b"Date: Tue, 01 Dec 2026 10:00:00 +0000" in body
    assert body.count(b"Message-ID: ") == 1 and b"Message-ID: <abc@cam>" in body


def test_headerless_message_gets_a_header_section(relay):
    c = relay.connect()
    ehlo(c)
    for line in ("MAIL FROM:<>", "RCPT TO:<a@example.net>"):
        assert c.cmd(line)[:3] == b"250"
    assert c.cmd("DATA") == R["START_DATA"]
    assert c.cmd(b"just a body line\r\n.")[:3] == b"250"
    (id,) = relay.queued()
    env, body = relay.message(id)
    assert "F " in env  # the null sender is kept as empty
    head, sep, text = body.partition(b"\r\n\r\n")
    assert sep and text == b"just a body line\r\n", body
    assert b"\r\nDate: " in head and b"\r\nMessage-ID: " in head


def test_dot_unstuffing(relay):
    c = relay.connect()
    ehlo(c)
    c.cmd("MAIL FROM:<a@lan>")
    c.cmd("RCPT TO:<b@example.net>")
    assert c.cmd("DATA") == R["START_DATA"]
    assert c.cmd(b"Subject: x\r\n\r\n..leading dot\r\n...\r\n.")[:3] == b"250"
    (id,) = relay.queued()
    _, body = relay.message(id)
    assert body.endswith(b"\r\n\r\n.leading dot\r\n..\r\n"), body


@pytest.mark.parametrize(
    "smuggle",
    [b"\n.\n", b"\r\n.\n", b"\n.\r\n"],
    ids=["LF.LF", "CRLF.LF", "LF.CRLF"],
)
def test_only_crlf_dot_crlf_ends_data(relay, smuggle):
    c = relay.connect()
    ehlo(c)
    c.cmd("MAIL FROM:<a@lan>")
    c.cmd("RCPT TO:<b@example.net>")
    assert c.cmd("DATA") == R["START_DATA"]
    c.send(b"Subject: x\r\n\r\nfirst" + smuggle + b"MAIL FROM:<evil@lan>\r\nRCPT TO:<x@y.z>\r\n")
    c.send(b"DATA\r\nsecond\r\n.\r\n")
    r = c.reply()
    assert r.startswith(b"250 2.0.0 Queued as"), r
    assert c.cmd("QUIT") == R["CLOSING"]
    (id,) = relay.queued()
    _, body = relay.message(id)
    # The smuggled commands stayed message text, with line ends normalised to CRLF.
    assert b"MAIL FROM:<evil@lan>\r\nRCPT TO:<x@y.z>\r\nDATA\r\nsecond\r\n" in body, body
    assert b"\n" not in body.replace(b"\r\n", b"")


def test_pipelined_transaction(relay):
    c = relay.connect()
    ehlo(c)
    c.send(
        "MAIL FROM:<a@lan>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<bad>\r\n"
        "RCPT TO:<c@example.net>\r\nDATA\r\n"
    )
    assert c.reply() == R["SENDER_OK"]
    assert c.reply() == R["RCPT_OK"]
    assert c.reply() == R["BAD_RCPT"]
    assert c.reply() == R["RCPT_OK"]
    assert c.reply() == R["START_DATA"]
    c.send("Subject: p\r\n\r\nx\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n")
    assert c.reply().startswith(b"250 2.0.0 Queued as ")
    assert c.reply() == R["OK"]
    assert c.reply() == R["OK"]
    assert c.reply() == R["CLOSING"]
    (id,) = relay.queued()
    env, _ = relay.message(id)
    assert [e for e in env if e.startswith("T ")] == ["T b@example.net", "T c@example.net"]


@pytest.mark.parametrize(
    "commands, expected",
    [
        (["MAIL FROM:<a@lan>"], "NEED_HELO"),
        (["EHLO x", "RCPT TO:<b@example.net>"], "NEED_MAIL"),
        (["EHLO x", "DATA"], "NEED_MAIL"),
        (["EHLO x", "MAIL FROM:<a@lan>", "DATA"], "NEED_RCPT"),
        (["EHLO x", "MAIL FROM:<a@lan>", "MAIL FROM:<a@lan>"], "NESTED_MAIL"),
        (["EHLO x", "MAIL FROM:a@lan"], "BAD_SENDER"),
        (["EHLO x", "MAIL FROM:<a@>"], "BAD_SENDER"),
        (["EHLO x", "MAIL FROM:<a@lan>", "RCPT TO:<nobody>"], "BAD_RCPT"),
        (["EHLO x", "MAIL FROM:<a@lan> SMTPUTF8"], "PARAM_UNKNOWN"),
        (["EHLO x", "MAIL FROM:<a@lan>", "RCPT TO:<b@c.d> NOTIFY=NEVER"], "PARAM_UNKNOWN"),
        (["EHLO x", "MAIL FROM:<a@lan> SIZE=10485761"], "SIZE_EXCEEDED"),
        (["EHLO x", "MAIL FROM:<a@lan>", "RCPT TO:<b@c.d>", "DATA now"], "NO_DATA_ARGS"),
        (["EHLO"], "ARGS"),
        (["HELO"], "ARGS"),
        (["FOO bar"], "SYNTAX"),
        ([""], "SYNTAX"),
        (["VRFY"], "ARGS"),
        (["VRFY alice"], "VRFY"),
        (["EXPN staff"], "NOT_IMPLEMENTED"),
        (["HELP"], "HELP"),
        (["NOOP"], "OK"),
        (["RSET"], "OK"),
        (["EHLO x", "MAIL FROM:<a@lan> SIZE=1000 BODY=8BITMIME"], "SENDER_OK"),
        (["EHLO x", "MAIL FROM:<@relay.lan:a@lan>"], "SENDER_OK"),
        (["EHLO x", "MAIL FROM:<a@lan>", "RCPT TO:<Postmaster>"], "RCPT_OK"),
        (["EHLO " + "h" * 256], "ARGS"),
        (["HELO " + "h" * 256], "ARGS"),
        (["HELO " + "h" * 255], None),
        (["EHLO x", "MAIL FROM:<a@lan> SIZE=abc"], "ARGS"),
        (["EHLO x", "MAIL FROM:<a@lan> SIZE="], "ARGS"),
        (["EHLO x", "MAIL FROM:<a@lan> BODY=BINARYMIME"], "ARGS"),
        (["EHLO x", "MAIL FROM:<@relay.lan:>"], "BAD_SENDER"),
        (["EHLO x", 'MAIL FROM:<"a b"@lan>'], "SENDER_OK"),
        (["EHLO x", 'MAIL FROM:<"a\\"b"@lan>'], "SENDER_OK"),
        (["EHLO x", "MAIL FROM:<a@lan>", 'RCPT TO:<"x>y"@example.net>'], "RCPT_OK"),
        (["EHLO x", 'MAIL FROM:<"a"b@lan>'], "BAD_SENDER"),
        (["EHLO x", 'MAIL FROM:<"ab@lan>'], "BAD_SENDER"),
        (["EHLO x", "MAIL FROM:<a b@lan>"], "BAD_SENDER"),
        (["RSET now"], "ARGS"),
        (["QUIT now"], "ARGS"),
    ],
)
def test_reply_codes(relay, commands, expected):
    c = relay.connect()
    c.reply()
    for line in commands[:-1]:
        assert c.cmd(line)[:1] == b"2", line
    r = c.cmd(commands[-1])
    if expected is None:
        assert r.startswith(b"250 "), r
        return
    want = R[expected]
    assert r == (want if isinstance(want, bytes) else want.encode()), (commands, r)


def test_too_many_recipients(relay_factory):
    relay = relay_factory(max_recipients=3)
    c = relay.connect()
    ehlo(c)
    c.cmd("MAIL FROM:<a@lan>")
    for i in range(3):
        assert c.cmd(f"RCPT TO:<r{i}@example.net>") == R["RCPT_OK"]
    assert c.cmd("RCPT TO:<r9@example.net>") == R["TOO_MANY_RCPTS"]
    assert c.cmd("DATA") == R["START_DATA"]
    assert c.cmd(b"Subject: x\r\n\r\ny\r\n.")[:3] == b"250"
    env, _ = relay.message(relay.queued()[0])
    assert len([e for e in env if e.startswith("T ")]) == 3


def test_size_exceeded_while_streaming(relay_factory):
    relay = relay_factory(max_message_bytes=4096)
    c = relay.connect()
    ehlo(c)
    c.cmd("MAIL FROM:<a@lan>")
    c.cmd("RCPT TO:<b@example.net>")
    assert c.cmd("DATA") == R["START_DATA"]
    c.send(b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n")
    c.send((b"y" * 78 + b"\r\n") * 100)
    assert c.cmd(b".") == R["SIZE_EXCEEDED"]
    # The session goes on and the next message fits.
    c.cmd("MAIL FROM:<a@lan>")
    c.cmd("RCPT TO:<b@example.net>")
    c.cmd("DATA")
    assert c.cmd(b"Subject: small\r\n\r\nok\r\n.")[:3] == b"250"
    assert len(relay.queued()) == 1
    assert list((relay.spool / "tmp").iterdir()) == []


def test_long_command_line(relay):
    c = relay.connect()
    c.reply()
    assert c.cmd("NOOP " + "x" * 993) == R["OK"]  # 1000 octets with CRLF
    assert c.cmd("NOOP " + "x" * 994) == R["LINE_TOO_LONG"]
    assert c.cmd("NOOP " + "x" * 100_000) == R["LINE_TOO_LONG"]
    assert c.cmd("NOOP") == R["OK"]


def test_long_data_line_refuses_message(relay):
    c = relay.connect()
    ehlo(c)
    c.cmd("MAIL FROM:<a@lan>")
    c.cmd("RCPT TO:<b@example.net>")
    c.cmd("DATA")
    c.send(b"Subject: x\r\n\r\n" + b"z" * 998 + b"\r\n")
    c.send(b"z" * 5000 + b"\r\n")
    assert c.cmd(b".") == R["DATA_LINE_TOO_LONG"]
    assert relay.queued() == []
    assert c.cmd("NOOP") == R["OK"]


def test_idle_timeout(relay_factory):
    relay = relay_factory(idle_timeout=1)
    c = relay.connect()
    c.reply()
    assert c.cmd("EHLO x")[:3] == b"250"
    assert c.reply() == R["IDLE_TIMEOUT"]
    assert c.closed()
    relay.wait_log("idle timeout")


def test_trickling_client_is_timed_out_per_line(relay_factory):
    """A byte every half second never completes a command: the idle timeout counts from
    the last whole line, so such a client cannot keep one of the few sessions."""
    relay = relay_factory(idle_timeout=2)
    c = relay.connect()
    c.reply()
    c.sock.settimeout(0.5)
    started = time.monotonic()
    got = b""
    for byte in b"NOOP NOOP NOOP NOOP NOOP NOOP":
        try:
            c.sock.sendall(bytes([byte]))
            got += c.sock.recv(100)
            break
        except socket.timeout:
            continue
        except OSError:
            break
    assert got.startswith(R["IDLE_TIMEOUT"][:9]), got
    assert time.monotonic() - started < 6


def test_idle_timeout_during_data_keeps_nothing(relay_factory):
    relay = relay_factory(idle_timeout=1)
    c = relay.connect()
    ehlo(c)
    c.cmd("MAIL FROM:<a@lan>")
    c.cmd("RCPT TO:<b@example.net>")
    c.cmd("DATA")
    c.send(b"Subject: half\r\n\r\nhalf a mess")
    assert c.reply() == R["IDLE_TIMEOUT"]
    assert relay.queued() == [] and list((relay.spool / "tmp").iterdir()) == []


def test_error_budget_closes_session(relay_factory):
    relay = relay_factory(max_errors=3)
    c = relay.connect()
    c.reply()
    assert c.cmd("BOGUS") == R["SYNTAX"]
    assert c.cmd("MAIL FROM:<a@lan>") == R["NEED_HELO"]
    assert c.cmd("BOGUS") == R["TOO_MANY_ERRORS"]
    assert c.closed()


def test_binary_junk_and_early_talker(relay):
    c = relay.connect()
    # Talk before the greeting, then send bytes that are not text at all.
    c.send(b"EHLO early\r\n")
    assert c.reply().startswith(b"220 ")
    assert c.reply().startswith(b"250-")
    junk = bytes(range(256)) * 4
    c.send(junk + b"\r\n\x00\xff\xfe\r\n")
    replies = [c.reply(), c.reply()]
    assert all(r.startswith(b"500 5.5.2") for r in replies), replies
    c.close()
    # The relay still serves the next client.
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        assert s.noop()[0] == 250


def test_huge_line_without_newline_does_not_exhaust_memory(relay_factory):
    relay = relay_factory(heap="128K")
    c = relay.connect()
    c.reply()
    chunk = b"A" * 65536
    for _ in range(64):  # 4 MiB without a line end
        c.send(chunk)
    assert c.cmd(b"") == R["LINE_TOO_LONG"]
    assert c.cmd("NOOP") == R["OK"]


def test_concurrent_clients(relay_factory):
    relay = relay_factory(max_clients=4)
    errors = []

    def client(n):
        try:
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as s:
                for i in range(5):
                    s.sendmail(f"dev{n}@lan", ["a@example.net"], f"Subject: {n}-{i}\r\n\r\nx\r\n")
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(relay.queued()) == 20


def test_too_many_clients_get_421(relay_factory):
    relay = relay_factory(max_clients=2)
    held = [relay.connect(), relay.connect()]
    for c in held:
        assert c.reply().startswith(b"220 ")
    extra = relay.connect()
    assert extra.reply() == R["TOO_BUSY"]
    assert extra.closed()
    held[0].cmd("QUIT")
    held[0].close()
    relay.wait_log("peer=127.0.0.1 refused: 2 clients already")
    with smtplib.SMTP("127.0.0.1", relay.port) as s:
        assert s.noop()[0] == 250


def test_client_outside_allow_list_is_refused(relay_factory):
    relay = relay_factory(allow=["10.0.0.0/8"])
    c = relay.connect()
    assert c.reply() == R["ACCESS_DENIED"].format("127.0.0.1").encode()
    # RFC 5321 section 3.1: after a 554 greeting the server waits for QUIT, answering 503.
    assert c.cmd("EHLO dev.lan") == R["REFUSED_CLIENT"]
    assert c.cmd("MAIL FROM:<a@lan>") == R["REFUSED_CLIENT"]
    assert c.cmd("QUIT") == R["CLOSING"]
    assert c.closed()
    assert relay.queued() == []


def test_refused_client_that_never_quits_is_closed(relay_factory):
    relay = relay_factory(allow=["10.0.0.0/8"], max_errors=3)
    c = relay.connect()
    c.reply()
    assert c.cmd("HELO x") == R["REFUSED_CLIENT"]
    assert c.cmd("RCPT TO:<b@example.net>") == R["REFUSED_CLIENT"]
    assert c.cmd("DATA") == R["TOO_MANY_ERRORS"]
    assert c.closed()


def test_pipelining_client_that_never_reads(relay_factory):
    """Commands sent without ever reading a reply must not pile replies up in RAM."""
    relay = relay_factory(heap="128K", idle_timeout=3)
    flood = relay.connect()
    flood.sock.settimeout(1)
    sent = 0
    try:
        while sent < 64 * 1024 * 1024:
            flood.sock.sendall(b"NOOP\r\n" * 10000)
            sent += 60000
    except OSError:
        pass  # the relay stopped reading once its replies backed up: that is the point
    assert sent > 0
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as s:
        assert s.noop()[0] == 250
    relay.wait_log("idle timeout", timeout=15)
    assert relay.proc.poll() is None
    assert "MemoryError" not in relay.log()


def _sockets(pid):
    n = 0
    for f in Path(f"/proc/{pid}/fd").iterdir():
        try:
            n += os.readlink(f).startswith("socket:")
        except FileNotFoundError:  # closed while we looked
            pass
    return n


def test_idle_clients_that_never_read_do_not_keep_their_sockets(relay_factory):
    """The 421 farewell to a client that reads nothing cannot be delivered: the socket is
    closed all the same, so such clients cannot use up sockets or memory."""
    # Four sessions at once need about 136K on this 64-bit port (README, Memory).
    relay = relay_factory(heap="160K", idle_timeout=2)
    base = _sockets(relay.proc.pid)
    floods = []
    for _ in range(6):
        c = relay.connect()
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.sock.settimeout(0.5)
        try:
            for _ in range(400):
                c.sock.sendall(b"NOOP\r\n" * 2000)
        except OSError:
            pass  # blocked: the relay stopped reading
        floods.append(c)  # kept open, never read
    deadline = time.monotonic() + 15
    while _sockets(relay.proc.pid) > base and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _sockets(relay.proc.pid) == base, relay.log()

    def ended():
        # Each one timed out, or found max_clients sessions already there (a slow run).
        log = relay.log()
        return log.count("idle timeout") + log.count("clients already")

    while ended() < 6 and time.monotonic() < deadline + 5:
        time.sleep(0.1)  # the log line may reach us after the socket closed
    assert ended() == 6 and relay.log().count("idle timeout") >= 4, relay.log()
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as s:
        assert s.noop()[0] == 250
    assert "MemoryError" not in relay.log()


def test_header_section_kept_whole(relay):
    """Odd but valid fields stay in the header; the Received: line is well formed for any
    number of recipients; nothing the device wrote is taken for a continuation of ours."""
    c = relay.connect()
    c.reply()
    c.cmd("EHLO dev.lan")
    c.cmd("MAIL FROM:<a@lan>")
    c.cmd("RCPT TO:<b@example.net>")
    c.cmd("RCPT TO:<c@example.net>")
    assert c.cmd("DATA") == R["START_DATA"]
    long_name = b"X-" + b"a" * 90
    line998 = b"z" * 998
    c.send(long_name + b": v\r\nMessage-ID : <dev.1@lan>\r\nSubject: s\r\n\r\n")
    assert c.cmd(line998 + b"\r\n.").startswith(b"250 2.0.0 Queued as ")
    (id,) = relay.queued()
    _, msg = relay.message(id)
    head, body = msg.split(b"\r\n\r\n", 1)
    fields = head.split(b"\r\n")
    assert fields[0].startswith(b"Received: from dev.lan ([127.0.0.1])")
    assert all(f[:1] in (b"\t", b" ") or b":" in f for f in fields), fields
    assert fields[1].endswith(b";") and fields[2].startswith(b"\t"), fields  # "; date"
    assert long_name + b": v" in fields and b"Message-ID : <dev.1@lan>" in fields
    assert sum(f.lower().startswith(b"message-id") for f in fields) == 1, fields
    assert body == line998 + b"\r\n"


def test_message_starting_with_white_space_gets_its_own_body(relay):
    c = relay.connect()
    c.reply()
    for cmd in ("EHLO dev.lan", "MAIL FROM:<a@lan>", "RCPT TO:<b@example.net>", "DATA"):
        c.cmd(cmd)
    assert c.cmd(b"   indented first line\r\n.").startswith(b"250 ")
    (id,) = relay.queued()
    _, msg = relay.message(id)
    head, body = msg.split(b"\r\n\r\n", 1)
    assert body == b"   indented first line\r\n", msg
    assert b"indented" not in head


def test_data_line_of_999_octets_is_refused(relay):
    c = relay.connect()
    c.reply()
    for cmd in ("EHLO dev.lan", "MAIL FROM:<a@lan>", "RCPT TO:<b@example.net>", "DATA"):
        c.cmd(cmd)
    assert c.cmd(b"Subject: s\r\n\r\n" + b"x" * 999 + b"\r\n.") == R["DATA_LINE_TOO_LONG"]
    # Dot-stuffed, 998 octets of text are 999 on the wire: accepted.
    for cmd in ("MAIL FROM:<a@lan>", "RCPT TO:<b@example.net>", "DATA"):
        c.cmd(cmd)
    assert c.cmd(b"Subject: s\r\n\r\n." + b"." * 998 + b"\r\n.").startswith(b"250 ")
    (id,) = relay.queued()
    assert relay.message(id)[1].endswith(b"\r\n\r\n" + b"." * 998 + b"\r\n")


def test_refusals_do_not_use_up_the_error_budget(relay_factory):
    """A device told "too big" or "too many recipients" many times is not a broken client."""
    relay = relay_factory(max_errors=2, max_recipients=1)
    c = relay.connect()
    c.reply()
    c.cmd("EHLO dev.lan")
    for _ in range(5):
        assert c.cmd("MAIL FROM:<a@lan> SIZE=99999999") == R["SIZE_EXCEEDED"]
    assert c.cmd("MAIL FROM:<a@lan>") == R["SENDER_OK"]
    assert c.cmd("RCPT TO:<b@example.net>") == R["RCPT_OK"]
    for _ in range(5):
        assert c.cmd("RCPT TO:<c@example.net>") == R["TOO_MANY_RCPTS"]
    assert c.cmd("NOOP") == R["OK"]


def test_bare_cr_is_stored_as_a_line_end(relay):
    """CR, dot, CR ends the data for some servers: bare CRs are stored as line ends, and
    the dot is then stuffed on the way out like any line that starts with a dot."""
    c = relay.connect()
    c.reply()
    for cmd in ("EHLO dev.lan", "MAIL FROM:<a@lan>", "RCPT TO:<b@example.net>", "DATA"):
        c.cmd(cmd)
    c.send(b"Subject: s\r\n\r\nx\r.\rMAIL FROM:<e@v>\r\n..y\r\r\n")
    assert c.cmd(b".").startswith(b"250 ")
    (id,) = relay.queued()
    body = relay.message(id)[1].split(b"\r\n\r\n", 1)[1]
    assert body == b"x\r\n.\r\nMAIL FROM:<e@v>\r\n.y\r\n\r\n", body
    assert b"\r" not in body.replace(b"\r\n", b"")


BAD_MAILBOXES = [
    "a@b@c.com",
    "x@lan,y@lan",
    "a(comment)@lan",
    "a@[]",
    "a@[1.2.3]",
    "a@[IPv6:zz::1]",
    "a@[tag:x]",
    ".a@lan",
    "a.@lan",
    "a..b@lan",
    "a\\@b@lan",
    "a@-bad-.com",
    "a@b_c.com",
    "a@lan.",
    "a@" + "l" * 64 + ".lan",
    '"a\\"@lan',
    '"a"b"@lan',
]
GOOD_MAILBOXES = [
    "a@lan",
    "first.last+tag@mail.example.net",
    "!#$%&'*+-/=?^_`{|}~@x.y",
    "a@[192.168.1.20]",
    "a@[IPv6:fe80::1]",
    "a@[IPv6:::ffff:10.0.0.1]",
    '"a b"@lan',
    '"a\\"b"@lan',
    "a@" + "l" * 63 + ".lan",
    "a@0-9.lan",
]


@pytest.mark.parametrize("addr", BAD_MAILBOXES)
def test_invalid_mailbox_is_refused(relay, addr):
    c = relay.connect()
    ehlo(c)
    assert c.cmd(f"MAIL FROM:<{addr}>") == R["BAD_SENDER"], addr
    assert c.cmd("MAIL FROM:<a@lan>") == R["SENDER_OK"]
    assert c.cmd(f"RCPT TO:<{addr}>") == R["BAD_RCPT"], addr


def test_valid_mailboxes_are_taken(relay):
    c = relay.connect()
    ehlo(c)
    for addr in GOOD_MAILBOXES:
        assert c.cmd(f"MAIL FROM:<{addr}>") == R["SENDER_OK"], addr
        assert c.cmd(f"RCPT TO:<{addr}>") == R["RCPT_OK"], addr
        assert c.cmd("RSET") == R["OK"]
    assert c.cmd("MAIL FROM:<>") == R["SENDER_OK"]
    assert c.cmd("RCPT TO:<postmaster>") == R["RCPT_OK"]


def test_non_ascii_address_gets_553(relay_factory):
    relay = relay_factory(max_errors=2)
    c = relay.connect()
    ehlo(c)
    # A refusal, not a protocol error: the budget of 2 is not used up.
    for _ in range(3):
        assert c.cmd("MAIL FROM:<jürgen@lan>".encode()) == R["NON_ASCII_ADDRESS"]
    assert c.cmd("MAIL FROM:<a@lan>") == R["SENDER_OK"]
    assert c.cmd("RCPT TO:<b@bücher.example>".encode()) == R["NON_ASCII_ADDRESS"]
    assert c.cmd(b"RCPT TO:<b@\xfc.example>") == R["NON_ASCII_ADDRESS"]
    assert c.cmd("NOOP ü".encode()) == R["SYNTAX"]
    assert c.cmd(b"MAIL FROM:<a\x01\xfc@lan>") == R["TOO_MANY_ERRORS"]


@pytest.mark.parametrize(
    "arg", ["x;y(z", "x\ty", "a(b", "<dev>", 'd"q', "a\\b", "[1.2.3.4", "[bogus]", "x,y"]
)
def test_helo_argument_that_would_break_received_is_refused(relay, arg):
    c = relay.connect()
    c.reply()
    assert c.cmd("HELO " + arg) == R["ARGS"], arg
    assert c.cmd("EHLO " + arg) == R["ARGS"], arg
    assert c.cmd("MAIL FROM:<a@lan>") == R["NEED_HELO"]


@pytest.mark.parametrize("verb, proto", [("HELO", b"SMTP"), ("EHLO", b"ESMTP")])
@pytest.mark.parametrize("name", ["cam_01", "192.168.1.7", "[192.168.1.7]", "[IPv6:fe80::1]"])
def test_helo_names_devices_send_are_taken(relay, verb, proto, name):
    c = relay.connect()
    c.reply()
    assert c.cmd(f"{verb} {name}")[:3] == b"250"
    for line in ("MAIL FROM:<a@lan>", "RCPT TO:<b@example.net>", "DATA"):
        c.cmd(line)
    assert c.cmd(b"Subject: s\r\n\r\nx\r\n.").startswith(b"250 2.0.0 Queued as ")
    (id,) = relay.queued()
    _, msg = relay.message(id)
    want = b"Received: from %s ([127.0.0.1])\r\n\tby relaybox.test (relaybox) with %s id %s"
    assert msg.startswith(want % (name.encode(), proto, id.encode())), msg


def test_duplicate_size_parameter_is_refused(relay):
    c = relay.connect()
    ehlo(c)
    assert c.cmd("MAIL FROM:<a@lan> SIZE=1 SIZE=2") == R["ARGS"]
    assert c.cmd("MAIL FROM:<a@lan> BODY=7BIT body=8BITMIME") == R["ARGS"]
    assert c.cmd("MAIL FROM:<a@lan> SIZE=1 BODY=7BIT") == R["SENDER_OK"]


def test_duplicate_recipient_is_stored_once(relay_factory):
    relay = relay_factory(max_recipients=2)
    c = relay.connect()
    ehlo(c)
    c.cmd("MAIL FROM:<a@lan>")
    for _ in range(3):
        assert c.cmd("RCPT TO:<b@example.net>") == R["RCPT_OK"]
    assert c.cmd("RCPT TO:<c@example.net>") == R["RCPT_OK"]
    assert c.cmd("DATA") == R["START_DATA"]
    assert c.cmd(b"Subject: s\r\n\r\nx\r\n.").startswith(b"250 ")
    (id,) = relay.queued()
    env, _ = relay.message(id)
    assert [e for e in env if e.startswith("T ")] == ["T b@example.net", "T c@example.net"]


def test_nul_in_data_refuses_the_message(relay):
    """RFC 5322 text has no NUL octet: the device hears 554 now, not a bounce later."""
    c = relay.connect()
    ehlo(c)
    for line in ("MAIL FROM:<a@lan>", "RCPT TO:<b@example.net>", "DATA"):
        c.cmd(line)
    c.send(b"Subject: s\r\n\r\nbinary\x00junk\r\nmore\r\n")
    assert c.cmd(b".") == R["NUL_IN_DATA"]
    assert relay.queued() == [] and list((relay.spool / "tmp").iterdir()) == []
    assert c.cmd("NOOP") == R["OK"]


def test_stop_says_421_to_every_client(relay):
    """RFC 5321 section 3.8: on shutdown each session gets 421; a message still in DATA
    is dropped whole, never half queued."""
    idle = relay.connect()
    idle.reply()
    busy = relay.connect()
    ehlo(busy)
    for line in ("MAIL FROM:<a@lan>", "RCPT TO:<b@example.net>", "DATA"):
        busy.cmd(line)
    busy.send(b"Subject: half\r\n\r\nsome of it")
    time.sleep(0.3)
    t0 = time.monotonic()
    assert relay.stop() == 0, relay.log()
    assert time.monotonic() - t0 < 5
    assert idle.reply() == R["SHUTTING_DOWN"]
    assert busy.reply() == R["SHUTTING_DOWN"]
    assert idle.closed() and busy.closed()
    assert relay.queued() == [] and list((relay.spool / "tmp").iterdir()) == []
    relay.wait_log("relay: stopped")


def test_stop_is_bounded_when_a_client_reads_nothing(relay):
    deaf = relay.connect()
    deaf.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    deaf.sock.settimeout(0.5)
    try:
        for _ in range(400):
            deaf.sock.sendall(b"NOOP\r\n" * 2000)
    except OSError:
        pass  # blocked: the relay's replies back up
    t0 = time.monotonic()
    assert relay.stop() == 0, relay.log()
    assert time.monotonic() - t0 < 6, relay.log()


def test_heap_full_of_sessions_refuses_one_client_not_the_server(relay_factory):
    """Four clients at once on a heap that holds fewer: the ones that do not fit hear
    421 4.3.2, and the relay keeps accepting once they have gone."""
    relay = relay_factory(heap="116K")
    socks = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        socks.append(s)
    for s in socks:
        try:
            s.sendall(
                b"EHLO x\r\nMAIL FROM:<a@lan>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
                + b"x" * 900
                + b"\r\n"
            )
        except OSError:
            pass
    time.sleep(2)
    for s in socks:
        s.close()
    assert "out of memory" in relay.log(), relay.log()
    deadline = time.monotonic() + 10
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=5) as c:
                assert c.noop()[0] == 250
            break
        except (OSError, smtplib.SMTPException) as e:
            assert time.monotonic() < deadline, "the relay stopped accepting: %r\n%s" % (
                e,
                relay.log(),
            )
            time.sleep(0.5)
    assert "Task exception" not in relay.log(), relay.log()
