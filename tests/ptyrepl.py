"""The MicroPython unix port's REPL behind a pseudo-terminal, as a board's USB serial port.

Two pty pairs and a copying thread: micropython owns the first as its terminal, the host
tool opens the second by its /dev/pts path like any serial port.
"""

import os
import select
import subprocess
import sys
import threading
import tty
from pathlib import Path

MICROPYTHON = Path(sys.executable).parent / "micropython"


class PtyRepl:
    def __init__(self, args, cwd=None):
        board_m, board_s = os.openpty()
        host_m, host_s = os.openpty()
        # Raw on both sides: no \n -> \r\n rewriting, which would break the raw REPL framing.
        tty.setraw(board_s)
        tty.setraw(host_s)
        self.port = os.ttyname(host_s)
        self._fds = [board_m, host_m, host_s]
        self.proc = subprocess.Popen(
            [str(MICROPYTHON), *args],
            stdin=board_s,
            stdout=board_s,
            stderr=board_s,
            cwd=cwd,
            start_new_session=True,
        )
        os.close(board_s)
        self.output = bytearray()
        self._stop = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self):
        board_m, host_m, _ = self._fds
        while not self._stop:
            ready, _, _ = select.select([board_m, host_m], [], [], 0.1)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # the board side closes when micropython exits
                    return
                if fd == board_m:
                    self.output += data
                    os.write(host_m, data)
                else:
                    os.write(board_m, data)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._stop = True
        self._thread.join(2)
        for fd in self._fds:
            os.close(fd)
