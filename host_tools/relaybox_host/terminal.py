"""`relaybox console`: a line-mode terminal on the board's serial console.

The host's own terminal edits a line, which is then sent whole. Whether it also echoes
depends on the board: relaybox under `relaybox run` or on a raw pty does not echo, a board's
serial line does (its `hello` says so), and then the host's echo is off, so that each line
shows once (secret values as stars). When the board asks for a secret (or the line just
sent was `set` of a secret key), echo is off for the next line either way. Board output,
log lines included, is copied to the screen as it arrives. Ctrl-D or Ctrl-C quits.
"""

import re
import sys
import threading
import time

from serial import SerialException

from . import serialconn
from .errors import ToolError
from .remote import SECRET_KEYS, connection_options

_PROMPT = re.compile(rb"\(not shown\): ?$")
_SET_SECRET = re.compile(r"^\s*set\s+(\S+)\s*$", re.IGNORECASE)
#: How long to keep printing after the last line of piped input.
_DRAIN_S = 1.0


def add_parser(sub):
    p = sub.add_parser(
        "console",
        parents=[connection_options(json_output=False)],
        help="interactive terminal on the board's console (Ctrl-D to quit)",
    )
    p.set_defaults(func=cmd_console)


class Screen:
    """Copies board output to stdout from a thread; remembers whether a prompt is open."""

    def __init__(self, console, out):
        self.console = console
        self.out = out
        self.tail = b""
        self.error = None
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(2)

    def asks_secret(self):
        return bool(_PROMPT.search(self.tail))

    def _run(self):
        ser = self.console.ser
        while not self._stop.is_set():
            try:
                ser.timeout = 0.1
                chunk = ser.read(max(1, ser.in_waiting))
            except (OSError, SerialException) as e:
                self.error = e
                return
            if chunk:
                self.last = time.monotonic()
                self.tail = (self.tail + chunk)[-80:]
                self.out.write(chunk)
                self.out.flush()


def cmd_console(args):
    try:
        console = serialconn.open_port(args.port, args.timeout)
    except serialconn.ConsoleError as e:
        raise ToolError(str(e)) from None
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"relaybox console on {console.name}: type help; Ctrl-D quits", flush=True)
    board_echoes = _board_echoes(console)
    screen = Screen(console, sys.stdout.buffer)
    screen.start()
    restore = _local_echo_off() if interactive and board_echoes else None
    try:
        _type_lines(console, screen, interactive)
        if not interactive:
            # Piped input: wait for the answers to the last lines before closing.
            while time.monotonic() - screen.last < _DRAIN_S and not screen.error:
                time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    except serialconn.ConsoleError as e:
        raise ToolError(str(e)) from None
    finally:
        if restore:
            restore()
        screen.stop()
        console.close()
    if screen.error:
        raise ToolError(f"lost {console.name} ({screen.error})")
    if interactive:
        print()
    return 0


def _type_lines(console, screen, interactive):
    hide = False
    while not screen.error:
        line = _read_hidden() if hide else sys.stdin.readline()
        if not line:
            return
        line = line.rstrip("\r\n")
        console.write(line.encode() + b"\n")
        if not interactive:
            continue
        # `set SECRET` alone makes the board ask for the value: hide it from the start.
        m = _SET_SECRET.match(line)
        hide = bool(m and m.group(1) in SECRET_KEYS)
        if not hide:
            # Give the board a moment to show any other prompt for a secret.
            time.sleep(0.05)
            hide = screen.asks_secret()


def _board_echoes(console):
    """Whether relaybox on the board echoes what it is sent (False when it does not answer:
    a plain REPL is still worth a terminal)."""
    try:
        return bool(console.hello().get("echo"))
    except serialconn.ConsoleError:
        return False


def _local_echo_off():
    import termios

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    new = termios.tcgetattr(fd)
    new[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSADRAIN, new)
    return lambda: termios.tcsetattr(fd, termios.TCSADRAIN, old)


def _read_hidden():
    import termios

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    new = termios.tcgetattr(fd)
    new[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSADRAIN, new)
    try:
        line = sys.stdin.readline()
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return line
