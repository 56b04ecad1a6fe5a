# RFC 5321 address syntax: the paths of MAIL and RCPT, mailboxes, and HELO names.
from micropython import const

from .policy import parse_ip

_MAX_PATH = const(256)  # RFC 5321 section 4.5.3.1.3
_MAX_DOMAIN = const(255)  # RFC 5321 section 4.5.3.1.2


def _quote_end(text, i):
    """Index of the quote that closes the quoted string opening at text[i], or -1."""
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 1
        elif c == '"':
            return i
        i += 1
    return -1


def parse_path(arg, prefix):
    """Split 'FROM:<a@b> PARAMS' into ('a@b', [params]); None when malformed. A quoted
    local part ("a b"@c, RFC 5321 section 4.1.2) may hold spaces and angle brackets."""
    if not arg.upper().startswith(prefix):
        return None
    arg = arg[len(prefix) :].lstrip()
    if not arg.startswith("<"):
        return None
    start = 1
    # A source route (@a,@b:user@c) is to be ignored (RFC 5321 appendix C).
    if arg.startswith("<@"):
        colon = arg.find(":")
        if colon < 0 or colon > arg.find(">"):
            return None
        start = colon + 1
    local_end = start
    if arg[start : start + 1] == '"':
        local_end = _quote_end(arg, start)
        if local_end < 0 or arg[local_end + 1 : local_end + 2] != "@":
            return None
    close = arg.find(">", local_end)
    if close < 0:
        return None
    path = arg[start:close]
    rest = arg[close + 1 :]
    if rest and rest[0] != " ":
        return None
    if start > 1 and not path:
        return None  # a route to nobody
    bare = path[local_end + 1 - start :] if local_end > start else path  # past the quotes
    if len(path) > _MAX_PATH or " " in bare or "<" in bare or '"' in bare:
        return None
    return path, rest.split()


# RFC 5321 section 4.1.2: atext is a letter, a digit or one of these.
_ATEXT = "!#$%&'*+-/=?^_`{|}~"
_HEX = "0123456789abcdefABCDEF"


def _dot_string(text):
    """Atoms of atext joined by single dots."""
    if not text or text[0] == "." or text[-1] == "." or ".." in text:
        return False
    for c in text:
        if not (c.isalpha() or c.isdigit() or c == "." or c in _ATEXT):
            return False
    return True


def _quoted_string(text):
    """A quoted string of printable ASCII, with backslash pairs."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return False
    i = 1
    end = len(text) - 1
    while i < end:
        c = text[i]
        if c == "\\":
            i += 1
            if i == end:
                return False  # the closing quote was escaped
        elif c == '"':
            return False
        i += 1
    return True


def _address_literal(text):
    """The inside of [...]: an IPv4 address, or IPv6: with a plausible IPv6 address."""
    if text[:5].upper() == "IPV6:":
        text = text[5:]
        colons = text.count(":")
        if not 2 <= colons <= 7 or text.count("::") > 1:
            return False
        for c in text:
            if c not in _HEX and c != ":" and c != ".":
                return False
        return True
    return parse_ip(text) is not None


def _domain(text):
    """Labels of letters, digits and inner hyphens (RFC 5321 section 4.1.2), or an
    address literal."""
    if text[:1] == "[":
        return text[-1] == "]" and _address_literal(text[1:-1])
    if not text or len(text) > _MAX_DOMAIN:
        return False
    for label in text.split("."):
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-":
            return False
        for c in label:
            if not (c.isalpha() or c.isdigit() or c == "-"):
                return False
    return True


def valid_mailbox(addr):
    at = addr.rfind("@")
    if at < 1:
        return False
    local = addr[:at]
    if not (_quoted_string(local) if local[0] == '"' else _dot_string(local)):
        return False
    return _domain(addr[at + 1 :])


def helo_name(arg):
    """A HELO/EHLO argument that may go into Received:. Devices often send a bare host
    name with underscores or a bare address: accepted, but nothing that could break the
    header (white space, brackets, quotes, semicolons) gets in."""
    if not arg or len(arg) > _MAX_DOMAIN:
        return False
    if arg[0] == "[":
        return arg[-1] == "]" and _address_literal(arg[1:-1])
    for c in arg:
        if not (c.isalpha() or c.isdigit() or c in "-_."):
            return False
    return True
