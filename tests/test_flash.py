"""`relaybox flash` without a board: what it would send, where, and how it fails.

Writing to a real ESP32 or RP2040 needs the hardware, so these tests stop at the edges:
the esptool command line with its offsets (--dry-run), the checks made before any USB
traffic, esptool's own failure on a missing port, and for RP2040 the UF2 copied to a
folder that looks like the boot ROM's drive (an INFO_UF2.TXT naming RPI-RP2).
"""

import argparse
import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from adafruit_uf2 import uf2conv
from littlefs import LittleFS, UserContext
from relaybox_host import ROOT, boards, flash, image, uf2
from relaybox_host.errors import ToolError

RELAYBOX = Path(sys.executable).parent / "relaybox"
PICO_W_FS = 0x1012C000


def relaybox(*args):
    return subprocess.run([str(RELAYBOX), *map(str, args)], capture_output=True, text=True)


def fail(r, message):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    # Progress bars may come first; the error is the last line, and one line.
    last = r.stderr.splitlines()[-1]
    assert last.startswith("relaybox: ") and message in last, r.stderr


# ESP-IDF partition tables as the stock ESP32 builds carry them (ports/esp32/*.csv):
# (label, type, subtype, offset, size); type 0 is app, 1 is data.
COMMON = [("nvs", 1, 2, 0x9000, 0x6000), ("phy_init", 1, 1, 0xF000, 0x1000)]
FACTORY = [("factory", 0, 0, 0x10000, 0x1F0000)]
# 1.26 and later: partitions-4MiBplus.csv, no vfs; the port makes one up to the end of flash.
TABLE_4MIB_PLUS = COMMON + FACTORY
# 1.23 to 1.25: partitions-4MiB.csv, a fixed vfs whatever the chip's flash size.
TABLE_4MIB = COMMON + FACTORY + [("vfs", 1, 0x81, 0x200000, 0x200000)]
# The OTA build: two app slots; vfs is what remains after them.
TABLE_OTA = [
    ("nvs", 1, 2, 0x9000, 0x4000),
    ("otadata", 1, 0, 0xD000, 0x2000),
    ("phy_init", 1, 1, 0xF000, 0x1000),
    ("ota_0", 0, 0x10, 0x10000, 0x180000),
    ("ota_1", 0, 0x11, 0x190000, 0x180000),
]


def encode_table(rows, md5=True):
    """The 0xC00-byte binary table ESP-IDF's gen_esp32part.py writes for `rows`."""
    out = b"".join(
        struct.pack("<2sBBII16sI", b"\xaa\x50", t, st, off, size, label.encode(), 0)
        for label, t, st, off, size in rows
    )
    if md5:
        out += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(out).digest()
    return out + b"\xff" * (0xC00 - len(out))


def stock_bin(path, rows, md5=True):
    """A stock-shaped .bin written at 0x1000: bootloader, table at 0x8000, then the app."""
    boot = b"\xe9" + b"\x55" * (0x7000 - 1)
    app = b"\xe9" + bytes(range(256)) * 16
    path.write_bytes(boot + encode_table(rows, md5) + b"\xff" * (0x9000 - 0x7C00) + app)
    return path


def geometry_of(rows, flash_size):
    parts = boards.parse_partitions(encode_table(rows))
    g = boards.esp32_geometry(parts, flash_size)
    return (g.offset, g.block_count)


def test_partition_tables_give_the_filesystem_the_port_mounts():
    assert [geometry_of(TABLE_4MIB_PLUS, s) for s in ("4M", "8M", "16M")] == [
        (0x200000, 512),
        (0x200000, 1536),
        (0x200000, 3584),
    ]
    # The fixed vfs of 1.23-1.25 stays 512 blocks on a bigger chip.
    assert [geometry_of(TABLE_4MIB, s) for s in ("4M", "8M", "16M")] == [(0x200000, 512)] * 3
    assert geometry_of(TABLE_OTA, "4M") == (0x310000, 240)
    # What board.json says for builds without a table at hand is the 1.26+ rule.
    for board in ("esp32-eth", "esp32-wifi", "olimex-esp32-poe"):
        info = boards.load(board)
        for size in info["filesystem"]:
            g = boards.geometry(info, size)
            assert (g.offset, g.block_count) == geometry_of(TABLE_4MIB_PLUS, size)
        assert info["stock"]["layout_since"] == "1.26.0"


