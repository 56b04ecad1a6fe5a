"""Outbound SMTP submission client: TLS, EHLO, AUTH, pipelined MAIL/RCPT/DATA, streamed body."""

from micropython import const

from . import sasl, tlsconn

_LINE_MAX = const(1000)  # reply lines are at most 512 octets (RFC 5321 §4.5.3.1.5)
_REPLY_LINES = const(100)  # an EHLO reply lists a dozen extensions; more is a broken server
_CHUNK = const(2048)  # body bytes read from the spool per write
# Dot-stuffing adds at most one byte per two ("\n." -> "\n.."), plus the final CRLF.CRLF.
_OUT = const(_CHUNK + _CHUNK // 2 + 8)
_DATA_WAIT = const(600)  # seconds for the reply to the final dot (RFC 5321 §4.5.3.2.6)
_QUIT_WAIT = const(5)
_NL = const(10)
_DOT = const(46)


class SubmitError(Exception):
    """A failure talking to the upstream server.

    `code` is the SMTP reply code, or 0 when there was no reply (network, TLS, timeout);
    `temporary` says whether trying again later can help; `stage` names the step.
    """

    def __init__(self, stage, code, text, temporary):
        super().__init__("%s: %s %s" % (stage, code or "-", text))
        self.stage = stage
        self.code = code
        self.text = text
        self.temporary = temporary
        self.results = None  # with stage "rcpt": [(rcpt, code, text)] when all were refused
        self.connected = False  # our own refusal on a sound connection: it still gets QUIT


def _refusal(stage, text, temporary):
    e = SubmitError(stage, 0, text, temporary)
    e.connected = True
    return e


# MicroPython's errno table is small; the ports share these (Linux) numbers.
_ERRNO_NAMES = {
    32: "EPIPE",
    103: "ECONNABORTED",
    104: "ECONNRESET",
    107: "ENOTCONN",
    110: "ETIMEDOUT",
    113: "EHOSTUNREACH",
}


def _io_text(e):
    """A readable reason for an exception from the socket layer ("32" says nothing)."""
    text = " ".join(str(e).split())
    if text.isdigit() and int(text) in _ERRNO_NAMES:
        return "[Errno %s] %s" % (text, _ERRNO_NAMES[int(text)])
    return text or type(e).__name__


def _failure(stage, code, text):
    return SubmitError(stage, code, text, code < 500)


def _ehlo_name(hostname):
    # A bare IP address is not a domain: EHLO wants it as an address literal.
    if hostname and all(c.isdigit() or c == "." for c in hostname):
        return "[%s]" % hostname
    return hostname or "relaybox"


class Upstream:
    """One authenticated session with the owner's mail provider."""

    def __init__(self, ucfg, hostname, log):
        self.host = ucfg["host"]
        self.mode = ucfg.get("tls") or "starttls"
        self.port = ucfg.get("port") or (465 if self.mode == "implicit" else 587)
        self.user = ucfg.get("user")
        self._password = ucfg.get("password")
        self.ca = ucfg.get("ca")
        self.allowed = ucfg.get("auth") or ["CRAM-MD5"]
        self.timeout = ucfg.get("timeout") or 30
        self.ehlo = _ehlo_name(hostname)
        self.log = log
        self.conn = None
        self.ext = {}  # EHLO keyword -> its parameters
        self.mechanism = None  # the AUTH mechanism that succeeded
        self._ctx = None
        self._stage = "connect"
        # Allocated once: a reply line buffer and the body buffers.
        self._rbuf = bytearray(_LINE_MAX)
        self._rmv = memoryview(self._rbuf)
        self._rs = 0  # first unread byte in _rbuf
        self._re = 0  # end of the bytes read into _rbuf
        self._in = bytearray(_CHUNK)
        self._out = bytearray(_OUT)

    @property
    def alive(self):
        return self.conn is not None

    def _info(self, msg):
        self.log.info("submit", msg)

    # -- the public steps; network trouble becomes SubmitError here and nowhere else --

    async def open(self):
        """Connect, secure, greet and authenticate; raises SubmitError."""
        try:
            await self._guard(self._open())
        except SubmitError:
            await self.close()  # a refusal (535, no STARTTLS) still ends with QUIT
            raise
        where = "%s:%d" % (self.host, self.port)
        how = ("as %s with %s" % (self.user, self.mechanism)) if self.mechanism else "without AUTH"
        self._info("session open to %s, TLS, %s" % (where, how))

    async def send(self, mail_from, rcpts, src, size=None):
        """Send one message; return [(rcpt, code, text)]. Raises SubmitError when the
        message as a whole was refused or the session broke."""
        return await self._guard(self._send(mail_from, rcpts, src, size))

    async def reset(self):
        """RSET between messages, so each starts from a clean transaction."""
        self._stage = "mail"
        code, text = await self._guard(self._command(b"RSET\r\n"))
        if code != 250:
            await self.close()
            raise _failure("mail", code, "RSET refused: " + text)

    async def close(self):
        """Say QUIT and close; never raises."""
        conn = self.conn
        if conn is None:
            return
        try:
            conn.timeout = _QUIT_WAIT
            await conn.write(b"QUIT\r\n")
            await self._reply()
        except Exception:  # the session ends either way; a server that already left is fine
            pass
        self._drop()

    def _drop(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self._rs = self._re = 0

    async def _guard(self, coro):
        try:
            return await coro
        except SubmitError as e:
            if e.code == 0 and not e.connected or e.code == 421:
                self._drop()
            raise
        except tlsconn.TLSError as e:
            self._drop()
            raise SubmitError("tls", 0, str(e), True) from None
        except Exception as e:  # OSError, timeouts, anything from the socket layer
            self._drop()
            raise SubmitError(self._stage, 0, _io_text(e), True) from None

    # -- reading replies --

    async def _line(self, deadline):
        buf = self._rbuf
        while True:
            i = buf.find(b"\n", self._rs, self._re)
            if i >= 0:
                line = bytes(self._rmv[self._rs : i])
                self._rs = i + 1
                return line
            if self._rs:
                # Move the partial line to the front; it is shorter than the buffer.
                n = self._re - self._rs
                buf[:n] = bytes(self._rmv[self._rs : self._re])
                self._rs, self._re = 0, n
            if self._re == _LINE_MAX:
                raise SubmitError(self._stage, 0, "reply line too long", True)
            if self.conn is None:
                raise SubmitError(self._stage, 0, "not connected", True)
            n = await self.conn.readinto(self._rmv[self._re :], deadline)
            if not n:
                raise SubmitError(self._stage, 0, "connection closed by server", True)
            self._re += n

    async def _reply(self):
        """Read one reply, all its lines; return (code, text) with lines joined by "\\n".

        The whole reply must come within the timeout, however slowly its bytes trickle in.
        A 421 ends the session whatever the command was (RFC 5321 §3.8): it raises.
        """
        lines = []
        deadline = tlsconn.deadline(self.conn.timeout) if self.conn else 0
        while True:
            line = (await self._line(deadline)).rstrip(b"\r")
            code = line[:3]
            sep = line[3:4]
            if (
                len(code) != 3
                or not code.isdigit()
                or code[0] not in b"2345"
                or sep not in (b" ", b"-", b"")
            ):
                raise SubmitError(self._stage, 0, "malformed reply %r" % line[:40], True)
            if len(lines) == _REPLY_LINES:
                raise SubmitError(
                    self._stage, 0, "reply longer than %d lines" % _REPLY_LINES, True
                )
            lines.append(_text(line[4:]))
            if sep != b"-":
                code, text = int(code), "\n".join(lines)
                if code == 421:
                    raise _failure(self._stage, code, text)
                return code, text

    async def _write(self, data):
        # Bytes nobody asked for would be taken as the reply to the next command and
        # shift every reply after it: a server that does that is not talked to further.
        if self._re > self._rs:
            raise SubmitError(self._stage, 0, "server sent an unrequested reply", True)
        await self.conn.write(data)

    async def _command(self, line):
        await self._write(line)
        return await self._reply()

    # -- session setup --

    async def _open(self):
        self._drop()
        self.ext = {}
        self.mechanism = None
        if self.mode not in ("starttls", "implicit"):
            raise SubmitError("tls", 0, "upstream.tls must be starttls or implicit", False)
        self._stage = "tls"
        if self._ctx is None:
            try:
                self._ctx = tlsconn.client_context(self.ca)
            except tlsconn.TLSError as e:
                # A missing or broken CA file stays broken until the owner fixes it.
                raise SubmitError("tls", 0, str(e), False) from None
        self._stage = "connect"
        implicit = self.mode == "implicit"
        self.conn = await tlsconn.connect(
            self.host, self.port, self.timeout, self._ctx if implicit else None
        )
        code, text = await self._reply()
        if code != 220:
            raise _failure("connect", code, text)
        await self._ehlo()
        if not implicit:
            await self._starttls()
        await self._auth()
        self._stage = "mail"

    async def _ehlo(self, first_sent=False):
        self._stage = "ehlo"
        if first_sent:
            code, text = await self._reply()
        else:
            code, text = await self._command(b"EHLO %s\r\n" % self.ehlo.encode())
        if code != 250:
            raise _failure("ehlo", code, text)
        ext = {}
        for line in text.split("\n")[1:]:
            word, _, params = line.partition(" ")
            word = word.upper()
            if word.startswith("AUTH="):  # the pre-standard form some servers still send
                word, params = "AUTH", word[5:] + " " + params
            ext[word] = (ext.get(word, "") + " " + params).strip()
        self.ext = ext

    async def _starttls(self):
        self._stage = "tls"
        if "STARTTLS" not in self.ext:
            raise _refusal("tls", "server does not offer STARTTLS; not sending", True)
        code, text = await self._command(b"STARTTLS\r\n")
        if code != 220:
            raise _failure("tls", code, "STARTTLS refused: " + text)
        if self._re > self._rs:
            # Bytes after the 220 came before TLS and could be an attacker's (RFC 3207 §6).
            self.log.warn("submit", "discarded %d bytes sent before TLS" % (self._re - self._rs))
        self._rs = self._re = 0
        self.ext = {}
        # The new EHLO pushes the handshake on; it leaves only once the certificate verified.
        await self.conn.starttls(self._ctx, self.host, b"EHLO %s\r\n" % self.ehlo.encode())
        await self._ehlo(first_sent=True)

    async def _auth(self):
        self._stage = "auth"
        if not self.user:
            return
        offered = self.ext.get("AUTH", "").upper().split()
        if not offered:
            raise _refusal("auth", "server offers no AUTH after TLS", True)
        usable = [m for m in sasl.MECHANISMS if m in offered and m in self.allowed]
        if not usable:
            text = "no allowed mechanism: server offers %s, config allows %s" % (
                " ".join(offered),
                " ".join(self.allowed),
            )
            raise _refusal("auth", text, False)
        if not self.conn.secure:  # cannot happen with tls required; never risk it
            raise SubmitError("auth", 0, "refusing AUTH outside TLS", False)
        mech = usable[0]
        user, password = self.user, self._password
        if mech == "CRAM-MD5":
            code, text = await self._command(b"AUTH CRAM-MD5\r\n")
            if code == 334:
                try:
                    answer = sasl.cram_md5(user, password, text)
                except ValueError:
                    await self._command(b"*\r\n")  # cancel (RFC 4954 §4)
                    raise _refusal("auth", "bad CRAM-MD5 challenge", True) from None
                code, text = await self._command(answer + b"\r\n")
        elif mech == "PLAIN":
            code, text = await self._command(b"AUTH PLAIN " + sasl.plain(user, password) + b"\r\n")
        else:
            code, text = await self._command(b"AUTH LOGIN\r\n")
            for answer in sasl.login(user, password):
                if code != 334:
                    break
                code, text = await self._command(answer + b"\r\n")
        if code != 235:
            if code == 535:
                text = "credentials refused (%s as %s): %s" % (mech, user, text)
            raise _failure("auth", code, text if code >= 400 else "unexpected reply " + text)
        self.mechanism = mech

    # -- one message --

    def _mail_line(self, mail_from, size):
        line = "MAIL FROM:<%s>" % mail_from
        if "SIZE" in self.ext and size is not None:
            line += " SIZE=%d" % size
        if "8BITMIME" in self.ext:
            # Declaring 8BITMIME is right for 7-bit messages too (RFC 6152 §3).
            line += " BODY=8BITMIME"
        if self.mechanism:
            # The relay cannot vouch for whoever on the LAN wrote this (RFC 4954 §5).
            line += " AUTH=<>"
        return line.encode() + b"\r\n"

    async def _send(self, mail_from, rcpts, src, size):
        if self.conn is None:
            raise SubmitError("mail", 0, "not connected", True)
        limit = self.ext.get("SIZE", "")
        if size is not None and limit.isdigit() and 0 < int(limit) < size:
            raise SubmitError(
                "mail", 552, "message of %d bytes exceeds limit %s" % (size, limit), False
            )
        self._stage = "mail"
        mail = self._mail_line(mail_from, size)
        rcpt_lines = [b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts]
        if "PIPELINING" in self.ext:
            # One write for the whole envelope; replies come back in order (RFC 2920).
            await self._write(mail + b"".join(rcpt_lines) + b"DATA\r\n")
            mcode, mtext = await self._reply()
            self._stage = "rcpt"
            results = []
            for r in rcpts:
                code, text = await self._reply()
                results.append((r, code, text))
            self._stage = "data"
            dcode, dtext = await self._reply()
        else:
            mcode, mtext = await self._command(mail)
            results = []
            dcode, dtext = 503, "not sent"
            if mcode == 250:
                self._stage = "rcpt"
                for i, r in enumerate(rcpts):
                    code, text = await self._command(rcpt_lines[i])
                    results.append((r, code, text))
                if any(code in (250, 251) for _, code, _ in results):
                    self._stage = "data"
                    dcode, dtext = await self._command(b"DATA\r\n")
        final = None  # the reply to the end of the body, once one was sent
        if dcode == 354:
            accepted = mcode == 250 and any(c in (250, 251) for _, c, _ in results)
            # With pipelining a server may say 354 although nobody can receive the
            # message; an empty body ends that transaction without sending the message.
            if accepted:
                await self._body(src)
            else:
                await self.conn.write(b".\r\n")
            self.conn.timeout = max(self.timeout, _DATA_WAIT)
            try:
                final = await self._reply()
            finally:
                if self.conn is not None:
                    self.conn.timeout = self.timeout
        elif dcode < 400:
            # DATA is answered by 354 (RFC 5321 §4.3.2); a 250 here would make a message
            # look delivered that the server never saw.
            raise SubmitError("data", 0, "unexpected reply to DATA: %d %s" % (dcode, dtext), True)
        if mcode != 250:
            raise _failure("mail", mcode, mtext)
        if not results or not any(c in (250, 251) for _, c, _ in results):
            # Every recipient refused: the message fails as a whole, with the worst news.
            temp = all(c < 500 for _, c, _ in results)
            code = max(c for _, c, _ in results) if results else 554
            text = "; ".join("%s: %d %s" % (r, c, t) for r, c, t in results)
            err = SubmitError("rcpt", code, text, temp)
            err.results = results  # each recipient's own answer, for per-recipient retries
            raise err
        if final is None:
            raise _failure("data", dcode, dtext)  # DATA itself refused
        if final[0] != 250:
            raise _failure("data", final[0], final[1])
        return results

    async def _body(self, src):
        """Stream `src` with dot-stuffing (RFC 5321 §4.5.2) and end with CRLF.CRLF."""
        self._stage = "data"
        inb, out = self._in, self._out
        inmv, outmv = memoryview(inb), memoryview(out)
        at_bol = True  # the next byte starts a line
        last = b"\r\n"  # the last two bytes sent, to know whether a CRLF is missing at the end
        o = 0  # stuffed bytes in `out` not written yet
        while True:
            n = src.readinto(inb)
            if not n:
                break
            # Each chunk goes out only once the next read shows it is not the last, so the
            # last one leaves together with the final dot: a lone small write would wait
            # for the peer's delayed ACK (Nagle), some 40 ms per message.
            if o:
                await self.conn.write(outmv[:o])
            o = 0
            pos = 0
            if at_bol and inb[0] == _DOT:
                out[0] = _DOT
                o = 1
            while True:
                i = inb.find(b"\n.", pos, n)
                end = n if i < 0 else i + 2
                k = end - pos
                outmv[o : o + k] = inmv[pos:end]
                o += k
                if i < 0:
                    break
                out[o] = _DOT  # the line starts with a dot: double it
                o += 1
                pos = end
            at_bol = inb[n - 1] == _NL
            last = bytes(outmv[o - 2 : o]) if o >= 2 else last[1:] + bytes(outmv[:o])
        tail = b".\r\n" if last == b"\r\n" else b"\r\n.\r\n"
        outmv[o : o + len(tail)] = tail
        await self.conn.write(outmv[: o + len(tail)])


def _text(raw):
    # Reply text is for logs and bounces; a server's stray 8-bit bytes must not break that.
    try:
        return raw.decode()
    except UnicodeError:
        return "".join(chr(b) if b < 128 else "?" for b in raw)
