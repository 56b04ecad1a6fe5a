"""A scriptable upstream submission server for tests: aiosmtpd with TLS and CRAM-MD5.

Certificates come from trustme; CRAM-MD5 is checked with CPython's hmac, so the firmware's
own HMAC is tested against an independent implementation. Behaviour is scripted per test
(refusals, disconnects) and every accepted message is recorded.
"""

import hmac
import os
import socket
import ssl
import time
import warnings

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

USER = "alice@example.net"
PASSWORD = "correct horse battery staple"

# With implicit TLS aiosmtpd cannot see the TLS layer and warns that AUTH goes in clear.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Message:
    def __init__(self, envelope, session):
        self.mail_from = envelope.mail_from
        self.rcpts = list(envelope.rcpt_tos)
        self.options = list(envelope.mail_options)
        self.auth_param = getattr(session, "mail_auth", None)
        self.data = envelope.original_content or b""
        self.login = getattr(session, "user", None)
        self.mechanism = getattr(session, "mechanism", None)
        self.peer = session.peer  # one TCP connection = one (host, port)


class Handler:
    """Records messages; `plan` scripts replies (each list is consumed in order).

    plan keys: "mail" and "data": lists of reply lines or None (accept); "rcpt": dict of
    address -> reply line (every time) or list of lines (one per try); "drop_mid_data" /
    "drop_after_data": how many times to hang up in the middle of DATA / after the final
    dot, before replying.
    """

    def __init__(self, plan=None, users=None):
        self.plan = dict(plan or {})
        self.users = users or {USER: PASSWORD}
        self.messages = []
        self.auth_attempts = []  # (mechanism, login, ok)
        self.rsets = 0
        self.after_mail = []
        self.sessions = set()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.sessions.add(session.peer)
        if self.plan.get("pipelining", True):
            responses.insert(-1, "250-PIPELINING")
        return responses

    def _next(self, key):
        queue = self.plan.get(key) or []
        return queue.pop(0) if queue else None

    async def handle_MAIL(self, server, session, envelope, address, options):
        reply = self._next("mail")
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        # What the client sent after MAIL before hearing its reply: the pipelined rest.
        self.after_mail.append(bytes(server._reader._buffer))
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        reply = self.plan.get("rcpt", {}).get(address)
        if isinstance(reply, list):  # replies for successive attempts, then acceptance
            reply = reply.pop(0) if reply else None
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_RSET(self, server, session, envelope):
        self.rsets += 1
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.plan.get("drop_after_data", 0) > 0:
            self.plan["drop_after_data"] -= 1
            server.transport.close()
            return None
        reply = self._next("data")
        if reply:
            return reply
        self.messages.append(Message(envelope, session))
        return "250 2.0.0 Ok: queued as %d" % len(self.messages)

    # CRAM-MD5 (RFC 2195): aiosmtpd maps the double underscore to "-".
    async def auth_CRAM__MD5(self, server, args):
        challenge = ("<%d.%d@upstream.test>" % (os.getpid(), time.time_ns())).encode()
        answer = await server.challenge_auth(challenge)
        if answer is MISSING:
            return AuthResult(success=False, handled=True)
        login, _, digest = answer.decode(errors="replace").rpartition(" ")
        secret = self.users.get(login)
        ok = secret is not None and hmac.compare_digest(
            hmac.new(secret.encode(), challenge, "md5").hexdigest(), digest
        )
        return self._auth_result(server, "CRAM-MD5", login, ok)

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode()
        ok = self.users.get(login) == auth_data.password.decode()
        return self._auth_result(server, mechanism, login, ok)

    def _auth_result(self, server, mechanism, login, ok):
        self.auth_attempts.append((mechanism, login, ok))
        if ok:
            server.session.mechanism = mechanism
            server.session.user = login
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(login.encode(), b""))


class UpstreamSMTP(SMTP):
    async def smtp_MAIL(self, arg):
        # aiosmtpd does not know the AUTH= parameter (RFC 4954 §5); note it and pass on.
        if arg:
            words = arg.split()
            auth = [w for w in words if w.upper().startswith("AUTH=")]
            if auth and self.session is not None:
                self.session.mail_auth = auth[0]
                arg = " ".join(w for w in words if w not in auth)
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg):
        plan = self.event_handler.plan
        if plan.get("drop_mid_data", 0) > 0 and self.envelope and self.envelope.rcpt_tos:
            plan["drop_mid_data"] -= 1
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.read(8192)  # some of the message, then hang up
            self.transport.close()
            return
        await super().smtp_DATA(arg)


class _Controller(Controller):
    def __init__(self, handler, smtp_kwargs, **kw):
        self._smtp_kwargs = smtp_kwargs
        super().__init__(handler, **kw)

    def factory(self):
        return UpstreamSMTP(self.handler, **self._smtp_kwargs)


class Certs:
    """A CA and a server certificate for `names`, written as files under `folder`."""

    def __init__(self, folder, names=("localhost", "127.0.0.1")):
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert(*names)
        self.ca_pem = os.path.join(folder, "upstream-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_pem)
        self.ca_der = os.path.join(folder, "upstream-ca.der")
        with open(self.ca_der, "wb") as f:
            f.write(ssl.PEM_cert_to_DER_cert(self.ca.cert_pem.bytes().decode()))

    def server_context(self):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(ctx)
        return ctx


class Upstream:
    """One running upstream server. mode: "starttls", "implicit" or "plain" (no STARTTLS)."""

    def __init__(self, certs, mode="starttls", plan=None, mechanisms=("CRAM-MD5",)):
        self.certs = certs
        self.mode = mode
        self.port = free_port()
        self.handler = Handler(plan)
        ctx = certs.server_context()
        excluded = [m for m in ("PLAIN", "LOGIN", "CRAM-MD5") if m not in mechanisms]
        smtp_kwargs = dict(
            hostname="upstream.test",
            auth_required=True,
            # Implicit TLS is invisible to aiosmtpd, which would then withhold AUTH.
            auth_require_tls=mode != "implicit",
            auth_exclude_mechanism=excluded,
            authenticator=self.handler.authenticator,
            tls_context=ctx if mode == "starttls" else None,
            require_starttls=mode == "starttls",
        )
        self.controller = _Controller(
            self.handler,
            smtp_kwargs,
            hostname="127.0.0.1",
            port=self.port,
            ssl_context=ctx if mode == "implicit" else None,
        )

    @property
    def messages(self):
        return self.handler.messages

    def config(self, **over):
        """The firmware's `upstream` config section for this server."""
        cfg = {
            "host": "localhost",
            "port": self.port,
            "tls": "implicit" if self.mode == "implicit" else "starttls",
            "user": USER,
            "password": PASSWORD,
            "ca": self.certs.ca_pem,
            "auth": ["CRAM-MD5"],
            "timeout": 10,
        }
        cfg.update(over)
        return cfg

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()
