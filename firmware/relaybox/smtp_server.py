# The LAN side: an RFC 5321 server session per client, streaming DATA to the spool.
import asyncio
import socket
import time

from micropython import const

from . import log, replies
from .address import helo_name, parse_path, valid_mailbox
from .message import Inbound, received
from .spool import is_full

# RFC 5321 section 4.5.3.1: text lines are 1000 octets with CRLF; a dot-stuffed data
# line may carry one octet more on the wire.
_MAX_LINE = const(1000)
_MAX_DATA_LINE = const(1001)
_BUF_SIZE = const(1024)  # one longest line (1001) and a little more
_MAX_TEXT = const(998)  # octets in a message line, without CRLF (RFC 5322 section 2.1.1)
_BACKLOG = const(8)  # connections the network stack queues while all sessions are busy
_FAREWELL_MS = const(2000)  # a client that reads nothing does not hold its socket longer
# Flash kept free for delivery state and the filesystem's own blocks.
_RESERVE = const(32768)

_LONG = object()  # readline's answer for a line longer than the buffer


def _peer_ip(addr):
    if isinstance(addr, tuple):
        return addr[0]
    try:
        fam, ip, _ = socket.sockaddr(addr)
        return socket.inet_ntop(fam, ip)
    except Exception:
        return "unknown"


class LineReader:
    """Bounded line reads from a stream through one buffer that belongs to the session."""

    def __init__(self, stream, session):
        self.s = stream
        self.session = session
        self.buf = bytearray(_BUF_SIZE)
        self.mv = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.at = 0  # where the line last returned starts in buf
        self.long_crlf = False

    def pending(self):
        return self.end > self.start

    async def readline(self, limit):
        """The next line with its LF as a memoryview valid until the next call,
        _LONG when it exceeds limit (the rest of it is skipped), None at end of input."""
        long = False
        last = 0
        while True:
            i = self.buf.find(b"\n", self.start, self.end)
            if i >= 0:
                line = self.mv[self.start : i + 1]
                if long or len(line) > limit:
                    # Whether the skipped line ended in CRLF decides what may follow it.
                    self.long_crlf = (self.buf[i - 1] if i > self.start else last) == 0x0D
                    self.start = i + 1
                    return _LONG
                self.at = self.start
                self.start = i + 1
                return line
            if self.end - self.start > limit:
                long = True
                last = self.buf[self.end - 1]
                self.start = self.end = 0
            elif self.start and self.end == _BUF_SIZE:
                n = self.end - self.start
                self.buf[:n] = self.mv[self.start : self.end]
                self.start, self.end = 0, n
            elif self.start == self.end:
                self.start = self.end = 0
            n = await self.s.readinto(self.mv[self.end :])
            if not n:
                return None
            # The idle clock restarts with each complete line, not each byte: a client that
            # trickles a byte at a time cannot hold its session for ever.
            if self.buf.find(b"\n", self.end, self.end + n) >= 0:
                self.session.last = time.ticks_ms()
            self.end += n


def _is_ascii_text(line):
    for c in line:
        if c < 0x20 and c != 0x09 or c > 0x7E:
            return False
    return True


def _is_8bit_text(line):
    for c in line:
        if c < 0x20 and c != 0x09 or c == 0x7F:
            return False
    return True


