"""Header rewriting on the way out: the provider's sender in From:, the original kept.

Providers refuse mail whose From: is not the authenticated account, so the message leaves
with `From: "<original name>" <sender>`. Nothing is lost: the original From: line stays in
the message renamed X-Original-From:, and it becomes Reply-To: when the message had none,
so that answers still reach the device's owner. A message whose From: already is the
sender is sent unchanged. A Sender: field, and any From: after the first (RFC 5322 allows
one), would still name a LAN address the provider does not know: they are renamed
X-Original-Sender: and X-Original-From:. The spool copy is never modified: the change
happens while the message streams out, through one bounded line buffer.

A message without Date: gets one here. The LAN side adds Date: only while the clock is
set; a board that took mail right after a power cut, before NTP answered, dates it on the
way out instead of sending the year 2000.
"""

from micropython import const

from .clock import rfc5322_date

_LINE = const(1000)  # RFC 5322 §2.1.1: 998 characters plus CRLF
_HEADER_MAX = const(65536)  # past this the header is not parsed; the message goes as it is
_FIELD_MAX = const(1000)  # the part of a From: field kept for parsing
_NAME_MAX = const(200)  # a longer display name is cut: the new From: line stays short
_RENAMES_MAX = const(8)  # Sender: and extra From: fields renamed; more are left as they are
_PREFIX = b"X-Original-"


def _name(line):
    i = line.find(b":")
    return line[:i].strip().lower() if 0 < i < 77 else None


def _unquote(text):
    # Drop the quoting of quoted-strings; from_header() quotes the whole name again.
    out = bytearray()
    escaped = False
    for c in text:
        if escaped:
            out.append(c)
            escaped = False
        elif c == 0x5C:
            escaped = True
        elif c != 0x22:
            out.append(c)
    return bytes(out)


def _angle(value):
    """Where the first "<" outside quoted strings and comments is, or -1."""
    quoted = escaped = False
    depth = 0
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif c == 0x5C:
            escaped = True
        elif quoted:
            quoted = c != 0x22
        elif c == 0x22:
            quoted = True
        elif c == 0x28:
            depth += 1
        elif c == 0x29 and depth:
            depth -= 1
        elif c == 0x3C and not depth:
            return i
    return -1


def parse_from(value):
    """Return (display name, address) from a From: field body (bytes), best effort."""
    value = b" ".join(value.split())  # unfold
    lt = _angle(value)
    if lt >= 0:
        gt = value.find(b">", lt)
        addr = value[lt + 1 : gt if gt > 0 else len(value)].strip()
        display = _unquote(value[:lt].strip())
    else:
        # "addr (comment)", or a list of addresses of which the first counts.
        addr = value.split(b",")[0]
        display = b""
        lp = addr.find(b"(")
        if lp >= 0:
            display = addr[lp + 1 :].rstrip(b") ")
            addr = addr[:lp]
        addr = addr.strip()
    return display.strip(), addr


def _quoted(text):
    return b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def from_header(display, original_addr, sender):
    """The new From: line. The display name says who really wrote the message; an
    address as display name would look like spoofing, so "dev@lan" shows as "dev at lan"."""
    if not display:
        display = original_addr.replace(b"@", b" at ")
    if len(display) > _NAME_MAX:
        # Encoded words cannot be cut in the middle; other names are cut at a space.
        if b"=?" in display:
            display = original_addr.replace(b"@", b" at ")[:_NAME_MAX]
        else:
            cut = display.rfind(b" ", 0, _NAME_MAX)
            display = display[: cut if cut > 0 else _NAME_MAX] + b"..."
    if b"=?" in display:
        name = display  # RFC 2047 encoded words must not be quoted
    elif display:
        name = _quoted(display)
    else:
        name = b""
    return b"From: " + (name + b" " if name else b"") + b"<" + sender.encode() + b">\r\n"


def _fold(body):
    # A line break before a field body; the next line must start with white space.
    return b"\r\n" if body[:1] in (b" ", b"\t") else b"\r\n "


def _rename(at, line, name):
    """The edit that renames the field starting at `at` (its first line is `line`) to
    X-Original-<name>: (extra, skip). A line that the longer name would push past 998
    octets gets the new name on a line of its own and the old one left out."""
    colon = line.find(b":") + 1
    if len(line.rstrip(b"\r\n")) > _LINE - 2 - len(_PREFIX):
        return (at, _PREFIX + name + b":" + _fold(line[colon:]), colon)
    return (at, _PREFIX, 0)


