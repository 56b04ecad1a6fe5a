"""Against a real MTA: Postfix with Cyrus SASL (sasldb2), CRAM-MD5 offered only after TLS.

The test starts its own Postfix instance (own config, queue and data folders, loopback
ports), so it needs root and Debian's postfix, sasl2-bin and libsasl2-modules. Postfix
relays what it accepts to a small recording server, where the test looks at the result.
Without Postfix the test is skipped locally and fails in CI (CI=true).
"""

import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from upstream_server import PASSWORD, USER, Certs, free_port

POSTFIX = "/usr/sbin/postfix"
SASLPASSWD = "/usr/sbin/saslpasswd2"
CRAMMD5 = [
    "/usr/lib/x86_64-linux-gnu/sasl2/libcrammd5.so",
    "/usr/lib/aarch64-linux-gnu/sasl2/libcrammd5.so",
    "/usr/lib/sasl2/libcrammd5.so",
]

MSG = b"From: Printer <printer@lan>\r\nTo: bob@example.org\r\nSubject: via postfix\r\n\r\nhi\r\n"


def _missing():
    if not os.path.exists(POSTFIX) or not os.path.exists(SASLPASSWD):
        return "postfix or sasl2-bin is not installed"
    if not any(os.path.exists(p) for p in CRAMMD5):
        return "libsasl2-modules (CRAM-MD5 plugin) is not installed"
    if os.geteuid() != 0:
        return "starting a private Postfix needs root"
    return None


def _require():
    why = _missing()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("Postfix test cannot run in CI: " + why)
    pytest.skip(why + " (apt-get install postfix sasl2-bin libsasl2-modules)")


