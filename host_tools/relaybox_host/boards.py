"""Board data for the host tools: flash geometry, firmware offsets and UF2 settings.

Each `boards/NAME/board.json` is described in boards/README.md; numbers that are
addresses are written as hex strings there and turned into ints here.
"""

import hashlib
import struct
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


def size_bytes(text):
    """'4M' (in any spelling normalize_size takes) as a number of bytes."""
    key = normalize_size(text)
    return int(key[:-1]) * _UNITS[key[-1]]


# ESP32 partition tables ---------------------------------------------------------------------
#
# ESP-IDF keeps the table at flash offset 0x8000 (0xC00 bytes): 32-byte entries of magic,
# type, subtype, offset, size, label and flags, then an optional MD5 entry over the entries
# before it, then 0xFF. MicroPython mounts the data partition labelled "vfs"; without one it
# (1.26 and later) makes "vfs" from the end of the last partition to the end of the flash.

PARTITION_TABLE_OFFSET = 0x8000
PARTITION_TABLE_SIZE = 0xC00
_ENTRY = struct.Struct("<2sBBII16sI")
_ENTRY_MAGIC = b"\xaa\x50"
_MD5_MAGIC = b"\xeb\xeb"
_TYPE_DATA = 1
_ESP_BLOCK = 4096  # esp32_partition.c: the block size of a partition as a block device

Partition = namedtuple("Partition", "label type subtype offset size")


def parse_partitions(table):
    """The entries of an ESP-IDF partition table; None when `table` holds none (erased flash).

    A damaged table raises ToolError: the board would not boot from it either.
    """
    if table[:2] != _ENTRY_MAGIC:
        return None
    parts = []
    for pos in range(0, len(table) - _ENTRY.size + 1, _ENTRY.size):
        raw = table[pos : pos + _ENTRY.size]
        if raw[:2] == _MD5_MAGIC:
            if hashlib.md5(table[:pos]).digest() != raw[16:32]:
                raise ToolError("the partition table fails its MD5 check")
            return parts
        if raw[:2] != _ENTRY_MAGIC:
            if raw == b"\xff" * _ENTRY.size:
                return parts
            raise ToolError(f"the partition table has a damaged entry at byte {pos}")
        _, ptype, subtype, offset, size, label, _flags = _ENTRY.unpack(raw)
        label = label.split(b"\0", 1)[0].decode("ascii", "replace")
        parts.append(Partition(label, ptype, subtype, offset, size))
    raise ToolError("the partition table has no end marker")


def partitions_in_firmware(path, firmware_offset):
    """The partition table inside a stock ESP32 .bin written at `firmware_offset`."""
    start = PARTITION_TABLE_OFFSET - firmware_offset
    try:
        with open(path, "rb") as f:
            f.seek(start)
            table = f.read(PARTITION_TABLE_SIZE)
    except OSError as e:
        raise ToolError(f"cannot read {path}: {e.strerror}") from None
    return parse_partitions(table)


def esp32_geometry(parts, flash_size=None):
    """The filesystem MicroPython mounts under this partition table.

    flash_size ('8M') is needed only when the table has no "vfs" partition; without it
    such a table gives None.
    """
    for p in parts:
        if p.label == "vfs" and p.type == _TYPE_DATA:
            return Geometry(flash_size or "", p.offset, _ESP_BLOCK, p.size // _ESP_BLOCK)
    if any(p.label == "ffat" and p.type == _TYPE_DATA for p in parts):
        raise ToolError(
            "this MicroPython build keeps a FAT filesystem (partition ffat), which relaybox "
            "images are not; install the firmware with `relaybox deploy` instead"
        )
    if not flash_size:
        return None  # the size of the chip decides
    start = max(p.offset + p.size for p in parts)
    start = -(-start // _ESP_BLOCK) * _ESP_BLOCK
    end = size_bytes(flash_size)
    if end - start < _ESP_BLOCK:
        raise ToolError(
            f"the partition table leaves no room for a filesystem in {flash_size} of flash"
        )
    return Geometry(normalize_size(flash_size), start, _ESP_BLOCK, (end - start) // _ESP_BLOCK)
