"""Real serial plumbing for the host tool's tests: the firmware on one end of a pty pair,
`relaybox --port` on the other, and a pseudo-terminal for the tool's own stdin.

The pair keeps what the board prints while no client has the host end open, so a client
may first read old lines, as it may from a real board.
"""

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import tty
from pathlib import Path

from relaybox_host import serialconn
from relaybox_host.run import command, environment
from relayproc import Relay

RELAYBOX = str(Path(sys.executable).with_name("relaybox"))
MICROPYTHON = str(Path(sys.executable).with_name("micropython"))


class PtyPair:
    """Two pseudo-terminals joined back to back: what is written on one end is read on the
    other, like a USB-serial cable. `board` and `host` are the paths of the two ends.

    A thread copies between them through unbounded buffers, reading both sides all the
    time: a board that prints while the host floods it never blocks the other direction
    (socat, which writes each block whole, can deadlock there).
    """

    def __init__(self, folder):
        self.board = str(Path(folder) / "board-tty")
        self.host = str(Path(folder) / "host-tty")
        self._masters = []
        # The slave ends stay open for the pair's life, so that clients may come and go
        # (the last close would otherwise hang the line up). Never read: they take no data.
        self._hold = []
        for link in (self.board, self.host):
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(os.ttyname(slave), link)
            self._masters.append(master)
            self._hold.append(slave)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._copy, daemon=True)
        self._thread.start()

    def _copy(self):
        a, b = self._masters
        peer = {a: b, b: a}
        pending = {a: bytearray(), b: bytearray()}  # waiting to be written to that master
        while True:
            writable = [m for m in (a, b) if pending[m]]
            ready, can_write, _ = select.select([a, b, self._wake_r], writable, [])
            if self._wake_r in ready:
                return
            for m in ready:
                try:
                    pending[peer[m]] += os.read(m, 65536)
                except (BlockingIOError, OSError):
                    pass
            for m in can_write:
                try:
                    del pending[m][: os.write(m, pending[m])]
                except (BlockingIOError, OSError):
                    pass

    def backlog(self):
        """Bytes written to the board that the firmware has not read yet."""
        raw = fcntl.ioctl(self._hold[0], termios.FIONREAD, b"\0\0\0\0")
        return struct.unpack("i", raw)[0]

    def feed(self, ser, data, chunk=512, most=2048):
        """Write data to the board end no faster than the firmware reads it, as a serial
        link with flow control would; the rest waits in the host's buffers."""
        view = memoryview(data)
        for i in range(0, len(view), chunk):
            wait_for(lambda: self.backlog() < most, "the firmware to read its input", 30)
            ser.write(view[i : i + chunk])

    def close(self):
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in self._masters + self._hold + [self._wake_r, self._wake_w]:
            os.close(fd)
        for link in (self.board, self.host):
            os.unlink(link)


class PtyRelay(Relay):
    """The firmware with its console (stdin and stdout) on the board end of a pty pair.

    With via_run the board is started as a user does, by `relaybox run`, which starts the
    firmware again when it asks for a reboot.
    """

    def __init__(self, build_dir, folder, via_run=False, **config):
        super().__init__(build_dir, folder, **config)
        self.via_run = via_run
        self.pair = None

    @property
    def tty(self):
        return self.pair.host

    def start(self, timeout=20):
        """Start (or after a kill, start again) the firmware on the pair's board end."""
        self.pair = self.pair or PtyPair(self.folder)
        fd = os.open(self.pair.board, os.O_RDWR | os.O_NOCTTY)
        if self.via_run:
            cmd, env = [RELAYBOX, "run", "--config", str(self.config_path)], None
        else:
            cmd = command(self.build_dir, self.config_path, self.heap)
            env = environment(self.build_dir)
        self.proc = subprocess.Popen(cmd, env=env, stdin=fd, stdout=fd, stderr=fd, cwd=self.folder)
        os.close(fd)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=20):
        """Wait until relaybox answers hello on the host end."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                c = serialconn.open_port(self.tty, 1)
                try:
                    return c.hello()
                finally:
                    c.close()
            except serialconn.ConsoleError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.2)

    def firmware_pid(self):
        """The pid of the micropython process (under `relaybox run`, its child)."""
        if not self.via_run:
            return self.proc.pid
        pid = self.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if self.via_run else signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.pair:
            self.pair.close()
            self.pair = None

    def saved(self):
        return json.loads(self.config_path.read_text())

    def relaybox(self, *args, input=None, timeout=30, port=None, env=None):
        return relaybox(*args, "--port", port or self.tty, input=input, timeout=timeout, env=env)

    def ok(self, *args, **kw):
        """Run a command that must succeed; return its stdout."""
        r = self.relaybox(*args, **kw)
        assert r.returncode == 0, f"relaybox {' '.join(args)} failed:\n{r.stderr}\n{r.stdout}"
        return r.stdout

    def json(self, *args, **kw):
        return json.loads(self.ok(*args, "--json", **kw))


def relaybox(*args, input=None, timeout=30, env=None):
    """Run the installed command; stdin is `input` (text) or nothing."""
    return subprocess.run(
        [RELAYBOX, *args],
        env=None if env is None else dict(os.environ, **env),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(predicate, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Terminal:
    """A program whose stdin, stdout and stderr are a pseudo-terminal, as at a keyboard."""

    def __init__(self, argv, env=None):
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            # The pty becomes the controlling terminal, so /dev/tty is it, as for a person.
            start_new_session=True,
            preexec_fn=lambda: _controlling_tty(0),
        )
        os.close(slave)
        self.seen = b""

    def send(self, text):
        os.write(self.master, text.encode())

    def expect(self, pattern, timeout=15):
        """Read until the output so far matches pattern (bytes regex); return the match."""
        rx = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.seen)
            if m:
                return m
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.2)):
                raise AssertionError(f"no {pattern!r} in the terminal output:\n{self.seen!r}")

    def _read(self, wait):
        """Take what arrives within `wait` seconds; False once the terminal is closed."""
        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the program exited and closed the terminal
            return False
        self.seen += chunk
        return bool(chunk)

    def finish(self, timeout=15):
        """Wait for the program to exit; return its exit code with all output read."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        while select.select([self.master], [], [], 0.1)[0] and self._read(0):
            pass
        os.close(self.master)
        return self.proc.wait(max(0.1, deadline - time.monotonic()))


def _controlling_tty(fd):
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
