"""`relaybox flash`: put the image (and stock MicroPython) on a board over USB.

ESP32 boards are written with esptool at the offsets in board.json. RP2040 boards take a
UF2 file on the drive their boot ROM shows in BOOTSEL mode; this copies it there or says
how to get there.
"""

import glob
import os
import tempfile
import time
from pathlib import Path

from . import ROOT, boards, uf2
from .errors import ToolError
from .image import build, config_files, write_output
from .progress import Progress

#: The ESP32 app image header starts with this byte; a stock .bin has it at its start.
_ESP_IMAGE_MAGIC = 0xE9
#: What the RP2040 boot ROM writes into INFO_UF2.TXT on its drive.
_RP2_BOARD_ID = "RPI-RP2"
_DRIVE_WAIT_S = 15


def add_parser(sub):
    p = sub.add_parser(
        "flash",
        help="write the image (and stock MicroPython) to a board over USB",
        description="ESP32: write with esptool. RP2040: copy a UF2 to the BOOTSEL drive.",
    )
    p.add_argument(
        "--board", required=True, help="board name: " + ", ".join(boards.flashable_boards())
    )
    p.add_argument("--port", help="serial port of the board, e.g. /dev/ttyUSB0 or COM3")
    p.add_argument("--firmware", type=Path, help="stock MicroPython firmware (.bin or .uf2)")
    p.add_argument("--image", type=Path, help="image from `relaybox image` (default: build one)")
    p.add_argument("--config", type=Path, help="initial config.json for the image built here")
    p.add_argument("--flash-size", help="flash size, e.g. 4M (ESP32: checked against the chip)")
    p.add_argument("--baud", type=int, default=None, help="esptool baud rate (default 460800)")
    p.add_argument("--drive", type=Path, help="RP2040: the mounted RPI-RP2 drive")
    p.add_argument(
        "--any-firmware",
        action="store_true",
        help="RP2040: take a --firmware UF2 that does not name the board (your own build)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be written and write nothing (ESP32: the board's partition "
        "table and flash size are read unless --firmware and --flash-size tell them)",
    )
    p.set_defaults(func=cmd_flash)


def cmd_flash(args):
    info = boards.load(args.board)
    boards.geometry(info, args.flash_size)  # an unknown size fails before any USB traffic
    if args.image and args.config:
        raise ToolError("--config only applies to an image built here; leave out --image")
    if args.config:
        # A config the firmware refuses, or its missing CA file, fails before any USB traffic.
        config_files(args.config)
    if info["port"] == "esp32":
        return flash_esp32(info, args)
    if info["port"] == "rp2":
        return flash_rp2(info, args)
    raise ToolError(f"board {args.board} is not flashed over USB; see boards/{args.board}/")


def _download_hint(info, kind):
    stock = info["stock"]
    return f"download the {kind} for {stock['build']} from {stock['url']}"


# ESP32 --------------------------------------------------------------------------------------


def check_esp_firmware(info, path):
    """Refuse files that are not an ESP32 firmware .bin before erasing anything."""
    fix = _download_hint(info, ".bin")
    try:
        head = Path(path).read_bytes()[:1]
    except OSError as e:
        raise ToolError(f"cannot read {path}: {e.strerror}; {fix}") from None
    if Path(path).suffix.lower() != ".bin" or head != bytes([_ESP_IMAGE_MAGIC]):
        raise ToolError(f"{path} is not an ESP32 firmware image; {fix}")


def esptool_args(info, port, baud, writes):
    """The esptool command line equivalent to what flash does (shown by --dry-run)."""
    args = ["--chip", info["esptool"]["chip"], "--port", port, "--baud", str(baud)]
    args.append("write-flash")
    for offset, path in writes:
        args += [f"{offset:#x}", str(path)]
    return args


def esp32_writes(info, geometry, image, firmware=None):
    """[(offset, file)] in flash order: the stock firmware first, then the filesystem."""
    writes = []
    if firmware:
        writes.append((int(info["firmware_offset"], 0), Path(firmware)))
    writes.append((geometry.offset, Path(image)))
    return writes


def check_image(image, geometry):
    size = readable(image).stat().st_size
    if size != geometry.size:
        raise ToolError(
            f"{image} is {size} bytes but the filesystem on the board is {geometry.size} "
            f"({geometry.block_count} blocks at {geometry.offset:#x}); leave out --image and "
            "flash builds a matching one"
        )


