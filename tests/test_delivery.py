"""End to end: LAN device -> relay (MicroPython) -> spool -> upstream (aiosmtpd over TLS)."""

import json
import smtplib
import subprocess
import time

import pytest
from upstream_server import USER, Certs, Upstream, free_port

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH")

MSG = b"From: Printer <printer@lan>\r\nTo: bob@example.org\r\nSubject: toner low\r\n\r\nhi\r\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(str(tmp_path_factory.mktemp("certs")))


def upstream_cfg(up, **over):
    cfg = up.config(**over)
    cfg.setdefault("retry", {"schedule": [1, 2], "max_age": 3600})
    return cfg


def submit(relay, body=MSG, rcpts=("bob@example.org",), sender="printer@lan"):
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=60) as s:
        assert s.sendmail(sender, list(rcpts), body) == {}


def wait_for(pred, timeout=20, what="condition", relay=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what + (relay and "\n" + relay.log() or ""))


def dead(relay):
    d = relay.spool / "dead"
    return sorted(p.name for p in d.iterdir() if "." not in p.name) if d.exists() else []


def test_message_relayed_with_sender_rewritten(relay_factory, certs):
    with Upstream(certs, "starttls") as up:
        relay = relay_factory(upstream=upstream_cfg(up))
        submit(relay)
        wait_for(lambda: up.messages, what="the upstream to receive the message", relay=relay)
        relay.wait_log(r"result=sent")
        wait_for(lambda: relay.queued() == [], what="the spool to empty", relay=relay)
    (got,) = up.messages
    assert (got.mail_from, got.rcpts, got.login) == (USER, ["bob@example.org"], USER)
    head = got.data.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert b'From: "Printer" <alice@example.net>' in head
    assert b"Reply-To: Printer <printer@lan>" in head
    assert b"X-Original-From: Printer <printer@lan>" in head
    assert head[0].startswith(b"Received: from ")
    assert got.data.endswith(b"\r\n\r\nhi\r\n")
    assert "correct horse" not in relay.log()


def test_without_upstream_mail_is_held(relay_factory):
    relay = relay_factory()
    submit(relay)
    relay.wait_log("no upstream configured")
    assert len(relay.queued()) == 1


def test_unreachable_then_many_messages_in_one_session(relay_factory, certs):
    port = free_port()
    up = Upstream(certs, "implicit")
    up.port = port
    up.controller.port = port
    relay = relay_factory(upstream=upstream_cfg(up, port=port, retry={"schedule": [2]}))
    for i in range(8):
        submit(relay, MSG + b"n=%d\r\n" % i)
    relay.wait_log(r"upstream session failed \(connect: ")
    assert len(relay.queued()) == 8
    with up:
        wait_for(
            lambda: len(up.messages) == 8, timeout=30, what="8 messages upstream", relay=relay
        )
        wait_for(lambda: relay.queued() == [], what="the spool to empty", relay=relay)
        # The RSET after the last message follows its removal from the spool.
        wait_for(lambda: up.handler.rsets == 8, what="the last RSET", relay=relay)
    assert len(up.handler.sessions) == 1 and up.handler.rsets == 8
    assert sorted(m.data.rsplit(b"\r\n", 2)[-2] for m in up.messages) == [
        b"n=%d" % i for i in range(8)
    ]


def test_unreachable_upstream_is_retried_on_schedule_without_new_mail(relay_factory, certs):
    """Nothing wakes delivery but its own backoff: the retries follow retry.schedule."""
    port = free_port()
    up = Upstream(certs, "implicit")
    up.port = up.controller.port = port
    relay = relay_factory(upstream=upstream_cfg(up, port=port, retry={"schedule": [1, 2]}))
    submit(relay)
    started = time.monotonic()
    wait_for(
        lambda: relay.log().count("upstream session failed (connect: ") >= 3,
        timeout=15,
        what="three attempts",
        relay=relay,
    )
    # 1 s then 2 s (the last step repeats): the third try comes about 3 s after the first.
    assert time.monotonic() - started < 10, relay.log()
    with up:
        wait_for(lambda: up.messages, timeout=15, what="delivery on a retry", relay=relay)
        wait_for(lambda: relay.queued() == [], what="the spool to empty", relay=relay)


