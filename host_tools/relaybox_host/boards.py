"""Board data for the host tools: flash geometry, firmware offsets and UF2 settings.

Each `boards/NAME/board.json` is described in boards/README.md; numbers that are
addresses are written as hex strings there and turned into ints here.
"""

from collections import namedtuple

from .build import board_info, board_names
from .errors import ToolError

Geometry = namedtuple("Geometry", "flash_size offset block_size block_count")
Geometry.size = property(lambda g: g.block_size * g.block_count)

_UNITS = {"K": 1024, "M": 1024 * 1024}


def normalize_size(text):
    """'4M', '4MB', '4MiB', '4m' and '4194304' all become '4M'."""
    t = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    if t.isdigit():
        n = int(t)
        if n % _UNITS["M"] == 0:
            return f"{n // _UNITS['M']}M"
        return f"{n // _UNITS['K']}K"
    if t[:-1].isdigit() and t[-1:] in _UNITS:
        return t
    raise ToolError(f"cannot read the flash size {text!r}; write it like 4M or 8M")


def load(name):
    return board_info(name)


def geometry(info, flash_size=None):
    """The filesystem partition of a board for one flash size (default: the board's)."""
    table = info.get("filesystem")
    if not table:
        raise ToolError(
            f"board {info['name']} has no flash filesystem to image; "
            f"flashable boards: {', '.join(flashable_boards())}"
        )
    key = normalize_size(flash_size or info["default_flash_size"])
    if key not in table:
        raise ToolError(
            f"board {info['name']} has no layout for {key} of flash; "
            f"choose --flash-size from {', '.join(table)}"
        )
    fs = table[key]
    return Geometry(key, int(fs["offset"], 0), fs["block_size"], fs["block_count"])


def flashable_boards():
    return [n for n in board_names() if board_info(n).get("filesystem")]


def uf2_settings(info):
    """(family_id, flash address of the filesystem) for boards flashed by UF2, else None."""
    uf2 = info.get("uf2")
    if not uf2:
        return None
    return int(uf2["family_id"], 0), int(uf2["flash_base"], 0)