class Outbound:
    """Wraps a spool file positioned at the message; readinto() gives the rewritten bytes.

    `sender` is the address the provider accepts; `envelope_from` is the original
    envelope sender, used as Reply-To when the message has no From: at all.
    """

    def __init__(self, f, sender, envelope_from):
        self.f = f
        self.base = f.tell()
        # (offset from base, bytes put in there, original bytes left out right after)
        self.edits = []
        self._scan(sender, envelope_from)
        self.edits.sort()
        f.seek(self.base)
        self.pos = 0  # bytes of the original consumed
        self.k = 0  # the next edit
        self.sent = 0  # of its bytes

    @property
    def delta(self):
        """How many bytes longer the message is on the way out."""
        return sum(len(extra) - skip for _, extra, skip in self.edits)

    def _scan(self, sender, envelope_from):
        f = self.f
        offset = 0
        from_at = None
        from_value = b""
        from_first = 0  # length of the From: field's first line, CRLF excluded
        from_colon = 0  # where its body starts, after the colon
        from_cut = False  # from_value holds only the start of the field
        in_from = False
        has_reply_to = False
        has_date = False
        renames = []
        bol = True  # a readline piece that does not end in LF continues the same line
        while offset < _HEADER_MAX:
            line = f.readline(_LINE)
            if not line:
                break
            start = offset
            offset += len(line)
            if bol and line in (b"\r\n", b"\n"):
                offset = start
                break
            if bol and line[:1] in (b" ", b"\t"):
                if in_from:
                    from_cut = from_cut or len(from_value) >= _FIELD_MAX
                    if not from_cut:
                        from_value += line
            elif bol:
                name = _name(line)
                in_from = name == b"from" and from_at is None
                extra_from = name == b"from" and not in_from
                if (extra_from or name == b"sender") and len(renames) < _RENAMES_MAX:
                    renames.append(_rename(start, line, b"From" if extra_from else b"Sender"))
                if in_from:
                    from_at = start
                    from_colon = line.find(b":") + 1
                    from_value = line[from_colon:]
                    from_first = len(line.rstrip(b"\r\n"))
                elif name == b"reply-to":
                    has_reply_to = True
                elif name == b"date":
                    has_date = True
            elif in_from:
                from_first += len(line.rstrip(b"\r\n"))
                from_cut = from_cut or len(from_value) >= _FIELD_MAX
                if not from_cut:
                    from_value += line
            bol = line.endswith(b"\n")
        else:
            return  # a header this long is left alone
        self.edits = renames
        # Fields may stand in any order (RFC 5322 section 3.6), so whatever is added goes
        # in at one place: where From: was, or else at the end of the header.
        date = b"" if has_date else b"Date: " + rfc5322_date().encode() + b"\r\n"
        if from_at is None:
            # No From: at all (RFC 5322 wants one): add it before the end of the header.
            extra = b"From: <" + sender.encode() + b">\r\n" + date
            if envelope_from and not has_reply_to:
                extra += b"Reply-To: <" + envelope_from.encode() + b">\r\n"
            self.edits.append((offset, extra, 0))
            return
        display, addr = parse_from(from_value)
        if addr.lower() == sender.encode().lower():
            if date:
                self.edits.append((offset, date, 0))
            return
        extra = from_header(display, addr, sender) + date
        if not has_reply_to:
            if b"@" not in addr:
                # An empty or unreadable From: gives no one to answer: the envelope does.
                if envelope_from:
                    extra += b"Reply-To: <" + envelope_from.encode() + b">\r\n"
            elif from_cut:
                # Only the start of a long list was kept: answer its first address.
                extra += b"Reply-To: <" + addr + b">\r\n"
            else:
                # The original field body, folding and all, is a valid Reply-To body; it
                # starts on a line of its own when one more line would pass 998 octets.
                fold = _fold(from_value) if from_first > _LINE - 7 else b""
                extra += b"Reply-To:" + fold + from_value.rstrip(b"\r\n") + b"\r\n"
        skip = 0
        if from_first > _LINE - 2 - len(_PREFIX):
            # "X-Original-" would push the line past 998 octets: the field name goes on a
            # line of its own and the original "From:" is left out of the stream.
            extra += _PREFIX + b"From:" + _fold(from_value)
            skip = from_colon
        else:
            extra += _PREFIX  # the original "From:" line follows
        self.edits.append((from_at, extra, skip))

    def readinto(self, buf):
        mv = memoryview(buf)
        if self.k < len(self.edits):
            at, extra, skip = self.edits[self.k]
            if self.pos < at:
                n = self.f.readinto(mv[: min(len(buf), at - self.pos)])
                self.pos += n or 0
                return n
            n = min(len(buf), len(extra) - self.sent)
            mv[:n] = extra[self.sent : self.sent + n]
            self.sent += n
            if self.sent == len(extra):
                self.k += 1
                self.sent = 0
                if skip:
                    self.f.seek(self.base + at + skip)
                    self.pos += skip
            return n
        n = self.f.readinto(buf)
        self.pos += n or 0
        return n
