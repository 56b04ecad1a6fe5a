# The unix board: a Linux host. The host's network and clock are already set up.
import sys

NAME = "unix"
CONFIG_PATH = "config.json"
HAS_NTP = False
#: The relay ends its process with an exit code on a config error; `relaybox run` reads it.
EXIT_CODES = True


class Network:
    def __init__(self, cfg, log):
        self.log = log

    async def run(self):
        self.log.info("net", "using the host's network")

    def state(self):
        return {"up": True, "ip": None, "detail": "host network"}


def led(state):
    pass


_saved_attrs = None  # the terminal's settings from before a secret prompt


def console_echo(on):
    """The host's terminal may echo what is typed: off while a secret is typed; then the
    settings from before the prompt come back exactly (a raw pty stays without echo)."""
    global _saved_attrs
    try:
        import termios

        if on:
            if _saved_attrs is not None:
                termios.tcsetattr(0, termios.TCSANOW, _saved_attrs)
            _saved_attrs = None
            return
        attrs = termios.tcgetattr(0)
        if _saved_attrs is None:
            _saved_attrs = [list(a) if type(a) is list else a for a in attrs]
        attrs[3] = attrs[3] & ~8  # ECHO in c_lflag
        termios.tcsetattr(0, termios.TCSANOW, attrs)
    except (ImportError, OSError):
        return  # stdin is not a terminal


class ConsoleOut:
    """stdout that never blocks the relay. A thread does the writing; when nobody reads the
    terminal (a pty without a reader, a Ctrl-S) its queue fills, further writes are dropped
    and counted, and the next write that gets through says how many were lost."""

    _MAX_BYTES = 8192  # the most that waits for the terminal when a new line begins
    _MAX_LINE = 20480  # a line already begun may take more: an answer to `logs` is whole

    def __init__(self):
        import _thread

        self._out = sys.stdout
        self._lock = _thread.allocate_lock()
        self._queue = []
        self._bytes = 0
        self.dropped = 0
        self._mid_line = False  # the last write taken did not end its line
        self._skipping = False  # dropping the rest of a line that did not fit
        _thread.start_new_thread(self._writer, ())

    def write(self, text):
        with self._lock:
            limit = self._MAX_LINE if self._mid_line else self._MAX_BYTES
            if self._skipping or self._bytes + len(text) > limit:
                # Whole lines go: what is dropped ends where its line ends.
                self.dropped += not self._skipping
                self._skipping = not text.endswith("\n")
                if self._mid_line:
                    self._put("\n")
                    self._mid_line = False
                return
            if self.dropped:
                self._put("(%d console lines dropped: nobody was reading)\n" % self.dropped)
                self.dropped = 0
            self._put(text)
            self._mid_line = not text.endswith("\n")

    def _put(self, piece):
        self._queue.append(piece)
        self._bytes += len(piece)

    def _writer(self):
        import time

        while True:
            with self._lock:
                piece = self._queue.pop(0) if self._queue else None
            if piece is None:
                time.sleep_ms(5)
                continue
            self._out.write(piece)  # may wait for the reader: only this thread waits
            with self._lock:
                self._bytes -= len(piece)

    def flush(self, wait_ms=1000):
        """Wait (boundedly) until what was written has reached the terminal."""
        import time

        start = time.ticks_ms()
        while self._bytes and time.ticks_diff(time.ticks_ms(), start) < wait_ms:
            time.sleep_ms(5)


_console_out = None


def console_stream():
    """The console's and the log's output (one stream, so that drops are counted once)."""
    global _console_out
    if _console_out is None:
        _console_out = ConsoleOut()
    return _console_out


def console_flush():
    """At exit: let what is queued reach the terminal, for a second at most."""
    if _console_out is not None:
        _console_out.flush()
