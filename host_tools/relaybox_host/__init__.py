"""Host tools for relaybox: run, build, image, flash, deploy and the console client."""

from pathlib import Path

__version__ = "0.1.0"

#: The repository checkout the tools operate on (firmware/ and boards/ are read as data).
ROOT = Path(__file__).resolve().parents[2]
