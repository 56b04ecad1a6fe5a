"""Run a script of firmware code under the MicroPython unix port and return its result."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
MICROPYTHON = Path(sys.executable).parent / "micropython"
HEAP = "256K"


def run(script, *, timeout=60, heap=HEAP, cwd=None, env=None):
    """Run `script` (source text) with the `relaybox` package importable.

    The script goes through a file so that tracebacks carry line numbers.
    """
    run_env = dict(os.environ, MICROPYPATH=".frozen:%s" % FIRMWARE)
    run_env.update(env or {})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "driver.py"
        path.write_text(script)
        return subprocess.run(
            [str(MICROPYTHON), "-X", "heapsize=" + heap, str(path)],
            cwd=cwd or tmp,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