def readable(path):
    """`path` as a Path, after checking it is a file this user can read."""
    path = Path(path)
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ToolError(
            f"cannot read {path} ({e.strerror}); check the name, or leave out --image "
            "and flash builds the image"
        ) from None
    return path


def _no_board(info, port, reason):
    hint = info.get("bootloader_hint", "")
    return ToolError(
        f"cannot talk to the {info['name']} on {port} ({reason}). Check the USB cable and the "
        f"port (serial ports here: {', '.join(serial_ports()) or 'none'})"
        + (f"; {hint}" if hint else "")
    )


def serial_ports():
    from serial.tools import list_ports

    return sorted(p.device for p in list_ports.comports())


def firmware_geometry(info, firmware, flash_size):
    """The filesystem under the stock .bin's partition table; None if the chip size decides."""
    parts = boards.partitions_in_firmware(firmware, int(info["firmware_offset"], 0))
    if parts is None:
        raise ToolError(
            f"{firmware} holds no partition table at flash offset 0x8000; "
            + _download_hint(info, ".bin")
        )
    return boards.esp32_geometry(parts, flash_size)


def board_geometry(info, esp, args, flash_size):
    """The filesystem the board will mount: from the table of the firmware it will run."""
    if args.firmware:
        parts = boards.partitions_in_firmware(args.firmware, int(info["firmware_offset"], 0))
    else:
        table = esp.read_flash(boards.PARTITION_TABLE_OFFSET, boards.PARTITION_TABLE_SIZE)
        parts = boards.parse_partitions(table)
        if parts is None:
            raise ToolError(
                f"the board has no partition table at 0x8000, so no MicroPython yet; add "
                f"--firmware STOCK.bin ({_download_hint(info, '.bin')})"
            )
    geometry = boards.esp32_geometry(parts, flash_size)
    if geometry is None:
        raise ToolError("esptool cannot tell the flash size; give it with --flash-size 4M")
    if flash_size and geometry.offset + geometry.size > boards.size_bytes(flash_size):
        raise ToolError(
            f"the partition table puts the filesystem past the end of {flash_size} of flash; "
            + _download_hint(info, ".bin")
        )
    return geometry


def describe(geometry, source):
    return (
        f"filesystem: {geometry.block_count} blocks of {geometry.block_size} at "
        f"{geometry.offset:#x}, from {source}"
    )


def flash_esp32(info, args):
    if not args.port:
        raise ToolError(
            "give the board's serial port with --port; found: "
            + (", ".join(serial_ports()) or "none")
        )
    if args.firmware:
        check_esp_firmware(info, args.firmware)
    if args.image:
        readable(args.image)
    baud = args.baud or info["esptool"]["baud"]
    source = f"the partition table in {args.firmware}" if args.firmware else "the board"
    if args.firmware:
        # Known without the board when the table names "vfs" or the size is given.
        geometry = firmware_geometry(info, args.firmware, args.flash_size)
        if geometry is not None and args.dry_run:
            return _print_plan(info, args, baud, geometry, source)
        if geometry is not None and args.image:
            check_image(args.image, geometry)  # before any USB traffic
    # Imported here: esptool is slow to import and only this path needs it.
    import esptool
    import serial
    from esptool.util import FatalError

    try:
        esp = esptool.detect_chip(args.port)
    except (FatalError, serial.SerialException, OSError) as e:
        raise _no_board(
            info, args.port, str(e).splitlines()[0] if str(e) else type(e).__name__
        ) from None
    try:
        if esp.CHIP_NAME.lower().replace("-", "") != info["esptool"]["chip"]:
            raise ToolError(
                f"the board on {args.port} is an {esp.CHIP_NAME}, not the {info['chip']} of "
                f"{info['name']}; pick the right --board"
            )
        esp = esptool.run_stub(esp)
        if baud != esp.ESP_ROM_BAUD:
            esp.change_baud(baud)
        esptool.attach_flash(esp)
        detected = esptool.cmds.detect_flash_size(esp)
        flash_size = boards.normalize_size(detected) if detected else None
        if args.flash_size and flash_size and boards.normalize_size(args.flash_size) != flash_size:
            raise ToolError(
                f"the board has {detected} of flash, not {args.flash_size}; rerun with "
                f"--flash-size {flash_size} (a wrong size leaves a filesystem it cannot mount)"
            )
        flash_size = flash_size or args.flash_size
        geometry = board_geometry(info, esp, args, flash_size)
        if args.dry_run:
            return _print_plan(info, args, baud, geometry, source)
        with tempfile.TemporaryDirectory(prefix="relaybox-flash-") as tmp:
            image = args.image
            if image:
                check_image(image, geometry)
            else:
                image = build(
                    info["name"], Path(tmp) / "fs.bin", config=args.config, geometry=geometry
                ).path
            writes = esp32_writes(info, geometry, image, args.firmware)
            esptool.write_flash(esp, [(off, str(path)) for off, path in writes])
        esptool.reset_chip(esp, "hard-reset")
    except FatalError as e:
        raise ToolError(
            f"esptool: {e}; press RST on the board and try again, with --baud 115200 if "
            "the USB-serial adapter is slow"
        ) from None
    except (serial.SerialException, OSError) as e:
        raise ToolError(
            f"lost the board on {args.port} ({e}); check the cable, then run flash again"
        ) from None
    finally:
        esp._port.close()
    print(
        f"{info['name']} flashed; it restarts now. "
        f"Watch it with: mpremote connect {args.port} repl"
    )
    return 0


