"""`relaybox deploy`: copy the compiled firmware to a board running stock MicroPython.

It talks to the raw REPL through mpremote's serial transport (an internal API, hence the
exact mpremote pin in pyproject.toml), hashes the files already on the board, sends only
the ones that differ and then resets the board.
"""

import ast
import hashlib
import tempfile
from collections import namedtuple
from pathlib import Path

from . import boards
from .build import compile_firmware
from .errors import ToolError
from .image import config_files
from .progress import Progress

#: The .mpy format this firmware is compiled to (mpy-cross 1.23 and later).
MPY_VERSION = 6
#: The oldest MicroPython the firmware runs on (it needs the `tls` module of 1.23).
MIN_VERSION = "1.23.0"
_CHUNK = 512
_FIRMWARE_DIR = "lib/relaybox"

Result = namedtuple("Result", "board root sent unchanged removed")

# Runs on the board: hash each named file (None when missing) and list the firmware folder.
_SURVEY = """
import os, hashlib, binascii
def _h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h = hashlib.sha256()
    b = bytearray(%d)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(memoryview(b)[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
try:
    _l = os.listdir(%r)
except OSError:
    _l = []
print(repr(({p: _h(p) for p in %r}, _l)))
"""

_PROBE = """
import sys, os
try:
    import board
    _n = board.NAME
except Exception:
    _n = None
_i = sys.implementation
_v = tuple(_i.version[:3])
print(repr((sys.platform, _i._mpy, _v, getattr(_i, '_machine', ''), _n, os.getcwd())))
"""


def add_parser(sub):
    p = sub.add_parser(
        "deploy",
        help="copy the compiled firmware to a board that runs stock MicroPython",
        description="Compile the firmware, send the files that changed over the raw REPL, "
        "then reset the board. The spool and config.json on the board are kept.",
    )
    p.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyACM0 or COM4")
    p.add_argument("--board", help="board name (default: ask the board, see boards/README.md)")
    p.add_argument(
        "--config",
        type=Path,
        help="also replace the board's config.json (and send the upstream.ca file it names)",
    )
    p.add_argument("--force", action="store_true", help="send every file, changed or not")
    p.add_argument(
        "--replace-board",
        action="store_true",
        help="allow --board to differ from the board module already installed",
    )
    p.add_argument("--no-reset", action="store_true", help="leave the board in the REPL")
    p.set_defaults(func=cmd_deploy)


def cmd_deploy(args):
    r = deploy(
        args.port, args.board, args.config, args.force, not args.no_reset, args.replace_board
    )
    size = sum(n for _, n in r.sent)
    print(
        f"{r.board}: sent {len(r.sent)} files ({size / 1024:.1f} KiB), {r.unchanged} unchanged, "
        f"{len(r.removed)} removed" + ("" if args.no_reset else "; the board restarts now")
    )
    return 0


def _connect(port):
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    try:
        # timeout=1: on a pseudo-terminal mpremote reads without polling first, and a
        # read with no timeout would wait forever for a board that never answers.
        t = SerialTransport(port, baudrate=115200, timeout=1)
    except (TransportError, OSError) as e:
        raise ToolError(
            f"cannot open {port} ({e}); check the cable and the port name, and close other "
            "programs using it (mpremote, screen, Thonny)"
        ) from None
    try:
        t.enter_raw_repl(soft_reset=False)
    except (TransportError, OSError) as e:
        t.close()
        raise ToolError(
            f"no MicroPython REPL answers on {port} ({e}); if the board has no MicroPython yet, "
            "use `relaybox flash --board NAME --port PORT --firmware STOCK`"
        ) from None
    return t


def _eval_print(t, script):
    from mpremote.transport import TransportExecError

    try:
        out = t.exec(script)
    except TransportExecError as e:
        raise ToolError(f"the board failed: {e.error_output.strip().splitlines()[-1]}") from None
    return ast.literal_eval(out.decode().strip())


def _version(text):
    return tuple(int(n) for n in text.split("."))


def _check_version(version, need, fix):
    if tuple(version) < _version(need):
        have = ".".join(map(str, version))
        raise ToolError(f"the board runs MicroPython {have}; this firmware needs {need}. {fix}")


def identify(platform, mpy, version, machine, name, wanted=None, replace=False):
    """The board name to deploy, checked against what MicroPython reports."""
    fix = "Flash a newer stock build: relaybox flash --board NAME --port PORT --firmware STOCK"
    _check_version(version, MIN_VERSION, fix)
    if mpy & 0xFF != MPY_VERSION:
        raise ToolError(
            f"the board's MicroPython loads .mpy v{mpy & 0xFF}, this firmware is v{MPY_VERSION}; "
            "flash MicroPython 1.23 or newer (relaybox flash --firmware STOCK)"
        )
    port = "unix" if platform == "linux" else platform
    if wanted:
        info = boards.load(wanted)
        if info["port"] != port:
            raise ToolError(
                f"the board runs MicroPython for {port}, but {wanted} is a {info['port']} "
                "board; pick the right --board"
            )
        if name and name != wanted and not replace:
            # The board module brings up the network: the wrong one leaves the board offline.
            raise ToolError(
                f"the board has relaybox for {name}, not {wanted}; deploying {wanted} replaces "
                f"its network and LED module. Leave out --board to keep {name}, or add "
                "--replace-board if the board really is a " + wanted
            )
        board = wanted
    elif name:
        board = name
    else:
        matches = [
            n
            for n in boards.flashable_boards()
            if any(m in machine for m in boards.load(n).get("machine", []))
        ]
        if len(matches) != 1:
            which = f"it could be {', '.join(matches)}" if matches else "it matches no board here"
            raise ToolError(f"the board says it is {machine!r}; {which}: pass --board NAME")
        board = matches[0]
    need = boards.load(board).get("stock", {}).get("min_version", MIN_VERSION)
    _check_version(version, need, fix.replace("NAME", board))
    return board