class Sink:
    """Where Postfix delivers: records (mail_from, rcpts, data)."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, envelope.rcpt_tos, envelope.original_content))
        return "250 OK"


class Postfix:
    """A private Postfix instance on loopback with STARTTLS and CRAM-MD5 via sasldb2."""

    def __init__(self, sink_port):
        # Postfix daemons run as the postfix user and must read this folder.
        self.dir = Path(tempfile.mkdtemp(prefix="relaybox-postfix-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        self.certs = Certs(str(self.dir))
        self.certs.server.private_key_and_cert_chain_pem.write_to_path(
            str(self.dir / "server.pem")
        )
        (self.dir / "server.pem").chmod(0o644)
        conf = self.dir / "etc"
        conf.mkdir()
        # Postfix makes data_directory itself (owned by postfix), but not the queue root.
        (self.dir / "queue").mkdir()
        self.conf = conf
        sasldb = self.dir / "sasldb2"
        user, realm = USER.split("@")
        subprocess.run(
            [SASLPASSWD, "-p", "-c", "-f", str(sasldb), "-u", realm, user],
            input=PASSWORD.encode(),
            check=True,
        )
        sasldb.chmod(0o644)
        # Debian's Postfix looks for $config_directory/sasl/smtpd.conf.
        (conf / "sasl").mkdir()
        (conf / "sasl" / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\n"
            "sasldb_path: %s\nmech_list: CRAM-MD5\n" % sasldb
        )
        (conf / "main.cf").write_text(
            "\n".join(
                [
                    "compatibility_level = 3.6",
                    "queue_directory = %s" % (self.dir / "queue"),
                    "data_directory = %s" % (self.dir / "data"),
                    "maillog_file = %s" % (self.dir / "maillog"),
                    # Postfix logs only below allowed prefixes; without this it dies silently.
                    "maillog_file_prefixes = %s" % self.dir,
                    "myhostname = upstream.test",
                    "mydestination =",
                    "inet_interfaces = 127.0.0.1",
                    "inet_protocols = ipv4",
                    "mynetworks = 192.0.2.1/32",
                    "relayhost = [127.0.0.1]:%d" % sink_port,
                    "smtp_tls_security_level = none",
                    "smtpd_tls_security_level = may",
                    "smtpd_tls_chain_files = %s" % (self.dir / "server.pem"),
                    "smtpd_tls_auth_only = yes",
                    "smtpd_sasl_auth_enable = yes",
                    "smtpd_sasl_type = cyrus",
                    "smtpd_sasl_path = smtpd",
                    "cyrus_sasl_config_path = %s" % (conf / "sasl"),
                    "smtpd_relay_restrictions = permit_sasl_authenticated, reject",
                    "smtpd_recipient_restrictions = permit_sasl_authenticated, reject",
                    "smtpd_banner = $myhostname ESMTP",
                    "alias_maps =",
                    "alias_database =",
                    "",
                ]
            )
        )
        # The stock master.cf with the listener moved to our port and no chroot (the
        # chroot would need copies of the SASL and TLS files inside the queue folder).
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if line[:1] not in ("#", " ", "\t") and len(fields) >= 8:
                if fields[0] == "smtp" and fields[1] == "inet":
                    fields[0] = "127.0.0.1:%d" % self.port
                fields[4] = "n"
                line = " ".join(fields)
            lines.append(line)
        (conf / "master.cf").write_text("\n".join(lines) + "\n")

    def postfix(self, *args):
        return subprocess.run(
            [POSTFIX, "-c", str(self.conf), *args], capture_output=True, text=True, timeout=60
        )

    def start(self):
        r = self.postfix("start")
        if r.returncode != 0:
            raise AssertionError("postfix start failed:\n" + r.stdout + r.stderr + self.log())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError("postfix does not listen:\n" + self.log())

    def stop(self):
        self.postfix("stop")
        time.sleep(0.2)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self):
        p = self.dir / "maillog"
        return p.read_text() if p.exists() else ""


@pytest.fixture
def postfix():
    _require()
    sink = Sink()
    sink_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
    controller.start()
    pf = Postfix(sink_port)
    try:
        yield pf.start(), sink
    finally:
        pf.stop()
        controller.stop()


def wait_for(pred, timeout, what, log):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s\n%s" % (what, log()))


def test_relay_through_postfix_with_cram_md5(postfix, relay_factory):
    pf, sink = postfix
    # The server as configured: AUTH is offered only inside TLS, and only CRAM-MD5.
    with smtplib.SMTP("127.0.0.1", pf.port, timeout=10) as s:
        s.ehlo()
        assert not s.has_extn("auth") and s.has_extn("starttls")
        s.starttls(context=ssl.create_default_context(cafile=pf.certs.ca_pem))
        s.ehlo()
        assert s.esmtp_features["auth"].split() == ["CRAM-MD5"]
    upstream = {
        "host": "localhost",
        "port": pf.port,
        "tls": "starttls",
        "user": USER,
        "password": PASSWORD,
        "ca": pf.certs.ca_pem,
        "retry": {"schedule": [1], "max_age": 3600},
    }
    relay = relay_factory(upstream=upstream)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as s:
        assert s.sendmail("printer@lan", ["bob@example.org"], MSG) == {}
    wait_for(
        lambda: sink.messages, 30, "Postfix to pass the message on", lambda: relay.log() + pf.log()
    )
    relay.wait_log(r"session open to localhost:\d+, TLS, as alice@example.net with CRAM-MD5")
    wait_for(lambda: relay.queued() == [], 10, "the spool to empty", relay.log)
    mail_from, rcpts, data = sink.messages[0]
    assert (mail_from, rcpts) == (USER, ["bob@example.org"])
    assert b'From: "Printer" <alice@example.net>' in data
    # Postfix records the SASL login and method it accepted in its Received: line.
    log = pf.log()
    assert "sasl_method=CRAM-MD5, sasl_username=alice@example.net" in log, log


def test_postfix_refuses_wrong_password(postfix, relay_factory):
    pf, sink = postfix
    upstream = {
        "host": "localhost",
        "port": pf.port,
        "tls": "starttls",
        "user": USER,
        "password": "not the password",
        "ca": pf.certs.ca_pem,
        "retry": {"schedule": [1, 3600], "max_age": 3600},
    }
    relay = relay_factory(upstream=upstream)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as s:
        s.sendmail("printer@lan", ["bob@example.org"], MSG)
    relay.wait_log(r"auth: credentials refused \(CRAM-MD5 as alice@example.net\): 5.7.8")
    assert len(relay.queued()) == 1 and sink.messages == []