def _print_plan(info, args, baud, geometry, source):
    if args.image:
        check_image(args.image, geometry)
    image = args.image or Path(f"<image of {geometry.block_count} blocks>")
    writes = esp32_writes(info, geometry, image, args.firmware)
    print("esptool " + " ".join(esptool_args(info, args.port, baud, writes)))
    print(describe(geometry, source))
    return 0


# RP2040 -------------------------------------------------------------------------------------


def find_rp2_drives(roots=None):
    """Mounted drives whose INFO_UF2.TXT names the RP2040 boot ROM."""
    user = os.environ.get("USER", "*")
    patterns = roots or [f"/media/{user}/*", "/media/*", f"/run/media/{user}/*", "/Volumes/*"]
    if os.name == "nt":
        patterns = [f"{c}:\\" for c in "DEFGHIJKLMNOPQRSTUVWXYZ"]
    found = []
    for pattern in patterns:
        for path in glob.glob(pattern):
            info = Path(path) / "INFO_UF2.TXT"
            try:
                if _RP2_BOARD_ID in info.read_text(errors="replace"):
                    found.append(Path(path))
            except OSError:
                continue
    return sorted(set(found))


def check_rp2_firmware(info, path, any_firmware=False):
    """The bytes of a stock MicroPython UF2 for this board; anything else is refused.

    Every 512-byte block must carry the UF2 magic numbers and the board's family ID, and
    the firmware must name the board: a MicroPython build holds its MICROPY_HW_BOARD_NAME
    (board.json "machine"), so the build for another RP2040 board is caught here.
    """
    fix = _download_hint(info, "UF2")
    path = Path(path)
    if path.suffix.lower() != ".uf2":
        raise ToolError(f"{path} is not a .uf2; {fix}")
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise ToolError(f"cannot read {path} ({e.strerror}); {fix}") from None
    try:
        blocks = uf2.decode(blob)
    except ValueError as e:
        raise ToolError(f"{path} is not a UF2 file ({e}); {fix}") from None
    if not blocks:
        raise ToolError(f"{path} is empty; {fix}")
    family_id, _ = boards.uf2_settings(info)
    other = sorted({f for _, _, f in blocks if f not in (None, family_id)})
    if other:
        raise ToolError(
            f"{path} is for UF2 family {other[0]:#x}, not {info['uf2']['family']} "
            f"({family_id:#x}) of the {info['name']}; {fix}"
        )
    firmware = b"".join(p for _, p, _ in sorted(blocks, key=lambda b: b[0]))
    names = info.get("machine", [])
    if names and not any_firmware and not any(n.encode() in firmware for n in names):
        raise ToolError(
            f"{path} is not MicroPython for the {info['name']} (it does not name "
            f"{' or '.join(map(repr, names))}); {fix}, or add --any-firmware for a build "
            "of your own"
        )
    return blob


