"""`relaybox run`: the firmware on this host under the MicroPython unix port (board `unix`)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
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


def _wait(child):
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            # The terminal sent SIGINT to the child too; wait for it to finish.
            continue


def add_parser(sub):
    p = sub.add_parser("run", help="run the relay on this host (unix board)")
    p.add_argument("--config", type=Path, help="config file (default: run/config.json)")
    p.add_argument(
        "--heap", default="256K", help="MicroPython heap size, e.g. 110K (default 256K)"
    )
    p.add_argument("--source", action="store_true", help="run the .py sources, not bytecode")
    p.set_defaults(func=cmd_run)


def cmd_run(args):
    config = args.config or default_config()
    if not Path(config).is_file():
        raise ToolError(f"config file {config} not found")
    build_dir = tempfile.mkdtemp(prefix="relaybox-unix-")
    terminal = _terminal_state()
    try:
        compile_firmware("unix", build_dir, source=args.source)
        cmd = command(build_dir, Path(config).resolve(), args.heap)
        children = []

        # SIGTERM becomes SIGINT for the firmware, which it handles as a clean stop.
        def forward(signum, frame):
            children[-1].send_signal(signal.SIGINT)

        signal.signal(signal.SIGTERM, forward)
        while True:
            children.append(subprocess.Popen(cmd, env=environment(build_dir)))
            code = _wait(children[-1])
            if code != REBOOT_EXIT:
                return code
            print("relaybox: the firmware asked for a reboot; starting it again", flush=True)
    finally:
        if terminal is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, terminal)
        shutil.rmtree(build_dir, ignore_errors=True)
