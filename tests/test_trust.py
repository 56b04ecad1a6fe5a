"""`relaybox trust`: certificates fetched from a real TLS server (trustme CA, aiosmtpd), the
CA installed on the firmware over the pty, and then mail delivered through that CA."""

import os
import re
import ssl

import pytest
import trustme
from consolelink import RELAYBOX, PtyRelay, Terminal, relaybox, wait_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from upstream_server import PASSWORD, USER, Upstream, free_port

# Implicit TLS is invisible to aiosmtpd, which then warns about AUTH in the clear.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


class ChainCerts:
    """root -> intermediate -> server; the server sends itself and the intermediate."""

    def __init__(self, folder):
        self.root = trustme.CA()
        self.intermediate = self.root.create_child_ca()
        self.server = self.intermediate.issue_cert("localhost", "127.0.0.1")
        self.root_pem = os.path.join(folder, "root.pem")
        self.root.cert_pem.write_to_path(self.root_pem)
        # Upstream.config() names this file; the board starts with some other CA.
        self.ca_pem = os.path.join(folder, "other-ca.pem")
        trustme.CA().cert_pem.write_to_path(self.ca_pem)

    def server_context(self):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(ctx)
        return ctx


def _cert(blob):
    return x509.load_pem_x509_certificate(blob.bytes())


def _fp(cert):
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _ca_shown(out):
    """(subject, fingerprint) of the CA the output offers to install."""
    m = re.search(r"^  CA  subject  (.*)\n(?:.*\n){2} +sha256   (\S+)$", out, re.M)
    return m and m.groups()


@pytest.fixture
def certs(tmp_path):
    return ChainCerts(str(tmp_path))


@pytest.fixture
def boards(build_dir, tmp_path):
    started = []

    def make(upstream):
        b = PtyRelay(build_dir, tmp_path / "board", upstream=upstream)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        b.stop()


def _installed(board):
    path = board.folder / "upstream-ca.pem"
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_starttls_unverified_installs_what_the_server_sent_last(certs, boards):
    with Upstream(certs, "starttls") as up:
        board = boards(up.config())
        out = board.ok("trust", f"localhost:{up.port}", "--yes")
        intermediate = _cert(certs.intermediate.cert_pem)
        leaf = _cert(certs.server.cert_chain_pems[0])
        assert f"localhost:{up.port} (starttls TLS, TLSv1.3) sent 2 certificate(s):" in out, out
        assert re.search(
            r"^  0  subject  .*\n     issuer   .*\n     valid    .*\n     sha256   "
            + re.escape(_fp(leaf))
            + "$",
            out,
            re.M,
        ), out
        assert "this computer does NOT trust this server" in out, out
        assert "the server did not send its root" in out, out
        assert _ca_shown(out) == (intermediate.subject.rfc4514_string(), _fp(intermediate)), out
        assert out.endswith(
            f"installed as upstream-ca.pem (upstream.ca) and saved in {board.config_path}\n"
        ), out
        assert _installed(board) == intermediate
        assert board.saved()["upstream"]["ca"] == "upstream-ca.pem"
        # The board verifies the server against exactly that CA: mail goes through.
        board.ok("send-test", "bob@example.org")
        wait_for(lambda: up.messages, "the test message upstream", timeout=30)
        assert up.messages[0].login == USER
    assert PASSWORD not in out


def test_implicit_verified_installs_the_root(certs, boards):
    with Upstream(certs, "implicit") as up:
        board = boards(up.config())
        # This computer trusts the test root, as a real one trusts a public root.
        out = board.ok(
            "trust",
            f"localhost:{up.port}",
            "--implicit",
            "--yes",
            env={"SSL_CERT_FILE": certs.root_pem},
        )
        root = _cert(certs.root.cert_pem)
        assert "sent 2 certificate(s)" in out and "trusts this chain up to its root" in out, out
        assert _ca_shown(out) == (root.subject.rfc4514_string(), _fp(root)), out
        assert _installed(board) == root
        report = board.json(
            "trust",
            f"localhost:{up.port}",
            "--implicit",
            "--yes",
            env={"SSL_CERT_FILE": certs.root_pem},
        )
        assert report["verified_here"] is True and report["ca"]["sha256"] == _fp(root), report
        assert [c["self_signed"] for c in report["sent"]] == [False, False], report
        assert report["installed"] == "upstream-ca.pem" and report["warnings"] == [], report
        board.ok("send-test", "bob@example.org")
        wait_for(lambda: up.messages, "the test message upstream", timeout=30)


