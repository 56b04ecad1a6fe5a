"""`relaybox image`: the firmware as a LittleFS2 image shaped like a board's flash partition."""

import json
import os
import posixpath
import subprocess
import tempfile
from collections import namedtuple
from pathlib import Path

from littlefs import LittleFS, LittleFSError

from . import boards, uf2
from .build import FIRMWARE, compile_firmware
from .errors import ToolError
from .progress import Progress
from .run import micropython_exe

#: Where the firmware looks for its settings on a board (board.CONFIG_PATH).
CONFIG_NAME = "config.json"
#: The CA file of the firmware's TLS check (tlsconn.load_ca refuses larger files).
CA_MAX = 65536

Image = namedtuple("Image", "path uf2_path geometry files used_blocks")


# Runs under the MicroPython unix port: the firmware's own check, with its own JSON parser.
_CHECK_CONFIG = """
import sys
from relaybox.config import Config, ConfigError
try:
    Config.load(sys.argv[1])
except ConfigError as e:
    print(e)
"""


def read_config(path):
    """The bytes of an initial config file, after the firmware itself accepted it.

    A config the firmware refuses would stop the relay on the board at every start, so
    it is checked here by the firmware's config.py under the unix port.
    """
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
    env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:.frozen")
    proc = subprocess.run(
        [micropython_exe(), "-c", _CHECK_CONFIG, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if proc.returncode or proc.stdout.strip():
        problem = (proc.stdout.strip() or proc.stderr.strip() or "no output").splitlines()[-1]
        raise ToolError(
            f"the firmware refuses {path}: config error: {problem}; fix it and run again"
        )
    return text.encode()


def _setting(data, key):
    """A dotted setting of a config object, nested ({"upstream": {"ca": ...}}) or not."""
    if key in data:
        return data[key]
    head, _, rest = key.partition(".")
    value = data.get(head)
    return _setting(value, rest) if rest and isinstance(value, dict) else None


def ca_file(config_path, text):
    """(path on the board, bytes) of the CA file the config names in upstream.ca, or None.

    The firmware resolves a relative upstream.ca against the folder of config.json
    (Config.path_of), which is the board's root; here the same name is read beside the
    config file given on this computer. An absolute name is taken as it is, on both sides.
    """
    name = _setting(json.loads(text), "upstream.ca")
    if not name:
        return None
    config_path = Path(config_path)
    fix = (
        "put your provider's CA there (it travels with the config), or leave upstream out "
        "of this config and install the CA on the board later with relaybox trust HOST:PORT"
    )
    if name.startswith("/"):
        board_path, source, where = posixpath.normpath(name), Path(name), "on this computer"
    else:
        board_path = posixpath.normpath(name)
        if board_path.startswith("../") or board_path == "..":
            raise ToolError(
                f"upstream.ca: {name} is outside the folder of config.json, which is the "
                f"board's root; name a file beside {config_path.name} or below it"
            )
        source = config_path.parent / name
        where = f"beside {config_path.name} in {config_path.parent.resolve()}"
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise ToolError(f"upstream.ca: {name} not found {where}; {fix}") from None
    except OSError as e:
        raise ToolError(f"upstream.ca: cannot read {source} ({e.strerror}); {fix}") from None
    if len(data) > CA_MAX:
        raise ToolError(
            f"upstream.ca: {source} is {len(data)} bytes, more than the {CA_MAX} the board "
            "reads; keep only the CA that signs your provider's server"
        )
    if b"-----BEGIN CERTIFICATE-----" not in data and data[:1] != b"\x30":
        raise ToolError(
            f"upstream.ca: {source} is not a certificate (PEM with -----BEGIN CERTIFICATE----- "
            f"or DER); {fix}"
        )
    return board_path, data


def config_files(config_path):
    """The files --config puts on a board, by path relative to its root: config.json and
    the CA file it names (an absolute upstream.ca keeps its leading /)."""
    text = read_config(config_path)
    files = {CONFIG_NAME: text}
    ca = ca_file(config_path, text)
    if ca:
        files[ca[0]] = ca[1]
    return files


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


def write_output(path, data, secret=False):
    """Write a file the user asked for; one holding config.json (passwords) is 0600."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if secret:
            # Created 0600 before any byte is written, and narrowed if it already existed.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        else:
            path.write_bytes(data)
    except OSError as e:
        where = e.filename or path
        raise ToolError(
            f"cannot write {path} ({e.strerror}: {where}); choose an output path in a folder "
            "you can write to"
        ) from None
    return path


def build(board_name, out, flash_size=None, config=None, geometry=None):
    """Compile the firmware for a board and write its filesystem image (and UF2) to `out`.

    `geometry` overrides the board.json layout (ESP32: read from a partition table).
    """
    info = boards.load(board_name)
    geometry = geometry or boards.geometry(info, flash_size)
    out = Path(out)
    uf2_target = boards.uf2_settings(info)
    uf2_path = out.with_suffix(".uf2") if uf2_target else None
    if uf2_path == out:
        raise ToolError(f"name the image .bin, not .uf2: {out.with_suffix('.bin')}")
    files = {}
    if config is not None:
        # The image's root is the board's root, so an absolute CA path goes there too.
        files.update((rel.lstrip("/"), data) for rel, data in config_files(config).items())
    with tempfile.TemporaryDirectory(prefix="relaybox-image-") as tmp:
        for rel in compile_firmware(board_name, tmp):
            files[rel] = (Path(tmp) / rel).read_bytes()
    fs = make_filesystem(geometry, files, f"image {board_name}")
    used = fs.used_block_count
    blob = bytes(fs.context.buffer)
    if len(blob) != geometry.size:
        raise ToolError(f"internal error: image is {len(blob)} bytes, expected {geometry.size}")
    secret = config is not None
    write_output(out, blob, secret)
    if uf2_target:
        family_id, flash_base = uf2_target
        write_output(uf2_path, uf2.encode(blob, flash_base + geometry.offset, family_id), secret)
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
    p.add_argument(
        "--firmware",
        type=Path,
        help="ESP32: the stock MicroPython .bin the board runs; its partition table then "
        "sets the filesystem (default: the layout of stock builds 1.26 and later)",
    )
    p.add_argument("-o", "--output", required=True, type=Path, help="image file to write (.bin)")
    p.set_defaults(func=cmd_image)


def cmd_image(args):
    info = boards.load(args.board)
    geometry = None
    if args.firmware:
        if info.get("port") != "esp32":
            raise ToolError("--firmware only applies to ESP32 boards; leave it out")
        from .flash import check_esp_firmware, firmware_geometry

        check_esp_firmware(info, args.firmware)
        size = args.flash_size or info["default_flash_size"]
        geometry = firmware_geometry(info, args.firmware, boards.normalize_size(size))
    img = build(args.board, args.output, args.flash_size, args.config, geometry)
    g = img.geometry
    print(
        f"{img.path}: {len(img.files)} files, {img.used_blocks}/{g.block_count} blocks of "
        f"{g.block_size} used, for flash offset {g.offset:#x}"
        + (f" ({g.flash_size} flash)" if g.flash_size else "")
    )
    if img.uf2_path:
        print(f"{img.uf2_path}: UF2 for drag-and-drop in BOOTSEL mode")
    since = info.get("stock", {}).get("layout_since")
    if since and not args.firmware:
        print(
            f"the layout is that of stock {info['stock']['build']} {since} or later; for "
            "another build add --firmware STOCK.bin (or use `relaybox flash`, which reads "
            "the board's partition table)"
        )
    return 0
