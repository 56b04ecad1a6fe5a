"""SASL client encodings for SMTP AUTH: CRAM-MD5 (RFC 2195), PLAIN, LOGIN."""

import hashlib
from binascii import a2b_base64, b2a_base64, hexlify

from micropython import const

_BLOCK = const(64)  # MD5 block size in bytes, the HMAC key length (RFC 2104 §2)

#: Mechanisms this module can answer, strongest first; the caller picks from the server's
#: advertised list in this order.
MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")


def _b(s):
    return s.encode() if isinstance(s, str) else bytes(s)


def b64(data):
    """Base64 of `data` as bytes, with no line break."""
    return b2a_base64(_b(data), newline=False)


def unb64(text):
    """Decode a base64 server challenge; ValueError when it is not base64."""
    return a2b_base64(_b(text).strip())


def hmac_md5(key, msg):
    """HMAC-MD5 (RFC 2104) as 16 raw bytes; MicroPython has no hmac module."""
    key = _b(key)
    if len(key) > _BLOCK:
        key = hashlib.md5(key).digest()
    key = key + bytes(_BLOCK - len(key))
    inner = hashlib.md5(bytes(k ^ 0x36 for k in key))
    inner.update(_b(msg))
    outer = hashlib.md5(bytes(k ^ 0x5C for k in key))
    outer.update(inner.digest())
    return outer.digest()


def cram_md5(user, password, challenge_b64):
    """Answer a 334 CRAM-MD5 challenge: base64 of "user hex(HMAC-MD5(password, challenge))"."""
    digest = hexlify(hmac_md5(password, unb64(challenge_b64)))
    return b64(_b(user) + b" " + digest)


def plain(user, password):
    """The initial response for AUTH PLAIN (RFC 4616), with an empty authorization id."""
    return b64(b"\0" + _b(user) + b"\0" + _b(password))


def login(user, password):
    """The two answers for AUTH LOGIN, in order: user name, then password.

    The server's prompts ("Username:", "Password:") are not standardised, so the order of
    the 334 replies decides, not their text.
    """
    return b64(user), b64(password)
