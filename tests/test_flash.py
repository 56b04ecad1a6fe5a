"""`relaybox flash` without a board: what it would send, where, and how it fails.

Writing to a real ESP32 or RP2040 needs the hardware, so these tests stop at the edges:
the esptool command line with its offsets (--dry-run), the checks made before any USB
traffic, esptool's own failure on a missing port, and for RP2040 the UF2 copied to a
folder that looks like the boot ROM's drive (an INFO_UF2.TXT naming RPI-RP2).
"""

import subprocess
import sys
from pathlib import Path

from adafruit_uf2 import uf2conv
from relaybox_host import image, uf2

RELAYBOX = Path(sys.executable).parent / "relaybox"
PICO_W_FS = 0x1012C000


def relaybox(*args):
    return subprocess.run([str(RELAYBOX), *map(str, args)], capture_output=True, text=True)


def fail(r, message):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("relaybox: ") and message in r.stderr, r.stderr


def test_esp32_dry_run_shows_esptool_offsets(tmp_path):
    stock = tmp_path / "ESP32_GENERIC.bin"
    stock.write_bytes(b"\xe9" + b"\0" * 4095)
    img = image.build("esp32-eth", tmp_path / "fs8.bin", "8M").path
    r = relaybox(
        "flash", "--board", "esp32-eth", "--port", "/dev/ttyUSB0", "--dry-run",
        "--firmware", stock, "--image", img, "--flash-size", "8M",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "esptool --chip esp32 --port /dev/ttyUSB0 --baud 460800 write-flash "
        f"0x1000 {stock} 0x200000 {img}\n"
    )
    r = relaybox("flash", "--board", "olimex-esp32-poe", "--port", "COM3", "--dry-run")
    assert r.stdout.endswith("write-flash 0x200000 <image for 4M>\n"), r.stdout


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
    fail(
        relaybox("flash", "--board", "esp32-eth", "--port", "/dev/null", "--image", small),
        "matches no esp32-eth filesystem; rebuild it with `relaybox image --board esp32-eth",
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
    firmware = bytes(range(256)) * 2000  # 500 KiB standing in for MicroPython
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