def test_4xx_is_retried_then_delivered(relay_factory, certs):
    plan = {"data": ["451 4.3.0 Try again later"]}
    with Upstream(certs, "starttls", plan=plan) as up:
        relay = relay_factory(upstream=upstream_cfg(up))
        submit(relay)
        relay.wait_log(r"deferred \(data 451 4.3.0 Try again later\), retry in 1 s")
        wait_for(lambda: up.messages, what="the retry", relay=relay)
        wait_for(lambda: relay.queued() == [], what="the spool to empty", relay=relay)
    assert len(up.messages) == 1 and dead(relay) == []


def test_5xx_goes_to_dead_letters_and_admin_gets_notice(relay_factory, certs):
    plan = {"data": ["554 5.7.1 Spam detected"]}
    with Upstream(certs, "starttls", plan=plan) as up:
        relay = relay_factory(upstream=upstream_cfg(up), admin="admin@example.net")
        submit(relay)
        wait_for(lambda: up.messages, what="the bounce notice", relay=relay)
        wait_for(lambda: relay.queued() == [], what="the spool to empty", relay=relay)
    (id,) = dead(relay)
    state = json.loads((relay.spool / "dead" / (id + ".s")).read_text())
    assert state["reason"] == "refused: data 554 5.7.1 Spam detected"
    (notice,) = up.messages
    assert notice.rcpts == ["admin@example.net"] and notice.mail_from == USER
    assert b"Subject: Undelivered mail " + id.encode() in notice.data
    assert b"Reason: refused: data 554 5.7.1 Spam detected" in notice.data
    assert b"\r\nMessage-ID: <%s.notice@relaybox.test>\r\n" % id.encode() in notice.data
    assert b"\r\nMIME-Version: 1.0\r\n" in notice.data
    assert b"\r\nNot delivered to: bob@example.org\r\n" in notice.data
    relay.wait_log("id=%s .*result=dead" % id)


def test_one_recipient_refused(relay_factory, certs):
    plan = {"rcpt": {"nobody@example.org": "550 5.1.1 No such user"}}
    with Upstream(certs, "starttls", plan=plan) as up:
        relay = relay_factory(upstream=upstream_cfg(up))
        submit(relay, rcpts=["bob@example.org", "nobody@example.org"])
        wait_for(lambda: dead(relay), what="a dead letter", relay=relay)
    assert [m.rcpts for m in up.messages] == [["bob@example.org"]]
    (id,) = dead(relay)
    state = json.loads((relay.spool / "dead" / (id + ".s")).read_text())
    assert state["failed"] == [["nobody@example.org", 550, "5.1.1 No such user"]]
    # The summary names who did not get it; bob did.
    relay.wait_log(r"id=%s from=printer@lan rcpt=nobody@example.org size=\d+ result=dead" % id)


def test_wrong_password_keeps_mail_and_stops_trying(relay_factory, certs):
    with Upstream(certs, "starttls") as up:
        cfg = upstream_cfg(up, password="wrong", retry={"schedule": [1, 3600], "max_age": 3600})
        relay = relay_factory(upstream=cfg)
        submit(relay)
        relay.wait_log(r"auth: credentials refused \(CRAM-MD5 as alice@example.net\)")
        submit(relay)
        time.sleep(2)
    assert up.handler.auth_attempts == [("CRAM-MD5", USER, False)]
    assert len(relay.queued()) == 2 and up.messages == []
    assert "next try in 3600 s" in relay.log()


def test_bad_certificate_keeps_mail(relay_factory, certs, tmp_path):
    other = Certs(str(tmp_path))
    with Upstream(certs, "implicit") as up:
        relay = relay_factory(upstream=upstream_cfg(up, ca=other.ca_pem))
        submit(relay)
        relay.wait_log(r"upstream session failed \(tls: .*not correctly signed")
    assert up.handler.auth_attempts == [] and len(relay.queued()) == 1


