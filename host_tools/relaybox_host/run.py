"""`relaybox run`: the firmware on this host under the MicroPython unix port (board `unix`)."""

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from . import ROOT
from .build import compile_firmware
from .errors import ToolError

REBOOT_EXIT = 3  # the firmware's `reboot` command on the unix board

DEFAULT_CONFIG = {
    "hostname": "relaybox.localhost",
    "listen": {"host": "127.0.0.1", "port": 2525},
    "allow": ["127.0.0.0/8"],
    "max_message_bytes": 10485760,
    "spool": "spool",
}


#: Firmware output held while our own output does not move (Ctrl-S, a pty nobody reads).
_HELD_MAX = 256 * 1024


class Output:
    """Copies the firmware's output to ours through a bounded buffer. The firmware writes
    its log with blocking writes: straight to a terminal that nobody reads, it would stop,
    and with it the relay. Here it always writes into a pipe that is read at once; what our
    own output cannot take in time is dropped, and the drop is said where it happened."""

    def __init__(self, source, target=1):
        self.source = source
        self.target = target
        self.held = collections.deque()  # bytes, or [n] for n bytes dropped there
        self.size = 0
        self.ended = False
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.reader.start()
        self.writer.start()

    def _read(self):
        while True:
            try:
                data = os.read(self.source, 65536)
            except OSError:
                data = b""
            with self.cond:
                if not data:
                    self.ended = True
                elif self.size + len(data) <= _HELD_MAX:
                    self.held.append(data)
                    self.size += len(data)
                elif self.held and isinstance(self.held[-1], list):
                    self.held[-1][0] += len(data)
                else:
                    self.held.append([len(data)])
                self.cond.notify()
            if not data:
                return

    def _write(self):
        while True:
            with self.cond:
                while not self.held and not self.ended:
                    self.cond.wait()
                if not self.held:
                    return
                item = self.held.popleft()
                if isinstance(item, list):
                    item = (
                        b"\r\nrelaybox: %d bytes of output dropped (nothing read them)\r\n"
                        % item[0]
                    )
                else:
                    self.size -= len(item)
            try:
                view = memoryview(item)
                while view:
                    view = view[os.write(self.target, view) :]
            except OSError:
                pass  # our output is gone (a closed terminal): the relay goes on

    def finish(self, timeout=2.0):
        """After the firmware ended: its last words, unless our output is stuck."""
        self.reader.join(timeout)
        self.writer.join(timeout)
        os.close(self.source)


def micropython_exe():
    # Another build of the unix port (a 32-bit one, say) can be tried with this variable.
    if os.environ.get("RELAYBOX_MICROPYTHON"):
        return os.environ["RELAYBOX_MICROPYTHON"]
    exe = Path(sys.executable).with_name("micropython")
    if exe.exists():
        return str(exe)
    found = shutil.which("micropython")
    if not found:
        raise ToolError("micropython not found; run `make setup` to install the unix port")
    return found


def default_config():
    """Write (once) and return the config used when --config is not given."""
    folder = ROOT / "run"
    path = folder / "config.json"
    if not path.exists():
        folder.mkdir(exist_ok=True)
        path.write_text(json.dumps(DEFAULT_CONFIG, indent=2) + "\n")
    return path


def command(build_dir, config, heap):
    return [
        micropython_exe(),
        "-X",
        f"heapsize={heap}",
        str(Path(build_dir) / "main.py"),
        "--config",
        str(config),
    ]


def environment(build_dir):
    env = dict(os.environ)
    # .frozen keeps the port's own modules (asyncio) importable.
    env["MICROPYPATH"] = "%s:.frozen" % (Path(build_dir) / "lib")
    return env


def _terminal_state():
    """The terminal settings of stdin (the firmware changes echo), or None."""
    try:
        import termios
    except ImportError:
        return None
    try:
        return termios.tcgetattr(0)
    except (termios.error, OSError):  # stdin is not a terminal
        return None