class Session:
    def __init__(self, server, stream, peer):
        self.server = server
        self.cfg = server.cfg
        self.stream = stream
        self.peer = peer
        self.reader = LineReader(stream, self)
        self.last = time.ticks_ms()
        self.task = None
        self.timed_out = False
        self.errors = 0
        self.helo = None
        self.esmtp = False
        self._reset()

    def _reset(self):
        self.sender = None
        self.rcpts = []

    async def reply(self, data):
        self.stream.write(data)
        # Always drain: a client that pipelines without reading its replies must wait for
        # its socket, not grow our output buffer.
        await self.stream.drain()

    async def run(self):
        srv = self.server
        if not srv.policy.may_relay(self.peer):
            log.warn("smtp", "peer=%s refused: not in allow list" % self.peer)
            await self.reply(replies.ACCESS_DENIED.format(self.peer).encode())
            await self._refused()
            return
        await self.reply(replies.GREETING.format(srv.hostname).encode())
        while True:
            line = await self.reader.readline(_MAX_LINE)
            if line is None:
                return
            if line is _LONG:
                if await self._error(replies.LINE_TOO_LONG):
                    return
                continue
            if not await self._command(line):
                return

    async def _refused(self):
        # After a 554 greeting the server waits for QUIT and answers 503 to anything
        # else (RFC 5321 section 3.1), within the idle timeout and the error budget.
        while True:
            line = await self.reader.readline(_MAX_LINE)
            if line is None:
                return
            if line is not _LONG and bytes(line[:4]).upper() == b"QUIT":
                await self.reply(replies.CLOSING)
                return
            if await self._error(replies.REFUSED_CLIENT):
                return

    async def _error(self, reply):
        """Answer a client mistake; True when its budget is spent and the session ends."""
        self.errors += 1
        if self.errors >= self.server.max_errors:
            log.warn("smtp", "peer=%s closed: too many errors" % self.peer)
            await self.reply(replies.TOO_MANY_ERRORS)
            return True
        await self.reply(reply)
        return False

    async def _command(self, line):
        n = len(line) - 1
        if n and line[n - 1] == 0x0D:
            n -= 1
        line = line[:n]
        if not _is_ascii_text(line):
            head = bytes(line[:5]).upper()
            if (head == b"MAIL " or head == b"RCPT ") and _is_8bit_text(line):
                # A UTF-8 address, which needs SMTPUTF8 (RFC 6531 section 3.5): a refusal
                # like any other address, not a protocol mistake.
                await self.reply(replies.NON_ASCII_ADDRESS)
                return True
            return not await self._error(replies.SYNTAX)
        text = bytes(line).decode()
        verb, _, arg = text.partition(" ")
        handler = _VERBS.get(verb.upper())
        if handler is None:
            return not await self._error(replies.SYNTAX)
        reply = await handler(self, arg.strip())
        if reply is True:  # QUIT
            return False
        if reply is None:
            return True
        if reply[:2] == b"50" or reply[:3] == b"555":
            # Protocol mistakes count against the budget; refusals (a recipient, the
            # size, a full flash) are ordinary answers a device may get many times.
            return not await self._error(reply)
        await self.reply(reply)
        return not reply.startswith(b"421")

    async def do_helo(self, arg):
        if not helo_name(arg):
            return replies.ARGS
        self._reset()
        self.helo = arg
        self.esmtp = False
        return ("250 %s\r\n" % self.server.hostname).encode()

    async def do_ehlo(self, arg):
        if not helo_name(arg):
            return replies.ARGS
        self._reset()
        self.helo = arg
        self.esmtp = True
        return (
            "250-%s greets %s\r\n250-SIZE %d\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
            "250-ENHANCEDSTATUSCODES\r\n250 HELP\r\n"
            % (self.server.hostname, arg, self.server.max_bytes)
        ).encode()

    async def do_mail(self, arg):
        if self.helo is None:
            return replies.NEED_HELO
        if self.sender is not None:
            return replies.NESTED_MAIL
        parsed = parse_path(arg, "FROM:")
        if parsed is None or parsed[0] and not valid_mailbox(parsed[0]):
            return replies.BAD_SENDER
        path, params = parsed
        seen = []
        for p in params:
            key, _, value = p.upper().partition("=")
            if key in seen:
                return replies.ARGS  # SIZE=1 SIZE=2: which one?
            seen.append(key)
            if key == "SIZE":
                if not value.isdigit():
                    return replies.ARGS
                size = int(value)
                if size > self.server.max_bytes:
                    return replies.SIZE_EXCEEDED
                if size > self.server.spool_free():
                    return replies.STORAGE_FULL  # a temporary shortage (RFC 1870 section 6)
            elif key == "BODY":
                if value not in ("7BIT", "8BITMIME"):
                    return replies.ARGS
            else:
                return replies.PARAM_UNKNOWN
        if self.server.spool_free() <= 0:
            return replies.STORAGE_FULL
        self.sender = path
        return replies.SENDER_OK

    async def do_rcpt(self, arg):
        if self.sender is None:
            return replies.NEED_MAIL if self.helo else replies.NEED_HELO
        parsed = parse_path(arg, "TO:")
        if parsed is None:
            return replies.BAD_RCPT
        path, params = parsed
        # RFC 5321 section 4.5.1: <postmaster> without a domain is always accepted.
        if not (valid_mailbox(path) or path.lower() == "postmaster"):
            return replies.BAD_RCPT
        if params:
            return replies.PARAM_UNKNOWN
        if not self.server.policy.may_relay(self.peer):
            return replies.RELAY_DENIED
        if path in self.rcpts:
            return replies.RCPT_OK  # stored once, so it is delivered once
        if len(self.rcpts) >= self.server.max_rcpts:
            return replies.TOO_MANY_RCPTS
        self.rcpts.append(path)
        return replies.RCPT_OK

    async def do_data(self, arg):
        if arg:
            return replies.NO_DATA_ARGS
        if self.sender is None:
            return replies.NEED_MAIL if self.helo else replies.NEED_HELO
        if not self.rcpts:
            return replies.NEED_RCPT
        try:
            w = self.server.spool.writer(self.sender, self.rcpts, self.peer, self.helo)
        except OSError as e:
            log.error("spool", "cannot start a message: %r" % e)
            return replies.STORAGE_FULL if is_full(e) else replies.LOCAL_ERROR
        try:
            await self.reply(replies.START_DATA)
            result = await self._receive(w)
        except BaseException:
            w.abort()
            raise
        if result is None:
            w.abort()
            return True  # the client went away: nothing was accepted
        if result is not replies.OK:
            w.abort()
            log.warn("smtp", "peer=%s from=<%s> refused: %s" % (self.peer, self.sender, result))
            self._reset()
            return result
        try:
            id = w.commit()
        except OSError as e:
            log.error("spool", "commit failed: %r" % e)
            self._reset()
            return replies.STORAGE_FULL if is_full(e) else replies.LOCAL_ERROR
        log.info(
            "smtp",
            "id=%s from=<%s> rcpt=%d size=%d peer=%s result=queued"
            % (id, self.sender, len(self.rcpts), w.size, self.peer),
        )
        self._reset()
        self.server.queued(id)
        return replies.QUEUED.format(id).encode()

    async def _receive(self, w):
        """Stream message lines into the writer until CRLF.CRLF; return the reply to
        give (OK when the message may be committed) or None when the client left."""
        srv = self.server
        msg = Inbound(
            w,
            received(self.helo, self.esmtp, self.peer, srv.hostname, w.id, self.rcpts),
            w.id,
            srv.hostname,
        )
        result = replies.OK
        size = 0
        room = srv.spool_free()  # what the flash can take without eating the reserve
        after_crlf = True
        while True:
            line = await self.reader.readline(_MAX_DATA_LINE)
            if line is None:
                return None
            if line is _LONG:
                if result is replies.OK:
                    result = replies.DATA_LINE_TOO_LONG
                    w.abort()
                after_crlf = self.reader.long_crlf
                continue
            n = len(line) - 1
            crlf = n > 0 and line[n - 1] == 0x0D
            if crlf:
                n -= 1
            # Only CRLF "." CRLF ends the data; a bare LF never does (SMTP smuggling).
            if n == 1 and line[0] == 0x2E and crlf and after_crlf:
                break
            after_crlf = crlf
            text = line[1:n] if n and line[0] == 0x2E else line[:n]
            size += len(text) + 2
            if result is not replies.OK:
                continue
            buf = self.reader.buf
            lo = self.reader.at + (n - len(text))  # where text starts in buf
            if len(text) > _MAX_TEXT:
                result = replies.DATA_LINE_TOO_LONG
            elif size > srv.max_bytes:
                result = replies.SIZE_EXCEEDED
            elif size > room:
                result = replies.STORAGE_FULL
            elif buf.find(b"\0", lo, lo + len(text)) >= 0:
                # RFC 5322 text has no NUL, and a provider would refuse it later, when
                # the device could no longer be told.
                result = replies.NUL_IN_DATA
            else:
                try:
                    if buf.find(b"\r", lo, lo + len(text)) < 0:
                        msg.line(text)
                    else:
                        # A bare CR is a line end to some servers, so "\r.\r" could end
                        # the data there (SMTP smuggling): it is stored as a line end, as
                        # a bare LF is, and the dot-stuffing on the way out covers it.
                        for piece in bytes(text).split(b"\r"):
                            msg.line(piece)
                except OSError as e:
                    log.error("spool", "write failed: %r" % e)
                    result = replies.STORAGE_FULL if is_full(e) else replies.LOCAL_ERROR
            if result is not replies.OK:
                # The rest is read and thrown away; the flash it took is free again now,
                # for the other clients.
                w.abort()
        if result is replies.OK:
            try:
                msg.finish()
            except OSError as e:
                result = replies.STORAGE_FULL if is_full(e) else replies.LOCAL_ERROR
        return result

    async def do_rset(self, arg):
        if arg:
            return replies.ARGS
        self._reset()
        return replies.OK

    async def do_noop(self, arg):
        return replies.OK

    async def do_quit(self, arg):
        if arg:
            return replies.ARGS
        await self.reply(replies.CLOSING)
        return True

    async def do_help(self, arg):
        return replies.HELP

    async def do_vrfy(self, arg):
        return replies.VRFY if arg else replies.ARGS

    async def do_not_implemented(self, arg):
        return replies.NOT_IMPLEMENTED


