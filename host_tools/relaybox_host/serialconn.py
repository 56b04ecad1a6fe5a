"""The board's serial console from the host: finding the port and the `@{...}` protocol.

docs/console.md is the contract. One request is in flight at a time; answers carry the
request's id, and every other line (log lines, human output, junk) is handed to
`on_line` or dropped. Reads are bounded in length and in time.
"""

import contextlib
import json
import os
import random
import re
import time

from serial import SerialException, SerialTimeoutException, serial_for_url
from serial.tools import list_ports

#: The longest request line the board accepts, LF included (docs/console.md).
MAX_REQUEST = 4096
#: The longest line kept from the board: an answer with a full log ring (1000 lines) fits.
MAX_LINE = 1 << 20
#: How long to wait for more output once a plain MicroPython prompt has shown up.
_REPL_GRACE_S = 0.5
_POLL_S = 0.1
_BAUD = 115200

# USB ids of boards that run MicroPython: by vendor for the makers of the chips with
# native USB, by vendor and product for the USB-serial bridges on ESP32 boards.
_USB_VENDORS = {
    0x2E8A: "Raspberry Pi",
    0xF055: "MicroPython",
    0x303A: "Espressif",
}
_USB_BRIDGES = {
    (0x10C4, 0xEA60): "CP210x",
    (0x1A86, 0x7523): "CH340",
    (0x1A86, 0x55D4): "CH9102",
    (0x1A86, 0x55D3): "CH343",
    (0x0403, 0x6001): "FT232R",
    (0x0403, 0x6015): "FT231X",
}

# What a plain MicroPython REPL prints: its prompts, its banner, the raw REPL's greeting.
_REPL_LINE = re.compile(
    rb"^(>>> |\.\.\. |MicroPython v|raw REPL|Traceback \(most recent|\w+Error: )"
)
_REPL_PROMPT = (b">>> ", b"... ")


class ConsoleError(Exception):
    """The console could not be reached or did not answer as docs/console.md says."""


class NotRelaybox(ConsoleError):
    """Something answers on the port, but it is not the relaybox console."""


class Refused(ConsoleError):
    """The board understood the request and said no; the message is the board's."""


def candidates():
    """Serial ports that look like a MicroPython board, as (device, description)."""
    found = []
    for p in list_ports.comports():
        what = _USB_VENDORS.get(p.vid) or _USB_BRIDGES.get((p.vid, p.pid))
        if what:
            found.append((p.device, f"{what} {p.description or ''}".strip()))
    return sorted(found)


def resolve(port):
    """The pyserial URL or device path for a --port value (`auto` picks the one board)."""
    if "://" in port:
        return port
    if port != "auto":
        if not os.path.exists(port):
            raise ConsoleError(f"{port} does not exist; {_ports_here()}")
        return port
    found = candidates()
    if len(found) == 1:
        return found[0][0]
    if not found:
        raise ConsoleError(
            f"no MicroPython board found on USB; plug it in or give --port; {_ports_here()}"
        )
    listing = ", ".join(f"{d} ({what})" for d, what in found)
    raise ConsoleError(f"several boards found: {listing}; choose one with --port")


def _ports_here():
    ports = sorted(p.device for p in list_ports.comports())
    return "serial ports here: " + (", ".join(ports) if ports else "none")


def open_port(port, timeout):
    """Open the console at `port` (path, `auto` or pyserial URL) and return a Console."""
    url = resolve(port)
    extra = {} if "://" in url else {"exclusive": True}
    try:
        ser = serial_for_url(url, baudrate=_BAUD, timeout=_POLL_S, write_timeout=timeout, **extra)
        # Whatever the board printed before we came is stale: drop it.
        ser.reset_input_buffer()
    except (SerialException, OSError, ValueError) as e:
        if "://" in url and "refused" in str(e).lower():
            raise ConsoleError(
                f"cannot connect to {url}: the connection was refused (is the serial bridge, "
                "such as socat or ser2net, running there?)"
            ) from None
        raise ConsoleError(
            f"cannot open {url} ({_why(e)}); close other programs using it "
            "(mpremote, screen, Thonny, another relaybox)"
        ) from None
    return Console(ser, url, timeout)


def _why(e):
    return " ".join(str(e).split()) or type(e).__name__