# SIGHUP: the terminal was closed; like SIGTERM, the firmware gets an orderly stop.
_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}
_SI_KERNEL = 0x80  # Linux si_code of a signal the terminal sent (Ctrl-C)
_PR_SET_PDEATHSIG = 1


def _child_setup():
    """A preexec_fn for the firmware: the signals this process waits for are open again,
    and on Linux the firmware is killed when this process dies, even by SIGKILL."""
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    # A closed terminal hangs up the whole group: the firmware then hears SIGINT from here
    # and stops in order, instead of dying of the SIGHUP.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


def _libc_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _libc_prctl()


def _wait(child):
    """Wait for the firmware, passing it one SIGINT for each SIGINT, SIGTERM or SIGHUP sent
    to this process. A Ctrl-C at the terminal reached the firmware already (one process
    group), so that one is not passed on: twice would cut its orderly stop short."""
    while True:
        info = signal.sigtimedwait(_SIGNALS, 1.0)
        if child.poll() is not None:
            return child.returncode
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        if info.si_signo == signal.SIGINT and info.si_code == _SI_KERNEL:
            continue
        child.send_signal(signal.SIGINT)  # the firmware stops cleanly on SIGINT


def _wait_portable(child):
    # Without sigtimedwait (macOS): SIGTERM is passed on by a handler, Ctrl-C reached the
    # firmware itself.
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue


def _stop_early(signum, frame):
    raise KeyboardInterrupt  # before the firmware runs: the build folder goes on the way out


def heap_size(text):
    """--heap: bytes, or a number with K or M, as MicroPython's -X heapsize takes it."""
    digits = text[:-1] if text[-1:] in ("K", "k", "M", "m") else text
    if not digits.isdigit() or not digits.isascii() or int(digits) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 256K, 1M or 262144")
    return text.upper()


def add_parser(sub):
    p = sub.add_parser("run", help="run the relay on this host (unix board)")
    p.add_argument("--config", type=Path, help="config file (default: run/config.json)")
    p.add_argument(
        "--heap",
        default="256K",
        type=heap_size,
        help="MicroPython heap size, e.g. 110K, 1M or 262144 (default 256K)",
    )
    p.add_argument("--source", action="store_true", help="run the .py sources, not bytecode")
    p.set_defaults(func=cmd_run)


def cmd_run(args):
    config = args.config or default_config()
    if not Path(config).is_file():
        raise ToolError(f"config file {config} not found")
    # From here on a SIGTERM cleans up: the build folder is never left behind.
    signal.signal(signal.SIGTERM, _stop_early)
    signal.signal(signal.SIGHUP, _stop_early)
    build_dir = tempfile.mkdtemp(prefix="relaybox-unix-")
    terminal = _terminal_state()
    waitinfo = hasattr(signal, "sigtimedwait")
    children = []
    try:
        compile_firmware("unix", build_dir, source=args.source)
        cmd = command(build_dir, Path(config).resolve(), args.heap)
        if waitinfo:
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        else:

            def forward(signum, frame):
                children[-1].send_signal(signal.SIGINT)

            signal.signal(signal.SIGTERM, forward)
        while True:
            sys.stdout.flush()
            read_end, write_end = os.pipe()
            try:
                children.append(
                    subprocess.Popen(
                        cmd, env=environment(build_dir), stdout=write_end, preexec_fn=_child_setup
                    )
                )
            except BaseException:
                os.close(read_end)
                raise
            finally:
                os.close(write_end)
            output = Output(read_end)
            try:
                code = _wait(children[-1]) if waitinfo else _wait_portable(children[-1])
            finally:
                output.finish()
            if code != REBOOT_EXIT:
                return code
            print("relaybox: the firmware asked for a reboot; starting it again", flush=True)
    except KeyboardInterrupt:
        # Only before the firmware runs: afterwards these signals are waited for, not raised.
        print("relaybox: stopped before the firmware started", file=sys.stderr)
        return 130
    finally:
        if terminal is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, terminal)
        shutil.rmtree(build_dir, ignore_errors=True)
        if waitinfo:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
