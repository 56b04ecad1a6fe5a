"""Compile the firmware for one board with mpy-cross, as the board will load it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from . import ROOT
from .errors import ToolError

FIRMWARE = ROOT / "firmware"
BOARDS = ROOT / "boards"


def board_names():
    return sorted(p.name for p in BOARDS.iterdir() if (p / "board.json").is_file())


def board_info(name):
    path = BOARDS / name / "board.json"
    if not path.is_file():
        raise ToolError(f"unknown board {name!r}; known boards: {', '.join(board_names())}")
    return json.loads(path.read_text())


def _mpy_cross():
    exe = Path(sys.executable).with_name("mpy-cross")
    return str(exe) if exe.exists() else "mpy-cross"


def _compile(src, dest, arch, name):
    dest.parent.mkdir(parents=True, exist_ok=True)
    # -s names the file in tracebacks as it sits on the board, not as on this host.
    cmd = [_mpy_cross(), "-O1", f"-march={arch}", "-s", name, "-o", str(dest), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise ToolError(f"mpy-cross failed on {src.name}: {proc.stderr.strip()}")


def compile_firmware(board_name, out_dir, source=False):
    """Lay out the files a board needs under out_dir; return their relative paths.

    With source=True the .py files are copied instead of compiled (for debugging).
    """
    info = board_info(board_name)
    out = Path(out_dir)
    arch = info["mpy_arch"]
    plan = [
        (p, Path("lib/relaybox") / p.name) for p in sorted((FIRMWARE / "relaybox").glob("*.py"))
    ]
    plan.append((BOARDS / board_name / "board.py", Path("lib/board.py")))
    # Code several boards share (network bring-up) sits beside the board module in /lib.
    plan += [(p, Path("lib") / p.name) for p in sorted((BOARDS / "common").glob("*.py"))]
    written = []
    for src, rel in plan:
        if source:
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        else:
            rel = rel.with_suffix(".mpy")
            _compile(src, out / rel, arch, rel.as_posix())
        written.append(rel.as_posix())
    for name, src in (
        ("main.py", FIRMWARE / "main.py"),
        ("boot.py", BOARDS / board_name / "boot.py"),
    ):
        if src.is_file():
            shutil.copyfile(src, out / name)
            written.append(name)
    return written
