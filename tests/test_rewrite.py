"""Header rewriting on the way out, run under MicroPython through small and large buffers."""

import json
import re

import mpdriver
import pytest

SENDER = "alice@example.net"
DATE = b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n"

DRIVER = """
import json
from relaybox import rewrite

path, sender, env_from, size = json.loads(%r)
with open(path, "rb") as f:
    f.seek(7)  # the spool keeps an envelope before the message
    src = rewrite.Outbound(f, sender, env_from)
    buf = bytearray(size)
    out = bytearray()
    while True:
        n = src.readinto(buf)
        if not n:
            break
        out += buf[:n]
print(json.dumps([out.decode(), src.delta]))
"""


def rewritten(tmp_path, message, env_from="printer@lan", bufsize=7):
    path = tmp_path / "msg"
    path.write_bytes(b"ENVELOP" + message)
    args = json.dumps([str(path), SENDER, env_from, bufsize])
    result = mpdriver.run(DRIVER % args)
    assert result.returncode == 0, result.stderr
    out, delta = json.loads(result.stdout)
    assert len(out.encode()) == len(message) + delta
    return out.encode()


@pytest.mark.parametrize("bufsize", [1, 7, 2048])
def test_from_rewritten_original_kept_as_reply_to(tmp_path, bufsize):
    msg = (
        b"Received: x\r\nFrom: Printer <printer@lan>\r\nSubject: s\r\n"
        + DATE
        + b"\r\nFrom: body\r\n"
    )
    assert rewritten(tmp_path, msg, bufsize=bufsize) == (
        b"Received: x\r\n"
        b'From: "Printer" <alice@example.net>\r\n'
        b"Reply-To: Printer <printer@lan>\r\n"
        b"X-Original-From: Printer <printer@lan>\r\n"
        b"Subject: s\r\n" + DATE + b"\r\nFrom: body\r\n"
    )


def test_existing_reply_to_kept_and_folded_from(tmp_path):
    msg = (
        b'Reply-To: desk@lan\r\nFROM: "Scan \\"3\\"" (x)\r\n <scan@lan>\r\n'
        b"Subject: s\r\n" + DATE + b"\r\nbody\r\n"
    )
    assert rewritten(tmp_path, msg) == (
        b"Reply-To: desk@lan\r\n"
        b'From: "Scan \\"3\\" (x)" <alice@example.net>\r\n'
        b'X-Original-FROM: "Scan \\"3\\"" (x)\r\n <scan@lan>\r\n'
        b"Subject: s\r\n" + DATE + b"\r\nbody\r\n"
    )


def test_bare_address_becomes_readable_name(tmp_path):
    msg = b"From: nas@lan.home\r\n" + DATE + b"\r\nx\r\n"
    assert rewritten(tmp_path, msg).startswith(
        b'From: "nas at lan.home" <alice@example.net>\r\nReply-To: nas@lan.home\r\n'
    )


def test_encoded_word_name_is_not_quoted(tmp_path):
    msg = b"From: =?utf-8?q?K=C3=BChlschrank?= <fridge@lan>\r\n\r\nx\r\n"
    out = rewritten(tmp_path, msg)
    assert out.startswith(b"From: =?utf-8?q?K=C3=BChlschrank?= <alice@example.net>\r\n")


def test_from_already_the_sender_is_unchanged(tmp_path):
    msg = b"From: Alice <Alice@Example.NET>\r\nSubject: s\r\n" + DATE + b"\r\nx\r\n"
    assert rewritten(tmp_path, msg) == msg


def test_missing_from_is_added_with_envelope_sender_as_reply_to(tmp_path):
    msg = b"Subject: s\r\nDate: d\r\n\r\nbody\r\n"
    assert rewritten(tmp_path, msg) == (
        b"Subject: s\r\nDate: d\r\nFrom: <alice@example.net>\r\nReply-To: <printer@lan>\r\n"
        b"\r\nbody\r\n"
    )
    assert rewritten(tmp_path, msg, env_from="") == (
        b"Subject: s\r\nDate: d\r\nFrom: <alice@example.net>\r\n\r\nbody\r\n"
    )


def test_long_header_lines_and_body_pass_through(tmp_path):
    msg = (
        b"X-Long: " + b"a" * 3000 + b"\r\nFrom: p@lan\r\n" + DATE + b"\r\n" + b"b" * 5000 + b"\r\n"
    )
    out = rewritten(tmp_path, msg, bufsize=2048)
    assert (
        out
        == b"X-Long: "
        + b"a" * 3000
        + (
            b'\r\nFrom: "p at lan" <alice@example.net>\r\nReply-To: p@lan\r\n'
            b"X-Original-From: p@lan\r\n" + DATE + b"\r\n"
        )
        + b"b" * 5000
        + b"\r\n"
    )


DATE_LINE = re.compile(rb"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n")