def rp2_uf2(info, args, workdir, out):
    """Write to `out` the UF2 to copy: the image's, plus stock MicroPython with --firmware."""
    family_id, flash_base = boards.uf2_settings(info)
    geometry = boards.geometry(info, args.flash_size)
    if args.image:
        data = uf2.encode(Path(args.image).read_bytes(), flash_base + geometry.offset, family_id)
    else:
        data = build(
            info["name"], workdir / "fs.bin", geometry.flash_size, args.config
        ).uf2_path.read_bytes()
    if args.firmware:
        stock = check_rp2_firmware(info, args.firmware, args.any_firmware)
        try:
            data = uf2.merge(stock, data, family_id)
        except ValueError as e:
            raise ToolError(
                f"cannot use {args.firmware} ({e}); " + _download_hint(info, "UF2")
            ) from None
    # 0600: an image built with --config holds its passwords.
    return write_output(out, data, secret=True)


def enter_bootsel(port):
    """Ask MicroPython on `port` to reboot into the boot ROM's USB drive mode."""
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    try:
        t = SerialTransport(port, timeout=1)
        t.enter_raw_repl(soft_reset=False)
        t.exec_raw_no_follow("import machine\nmachine.bootloader()")
        t.close()
    except (TransportError, OSError) as e:
        raise ToolError(
            f"cannot reach MicroPython on {port} ({e}); hold BOOTSEL while plugging in the USB "
            "cable instead, then run this again"
        ) from None


def wait_for_drive(seconds=_DRIVE_WAIT_S):
    with Progress("waiting for RPI-RP2", seconds, unit="s") as bar:
        for n in range(seconds):
            drives = find_rp2_drives()
            if drives:
                return drives
            time.sleep(1)
            bar.update(n + 1)
    return []


def copy_with_progress(src, dest):
    total = src.stat().st_size
    try:
        with (
            open(src, "rb") as fin,
            open(dest, "wb") as fout,
            Progress(f"copy to {dest.parent}", total) as bar,
        ):
            while chunk := fin.read(64 * 1024):
                fout.write(chunk)
                bar.advance(len(chunk))
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as e:
        raise ToolError(
            f"copying to {dest} failed ({e.strerror}); check that the RPI-RP2 drive is still "
            f"mounted and writable, then run flash again, or copy {src} onto it by hand"
        ) from None


def flash_rp2(info, args):
    if args.image:
        check_image(args.image, boards.geometry(info, args.flash_size))
    if args.firmware:
        check_rp2_firmware(info, args.firmware, args.any_firmware)
    if args.dry_run:
        geometry = boards.geometry(info, args.flash_size)
        family_id, base = boards.uf2_settings(info)
        print(
            f"UF2 family {family_id:#x}: filesystem {geometry.block_count} x "
            f"{geometry.block_size} bytes at {base + geometry.offset:#x}"
            + (f", plus {args.firmware}" if args.firmware else "")
        )
        return 0
    # Without a drive the UF2 stays for the user to copy by hand; after a copy it goes.
    if args.image:
        out = Path(args.image).with_name(Path(args.image).stem + "-flash.uf2")
    else:
        out = ROOT / "build" / f"relaybox-{info['name']}.uf2"
    with tempfile.TemporaryDirectory(prefix="relaybox-flash-") as tmp:
        rp2_uf2(info, args, Path(tmp), out)
    drives = [args.drive] if args.drive else find_rp2_drives()
    if not drives and args.port:
        enter_bootsel(args.port)
        drives = wait_for_drive()
    if not drives:
        raise ToolError(
            f"no RPI-RP2 drive found. Hold the BOOTSEL button while plugging in the USB cable; "
            f"a drive named RPI-RP2 appears. Copy {out} onto it (the board restarts by itself), "
            "or run this again with --drive PATH-OF-THE-DRIVE"
        )
    if len(drives) > 1:
        raise ToolError(
            f"several RPI-RP2 drives: {', '.join(map(str, drives))}; pick one with --drive"
        )
    drive = Path(drives[0])
    if not (drive / "INFO_UF2.TXT").is_file():
        raise ToolError(
            f"{drive} is not an RPI-RP2 drive (no INFO_UF2.TXT); hold BOOTSEL while plugging in"
        )
    copy_with_progress(out, drive / out.name)
    out.unlink()
    print(f"{info['name']} flashed; it restarts by itself")
    return 0
