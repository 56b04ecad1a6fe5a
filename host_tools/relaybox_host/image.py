"""`relaybox image`: the firmware as a LittleFS2 image shaped like a board's flash partition."""

import json
import tempfile
from collections import namedtuple
from pathlib import Path

from littlefs import LittleFS, LittleFSError

from . import boards, uf2
from .build import compile_firmware
from .errors import ToolError
from .progress import Progress

#: Where the firmware looks for its settings on a board (board.CONFIG_PATH).
CONFIG_NAME = "config.json"

Image = namedtuple("Image", "path uf2_path geometry files used_blocks")


def read_config(path):
    """The bytes of an initial config file, after checking that it is a JSON object."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ToolError(f"cannot read the config file {path}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ToolError(f"{path} is not valid JSON ({e}); fix it and run again") from None
    if not isinstance(data, dict):
        raise ToolError(f'{path} must hold a JSON object like {{"hostname": ...}}')
    return text.encode()


def make_filesystem(geometry, files, label="image"):
    """A LittleFS2 filesystem holding `files` ({"lib/x.mpy": bytes}); returns it mounted.

    block_size and block_count must equal the board's: MicroPython passes the partition's
    block count to littlefs, which refuses a superblock that disagrees.
    """
    fs = LittleFS(block_size=geometry.block_size, block_count=geometry.block_count)
    total = sum(len(d) for d in files.values())
    with Progress(label, total) as bar:
        for rel, data in sorted(files.items()):
            parent = rel.rpartition("/")[0]
            try:
                if parent:
                    fs.makedirs(parent, exist_ok=True)
                with fs.open(rel, "wb") as f:
                    f.write(data)
            except LittleFSError as e:
                if e.code == LittleFSError.Error.LFS_ERR_NOSPC:
                    raise ToolError(
                        f"the files ({total // 1024} KiB) do not fit in the "
                        f"{geometry.size // 1024} KiB filesystem; choose a larger --flash-size"
                    ) from None
                raise
            bar.advance(len(data))
    return fs


def build(board_name, out, flash_size=None, config=None):
    """Compile the firmware for a board and write its filesystem image (and UF2) to `out`."""
    info = boards.load(board_name)
    geometry = boards.geometry(info, flash_size)
    out = Path(out)
    uf2_target = boards.uf2_settings(info)
    uf2_path = out.with_suffix(".uf2") if uf2_target else None
    if uf2_path == out:
        raise ToolError(f"name the image .bin, not .uf2: {out.with_suffix('.bin')}")
    files = {}
    with tempfile.TemporaryDirectory(prefix="relaybox-image-") as tmp:
        for rel in compile_firmware(board_name, tmp):
            files[rel] = (Path(tmp) / rel).read_bytes()
    if config is not None:
        files[CONFIG_NAME] = read_config(config)
    fs = make_filesystem(geometry, files, f"image {board_name}")
    used = fs.used_block_count
    blob = bytes(fs.context.buffer)
    if len(blob) != geometry.size:
        raise ToolError(f"internal error: image is {len(blob)} bytes, expected {geometry.size}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    if uf2_target:
        family_id, flash_base = uf2_target
        uf2_path.write_bytes(uf2.encode(blob, flash_base + geometry.offset, family_id))
    return Image(out, uf2_path, geometry, sorted(files), used)


def add_parser(sub):
    p = sub.add_parser(
        "image",
        help="build a board's filesystem image (and UF2 for RP2040 boards)",
        description="Compile the firmware for a board and lay it into a LittleFS2 image "
        "that matches the board's filesystem partition.",
    )
    p.add_argument(
        "--board", required=True, help="board name: " + ", ".join(boards.flashable_boards())
    )
    p.add_argument("--flash-size", help="flash size of the board, e.g. 4M (default: the board's)")
    p.add_argument("--config", type=Path, help="initial config.json to put in the image")
    p.add_argument("-o", "--output", required=True, type=Path, help="image file to write (.bin)")
    p.set_defaults(func=cmd_image)


def cmd_image(args):
    img = build(args.board, args.output, args.flash_size, args.config)
    g = img.geometry
    print(
        f"{img.path}: {len(img.files)} files, {img.used_blocks}/{g.block_count} blocks of "
        f"{g.block_size} used, for flash offset {g.offset:#x} ({g.flash_size} flash)"
    )
    if img.uf2_path:
        print(f"{img.uf2_path}: UF2 for drag-and-drop in BOOTSEL mode")
    return 0