def _on_board(root, rel):
    """Where a file goes: below the board's root, or at an absolute path as it is."""
    return rel if rel.startswith("/") else root + rel


def plan(local, remote, listing, root, force=False):
    """(files to send, stale files to remove) from local and remote hashes."""
    send = [
        rel for rel in sorted(local) if force or remote.get(_on_board(root, rel)) != local[rel][1]
    ]
    keep = {Path(rel).name for rel in local if rel.startswith(_FIRMWARE_DIR + "/")}
    stale = [root + f"{_FIRMWARE_DIR}/{n}" for n in sorted(listing) if n not in keep]
    # A leftover X.py beside X.mpy would win the import, so it goes too.
    for rel in local:
        if rel.endswith(".mpy") and remote.get(root + rel[:-4] + ".py"):
            stale.append(root + rel[:-4] + ".py")
    return send, sorted(set(stale))


def deploy(port, board_name=None, config=None, force=False, reset=True, replace=False):
    """Bring the firmware on the board at `port` up to date; return what was done."""
    from mpremote.transport import TransportError

    # Checked before the board is touched: a config the firmware refuses is never sent.
    config_data = None if config is None else config_files(config)
    t = _connect(port)
    try:
        return _deploy(t, board_name, config_data, force, reset, replace)
    except (TransportError, OSError) as e:
        raise ToolError(
            f"lost the board on {port} ({e}); check the cable, then run deploy again"
        ) from None
    finally:
        t.close()


def _deploy(t, board_name, config, force, reset, replace):
    platform, mpy, version, machine, name, cwd = _eval_print(t, _PROBE)
    board_name = identify(platform, mpy, version, machine, name, board_name, replace)
    if platform != "linux":
        # A soft reset in the raw REPL frees the heap and closes the relay's files and
        # sockets without running main.py again.
        t.enter_raw_repl(soft_reset=True)
    # On the unix port the "board" is the folder micropython runs in.
    root = cwd.rstrip("/") + "/" if platform == "linux" else "/"

    local = {}
    with tempfile.TemporaryDirectory(prefix="relaybox-deploy-") as tmp:
        for rel in compile_firmware(board_name, tmp):
            data = (Path(tmp) / rel).read_bytes()
            local[rel] = (data, hashlib.sha256(data).hexdigest())
    # config.json and its CA file; an absolute CA path stays absolute on the board.
    for rel, data in (config or {}).items():
        local[rel] = (data, hashlib.sha256(data).hexdigest())

    paths = [_on_board(root, rel) for rel in local] + [
        root + rel[:-4] + ".py" for rel in local if rel.endswith(".mpy")
    ]
    remote, listing = _eval_print(t, _SURVEY % (_CHUNK, root + _FIRMWARE_DIR, paths))
    send, stale = plan(local, remote, listing, root, force)

    _make_dirs(t, root, send)
    total = sum(len(local[rel][0]) for rel in send)
    sent = []
    with Progress(f"deploy {board_name}", total) if send else _Quiet() as bar:
        for rel in send:
            data = local[rel][0]
            base = bar.done
            _write(
                t, _on_board(root, rel), data, lambda n, _total, base=base: bar.update(base + n)
            )
            sent.append((rel, len(data)))
    if stale:
        t.exec("import os\nfor p in %r:\n try:\n  os.remove(p)\n except OSError:\n  pass" % stale)
    if reset:
        _reset(t, platform)
    return Result(board_name, root, sent, len(local) - len(send), stale)


class _Quiet:
    """Stands in for the progress bar when every file is already on the board."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _make_dirs(t, root, rels):
    dirs = set()
    for rel in rels:
        path = _on_board(root, rel)
        top = "/" if path.startswith("/") else ""
        parts = [p for p in path.split("/")[:-1] if p]
        for i in range(1, len(parts) + 1):
            dirs.add(top + "/".join(parts[:i]))
    if dirs:
        t.exec(
            "import os\nfor d in %r:\n try:\n  os.mkdir(d)\n except OSError:\n  pass"
            % sorted(dirs)
        )


def _write(t, path, data, progress):
    from mpremote.transport import TransportError

    # Write beside the target and rename: a cut cable leaves the old file, not half a file.
    try:
        t.fs_writefile(path + ".new", data, chunk_size=_CHUNK, progress_callback=progress)
        t.exec("import os\nos.rename(%r, %r)" % (path + ".new", path))
    except (TransportError, OSError) as e:
        raise ToolError(f"writing {path} failed ({e}); run deploy again to finish") from None


def _reset(t, platform):
    if platform == "linux":
        # The unix port has no machine.reset(): leaving the REPL with Ctrl-D ends the process.
        t.exit_raw_repl()
        t.serial.write(b"\x04")
        return
    t.exec_raw_no_follow("import machine\nmachine.reset()")
