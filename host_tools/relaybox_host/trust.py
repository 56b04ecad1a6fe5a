"""`relaybox trust HOST:PORT`: fetch a submission server's certificates, show them, and
install the CA they chain to on the board as upstream.ca.

Which CA: when this computer's trust store verifies the server, its root (the end of the
verified chain) is installed, even though servers rarely send it: a root outlives the
intermediates, which providers rotate and may pick from at random on each renewal. When
this computer cannot verify the server (a private CA, a self-signed server), the last
certificate the server sent is installed: the private root, or the self-signed
certificate itself. The board then accepts exactly the servers that CA vouches for.
"""

import json
import smtplib
import socket
import ssl
import sys
from collections import namedtuple
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import serialconn
from .errors import ToolError
from .remote import connection_options, session

_IMPLICIT_PORTS = (465,)
#: Warn when the CA to install has less time left than this.
_EXPIRY_WARNING = timedelta(days=30)

Probe = namedtuple("Probe", "sent verified tls_version")


def add_parser(sub):
    p = sub.add_parser(
        "trust",
        parents=[connection_options()],
        help="install the CA of an upstream server on the board (upstream.ca)",
        description="Connects to HOST:PORT from this computer, shows the certificate chain, "
        "and after confirmation installs the CA on the board and saves the config.",
    )
    p.add_argument(
        "server", metavar="HOST:PORT", help="the submission server, e.g. smtp.example.net:465"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--starttls",
        dest="tls",
        action="store_const",
        const="starttls",
        help="plain SMTP, then STARTTLS (default except on port 465)",
    )
    mode.add_argument(
        "--implicit",
        dest="tls",
        action="store_const",
        const="implicit",
        help="TLS from the first byte (default on port 465)",
    )
    p.add_argument(
        "--ca",
        metavar="FILE",
        type=Path,
        help="install this CA (PEM) instead, once the server has been verified against it here",
    )
    p.add_argument("--yes", "-y", action="store_true", help="install without asking")
    p.set_defaults(func=cmd_trust)


def split_server(text):
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ToolError(f"give the server as HOST:PORT, e.g. smtp.example.net:587 (not {text!r})")
    return host, int(port)


def cmd_trust(args):
    host, port = split_server(args.server)
    tls = args.tls or ("implicit" if port in _IMPLICIT_PORTS else "starttls")
    if args.json and not args.yes:
        raise ToolError("--json prints no question to answer: add --yes")
    say = (lambda *a: None) if args.json else print
    given = _read_ca(args.ca) if args.ca else None
    probe = fetch_chain(host, port, tls, args.timeout, args.ca)
    certs = [_load(der) for der in probe.sent]
    say(f"{host}:{port} ({tls} TLS, {probe.tls_version}) sent {len(certs)} certificate(s):")
    for i, cert in enumerate(certs):
        say(describe(cert, f"{i}"))
    if given is not None:
        ca = given
        say(f"\nthe server's chain verifies here against {args.ca}:\n{describe(ca, 'CA')}")
    elif probe.verified:
        ca = _load(probe.verified[-1])
        say(f"\nthis computer trusts this chain up to its root:\n{describe(ca, 'CA')}")
    else:
        ca = certs[-1]
        if not _self_signed(ca) and not _is_ca(ca):
            # Trusting a leaf alone breaks at its next renewal, and a leaf is no CA for
            # mbedTLS: the board would refuse the server all the same.
            raise ToolError(
                f"{host}:{port} sent only its own certificate, not the CA that issued it; "
                "get that CA certificate (PEM) from the provider and run again with --ca FILE"
            )
        say(
            "\nthis computer does NOT trust this server: compare the fingerprint below with "
            "one from the provider before you install it"
        )
        if not _self_signed(ca):
            say(
                "the server did not send its root; the last certificate it sent will be "
                "trusted on its own, and must be installed again when the server changes it"
            )
        say(describe(ca, "CA"))
    warnings = _warnings(ca, certs[0], host)
    for w in warnings:
        say(f"warning: {w}")
    if not args.yes and not _confirm(
        f"install this CA on the board at {args.port} as upstream.ca?"
    ):
        print("nothing installed")
        return 1
    pem = ssl.DER_cert_to_PEM_cert(ca.public_bytes(_der_encoding()))
    with session(args) as c:
        try:
            put = c.request("put_ca", pem)
            saved = c.request("save")
            board_host = c.request("get", "upstream.host").get("value")
        except serialconn.ConsoleError as e:
            raise ToolError(f"the board did not take the CA: {e}") from None
    say(f"installed as {put.get('path')} (upstream.ca) and saved in {saved.get('path')}")
    if board_host != host:
        say(
            f"note: the board's upstream.host is {board_host}; set it with "
            f"`relaybox config set upstream.host {host}`"
        )
    if args.json:
        report = {
            "server": f"{host}:{port}",
            "tls": tls,
            "sent": [summary(c) for c in certs],
            "verified_here": probe.verified is not None,
            "ca": summary(ca),
            "warnings": warnings,
            "installed": put.get("path"),
            "saved": saved.get("path"),
            "board_upstream_host": board_host,
        }
        print(json.dumps(report, indent=2))
    return 0