_VERBS = {
    "HELO": Session.do_helo,
    "EHLO": Session.do_ehlo,
    "MAIL": Session.do_mail,
    "RCPT": Session.do_rcpt,
    "DATA": Session.do_data,
    "RSET": Session.do_rset,
    "NOOP": Session.do_noop,
    "QUIT": Session.do_quit,
    "HELP": Session.do_help,
    "VRFY": Session.do_vrfy,
    "EXPN": Session.do_not_implemented,
    "TURN": Session.do_not_implemented,
    "ETRN": Session.do_not_implemented,
    "STARTTLS": Session.do_not_implemented,
    "AUTH": Session.do_not_implemented,
}


class Server:
    """Accepts LAN clients; one Session each, up to max_clients at once."""

    def __init__(self, cfg, spool, policy, on_queued=None):
        self.cfg = cfg
        self.spool = spool
        self.policy = policy
        self.on_queued = on_queued
        self.hostname = cfg.get("hostname")
        self.max_bytes = cfg.get("max_message_bytes")
        self.max_rcpts = cfg.get("max_recipients")
        self.max_clients = cfg.get("max_clients")
        self.max_errors = cfg.get("max_errors")
        self.timeout_ms = cfg.get("idle_timeout") * 1000
        self.sessions = []
        self.accepted = 0
        self.listener = None
        self.accept_task = None

    def spool_free(self):
        try:
            return self.spool.free_bytes() - _RESERVE
        except OSError:
            return 0

    def queued(self, id):
        if self.on_queued:
            self.on_queued(id)

    async def start(self):
        host, port = self.cfg.get("listen.host"), self.cfg.get("listen.port")
        family, _, _, _, addr = socket.getaddrinfo(host, port)[0]
        sock = socket.socket(family)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(_BACKLOG)
        except OSError:
            sock.close()
            raise
        self.listener = sock
        self.accept_task = asyncio.create_task(self._accept(sock))
        log.info("smtp", "listening on %s:%d" % (host, port))

    async def _accept(self, sock):
        # Our own accept loop rather than asyncio.start_server's: that one ends for good
        # when the heap cannot hold one more connection's stream, and the relay would then
        # stay deaf. A full heap here costs one client a 421, not the server.
        io = asyncio.core._io_queue
        while True:
            yield io.queue_read(sock)
            try:
                conn, addr = sock.accept()
            except OSError:
                continue  # the client left before we took it
            try:
                conn.setblocking(False)
                stream = asyncio.StreamWriter(conn, {"peername": addr})
                asyncio.create_task(self._client(stream, stream))
            except MemoryError:
                log.warn("smtp", "connection refused: out of memory")
                try:
                    conn.send(replies.NO_MEMORY)
                except OSError:
                    pass
                conn.close()

    async def watchdog(self):
        """Ends sessions idle for longer than idle_timeout (RFC 5321 section 4.5.3.2)."""
        while True:
            await asyncio.sleep_ms(500)
            now = time.ticks_ms()
            for s in self.sessions:
                if not s.timed_out and time.ticks_diff(now, s.last) > self.timeout_ms:
                    s.timed_out = True
                    s.task.cancel()

    async def _client(self, reader, writer):
        peer = _peer_ip(writer.get_extra_info("peername"))
        self.accepted += 1
        if len(self.sessions) >= self.max_clients:
            log.warn("smtp", "peer=%s refused: %d clients already" % (peer, len(self.sessions)))
            await self._close(writer, replies.TOO_BUSY)
            return
        s = None
        farewell = None
        try:
            s = Session(self, writer, peer)  # its buffers may not fit: close all the same
            s.task = asyncio.current_task()
            self.sessions.append(s)
            log.debug("smtp", "peer=%s connected" % peer)
            await s.run()
        except asyncio.CancelledError:
            if s.timed_out:
                log.info("smtp", "peer=%s idle timeout" % peer)
                farewell = replies.IDLE_TIMEOUT
            else:
                farewell = replies.SHUTTING_DOWN
        except OSError as e:
            # Resets and broken pipes are how LAN devices often leave; not worth more.
            log.debug("smtp", "peer=%s connection error %r" % (peer, e))
        except MemoryError:
            # More sessions than this heap holds: the device is told to come back later.
            log.warn("smtp", "peer=%s closed: out of memory" % peer)
            farewell = replies.NO_MEMORY
        except Exception as e:
            log.error("smtp", "peer=%s session failed: %r" % (peer, e))
        finally:
            if s in self.sessions:
                self.sessions.remove(s)
            await self._close(writer, farewell)

    async def _close(self, writer, farewell):
        try:
            if farewell:
                writer.write(farewell)
                await asyncio.wait_for_ms(writer.drain(), _FAREWELL_MS)
        except Exception:  # includes the timeout: a client that reads nothing
            pass
        try:
            writer.close()
            await writer.wait_closed()
        except Exception:
            pass

    async def stop(self, wait_ms):
        """Stop listening and end every session with 421; wait at most wait_ms for them."""
        if self.accept_task:
            self.accept_task.cancel()
            self.listener.close()
        tasks = [s.task for s in self.sessions]
        for t in tasks:
            t.cancel()
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < wait_ms:
            if all(t.done() for t in tasks):
                return
            await asyncio.sleep_ms(20)
