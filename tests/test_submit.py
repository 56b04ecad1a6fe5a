"""The outbound client (submit.Upstream) under MicroPython against a real TLS upstream."""

import json
import socket
import threading
import time

import mpdriver
import pytest
from upstream_server import PASSWORD, USER, Certs, Upstream

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH")

DRIVER = """
import asyncio, json
from relaybox import log, submit

CFG = json.loads(%r)
MSGS = json.loads(%r)


def err(e):
    return {"stage": e.stage, "code": e.code, "text": e.text, "temporary": e.temporary}


async def main():
    up = submit.Upstream(CFG, "relay.lan", log)
    try:
        await up.open()
    except submit.SubmitError as e:
        print("RESULT", json.dumps({"open": err(e)}))
        return
    print("RESULT", json.dumps({"open": "ok", "mechanism": up.mechanism}))
    for sender, rcpts, path in MSGS:
        if not up.alive:
            try:
                await up.open()
            except submit.SubmitError as e:
                print("RESULT", json.dumps({"open": err(e)}))
                return
        with open(path, "rb") as src:
            try:
                out = {"sent": await up.send(sender, rcpts, src, SIZE(path))}
            except submit.SubmitError as e:
                out = {"error": err(e), "alive": up.alive}
        print("RESULT", json.dumps(out))
        if up.alive:
            try:
                await up.reset()
            except submit.SubmitError as e:
                print("RESULT", json.dumps({"reset": err(e)}))
    await up.close()


def SIZE(path):
    import os
    return os.stat(path)[6]


asyncio.run(main())
"""

BODY = (
    b"From: printer@lan\r\nTo: bob@example.org\r\nSubject: test\r\n\r\n"
    b"Hello.\r\n.leading dot\r\n.\r\n..two\r\nlast line\r\n"
)