def _read_ca(path):
    from cryptography import x509

    try:
        data = path.read_bytes()
    except OSError as e:
        raise ToolError(f"cannot read {path} ({e.strerror})") from None
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ToolError(f"{path} holds no PEM certificate") from None
    if not _is_ca(cert) and not _self_signed(cert):
        raise ToolError(f"{path} is not a CA certificate (no basicConstraints CA:TRUE)")
    return cert


def _is_ca(cert):
    from cryptography import x509

    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def fetch_chain(host, port, tls, timeout, cafile=None):
    """The certificates the server sends, and the chain this computer verifies (or None).
    With cafile the server must verify against exactly that CA."""
    if cafile is not None:
        ctx = ssl.create_default_context(cafile=str(cafile))
        try:
            sock = _handshake(host, port, tls, timeout, ctx)
        except ssl.SSLCertVerificationError as e:
            raise ToolError(
                f"{host}:{port} does not verify against {cafile} ({e.verify_message}); "
                "nothing installed"
            ) from None
        try:
            return Probe(_chain(sock, verified=False), _chain(sock, verified=True), sock.version())
        finally:
            sock.close()
    try:
        sock = _handshake(host, port, tls, timeout, ssl.create_default_context())
        verified = _chain(sock, verified=True)
    except ssl.SSLCertVerificationError:
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        sock = _handshake(host, port, tls, timeout, unverified)
        verified = None
    try:
        return Probe(_chain(sock, verified=False), verified, sock.version())
    finally:
        sock.close()


def _handshake(host, port, tls, timeout, ctx):
    """A TLS socket to the server, after EHLO and STARTTLS when tls is "starttls"."""
    other = "--implicit" if tls == "starttls" else "--starttls"
    try:
        if tls == "implicit":
            raw = socket.create_connection((host, port), timeout=timeout)
            try:
                return ctx.wrap_socket(raw, server_hostname=host)
            except BaseException:
                raw.close()
                raise
        smtp = smtplib.SMTP(host, port, local_hostname="relaybox-trust", timeout=timeout)
        try:
            smtp.ehlo()
            smtp.starttls(context=ctx)
        except BaseException:
            smtp.close()
            raise
        return smtp.sock
    except ssl.SSLCertVerificationError:
        raise  # the caller looks again without verifying
    except smtplib.SMTPNotSupportedError:
        raise ToolError(f"{host}:{port} does not offer STARTTLS; try --implicit") from None
    except (smtplib.SMTPException, ssl.SSLError, TimeoutError) as e:
        raise ToolError(
            f"{tls} TLS with {host}:{port} failed ({_why(e)}); does it want {other}?"
        ) from None
    except OSError as e:
        raise ToolError(f"cannot connect to {host}:{port} ({_why(e)})") from None


def _why(e):
    return " ".join(str(e).split()) or type(e).__name__


def _chain(sock, verified):
    """DER certificates, leaf first: what the server sent, or the chain verified here."""
    if hasattr(sock, "get_unverified_chain"):  # public from Python 3.13
        ders = sock.get_verified_chain() if verified else sock.get_unverified_chain()
        return [bytes(d) for d in ders]
    # 3.10 to 3.12 have the same calls on the internal object only.
    obj = sock._sslobj
    certs = obj.get_verified_chain() if verified else obj.get_unverified_chain()
    return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in certs]


def _load(der):
    from cryptography import x509

    return x509.load_der_x509_certificate(der)


def _der_encoding():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def fingerprint(cert):
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def summary(cert):
    """The facts a person compares before trusting a certificate."""
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "self_signed": _self_signed(cert),
        "not_before": f"{cert.not_valid_before_utc:%Y-%m-%d}",
        "not_after": f"{cert.not_valid_after_utc:%Y-%m-%d}",
        "sha256": fingerprint(cert),
    }


def describe(cert, label):
    s = summary(cert)
    rows = [
        ("subject", s["subject"]),
        ("issuer", s["issuer"] + ("  (self-signed)" if s["self_signed"] else "")),
        ("valid", f"{s['not_before']} to {s['not_after']}"),
        ("sha256", s["sha256"]),
    ]
    return "\n".join(
        f"  {(label if i == 0 else '').ljust(len(label))}  {k:8} {v}"
        for i, (k, v) in enumerate(rows)
    )


def _self_signed(cert):
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # a name match without a matching signature is not self-signed
        return False
    return True


def _names_match(cert, host):
    """Whether the leaf names `host`, checked here so that a mistake shows before install."""
    import ipaddress

    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    for name in san.get_values_for_type(x509.DNSName):
        name = name.lower()
        h = host.lower()
        if name == h or (name.startswith("*.") and h.partition(".")[2] == name[2:]):
            return True
    return False


def _warnings(ca, leaf, host):
    found = []
    left = ca.not_valid_after_utc - datetime.now(timezone.utc)
    if left < timedelta(0):
        found.append("this CA has expired; the board will refuse the server")
    elif left < _EXPIRY_WARNING:
        found.append(f"this CA expires in {left.days} days")
    if not _names_match(leaf, host):
        found.append(f"the server's certificate is not for {host}; the board will refuse it")
    return found


def _confirm(question):
    if not sys.stdin.isatty():
        raise ToolError("not a terminal, so nobody can confirm: check the output, then add --yes")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