@pytest.mark.parametrize(
    "msg, before",
    [
        (
            b"From: cam@lan\r\nSubject: s\r\n\r\nx\r\n",
            b'From: "cam at lan" <alice@example.net>\r\n',
        ),
        (b"From: <alice@example.net>\r\nSubject: s\r\n\r\nx\r\n", b"Subject: s\r\n"),
        (b"Subject: s\r\n\r\nx\r\n", b"From: <alice@example.net>\r\n"),
    ],
    ids=["from rewritten", "from is the sender", "no from"],
)
def test_missing_date_is_added_on_the_way_out(tmp_path, msg, before):
    """A message taken while a board's clock was unset has no Date: until it leaves."""
    out = rewritten(tmp_path, msg)
    m = DATE_LINE.search(out)
    assert m, out
    assert out.count(b"Date: ") == 1
    assert out[: m.start()].endswith(before), out
    assert out.endswith(b"\r\n\r\nx\r\n")


def lines_of(out):
    return out.split(b"\r\n")


@pytest.mark.parametrize("bufsize,space", [(7, b" "), (2048, b" "), (2048, b"")])
def test_rewritten_lines_stay_within_998_octets(tmp_path, bufsize, space):
    name = b"N" * 60 + b" " + b"x" * (994 - 6 - 61 - 10)  # a From: line of 994 octets
    msg = b"From:" + space + name + b" <dev@lan>\r\nSubject: s\r\n" + DATE + b"\r\nbody\r\n"
    assert len(msg.split(b"\r\n")[0]) == 993 + len(space)
    out = rewritten(tmp_path, msg, bufsize=bufsize)
    head, body = out.split(b"\r\n\r\n")
    assert max(len(line) for line in lines_of(out)) <= 998, [len(x) for x in lines_of(out)]
    # The original is kept whole, as folded fields.
    assert b"\r\nX-Original-From:\r\n " + name + b" <dev@lan>\r\n" in out
    fold = b"\r\n " if space else b""  # 997 octets still fit on one line
    assert b"\r\nReply-To:" + fold + name + b" <dev@lan>\r\n" in out
    assert re.search(rb'From: "N{60}\.\.\." <alice@example\.net>\r\n', head), head[:300]
    assert body == b"body\r\n"


def test_angle_bracket_inside_a_quoted_name_is_not_the_address(tmp_path):
    msg = b'From: "Al <alice@example.net>" <evil@lan>\r\n' + DATE + b"\r\nx\r\n"
    out = rewritten(tmp_path, msg)
    assert out.startswith(b'From: "Al <alice@example.net>" <alice@example.net>\r\n'), out
    assert b'\r\nX-Original-From: "Al <alice@example.net>" <evil@lan>\r\n' in out


def test_empty_from_gives_the_envelope_sender_as_reply_to(tmp_path):
    out = rewritten(tmp_path, b"From:\r\n" + DATE + b"\r\nx\r\n")
    assert b"\r\nReply-To: <printer@lan>\r\n" in out
    assert b"Reply-To:\r\n" not in out


def test_from_list_longer_than_kept_replies_to_its_first_address(tmp_path):
    many = b",\r\n ".join(b"dev%03d@lan" % i for i in range(200))
    out = rewritten(tmp_path, b"From: " + many + b"\r\n" + DATE + b"\r\nx\r\n")
    assert b"\r\nReply-To: <dev000@lan>\r\n" in out
    assert b"\r\nX-Original-From: " + many + b"\r\n" in out


@pytest.mark.parametrize("bufsize", [1, 7, 2048])
def test_sender_and_a_second_from_are_renamed(tmp_path, bufsize):
    msg = (
        b"Sender: nas@lan\r\nFrom: Printer <printer@lan>\r\nSubject: s\r\n"
        b"from: Other <other@lan>\r\n" + DATE + b"\r\nFrom: body\r\nSender: body\r\n"
    )
    assert rewritten(tmp_path, msg, bufsize=bufsize) == (
        b"X-Original-Sender: nas@lan\r\n"
        b'From: "Printer" <alice@example.net>\r\n'
        b"Reply-To: Printer <printer@lan>\r\n"
        b"X-Original-From: Printer <printer@lan>\r\n"
        b"Subject: s\r\n"
        b"X-Original-from: Other <other@lan>\r\n" + DATE + b"\r\nFrom: body\r\nSender: body\r\n"
    )


def test_sender_renamed_when_from_already_is_the_account(tmp_path):
    msg = b"From: <alice@example.net>\r\nSender: cam@lan\r\n" + DATE + b"\r\nx\r\n"
    assert rewritten(tmp_path, msg) == (
        b"From: <alice@example.net>\r\nX-Original-Sender: cam@lan\r\n" + DATE + b"\r\nx\r\n"
    )


def test_long_sender_line_renamed_within_998_octets(tmp_path):
    value = b"x" * 980 + b"@lan"
    msg = b"From: a@lan\r\nSender: " + value + b"\r\n" + DATE + b"\r\nx\r\n"
    out = rewritten(tmp_path, msg)
    assert b"\r\nX-Original-Sender:\r\n " + value + b"\r\n" in out
    assert b"\r\nSender:" not in out.split(b"\r\n\r\n")[0]
    assert max(len(line) for line in lines_of(out)) <= 998


def test_renames_are_bounded(tmp_path):
    msg = b"From: a@lan\r\n" + b"Sender: s@lan\r\n" * 20 + DATE + b"\r\nx\r\n"
    out = rewritten(tmp_path, msg)
    assert lines_of(out).count(b"X-Original-Sender: s@lan") == 8
    assert lines_of(out).count(b"Sender: s@lan") == 12
