"""Wall clock: NTP on boards, RFC 5322 dates, and a sanity check before TLS."""

import time

from micropython import const

# Certificates are checked against the clock; an RTC that came up in 2000 makes every
# real certificate look "not yet valid". No build of relaybox predates this year.
_MIN_YEAR = const(2024)

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc5322_date(t=None):
    """Return `t` (seconds since the port's epoch, default now) as an RFC 5322 date in UTC."""
    y, mo, d, h, mi, s, wd = (time.gmtime() if t is None else time.gmtime(int(t)))[:7]
    return "%s, %02d %s %04d %02d:%02d:%02d +0000" % (_DAYS[wd], d, _MONTHS[mo - 1], y, h, mi, s)


def plausible(t):
    """True when t can be a real time, not one counted from an unset clock."""
    return time.gmtime(int(t))[0] >= _MIN_YEAR


def clock_ok():
    """True when the clock is plausibly set (certificate dates can be checked)."""
    return plausible(time.time())


def _has_ntp():
    # The board module says whether the port ships ntptime and a settable RTC; the unix
    # port has no board module and its host clock is already right.
    try:
        import board
    except ImportError:
        return False
    return getattr(board, "HAS_NTP", False)


def sync(log, host=None):
    """Set the clock by NTP when the board can; return clock_ok() afterwards.

    Blocks for at most ntptime's socket timeout (1 s by default) per call, so callers
    retry on their own schedule instead of looping here.
    """
    if not _has_ntp():
        if not clock_ok():
            log.error("clock", "clock not set and no NTP on this board: TLS will fail")
        return clock_ok()
    try:
        import ntptime
    except ImportError:  # a build without micropython-lib's networking bundle
        if not clock_ok():
            log.error("clock", "clock not set and this build has no ntptime: TLS will fail")
        return clock_ok()
    if host:
        ntptime.host = host
    try:
        ntptime.settime()
    except Exception as e:  # OSError on timeout, OverflowError on a bogus packet
        log.warn("clock", "NTP from %s failed: %r" % (ntptime.host, e))
    else:
        log.info("clock", "set by NTP from %s: %s" % (ntptime.host, rfc5322_date()))
    if not clock_ok():
        log.error("clock", "clock not set (%d): certificates cannot be checked" % time.gmtime()[0])
        return False
    return True
