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
# Where lines go besides the ring; the console may replace it to keep its prompt tidy.
output = print


def setup(level_name="info", ring_size=50):
    global level, _ring_size
    level = LEVELS[level_name]
    _ring_size = ring_size
    del _ring[: max(0, len(_ring) - ring_size)]


def _stamp():
    t = time.localtime()
    return "%04d-%02d-%02d %02d:%02d:%02d" % t[:6]


def _emit(lvl, sub, msg):
    if lvl < level:
        return
    line = "%s %s %s: %s" % (_stamp(), _NAMES[lvl], sub, msg)
    if len(_ring) >= _ring_size:
        _ring.pop(0)
    _ring.append(line)
    output(line)


def debug(sub, msg):
    _emit(DEBUG, sub, msg)


def info(sub, msg):
    _emit(INFO, sub, msg)


def warn(sub, msg):
    _emit(WARN, sub, msg)


def error(sub, msg):
    _emit(ERROR, sub, msg)


def lines(n=None):
    """The last n log lines kept in RAM, oldest first."""
    return _ring[-n:] if n else list(_ring)