def drive(cfg, msgs, timeout=120):
    """Run the driver; return (results, full stdout)."""
    result = mpdriver.run(DRIVER % (json.dumps(cfg), json.dumps(msgs)), timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    results = [
        json.loads(line[7:]) for line in result.stdout.splitlines() if line.startswith("RESULT ")
    ]
    # Credentials never reach the log, neither the password nor the CRAM-MD5 answer.
    assert PASSWORD not in result.stdout + result.stderr
    return results, result.stdout


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture
def message(tmp_path):
    def write(body=BODY, name="m1"):
        path = tmp_path / name
        path.write_bytes(body)
        return str(path)

    return write


def one(path, sender="alice@example.net", rcpts=("bob@example.org",)):
    return [sender, list(rcpts), path]


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_delivers_with_cram_md5(certs, message, mode):
    with Upstream(certs, mode) as up:
        results, _ = drive(up.config(), [one(message())])
    assert results[0] == {"open": "ok", "mechanism": "CRAM-MD5"}
    assert results[1] == {"sent": [["bob@example.org", 250, "OK"]]}
    (got,) = up.messages
    assert got.data == BODY, got.data
    assert (got.mail_from, got.rcpts) == ("alice@example.net", ["bob@example.org"])
    assert (got.login, got.mechanism) == (USER, "CRAM-MD5")
    assert got.auth_param == "AUTH=<>"
    assert "SIZE=%d" % len(BODY) in got.options
    assert up.handler.auth_attempts == [("CRAM-MD5", USER, True)]


def test_ca_file_in_der(certs, message):
    with Upstream(certs, "starttls") as up:
        results, _ = drive(up.config(ca=certs.ca_der), [one(message())])
    assert results[1]["sent"][0][1] == 250
    assert len(up.messages) == 1


def test_wrong_ca_sends_nothing(certs, message, tmp_path):
    other = Certs(str(tmp_path))
    for mode in ("starttls", "implicit"):
        with Upstream(certs, mode) as up:
            results, _ = drive(up.config(ca=other.ca_pem), [one(message())])
        (res,) = results
        assert res["open"]["stage"] == "tls", res
        assert res["open"]["code"] == 0 and res["open"]["temporary"] is True
        assert "not correctly signed" in res["open"]["text"], res
        assert up.handler.auth_attempts == [] and up.messages == []


def test_wrong_host_name_sends_nothing(tmp_path, message):
    certs = Certs(str(tmp_path), names=("mail.example.net",))
    with Upstream(certs, "implicit") as up:
        results, _ = drive(up.config(host="localhost"), [one(message())])
    (res,) = results
    assert res["open"]["stage"] == "tls", res
    assert "Common Name" in res["open"]["text"] or "CN" in res["open"]["text"], res
    assert up.handler.auth_attempts == [] and up.messages == []


def test_ip_address_host_is_verified(certs, message):
    with Upstream(certs, "starttls") as up:
        results, _ = drive(up.config(host="127.0.0.1"), [one(message())])
    assert results[1]["sent"][0][1] == 250


def test_no_starttls_offered_sends_no_credentials(certs, message):
    with Upstream(certs, "plain") as up:
        results, _ = drive(up.config(), [one(message())])
    (res,) = results
    assert res["open"] == {
        "stage": "tls",
        "code": 0,
        "text": "server does not offer STARTTLS; not sending",
        "temporary": True,
    }
    assert up.handler.auth_attempts == [] and up.messages == []


def test_wrong_password_is_535_and_permanent(certs, message):
    with Upstream(certs, "starttls") as up:
        results, out = drive(up.config(password="wrong"), [one(message())])
    (res,) = results
    assert res["open"]["stage"] == "auth" and res["open"]["code"] == 535, res
    assert res["open"]["temporary"] is False
    assert up.handler.auth_attempts == [("CRAM-MD5", USER, False)]
    assert "wrong" not in out


def test_plain_only_when_allowed(certs, message):
    with Upstream(certs, "starttls", mechanisms=("PLAIN", "LOGIN")) as up:
        results, _ = drive(up.config(), [one(message())])
        (res,) = results
        assert res["open"]["stage"] == "auth" and res["open"]["temporary"] is False
        assert "no allowed mechanism" in res["open"]["text"]
        assert up.handler.auth_attempts == []
        results, _ = drive(up.config(auth=["CRAM-MD5", "LOGIN"]), [one(message())])
        assert results[0] == {"open": "ok", "mechanism": "LOGIN"}
        results, _ = drive(up.config(auth=["PLAIN", "LOGIN"]), [one(message())])
        assert results[0] == {"open": "ok", "mechanism": "PLAIN"}
    assert [m.mechanism for m in up.messages] == ["LOGIN", "PLAIN"]


def test_cram_md5_preferred_over_plain(certs, message):
    with Upstream(certs, "starttls", mechanisms=("PLAIN", "LOGIN", "CRAM-MD5")) as up:
        results, _ = drive(up.config(auth=["PLAIN", "LOGIN", "CRAM-MD5"]), [one(message())])
    assert results[0]["mechanism"] == "CRAM-MD5"


def test_4xx_then_success_in_the_same_session(certs, message):
    plan = {"data": ["451 4.3.0 Try again later"]}
    with Upstream(certs, "starttls", plan=plan) as up:
        results, _ = drive(up.config(), [one(message()), one(message())])
    assert results[1] == {
        "error": {
            "stage": "data",
            "code": 451,
            "text": "4.3.0 Try again later",
            "temporary": True,
        },
        "alive": True,
    }
    assert results[2]["sent"][0][1] == 250
    assert len(up.messages) == 1 and len(up.handler.sessions) == 1


def test_5xx_on_data_and_on_mail_are_permanent(certs, message):
    plan = {"data": ["554 5.6.0 Message rejected"], "mail": ["553 5.7.1 Sender not owned"]}
    with Upstream(certs, "starttls", plan=plan) as up:
        results, _ = drive(up.config(), [one(message())] * 3)
    assert results[1]["error"] == {
        "stage": "mail",
        "code": 553,
        "text": "5.7.1 Sender not owned",
        "temporary": False,
    }
    assert results[2]["error"]["stage"] == "data" and results[2]["error"]["code"] == 554
    assert results[2]["error"]["temporary"] is False
    assert results[3]["sent"][0][1] == 250
    assert len(up.messages) == 1


def test_per_recipient_refusal(certs, message):
    plan = {"rcpt": {"nobody@example.org": "550 5.1.1 No such user"}}
    rcpts = ["bob@example.org", "nobody@example.org"]
    with Upstream(certs, "starttls", plan=plan) as up:
        results, _ = drive(
            up.config(), [one(message(), rcpts=rcpts), one(message(), rcpts=rcpts[1:])]
        )
    assert results[1] == {
        "sent": [["bob@example.org", 250, "OK"], ["nobody@example.org", 550, "5.1.1 No such user"]]
    }
    err = results[2]["error"]
    assert (err["stage"], err["code"], err["temporary"]) == ("rcpt", 550, False)
    assert [m.rcpts for m in up.messages] == [["bob@example.org"]]


@pytest.mark.parametrize("pipelining", [True, False])
def test_many_messages_in_one_session(certs, message, pipelining):
    msgs = [one(message(BODY + b"n=%d\r\n" % i, "m%d" % i)) for i in range(20)]
    with Upstream(certs, "starttls", plan={"pipelining": pipelining}) as up:
        t0 = time.monotonic()
        results, _ = drive(up.config(), msgs)
        elapsed = time.monotonic() - t0
    assert all(r["sent"][0][1] == 250 for r in results[1:]), results
    assert [m.data for m in up.messages] == [BODY + b"n=%d\r\n" % i for i in range(20)]
    assert len(up.handler.sessions) == 1 and up.handler.rsets == 20
    assert len(up.handler.auth_attempts) == 1
    pipelined = b"RCPT TO:<bob@example.org>\r\nDATA\r\n"
    assert all((a == pipelined) == pipelining for a in up.handler.after_mail), (
        up.handler.after_mail
    )
    print("20 messages in one session: %.2f s" % elapsed)


def test_server_gone_mid_data_then_reconnect(certs, message):
    big = BODY + b"x" * 998 + b"\r\n"
    big = big * 100
    with Upstream(certs, "starttls", plan={"drop_mid_data": 1}) as up:
        results, _ = drive(up.config(), [one(message(big)), one(message(big))])
    err = results[1]["error"]
    assert (err["stage"], err["code"], err["temporary"]) == ("data", 0, True), err
    # The reason names the error: the owner reads it in the log and in `queue`.
    assert err["text"] in (
        "[Errno 32] EPIPE",
        "[Errno 104] ECONNRESET",
        "connection closed by server",
    ), err
    assert results[1]["alive"] is False
    # The driver opened a new session for the second message.
    assert results[2]["sent"][0][1] == 250
    assert len(up.handler.sessions) == 2
    assert [m.data for m in up.messages] == [big]


def test_server_gone_after_final_dot(certs, message):
    with Upstream(certs, "implicit", plan={"drop_after_data": 1}) as up:
        results, _ = drive(up.config(), [one(message())])
    err = results[1]["error"]
    assert (err["stage"], err["code"], err["temporary"]) == ("data", 0, True), err
    assert up.messages == []


def test_message_without_final_crlf_and_dot_lines(certs, message):
    body = b"Subject: x\r\n\r\n.\r\n..\r\n.x\r\nend without newline"
    with Upstream(certs, "starttls") as up:
        drive(up.config(), [one(message(body))])
    assert up.messages[0].data == body + b"\r\n"


def test_silent_server_times_out(certs, message):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    cfg = Upstream(certs).config(port=listener.getsockname()[1], timeout=2)
    t0 = time.monotonic()
    results, _ = drive(cfg, [one(message())])
    elapsed = time.monotonic() - t0
    listener.close()
    assert results[0]["open"]["code"] == 0 and results[0]["open"]["temporary"] is True
    assert results[0]["open"]["stage"] == "connect" and "timeout" in results[0]["open"]["text"]
    assert 2 <= elapsed < 10


def test_connection_refused(certs, message):
    from upstream_server import free_port

    cfg = Upstream(certs).config(port=free_port())
    results, _ = drive(cfg, [one(message())])
    res = results[0]["open"]
    assert (res["stage"], res["code"], res["temporary"]) == ("connect", 0, True), res


def test_pem_bundle_with_several_certificates(certs, message, tmp_path):
    other = Certs(str(tmp_path))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(
        b"# provider bundle\n"
        + open(other.ca_pem, "rb").read()
        + b"\n"
        + open(certs.ca_pem, "rb").read().replace(b"\n", b"\r\n")
    )
    with Upstream(certs, "implicit") as up:
        results, _ = drive(up.config(ca=str(bundle)), [one(message())])
    assert results[1]["sent"][0][1] == 250


def test_missing_ca_file(certs, message, tmp_path):
    with Upstream(certs, "starttls") as up:
        results, _ = drive(up.config(ca=str(tmp_path / "nope.pem")), [one(message())])
    res = results[0]["open"]
    assert (res["stage"], res["code"]) == ("tls", 0), res
    assert res["text"].startswith("cannot read CA file "), res
    assert up.handler.sessions == set()


def test_bytes_injected_before_tls_are_discarded(certs, message):
    # A man in the middle appends a fake EHLO reply to the 220 for STARTTLS (the
    # CVE-2011-0411 class). The client must not read it as the reply to its new EHLO.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    seen = []

    def serve():
        conn, _ = listener.accept()
        f = conn.makefile("rb")
        conn.sendall(b"220 mitm.test ESMTP\r\n")
        seen.append(f.readline())
        conn.sendall(b"250-mitm.test\r\n250 STARTTLS\r\n")
        seen.append(f.readline())
        conn.sendall(b"220 go ahead\r\n250 FAKE-NO-AUTH\r\n")
        tls = certs.server_context().wrap_socket(conn, server_side=True)
        t = tls.makefile("rb")
        seen.append(t.readline())
        tls.sendall(b"250-mitm.test\r\n250 AUTH CRAM-MD5\r\n")
        seen.append(t.readline())
        tls.sendall(b"535 5.7.8 no\r\n")
        tls.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    cfg = Upstream(certs).config(port=listener.getsockname()[1])
    results, out = drive(cfg, [one(message())])
    thread.join(10)
    listener.close()
    assert results[0]["open"]["stage"] == "auth" and results[0]["open"]["code"] == 535, results
    assert seen == [
        b"EHLO relay.lan\r\n",
        b"STARTTLS\r\n",
        b"EHLO relay.lan\r\n",
        b"AUTH CRAM-MD5\r\n",
    ]
    assert "discarded 18 bytes sent before TLS" in out


def test_port_and_tls_mode_mixed_up(certs, message):
    # Implicit TLS against a STARTTLS port: the server's plain greeting is no handshake.
    with Upstream(certs, "starttls") as up:
        results, _ = drive(up.config(tls="implicit"), [one(message())])
    res = results[0]["open"]
    assert (res["stage"], res["code"], res["temporary"]) == ("tls", 0, True), res
    # STARTTLS against an implicit-TLS port: no greeting comes before a handshake.
    with Upstream(certs, "implicit") as up:
        results, _ = drive(up.config(tls="starttls", timeout=2), [one(message())])
    res = results[0]["open"]
    assert (res["stage"], res["code"]) == ("connect", 0) and "timeout" in res["text"], res
    assert up.handler.auth_attempts == []


def test_socket_errors_are_named():
    # MicroPython prints some errno values as a bare number; the log says which error.
    result = mpdriver.run(
        "import asyncio\nfrom relaybox.submit import _io_text\n"
        "for e in (OSError(32), OSError(104), OSError(111), asyncio.TimeoutError()):\n"
        "    print(_io_text(e))\n"
    )
    assert result.stdout.splitlines() == [
        "[Errno 32] EPIPE",
        "[Errno 104] ECONNRESET",
        "[Errno 111] ECONNREFUSED",
        "TimeoutError",
    ], result.stdout + result.stderr