def test_ten_megabytes_with_256k_heap(relay_factory, certs):
    line = b"0123456789" * 9 + b"abcdefg\r\n"  # 99 bytes
    body = b"Subject: big\r\n\r\n" + line * (10 * 1024 * 1024 // len(line))
    with Upstream(certs, "starttls") as up:
        relay = relay_factory(upstream=upstream_cfg(up), max_message_bytes=20 * 1024 * 1024)
        t0 = time.monotonic()
        submit(relay, body)
        t1 = time.monotonic()
        wait_for(lambda: up.messages, timeout=240, what="10 MB upstream", relay=relay)
        t2 = time.monotonic()
    assert up.messages[0].data.endswith(body[-200:])
    assert len(up.messages[0].data) > len(body)
    print("10 MB: LAN->spool %.1f s, spool->upstream %.1f s" % (t1 - t0, t2 - t1))


def test_recipients_judged_one_by_one(relay_factory, certs):
    # Nobody accepted on the first try: the 4xx recipient is retried alone, the 5xx one is
    # recorded, and the message ends in the dead letters once the retry went through.
    plan = {
        "rcpt": {
            "later@example.org": ["450 4.2.0 Mailbox busy"],
            "nobody@example.org": "550 5.1.1 No such user",
        }
    }
    with Upstream(certs, "starttls", plan=plan) as up:
        relay = relay_factory(upstream=upstream_cfg(up), admin="admin@example.net")
        submit(relay, rcpts=["later@example.org", "nobody@example.org"])
        relay.wait_log(r"deferred \(later@example.org: 450 4.2.0 Mailbox busy\)")
        wait_for(lambda: len(up.messages) == 2, what="the retry and the notice", relay=relay)
    notice, delivered = sorted(up.messages, key=lambda m: m.rcpts)
    assert delivered.rcpts == ["later@example.org"]
    assert notice.rcpts == ["admin@example.net"]
    assert b"nobody@example.org: 550 5.1.1 No such user" in notice.data
    (id,) = dead(relay)
    state = json.loads((relay.spool / "dead" / (id + ".s")).read_text())
    assert state["failed"] == [["nobody@example.org", 550, "5.1.1 No such user"]]


def test_too_old_to_retry_goes_to_dead_letters(relay_factory, certs):
    # A message that arrived 2 days ago, with max_age 1 day and the upstream unreachable.
    cfg = upstream_cfg(
        Upstream(certs), port=free_port(), retry={"schedule": [60], "max_age": 86400}
    )
    relay = relay_factory(upstream=cfg, start=False)
    q = relay.spool / "q"
    q.mkdir(parents=True)
    arrived = int(time.time()) - 2 * 86400
    (q / "0000000100010001").write_bytes(
        b"RBX1\nF printer@lan\nT bob@example.org\nA %d\nP 127.0.0.1\nH dev.lan\n\n" % arrived + MSG
    )
    relay.start()
    relay.wait_log(r"id=0000000100010001 .*result=dead reason=not delivered within 86400 s")
    assert relay.queued() == [] and dead(relay) == ["0000000100010001"]
    state = json.loads((relay.spool / "dead" / "0000000100010001.s").read_text())
    assert state["reason"].startswith("not delivered within 86400 s: connect: ")


def test_refused_credentials_keep_old_mail_queued_until_fixed(relay_factory, certs):
    """Past max_age, mail that waits for the owner's new password is not turned into dead
    letters (and notices) that could not go anywhere either: it goes once fixed."""
    with Upstream(certs, "starttls") as up:
        retry = {"schedule": [1, 3600], "max_age": 86400}
        relay = relay_factory(
            upstream=upstream_cfg(up, password="wrong", retry=retry),
            admin="owner@example.net",
            start=False,
        )
        q = relay.spool / "q"
        q.mkdir(parents=True)
        arrived = int(time.time()) - 2 * 86400
        (q / "0000000100010001").write_bytes(
            b"RBX1\nF printer@lan\nT bob@example.org\nA %d\nP 127.0.0.1\nH dev.lan\n\n" % arrived
            + MSG
        )
        relay.start()
        relay.wait_log(r"auth: credentials refused")
        time.sleep(1)
        assert relay.queued() == ["0000000100010001"] and dead(relay) == [], relay.log()
        relay.stop()
        relay.config["upstream"] = upstream_cfg(up, retry=retry)
        relay.config_path.write_text(json.dumps(relay.config))
        relay.start()
        wait_for(lambda: up.messages, what="delivery with the right password", relay=relay)
    assert relay.queued() == [] and dead(relay) == []
    assert [m.rcpts for m in up.messages] == [["bob@example.org"]]


def test_arrival_from_an_unset_clock_is_not_too_old(relay_factory, certs):
    """A board that took mail before NTP answered stamped it in the year 2000: its age
    counts from when delivery first saw it, so it is kept and retried, not given up."""
    cfg = upstream_cfg(
        Upstream(certs), port=free_port(), retry={"schedule": [60], "max_age": 86400}
    )
    relay = relay_factory(upstream=cfg, start=False)
    q = relay.spool / "q"
    q.mkdir(parents=True)
    year_2000 = 946684800 + 3600
    (q / "0000000100010002").write_bytes(
        b"RBX1\nF printer@lan\nT bob@example.org\nA %d\nP 127.0.0.1\nH dev.lan\n\n" % year_2000
        + MSG
    )
    relay.start()
    relay.wait_log(r"upstream session failed .*; 1 queued")
    # The state is written just after that line.
    deadline = time.monotonic() + 10
    while not (q / "0000000100010002.s").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert relay.queued() == ["0000000100010002"] and dead(relay) == []
    state = json.loads((q / "0000000100010002.s").read_text())
    assert abs(state["seen"] - time.time()) < 60


def offline_upstream(certs, **plan):
    """An upstream whose port is chosen now and that is started later (`with up:`)."""
    up = Upstream(certs, "implicit", plan=plan or None)
    up.port = up.controller.port = free_port()
    return up


def test_revived_dead_letter_goes_only_to_the_refused_recipient(relay_factory, certs):
    plan = {"rcpt": {"nobody@example.org": ["550 5.1.1 No such user"]}}  # then accepted
    with Upstream(certs, "starttls", plan=plan) as up:
        relay = relay_factory(upstream=upstream_cfg(up), start=False)
        relay.start(stdin=subprocess.PIPE)
        submit(relay, rcpts=["bob@example.org", "nobody@example.org"])
        wait_for(lambda: dead(relay), what="a dead letter", relay=relay)
        (id,) = dead(relay)
        relay.type(f"retry {id}\n")
        wait_for(lambda: len(up.messages) == 2, what="the second delivery", relay=relay)
        wait_for(lambda: relay.queued() == [], what="the spool to empty", relay=relay)
    assert [m.rcpts for m in up.messages] == [["bob@example.org"], ["nobody@example.org"]]
    assert dead(relay) == []


def test_421_during_a_session_waits_for_the_backoff(relay_factory, certs):
    """A 421 to MAIL is about the session, not the message: the rest of the queue waits
    for the backoff instead of opening a session per message."""
    up = offline_upstream(certs, mail=["421 4.7.0 Too many messages, slow down"])
    relay = relay_factory(upstream=upstream_cfg(up, retry={"schedule": [3]}))
    for i in range(5):
        submit(relay, MSG + b"n=%d\r\n" % i)
    relay.wait_log(r"upstream session failed \(connect: ")
    with up:
        relay.wait_log(r"upstream session failed \(mail: 4.7.0 Too many messages, slow down\)")
        wait_for(lambda: len(up.messages) == 5, what="5 messages upstream", relay=relay)
        wait_for(lambda: relay.queued() == [], what="the spool to empty", relay=relay)
    assert len(up.handler.sessions) == 2, relay.log()
    assert dead(relay) == []


def test_sender_refused_by_the_account_keeps_all_mail(relay_factory, certs):
    """A 5xx to MAIL FROM with the account's own address holds for every message: all of
    them stay queued (the owner has to fix the account), none becomes a dead letter."""
    plan = {"mail": ["550 5.7.1 Sender address rejected: not owned by user"] * 5}
    up = offline_upstream(certs, **plan)
    relay = relay_factory(upstream=upstream_cfg(up, retry={"schedule": [2, 3600]}))
    for i in range(3):
        submit(relay, MSG + b"n=%d\r\n" % i)
    relay.wait_log(r"upstream session failed \(connect: ")
    with up:
        relay.wait_log(r"upstream session failed \(mail: 5.7.1 Sender address rejected.*3600 s")
        time.sleep(1)
    assert len(up.handler.sessions) == 1 and up.messages == []
    assert len(relay.queued()) == 3 and dead(relay) == []


def test_unreadable_spool_file_goes_to_dead_letters_once(relay_factory, certs):
    with Upstream(certs, "implicit") as up:
        relay = relay_factory(upstream=upstream_cfg(up), start=False)
        q = relay.spool / "q"
        q.mkdir(parents=True)
        (q / "00000001000100aa").write_bytes(b"not a spool file at all\n")
        relay.start(stdin=subprocess.PIPE)
        submit(relay)
        wait_for(lambda: up.messages, what="the good message", relay=relay)
        wait_for(lambda: relay.queued() == [], what="the spool to empty", relay=relay)
        relay.wait_log(r"id=00000001000100aa result=dead reason=unreadable spool file")
        sessions = len(up.handler.sessions)
        time.sleep(3)
    assert len(up.handler.sessions) == sessions <= 2, relay.log()
    assert dead(relay) == ["00000001000100aa"]
    relay.type("queue\n")  # the owner sees it
    relay.wait_log(r"^  00000001000100aa  -  .* \[unreadable spool file\]$")


def test_new_mail_is_not_stuck_behind_older_mail_waiting_to_retry(relay_factory, certs):
    with Upstream(certs, "implicit") as up:
        relay = relay_factory(upstream=upstream_cfg(up), start=False)
        q = relay.spool / "q"
        q.mkdir(parents=True)
        now = int(time.time())
        later = json.dumps({"attempts": 3, "next": now + 3600, "error": "mail 451 later"})
        for i in range(120):
            id = "%08x%04x0000" % (now - 600, i)
            env = b"RBX1\nF old@lan\nT bob@example.org\nA %d\nP 127.0.0.1\nH dev\n\n" % now
            (q / id).write_bytes(env + MSG)
            (q / (id + ".s")).write_text(later)
        relay.start()
        submit(relay, MSG + b"new\r\n")
        wait_for(lambda: up.messages, what="the new message", relay=relay)
    (got,) = up.messages
    assert got.data.endswith(b"\r\nnew\r\n")
    assert len(relay.queued()) == 120


def test_session_backoff_survives_a_restart(relay_factory, certs):
    """After a 535 a reboot does not try the same password again at once; new
    credentials do."""
    with Upstream(certs, "starttls") as up:
        cfg = upstream_cfg(up, password="wrong", retry={"schedule": [1, 3600], "max_age": 86400})
        relay = relay_factory(upstream=cfg)
        submit(relay)
        relay.wait_log(r"auth: credentials refused")
        relay.stop()
        relay.start()
        relay.wait_log(r"upstream failed before the restart \(auth: credentials refused")
        time.sleep(2)
        assert up.handler.auth_attempts == [("CRAM-MD5", USER, False)]
        relay.stop()
        relay.config["upstream"] = upstream_cfg(up)
        relay.config_path.write_text(json.dumps(relay.config))
        relay.start()
        wait_for(lambda: up.messages, what="delivery with the right password", relay=relay)
    assert [ok for _, _, ok in up.handler.auth_attempts] == [False, True]
    assert not (relay.spool / "upstream.json").exists()


def test_ca_file_replaced_under_the_same_name_starts_afresh(relay_factory, certs, tmp_path):
    """The backoff after a refused certificate belongs to that CA: the right CA written over
    the same file is tried at once after a restart, not after the longest step."""
    (tmp_path / "other").mkdir(exist_ok=True)
    other = Certs(str(tmp_path / "other"))  # a CA that did not sign the server
    ca = tmp_path / "ca.pem"
    ca.write_bytes(open(other.ca_pem, "rb").read())
    with Upstream(certs, "implicit") as up:
        retry = {"schedule": [3600], "max_age": 86400}
        relay = relay_factory(upstream=upstream_cfg(up, ca=str(ca), retry=retry))
        submit(relay)
        relay.wait_log(r"upstream session failed \(tls: ")
        relay.stop()
        ca.write_bytes(open(certs.ca_pem, "rb").read())
        relay.start()
        wait_for(lambda: up.messages, what="delivery with the new CA", relay=relay)
    assert "failed before the restart" not in relay.log()


BOOT_WITH_UNSET_CLOCK = """
import sys
import time as real

class Time:
    # A board after a power cut: its clock counts from 2021 until NTP answers.
    offset = real.time() - real.mktime((2021, 1, 1, 0, 0, 0, 0, 0))

    def __getattr__(self, name):
        return getattr(real, name)

    def time(self):
        return real.time() - self.offset

    def gmtime(self, t=None):
        return real.gmtime(int(self.time()) if t is None else t)

sys.modules["time"] = Time()

import asyncio, json
from relaybox import config, delivery, spool

cfg = config.Config.from_json(json.loads(%r), %r)
class Relay:
    pass
r = Relay()
r.cfg, r.spool = cfg, spool.Spool(%r)
r.spool.recover()
w = r.spool.writer("printer@lan", ["bob@example.org"], "lan", "dev")
w.write(b"Subject: x\\r\\n\\r\\nhi\\r\\n")
w.commit()
key = delivery.Delivery(r)._key
# What the last boot left: a 535 a minute ago, next try in an hour (real time).
r.spool.set_note("upstream", {"key": key, "failures": 1, "next": real.time() + 3600,
                              "error": "auth: credentials refused"})
d = delivery.Delivery(r)

async def main():
    for _ in range(2):  # the second round is what new mail would cause
        wait = await d._round()
        print(d.state, "|", d.last_error, "|", wait > 3000)

asyncio.run(main())
"""


def test_backoff_from_before_a_reboot_holds_once_ntp_set_the_clock(tmp_path, certs):
    """A board reads its saved backoff while its clock still says 2021: the wait must be
    measured once NTP has set the clock, or a reboot retries a refused password at once."""
    import mpdriver

    (tmp_path / "board.py").write_text("HAS_NTP = True\n")
    (tmp_path / "ntptime.py").write_text(
        "import sys\nhost = 'pool.ntp.org'\ndef settime():\n    sys.modules['time'].offset = 0\n"
    )
    port = free_port()  # nobody listens: an attempt would show as a connect error
    up = {
        "host": "localhost",
        "port": port,
        "tls": "implicit",
        "user": USER,
        "password": "wrong",
        "ca": certs.ca_pem,
        "retry": {"schedule": [60, 3600], "max_age": 86400},
    }
    script = BOOT_WITH_UNSET_CLOCK % (
        json.dumps({"spool": "spool", "upstream": up}),
        str(tmp_path / "config.json"),
        str(tmp_path / "spool"),
    )
    result = mpdriver.run(
        script, env={"MICROPYPATH": "%s:.frozen:%s" % (tmp_path, mpdriver.FIRMWARE)}
    )
    assert result.returncode == 0, result.stderr
    rounds = [line for line in result.stdout.splitlines() if "|" in line]
    assert rounds == ["waiting to retry | auth: credentials refused | True"] * 2, result.stdout
