# What the relay does to an incoming message while it streams to flash: a Received:
# line on top, and Date: and Message-ID: when the device left them out (RFC 6409 s. 8).
from .clock import clock_ok, rfc5322_date

_CRLF = b"\r\n"
_WSP = (0x20, 0x09)


def _field_name(line):
    """The lower-case name of a header field line, or None when it is not one. A name is
    printable ASCII without colon, of any length; white space may stand before the colon
    (the obsolete syntax of RFC 5322 section 4.5, which receivers must accept)."""
    i = 0
    n = len(line)
    while i < n and 0x20 < line[i] < 0x7F and line[i] != 0x3A:
        i += 1
    j = i
    while j < n and line[j] in _WSP:
        j += 1
    if i and j < n and line[j] == 0x3A:
        return bytes(line[:i]).lower()
    return None


class Inbound:
    """Feeds message lines to out (anything with write), tracking the header section."""

    def __init__(self, out, received, msg_id, hostname):
        self.out = out
        self.msg_id = msg_id
        self.hostname = hostname
        self.in_header = True
        self.fields = 0  # header lines seen
        self.has_date = False
        self.has_msgid = False
        out.write(received)

    def _end_header(self):
        self.in_header = False
        w = self.out.write
        # With the clock unset (a board before NTP) the date would say 2000; the message
        # then gets its Date: on the way out, when delivery has set the clock.
        if not self.has_date and clock_ok():
            w(b"Date: %s\r\n" % rfc5322_date().encode())
        if not self.has_msgid:
            w(b"Message-ID: <%s@%s>\r\n" % (self.msg_id.encode(), self.hostname.encode()))

    def line(self, text):
        """One message line without its line ending, already dot-unstuffed."""
        if self.in_header:
            if not len(text):
                self._end_header()
            elif text[0] in _WSP and not self.fields:
                # Continuation of nothing (it would fold into our Received:): body text.
                self._end_header()
                self.out.write(_CRLF)
            elif text[0] not in _WSP:
                name = _field_name(text)
                if name == b"date":
                    self.has_date = True
                elif name == b"message-id":
                    self.has_msgid = True
                elif name is None:
                    # Body text without a blank line first: close the header for it.
                    self._end_header()
                    self.out.write(_CRLF)
        if self.in_header:
            self.fields += 1
        self.out.write(text)
        self.out.write(_CRLF)

    def finish(self):
        if self.in_header:
            self._end_header()


def received(helo, esmtp, peer_ip, hostname, msg_id, rcpts):
    """A Received: field (RFC 5321 section 4.4) for the top of the message; "with" names
    the protocol the client chose, SMTP after HELO, ESMTP after EHLO (RFC 3848)."""
    v = "Received: from %s ([%s])\r\n\tby %s (relaybox) with %s id %s" % (
        helo,
        peer_ip,
        hostname,
        "ESMTP" if esmtp else "SMTP",
        msg_id,
    )
    if len(rcpts) == 1:  # one recipient only: more would tell each who else got it
        v += "\r\n\tfor <%s>" % rcpts[0]
    return (v + ";\r\n\t%s\r\n" % rfc5322_date()).encode()
