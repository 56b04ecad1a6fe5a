"""Outbound connections: plain, implicit TLS or STARTTLS upgrade, verified, with timeouts."""

import asyncio
import os
import time
from binascii import a2b_base64

import tls
from micropython import const

_CA_MAX = const(65536)  # a CA bundle for one provider is a few KB; refuse anything silly
_POLL_MS = const(10)  # how often a handshake in progress is pushed on


class TLSError(Exception):
    """The TLS layer failed: unreadable CA file, handshake error or certificate refused."""


def load_ca(path):
    """Return the DER certificates in `path`, a PEM file (one or more certs) or one DER cert."""
    try:
        size = os.stat(path)[6]
        if size > _CA_MAX:
            raise TLSError("CA file %s is larger than %d bytes" % (path, _CA_MAX))
        with open(path, "rb") as f:
            data = f.read(size)
    except OSError as e:
        raise TLSError("cannot read CA file %s: %s" % (path, e)) from None
    if b"-----BEGIN" not in data:
        if not data:
            raise TLSError("CA file %s is empty" % path)
        return [data]
    ders = []
    body = None
    for line in data.split(b"\n"):
        line = line.strip()
        if line.startswith(b"-----BEGIN CERTIFICATE"):
            body = []
        elif line.startswith(b"-----END CERTIFICATE"):
            if body is not None:
                try:
                    ders.append(a2b_base64(b"".join(body)))
                except ValueError:
                    raise TLSError("CA file %s has a damaged certificate" % path) from None
            body = None
        elif body is not None:
            body.append(line)
    if not ders:
        raise TLSError("CA file %s holds no certificate" % path)
    return ders


def client_context(ca_path):
    """A client context that requires a certificate signed by the CA in `ca_path`."""
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    # PROTOCOL_TLS_CLIENT already requires verification; say so in case a port differs.
    ctx.verify_mode = tls.CERT_REQUIRED
    for der in load_ca(ca_path):
        try:
            # This build takes cadata only positionally, and only as DER.
            ctx.load_verify_locations(der)
        except Exception as e:
            raise TLSError("CA file %s: %s" % (ca_path, _why(e))) from None
    return ctx


def _why(e):
    # mbedTLS puts its message between newlines; keep it on one log line.
    return " ".join(str(e).split()) or repr(e)


def deadline(seconds):
    """A point in time `seconds` from now, for Conn.readinto."""
    return time.ticks_add(time.ticks_ms(), int(seconds * 1000))


class Conn:
    """One connection to the upstream server, read and written through an asyncio stream."""

    def __init__(self, stream, timeout):
        self.stream = stream
        self.timeout = timeout
        self.secure = False
        self._pending = b""  # application bytes read while a TLS handshake was pushed on

    async def readinto(self, buf, until=None):
        """Read some bytes into `buf`; 0 means the peer closed. Raises OSError when nothing
        came within the timeout, or when `until` (from deadline()) has passed."""
        if self._pending:
            n = min(len(buf), len(self._pending))
            buf[:n] = self._pending[:n]
            self._pending = self._pending[n:]
            return n
        if until is None:
            until = deadline(self.timeout)
        while True:
            left = time.ticks_diff(until, time.ticks_ms())
            if left <= 0:
                raise OSError("read timeout")
            try:
                n = await asyncio.wait_for_ms(self.stream.readinto(buf), left)
            except asyncio.TimeoutError:
                raise OSError("read timeout") from None
            # A TLS socket can be readable before a whole record is in: that reads as None.
            if n is not None:
                return n

    async def write(self, data):
        """Write all of `data`, waiting at most the timeout for the peer to take it."""
        self.stream.write(data)
        try:
            await asyncio.wait_for(self.stream.drain(), self.timeout)
        except asyncio.TimeoutError:
            raise OSError("write timeout") from None

    async def starttls(self, ctx, host, first):
        """Upgrade to TLS after the server's 220 to STARTTLS, then send `first` inside it.

        Nothing read before the upgrade survives it (RFC 3207 §4.2). The handshake is pushed
        on by writing `first` (the new EHLO): mbedTLS sends no application data before the
        certificate has been verified, so a refused certificate means nothing was sent.
        """
        self._pending = b""
        raw = self.stream.s
        sock = _wrap(ctx, raw, host)
        # mbedTLS wants the same buffer again after each "not yet", so pass `first` whole.
        try:
            n = await _drive(sock, self.timeout, lambda: sock.write(first))
        except Exception:
            _close(sock)  # frees the TLS context now, not at the next garbage collection
            raise
        self.stream = asyncio.StreamReader(sock)
        self.secure = True
        if n < len(first):
            await self.write(first[n:])

    def close(self):
        try:
            self.stream.close()
        except Exception:  # closing a half-dead socket can fail; the socket is gone either way
            pass


def _close(sock):
    try:
        sock.close()
    except Exception:
        pass


def _wrap(ctx, raw, host):
    try:
        return ctx.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)
    except Exception as e:
        raise TLSError(_why(e)) from None


async def _drive(sock, timeout, step):
    # The asyncio stream cannot run a handshake (it waits for a readable socket, and in
    # TLS the client speaks first), so call `step` until mbedTLS stops asking for more.
    deadline = time.ticks_add(time.ticks_ms(), int(timeout * 1000))
    while True:
        try:
            n = step()
        except OSError as e:
            # A positive errno is the network (refused, reset); mbedTLS codes are negative.
            if e.args and isinstance(e.args[0], int) and e.args[0] > 0:
                raise
            raise TLSError("handshake failed: %s" % _why(e)) from None
        except Exception as e:  # mbedTLS reports a refused certificate as ValueError
            raise TLSError(_why(e)) from None
        if n is not None:
            return n
        if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
            raise TLSError("handshake timeout")
        await asyncio.sleep_ms(_POLL_MS)


async def connect(host, port, timeout, ctx=None):
    """Open a connection; with `ctx`, implicit TLS (RFC 8314) verified against `host`."""
    try:
        reader, _ = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except asyncio.TimeoutError:
        raise OSError("connect timeout") from None
    conn = Conn(reader, timeout)
    if ctx is None:
        return conn
    sock = None
    try:
        sock = _wrap(ctx, reader.s, host)
        buf = bytearray(256)
        # The server speaks first after the handshake, so reading pushes it on.
        n = await _drive(sock, timeout, lambda: sock.readinto(buf))
    except Exception:
        if sock is not None:
            _close(sock)
        conn.close()
        raise
    conn.stream = asyncio.StreamReader(sock)
    conn.secure = True
    conn._pending = bytes(buf[:n])
    return conn
