"""SASL encodings of the firmware under MicroPython, checked against CPython's hmac."""

import base64
import hmac
import os
import random

import mpdriver

# RFC 2195 §2, the worked example.
RFC_CHALLENGE = "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
RFC_RESPONSE = "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"


def mp_lines(script):
    result = mpdriver.run("from relaybox import sasl\n" + script)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_cram_md5_rfc2195_example():
    out = mp_lines(f"print(sasl.cram_md5('tim', 'tanstaaftanstaaf', {RFC_CHALLENGE!r}).decode())")
    assert out == [RFC_RESPONSE]


def test_hmac_md5_matches_cpython_for_random_keys():
    rng = random.Random(2195)
    # Key lengths around the 64-byte block: shorter, exact, longer (hashed first), empty.
    cases = [(os.urandom(n), rng.randbytes(rng.randrange(0, 300))) for n in (0, 1, 16, 63, 64, 65)]
    cases += [(rng.randbytes(rng.randrange(65, 400)), rng.randbytes(40)) for _ in range(20)]
    cases += [(rng.randbytes(rng.randrange(1, 64)), rng.randbytes(40)) for _ in range(20)]
    script = "from binascii import hexlify\n" + "".join(
        f"print(hexlify(sasl.hmac_md5({k!r}, {m!r})).decode())\n" for k, m in cases
    )
    expected = [hmac.new(k, m, "md5").hexdigest() for k, m in cases]
    assert mp_lines(script) == expected


def test_cram_md5_with_long_password_and_utf8_user():
    password = "p" * 100 + "\u00e9"
    challenge = b"<12345.6789@mail.example.net>"
    ch64 = base64.b64encode(challenge).decode()
    out = mp_lines(
        f"print(sasl.cram_md5('j\u00f6rg@example.net', {password!r}, {ch64!r}).decode())"
    )
    digest = hmac.new(password.encode(), challenge, "md5").hexdigest()
    assert base64.b64decode(out[0]) == "j\u00f6rg@example.net ".encode() + digest.encode()


def test_plain_and_login_encodings():
    out = mp_lines(
        "print(sasl.plain('alice@example.net', 's3cr\u00e9t').decode())\n"
        "print(b' '.join(sasl.login('alice@example.net', 's3cr\u00e9t')).decode())\n"
    )
    assert base64.b64decode(out[0]) == b"\0alice@example.net\0s3cr\xc3\xa9t"
    user, password = out[1].split()
    assert base64.b64decode(user) == b"alice@example.net"
    assert base64.b64decode(password) == "s3cr\u00e9t".encode()


def test_bad_challenge_raises_value_error():
    out = mp_lines(
        "try:\n    sasl.cram_md5('u', 'p', 'abc')\nexcept ValueError:\n    print('ValueError')\n"
    )
    assert out == ["ValueError"]