def test_partition_table_parser_edges():
    parts = boards.parse_partitions(encode_table(TABLE_4MIB, md5=False))
    assert parts[-1] == boards.Partition("vfs", 1, 0x81, 0x200000, 0x200000)
    assert [p.label for p in parts] == ["nvs", "phy_init", "factory", "vfs"]
    assert boards.parse_partitions(b"\xff" * 0xC00) is None  # erased flash
    assert boards.esp32_geometry(boards.parse_partitions(encode_table(TABLE_OTA)), None) is None
    bad = bytearray(encode_table(TABLE_4MIB))
    bad[0x28] ^= 1  # one bit of the factory partition's size
    with pytest.raises(ToolError, match="fails its MD5 check"):
        boards.parse_partitions(bytes(bad))
    bad = bytearray(encode_table(TABLE_4MIB, md5=False))
    bad[0x40:0x42] = b"\x12\x34"
    with pytest.raises(ToolError, match="damaged entry at byte 64"):
        boards.parse_partitions(bytes(bad))
    ffat = COMMON + FACTORY + [("ffat", 1, 0x81, 0x200000, 0x200000)]
    with pytest.raises(ToolError, match="FAT filesystem"):
        boards.esp32_geometry(boards.parse_partitions(encode_table(ffat)), "4M")


class ChipFlash:
    """The flash of a chip as esptool reads it (ESPLoader.read_flash), over a bytearray."""

    def __init__(self, size, table=None):
        self.data = bytearray(b"\xff" * size)
        if table:
            self.data[0x8000 : 0x8000 + len(table)] = table

    def read_flash(self, offset, length, progress_fn=None):
        return bytes(self.data[offset : offset + length])


def test_without_firmware_the_table_on_the_chip_decides():
    info = boards.load("esp32-wifi")
    args = argparse.Namespace(firmware=None)
    old = ChipFlash(8 << 20, encode_table(TABLE_4MIB))  # MicroPython 1.24 on an 8 MiB chip
    assert flash.board_geometry(info, old, args, "8M").block_count == 512
    new = ChipFlash(8 << 20, encode_table(TABLE_4MIB_PLUS))
    assert flash.board_geometry(info, new, args, "8M").block_count == 1536
    with pytest.raises(ToolError, match="no MicroPython yet; add --firmware STOCK.bin"):
        flash.board_geometry(info, ChipFlash(4 << 20), args, "4M")
    with pytest.raises(ToolError, match="give it with --flash-size"):
        flash.board_geometry(info, new, args, None)
    big = COMMON + FACTORY + [("vfs", 1, 0x81, 0x200000, 0x600000)]
    with pytest.raises(ToolError, match="past the end of 4M of flash"):
        flash.board_geometry(info, ChipFlash(4 << 20, encode_table(big)), args, "4M")