class Console:
    """Requests and answers over one open serial stream."""

    def __init__(self, ser, name, timeout):
        self.ser = ser
        self.name = name
        self.timeout = timeout
        #: Called with each line that is not an answer to us (log lines, human output).
        self.on_line = None
        self._buf = bytearray()
        self._skipping = False  # inside a line longer than MAX_LINE, dropped to its end
        self._repl_seen = False
        self._answered = False  # relaybox has answered once: REPL look-alikes mean nothing
        self._last_data = time.monotonic()
        # Start ids at random so that a late answer to an earlier run is never taken as ours.
        self._next_id = random.randrange(1, 1 << 30)

    def close(self):
        self.ser.close()

    def write(self, data):
        try:
            self.ser.write(data)
            self.ser.flush()
        except SerialTimeoutException:
            raise ConsoleError(
                f"{self.name} does not take input (nothing reads the other end?)"
            ) from None
        except (SerialException, OSError) as e:
            raise ConsoleError(f"lost {self.name} ({_why(e)})") from None

    def read_line(self, deadline):
        """The next whole line from the board without its line end, or None at deadline."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end]).rstrip(b"\r")
                del self._buf[: end + 1]
                if self._skipping or end > MAX_LINE:
                    self._skipping = False
                    continue
                return line
            if len(self._buf) > MAX_LINE:
                self._buf.clear()
                self._skipping = True
            if self._buf.endswith(_REPL_PROMPT):
                self._repl_seen = True
            if self._repl_seen and not self._answered:
                # A REPL prompt waits for input forever: a short silence is the answer.
                deadline = min(deadline, self._last_data + _REPL_GRACE_S)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._fill(min(left, _POLL_S))

    def _fill(self, wait):
        try:
            self.ser.timeout = wait
            chunk = self.ser.read(max(1, self.ser.in_waiting))
        except (SerialException, OSError) as e:
            raise ConsoleError(f"lost {self.name} ({_why(e)})") from None
        if chunk:
            self._last_data = time.monotonic()
            self._buf += chunk

    def request(self, cmd, *args, timeout=None):
        """Send one request and return its result; Refused when the board says no."""
        rid = self._next_id
        self._next_id += 1
        body = {"id": rid, "cmd": cmd}
        if args:
            body["args"] = list(args)
        line = ("@" + json.dumps(body, separators=(",", ":")) + "\n").encode()
        if len(line) > MAX_REQUEST:
            raise ConsoleError(
                f"the {cmd} request is {len(line)} bytes; the board's console takes at most "
                f"{MAX_REQUEST}"
            )
        self.write(line)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            raw = self.read_line(deadline)
            if raw is None:
                raise self._silence(cmd, timeout or self.timeout)
            answer = _answer(raw)
            if answer is None:
                self._other(raw)
            elif answer.get("id") == rid:
                self._answered = True
                if answer["ok"]:
                    return answer.get("result")
                raise Refused(str(answer.get("error") or "refused without a reason"))

    def _other(self, raw):
        if not self._answered and _REPL_LINE.match(raw):
            self._repl_seen = True
        if self.on_line:
            self.on_line(raw.decode("utf-8", "replace"))

    def _silence(self, cmd, timeout):
        if self._repl_seen and not self._answered:
            # Our request left the REPL half way through a statement ("... "): Ctrl-C gives
            # it back at a clean prompt, as the owner left it.
            with contextlib.suppress(ConsoleError):
                self.write(b"\x03")
            return NotRelaybox(
                f"a plain MicroPython REPL answers on {self.name}, not relaybox: the firmware is "
                "not installed or has stopped; install it with `relaybox deploy`, or look at "
                "what happened with `relaybox console`"
            )
        return ConsoleError(
            f"no answer from {self.name} to {cmd} within {timeout:g} s; check that the board "
            "is powered and runs relaybox, and that nothing else holds the port"
        )

    def hello(self):
        """Check that relaybox answers; return its hello result (name, version, board)."""
        # A newline first ends anything half-typed at the console before our request.
        self.write(b"\n")
        info = self.request("hello")
        if not isinstance(info, dict) or info.get("name") != "relaybox":
            raise NotRelaybox(f"{self.name} answers, but not as relaybox: {info!r}")
        return info

    def follow(self, until=None):
        """Hand every line to on_line until `until` (a monotonic time) or forever."""
        while True:
            deadline = time.monotonic() + 1 if until is None else until
            raw = self.read_line(deadline)
            if raw is not None:
                self._other(raw)
            elif until is not None:
                return


def _answer(raw):
    """The answer object in a line, or None for anything else (logs, echoes, junk)."""
    if not raw.startswith(b"@{"):
        return None
    try:
        obj = json.loads(raw[1:])
    except ValueError:
        return None
    # An echo of a request has no "ok": only answers do.
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        return None
    return obj
