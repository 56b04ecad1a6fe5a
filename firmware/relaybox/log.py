# A small level-gated logger: one line per event to the console, the last few kept in RAM.
import time

DEBUG = 10
INFO = 20
WARN = 30
ERROR = 40
_NAMES = {DEBUG: "debug", INFO: "info", WARN: "warn", ERROR: "error"}
LEVELS = {"debug": DEBUG, "info": INFO, "warn": WARN, "error": ERROR}

level = INFO
_ring = []
_ring_size = 50
# The ring is bounded in bytes as well as in lines: a thousand long lines would not fit a
# board's heap, nor an answer to `logs`.
RING_BYTES = 16384
_LINE_MAX = 512  # longer lines are cut in the ring (the console still sees them whole)
_ring_bytes = 0
# Where lines go besides the ring; the console may replace it to keep its prompt tidy.
output = print


def setup(level_name="info", ring_size=50):
    global level, _ring_size
    level = LEVELS[level_name]
    _ring_size = ring_size
    _trim(ring_size, 0)


def _trim(most, room):
    # Oldest lines out until at most `most` are left and `room` more bytes fit.
    global _ring_bytes
    while _ring and (len(_ring) > most or _ring_bytes + room > RING_BYTES):
        _ring_bytes -= len(_ring.pop(0))


def _stamp():
    t = time.localtime()
    return "%04d-%02d-%02d %02d:%02d:%02d" % t[:6]


def _emit(lvl, sub, msg):
    if lvl < level:
        return
    global _ring_bytes
    line = "%s %s %s: %s" % (_stamp(), _NAMES[lvl], sub, msg)
    kept = line if len(line) <= _LINE_MAX else line[: _LINE_MAX - 3] + "..."
    _trim(_ring_size - 1, len(kept))
    _ring.append(kept)
    _ring_bytes += len(kept)
    try:
        output(line)
    except OSError:  # a console that is gone must not fail whoever logged
        pass


def debug(sub, msg):
    _emit(DEBUG, sub, msg)


def info(sub, msg):
    _emit(INFO, sub, msg)


def warn(sub, msg):
    _emit(WARN, sub, msg)


def error(sub, msg):
    _emit(ERROR, sub, msg)


def lines(n=None):
    """The last n (default all) log lines kept in RAM, oldest first: a new list of the same
    strings, so that it costs a pointer per line."""
    if n is None:
        return list(_ring)
    return _ring[len(_ring) - n :] if 0 < n < len(_ring) else list(_ring) if n else []
