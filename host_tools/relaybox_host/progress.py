"""A one-line text progress bar on stderr for the long steps of image, flash and deploy."""

import sys
import time

_WIDTH = 28


def _human(n):
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


class Progress:
    """Draws `label [#####.....] 45% 12.0/27.0 KiB`, redrawn in place on a terminal.

    When stderr is not a terminal (CI logs, pipes) only the finished line is written,
    so logs are not flooded with carriage returns.
    """

    def __init__(self, label, total, stream=None, unit="bytes"):
        self.label = label
        self.total = max(int(total), 1)
        self.stream = stream or sys.stderr
        self.unit = unit
        self.done = 0
        self.started = time.monotonic()
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = -1

    def _line(self):
        frac = min(self.done / self.total, 1.0)
        filled = int(frac * _WIDTH)
        bar = "#" * filled + "." * (_WIDTH - filled)
        if self.unit == "bytes":
            amount = f"{_human(self.done)}/{_human(self.total)}"
        else:
            amount = f"{self.done}/{self.total} {self.unit}"
        return f"{self.label} [{bar}] {frac * 100:3.0f}% {amount}"

    def update(self, done):
        self.done = done
        percent = int(min(done / self.total, 1.0) * 100)
        # Redraw only when the percentage moves: serial links report every 256 bytes.
        if self.live and percent != self._last:
            self._last = percent
            self.stream.write("\r" + self._line())
            self.stream.flush()

    def advance(self, n=1):
        self.update(self.done + n)

    def finish(self):
        seconds = time.monotonic() - self.started
        self.stream.write(("\r" if self.live else "") + self._line() + f" {seconds:.1f}s\n")
        self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.finish()
        return False