def test_esp32_dry_run_shows_offsets_and_the_real_geometry(tmp_path):
    stock = stock_bin(tmp_path / "ESP32_GENERIC-v1.24.1.bin", TABLE_4MIB)
    r = relaybox(
        "flash", "--board", "esp32-eth", "--port", "/dev/ttyUSB0", "--dry-run",
        "--firmware", stock,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "esptool --chip esp32 --port /dev/ttyUSB0 --baud 460800 write-flash "
        f"0x1000 {stock} 0x200000 <image of 512 blocks>\n"
        f"filesystem: 512 blocks of 4096 at 0x200000, from the partition table in {stock}\n"
    )
    # An image built for an 8 MiB chip by the 1.26+ layout is refused for this firmware.
    img = image.build("esp32-eth", tmp_path / "fs8.bin", "8M").path
    fail(
        relaybox(
            "flash",
            "--board",
            "esp32-eth",
            "--port",
            "/dev/ttyUSB0",
            "--dry-run",
            "--firmware",
            stock,
            "--image",
            img,
        ),  # fmt: skip
        f"{img} is {1536 * 4096} bytes but the filesystem on the board is {512 * 4096} "
        "(512 blocks at 0x200000); leave out --image",
    )
    new = stock_bin(tmp_path / "ESP32_GENERIC-v1.26.0.bin", TABLE_4MIB_PLUS)
    r = relaybox(
        "flash", "--board", "esp32-eth", "--port", "/dev/ttyUSB0", "--dry-run",
        "--firmware", new, "--image", img, "--flash-size", "8M",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"0x1000 {new} 0x200000 {img}\n" in r.stdout, r.stdout
    assert "filesystem: 1536 blocks of 4096 at 0x200000" in r.stdout, r.stdout
    # Without --flash-size the chip decides, so even a dry run asks the board.
    r = relaybox(
        "flash", "--board", "olimex-esp32-poe", "--port", tmp_path / "COM3", "--dry-run",
        "--firmware", new,
    )  # fmt: skip
    fail(r, f"cannot talk to the olimex-esp32-poe on {tmp_path / 'COM3'}")


def test_image_follows_the_table_of_a_stock_bin(tmp_path):
    stock = stock_bin(tmp_path / "ESP32_GENERIC-v1.24.1.bin", TABLE_4MIB)
    out = tmp_path / "fs.bin"
    r = relaybox(
        "image", "--board", "esp32-wifi", "--flash-size", "8M", "--firmware", stock, "-o", out
    )
    assert r.returncode == 0, r.stderr
    assert "/512 blocks of 4096 used, for flash offset 0x200000 (8M flash)" in r.stdout
    assert out.stat().st_size == 512 * 4096
    fs = LittleFS(
        UserContext(512 * 4096, bytearray(out.read_bytes())), block_size=4096, block_count=512
    )
    assert fs.fs_stat().block_count == 512
    r = relaybox("image", "--board", "esp32-wifi", "--flash-size", "8M", "-o", out)
    assert "(8M flash)\nthe layout is that of stock ESP32_GENERIC 1.26.0 or later" in r.stdout
    blank = tmp_path / "blank.bin"
    blank.write_bytes(b"\xe9" + b"\xff" * 0x9000)
    fail(
        relaybox("image", "--board", "esp32-wifi", "--firmware", blank, "-o", out),
        "holds no partition table at flash offset 0x8000; download the .bin for ESP32_GENERIC",
    )


def test_esp32_checks_before_touching_the_board(tmp_path):
    text = tmp_path / "notes.bin"
    text.write_text("hello")
    fail(
        relaybox("flash", "--board", "esp32-wifi", "--port", "/dev/null", "--firmware", text),
        "is not an ESP32 firmware image; download the .bin for ESP32_GENERIC from https://",
    )
    uf2_file = tmp_path / "RPI_PICO_W.uf2"
    uf2_file.write_bytes(uf2.encode(b"\0" * 256, 0x10000000, 0xE48BFF56))
    fail(
        relaybox("flash", "--board", "esp32-eth", "--port", "/dev/null", "--firmware", uf2_file),
        "is not an ESP32 firmware image",
    )
    small = image.build("pico-w", tmp_path / "pico.bin").path
    stock = stock_bin(tmp_path / "ESP32_GENERIC.bin", TABLE_4MIB)
    fail(
        relaybox(
            "flash",
            "--board",
            "esp32-eth",
            "--port",
            "/dev/null",
            "--image",
            small,
            "--firmware",
            stock,
        ),  # fmt: skip
        f"{small} is {212 * 4096} bytes but the filesystem on the board is",
    )
    fail(
        relaybox("flash", "--board", "esp32-eth", "--port", "x", "--image", tmp_path / "no.bin"),
        f"cannot read {tmp_path / 'no.bin'} (No such file or directory); check the name",
    )
    fail(relaybox("flash", "--board", "esp32-eth"), "give the board's serial port with --port")
    fail(
        relaybox("flash", "--board", "esp32-eth", "--port", "x", "--flash-size", "3M"),
        "choose --flash-size from 4M, 8M, 16M",
    )


def test_esp32_missing_port_says_what_to_check(tmp_path):
    r = relaybox("flash", "--board", "esp32-eth", "--port", tmp_path / "ttyUSB9")
    fail(r, f"cannot talk to the esp32-eth on {tmp_path / 'ttyUSB9'}")
    assert "tie IO0 to GND" in r.stderr, r.stderr  # the board's own hint from board.json


def fake_drive(tmp_path):
    drive = tmp_path / "RPI-RP2"
    drive.mkdir()
    (drive / "INFO_UF2.TXT").write_text(
        "UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n"
    )
    return drive


def test_rp2_copies_uf2_to_the_drive(tmp_path):
    drive = fake_drive(tmp_path)
    img = image.build("pico-w", tmp_path / "fs.bin").path
    r = relaybox("flash", "--board", "pico-w", "--image", img, "--drive", drive)
    assert r.returncode == 0, r.stderr
    assert "copy to" in r.stderr and "100%" in r.stderr, r.stderr
    copied = drive / "fs-flash.uf2"
    uf2conv.familyid = 0xE48BFF56
    assert uf2conv.convert_from_uf2(copied.read_bytes()) == img.read_bytes()
    assert uf2conv.appstartaddr == PICO_W_FS


def test_rp2_stock_firmware_goes_in_the_same_uf2(tmp_path):
    drive = fake_drive(tmp_path)
    stock = tmp_path / "RPI_PICO_W.uf2"
    firmware = stock_uf2_payload("Raspberry Pi Pico W")
    stock.write_bytes(uf2.encode(firmware, 0x10000000, 0xE48BFF56))
    img = image.build("pico-w", tmp_path / "fs.bin").path
    r = relaybox(
        "flash", "--board", "pico-w", "--image", img, "--drive", drive, "--firmware", stock
    )
    assert r.returncode == 0, r.stderr
    blocks = uf2.decode((drive / "fs-flash.uf2").read_bytes())
    start = [a for a, _, _ in blocks]
    assert start[0] == 0x10000000 and start[len(firmware) // 256] == PICO_W_FS
    assert b"".join(p for _, p, _ in blocks) == firmware + img.read_bytes()

    bin_file = tmp_path / "ESP32_GENERIC.bin"
    bin_file.write_bytes(b"\xe9")
    fail(
        relaybox(
            "flash", "--board", "pico-w", "--image", img, "--drive", drive, "--firmware", bin_file
        ),
        "is not a .uf2; download the UF2 for RPI_PICO_W from https://",
    )


def stock_uf2_payload(board_name):
    """500 KiB standing in for MicroPython: a build names its board (MICROPY_HW_BOARD_NAME),
    here across a 256-byte block boundary as it may fall in a real one."""
    data = bytearray(bytes(range(256)) * 2000)
    name = board_name.encode() + b"\0"
    data[100 * 256 - 5 : 100 * 256 - 5 + len(name)] = name
    return bytes(data)


def test_rp2_firmware_must_be_micropython_for_this_board(tmp_path):
    drive = fake_drive(tmp_path)
    url = "download the UF2 for RPI_PICO_W from https://micropython.org/download/RPI_PICO_W/"

    def write(name, data):
        path = tmp_path / name
        path.write_bytes(data)
        return path

    w5500 = write(
        "W5500_EVB_PICO.uf2",
        uf2.encode(stock_uf2_payload("W5500-EVB-Pico"), 0x10000000, 0xE48BFF56),
    )
    pico2 = write(
        "RPI_PICO2_W.uf2",
        uf2.encode(stock_uf2_payload("Raspberry Pi Pico W"), 0x10000000, 0xE48BFF59),
    )
    good = uf2.encode(stock_uf2_payload("Raspberry Pi Pico W"), 0x10000000, 0xE48BFF56)
    broken = bytearray(good)
    broken[512 * 7 + 508] ^= 1  # the end magic of block 7
    cases = [
        (
            w5500,
            "is not MicroPython for the pico-w (it does not name 'Raspberry Pi Pico W'); "
            + url
            + ", or add --any-firmware for a build of your own",
        ),
        (pico2, "is for UF2 family 0xe48bff59, not RP2040 (0xe48bff56) of the pico-w; " + url),
        (
            write("broken.uf2", bytes(broken)),
            "is not a UF2 file (bad UF2 magic in block 7); " + url,
        ),
        (write("text.uf2", b"not a firmware\n"), "is not a UF2 file (a UF2 file is a whole"),
        (write("empty.uf2", b""), "is empty; " + url),
    ]
    for firmware, message in cases:
        for extra in (["--dry-run"], ["--drive", drive]):
            r = relaybox("flash", "--board", "pico-w", "--firmware", firmware, *extra)
            fail(r, f"relaybox: {firmware} {message}")
            assert r.stderr.count("\n") == 1, r.stderr  # refused before building anything
    assert sorted(p.name for p in drive.iterdir()) == ["INFO_UF2.TXT"]

    ok = write("RPI_PICO_W.uf2", good)
    r = relaybox("flash", "--board", "pico-w", "--firmware", ok, "--dry-run")
    assert r.returncode == 0 and f"plus {ok}" in r.stdout, r.stderr
    # A build of one's own that names the board otherwise: taken only when asked for.
    img = image.build("w5500-evb-pico", tmp_path / "fs.bin").path
    r = relaybox(
        "flash", "--board", "w5500-evb-pico", "--image", img, "--drive", drive,
        "--firmware", ok, "--any-firmware",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (drive / "fs-flash.uf2").is_file()


def test_rp2_without_a_drive_explains_bootsel(tmp_path):
    img = image.build("w5500-evb-pico", tmp_path / "fs.bin").path
    r = relaybox("flash", "--board", "w5500-evb-pico", "--image", img)
    fail(r, "no RPI-RP2 drive found. Hold the BOOTSEL button while plugging in the USB cable")
    kept = tmp_path / "fs-flash.uf2"
    assert str(kept) in r.stderr and kept.is_file()
    fail(
        relaybox("flash", "--board", "w5500-evb-pico", "--image", img, "--drive", tmp_path),
        "is not an RPI-RP2 drive",
    )


def test_rp2_uf2_with_a_config_is_private_and_goes_after_the_copy(tmp_path):
    drive = fake_drive(tmp_path)
    config = tmp_path / "config.json"
    upstream = {
        "host": "smtp.example.net",
        "user": "me@example.net",
        "password": "pw",
        "ca": "ca.pem",
    }
    config.write_text(json.dumps({"upstream": upstream}))
    (tmp_path / "ca.pem").write_bytes(b"0\x82\x01\x0a")  # DER starts with a SEQUENCE
    built = ROOT / "build" / "relaybox-w5500-evb-pico.uf2"
    r = relaybox("flash", "--board", "w5500-evb-pico", "--config", config, "--drive", drive)
    assert r.returncode == 0, r.stderr
    assert (drive / built.name).stat().st_size > 0
    assert not built.exists()  # the passwords are on the board, not left in build/
    # Without a drive the UF2 stays for a copy by hand, readable by its owner only.
    r = relaybox("flash", "--board", "w5500-evb-pico", "--config", config)
    fail(r, "no RPI-RP2 drive found. Hold the BOOTSEL button")
    try:
        assert built.stat().st_mode & 0o777 == 0o600
    finally:
        built.unlink()
    out = tmp_path / "img" / "fs.bin"
    img = image.build("pico-w", out, config=config)
    assert [p.stat().st_mode & 0o777 for p in (img.path, img.uf2_path)] == [0o600, 0o600]


def test_file_errors_say_what_to_do(tmp_path):
    fail(
        relaybox("flash", "--board", "pico-w", "--image", "nosuch.bin", "--drive", tmp_path),
        "cannot read nosuch.bin (No such file or directory); check the name, or leave out",
    )
    afile = tmp_path / "afile"
    afile.write_text("")
    fail(
        relaybox("image", "--board", "pico-w", "-o", afile / "x.bin"),
        f"cannot write {afile / 'x.bin'} (File exists: {afile}); choose an output path",
    )
    drive = fake_drive(tmp_path)
    img = image.build("pico-w", tmp_path / "fs.bin").path
    (drive / "fs-flash.uf2").mkdir()  # the copy cannot open its target
    r = relaybox("flash", "--board", "pico-w", "--image", img, "--drive", drive)
    fail(r, f"copying to {drive / 'fs-flash.uf2'} failed (Is a directory); check that the")
    assert f"or copy {tmp_path / 'fs-flash.uf2'} onto it by hand" in r.stderr
    assert (tmp_path / "fs-flash.uf2").is_file()