def test_asks_before_installing(certs, boards):
    with Upstream(certs, "starttls") as up:
        board = boards(up.config())
        before = board.config_path.read_text()
        t = Terminal([RELAYBOX, "trust", f"127.0.0.1:{up.port}", "--port", board.tty])
        t.expect(
            rf"install this CA on the board at {re.escape(board.tty)} as upstream\.ca\? \[y/N\] "
        )
        t.send("n\n")
        t.expect("nothing installed")
        assert t.finish() == 1
        r = board.relaybox("trust", f"127.0.0.1:{up.port}")
        assert r.returncode == 1
        assert r.stderr == (
            "relaybox: not a terminal, so nobody can confirm: check the output, then add --yes\n"
        )
        assert board.config_path.read_text() == before
        assert not (board.folder / "upstream-ca.pem").exists()


def test_wrong_mode_and_unreachable_servers(certs):
    with Upstream(certs, "implicit") as up:
        # An implicit TLS server waits for a TLS hello; the SMTP greeting never comes.
        r = relaybox("trust", f"localhost:{up.port}", "--starttls", "--yes", "--timeout", "2")
        assert r.stderr == (
            f"relaybox: starttls TLS with localhost:{up.port} failed (Connection unexpectedly "
            "closed: timed out); does it want --implicit?\n"
        ), r.stderr
    with Upstream(certs, "plain") as up:
        r = relaybox("trust", f"localhost:{up.port}", "--yes")
        assert (
            r.stderr == f"relaybox: localhost:{up.port} does not offer STARTTLS; try --implicit\n"
        )
    port = free_port()
    r = relaybox("trust", f"127.0.0.1:{port}", "--yes")
    assert r.returncode == 1
    assert r.stderr.startswith(f"relaybox: cannot connect to 127.0.0.1:{port} ("), r.stderr
    r = relaybox("trust", "smtp.example.net", "--yes")
    assert r.stderr == (
        "relaybox: give the server as HOST:PORT, e.g. smtp.example.net:587 "
        "(not 'smtp.example.net')\n"
    )


class LeafOnlyCerts:
    """A private CA that issued the server's certificate directly: the server sends only
    its leaf, as many self-hosted servers do."""

    def __init__(self, folder):
        self.root = trustme.CA()
        self.server = self.root.issue_cert("localhost", "127.0.0.1")
        self.root_pem = os.path.join(folder, "private-root.pem")
        self.root.cert_pem.write_to_path(self.root_pem)
        self.ca_pem = os.path.join(folder, "other-ca.pem")
        trustme.CA().cert_pem.write_to_path(self.ca_pem)
        self.leaf_pem = os.path.join(folder, "leaf.pem")
        self.server.cert_chain_pems[0].write_to_path(self.leaf_pem)

    def server_context(self):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(ctx)
        return ctx


def test_a_leaf_alone_is_refused_and_ca_installs_the_given_ca(boards, tmp_path):
    certs = LeafOnlyCerts(str(tmp_path))
    with Upstream(certs, "starttls") as up:
        board = boards(up.config())
        before = board.config_path.read_text()
        r = board.relaybox("trust", f"localhost:{up.port}", "--yes")
        assert r.returncode == 1, r
        assert r.stderr == (
            f"relaybox: localhost:{up.port} sent only its own certificate, not the CA that "
            "issued it; get that CA certificate (PEM) from the provider and run again with "
            "--ca FILE\n"
        ), r.stderr
        assert not (board.folder / "upstream-ca.pem").exists()
        assert board.config_path.read_text() == before
        # A CA file the server does not verify against is refused too; so is a leaf.
        other = str(tmp_path / "other-ca.pem")
        r = board.relaybox("trust", f"localhost:{up.port}", "--yes", "--ca", other)
        assert r.returncode == 1 and "does not verify against" in r.stderr, r.stderr
        r = board.relaybox("trust", f"localhost:{up.port}", "--yes", "--ca", certs.leaf_pem)
        assert r.returncode == 1 and "is not a CA certificate" in r.stderr, r.stderr
        assert not (board.folder / "upstream-ca.pem").exists()
        out = board.ok("trust", f"localhost:{up.port}", "--yes", "--ca", certs.root_pem)
        assert _installed(board) == _cert(certs.root.cert_pem), out
        board.ok("send-test", "bob@example.org")
        wait_for(lambda: up.messages, "the test message upstream", timeout=30)
