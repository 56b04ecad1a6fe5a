"""Each board's Network under the MicroPython unix port, against recording fakes.

The fakes (tests/fakehw) stand in for the `network` and `machine` modules, which only
exist on the boards; everything else is the real code on the real unix port and asyncio.
They check what the board modules ask of the drivers (pins, PHY, host name, DHCP or
static) and how bring-up behaves: polled without blocking the loop, retried with doubling
backoff, reported through state() and the log, never logging the Wi-Fi key. Timings are
shortened from seconds to milliseconds for the run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from relaybox_host import ROOT, boards

MICROPYTHON = Path(sys.executable).parent / "micropython"
FAKES = Path(__file__).parent / "fakehw"


def run_network(board, cfg, plan=None, samples=40, reboot=False):
    path = [FAKES, ROOT / "boards" / "common", ROOT / "boards" / board, ".frozen"]
    r = subprocess.run(
        [str(MICROPYTHON), str(FAKES / "netdriver.py")]
        + [json.dumps({"cfg": cfg, "plan": plan or {}, "samples": samples, "reboot": reboot})],
        env=dict(os.environ, MICROPYPATH=":".join(map(str, path))),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def details(report):
    return [s["detail"] for s in report["states"]]


def test_ethernet_dhcp_comes_up_drops_and_comes_back():
    r = run_network("esp32-eth", {}, {"up_after": 3, "drop_after": 4})
    assert r["network"][:2] == [
        "('hostname', 'relaybox')",  # before the interface exists, so DHCP carries it
        "('LAN', (), [('mdc', Pin(23)), ('mdio', Pin(18)), ('phy_addr', 1), ('phy_type', 8), "
        "('power', Pin(16))])",
    ]
    ups = [s for s in r["states"] if s["up"]]
    assert ups[0] == {"up": True, "ip": "10.0.0.7", "detail": "up, dhcp"}
    assert details(r)[0].endswith("dhcp wait, try 1"), r["states"]
    assert "link lost" in details(r) and r["states"][-1]["up"], r["states"]
    assert r["log"][:2] == [
        "info net: ethernet up: ip=10.0.0.7 host=relaybox (dhcp)",
        "warn net: ethernet down: link lost; next try in 0.1s",
    ]
    # The ticker ran every 5 ms during some 800 ms: bring-up never held the loop.
    assert r["ticks"] > 80, r["ticks"]


def test_olimex_static_address_and_its_phy():
    cfg = {
        "network.dhcp": False,
        "network.ip": "192.168.1.20",
        "network.gateway": "192.168.1.1",
        "network.hostname": "mailbox",
    }
    r = run_network("olimex-esp32-poe", cfg, samples=5)
    assert r["network"][:4] == [
        "('hostname', 'mailbox')",
        "('LAN', (), [('mdc', Pin(23)), ('mdio', Pin(18)), ('phy_addr', 0), ('phy_type', 8), "
        "('power', Pin(12)), ('ref_clk', Pin(17)), ('ref_clk_mode', 1)])",
        "('active', True)",
        "('ifconfig', ('192.168.1.20', '255.255.255.0', '192.168.1.1', '192.168.1.1'))",
    ]
    assert r["log"][0] == "info net: ethernet up: ip=10.0.0.7 host=mailbox (static)"


def test_wifi_wrong_key_backs_off_and_is_never_logged():
    cfg = {"network": {"wifi": {"ssid": "HomeNet", "key": "sekrit-key-123"}}}
    r = run_network("pico-w", cfg, {"up_after": 10**6, "status": -3}, samples=60)
    assert "sekrit" not in json.dumps(r)
    assert "('connect', 'HomeNet', 'key of 14 chars')" in r["network"]
    assert "('config', [('pm', %d)])" % 0xA11140 in r["network"]  # power saving off
    assert details(r)[0] == "wifi wrong password (ssid 'HomeNet'), try 1"
    waits = [line.rpartition("next try in ")[2] for line in r["log"]]
    assert waits[:4] == ["0.1s", "0.2s", "0.4s", "0.4s"], r["log"]
    # The Pico W's LED is on the Wi-Fi chip; after a failed attempt it blinks, from a task
    # since machine.Timer (which needs an id on the ESP32 port) is not used at all.
    assert r["machine"] == ["('Pin', 'LED', 1)"]
    assert blinks(r["led"]) >= 4, r["led"]


def blinks(samples):
    """How many times the LED changed, from its value at each 5 ms tick."""
    return sum(a != b for a, b in zip(samples[:-1], samples[1:], strict=True))


def test_error_blinks_and_ok_is_steady_on_an_esp32():
    cfg = {"network": {"wifi": {"ssid": "HomeNet", "key": "k"}}}
    bad = run_network("esp32-wifi", cfg, {"up_after": 10**6, "status": -2}, samples=40)
    assert "('Pin', 2, 1)" in bad["machine"] and not any("Timer" in c for c in bad["machine"])
    assert blinks(bad["led"]) >= 4, bad["led"]
    good = run_network("esp32-wifi", cfg, {"up_after": 1}, samples=20)
    assert good["states"][-1]["up"] and good["led"].endswith("1" * 50), good["led"]
    assert set(good["led"]) == {"1"}, good["led"]  # steady once the link is up


def test_wifi_without_ssid_says_which_setting():
    r = run_network("esp32-wifi", {}, samples=3)
    assert r["network"][1:3] == ["('WLAN', (1,), [])", "('active', False)"]  # no access point
    assert details(r)[0] == (
        "ValueError: no Wi-Fi network: set network.wifi.ssid in the config, try 1"
    )


def test_w5500_uses_board_pins_and_dhcp_from_active():
    """WIZNET5K with lwIP starts DHCP in active(True); ifconfig("dhcp") would hold the
    whole relay while it waits for the lease (the fake blocks like the C code)."""
    r = run_network("w5500-evb-pico", {}, {"up_after": 6}, samples=10)
    assert r["network"][1:] == ["('WIZNET5K', (), [])", "('active', True)"]
    assert r["states"][-1] == {"up": True, "ip": "10.0.0.7", "detail": "up, dhcp"}
    assert "('Pin', 25, 1)" in r["machine"]


@pytest.mark.parametrize("board", boards.flashable_boards())
def test_bring_up_never_holds_the_loop(board):
    cfg = {"network": {"wifi": {"ssid": "HomeNet", "key": "k"}}}
    r = run_network(board, cfg, {"up_after": 6, "drop_after": 3}, samples=20)
    assert any(s["up"] for s in r["states"]), r["states"]
    # The ticker runs every 5 ms; a blocking driver call shows as a long gap.
    assert r["gap_ms"] < 40, (r["gap_ms"], r["network"])


@pytest.mark.parametrize("board", boards.flashable_boards())
def test_reboot_is_a_hard_reset(board):
    """The console's `reboot` ends in board.reboot(): a full reset brings the network up anew."""
    r = run_network(board, {}, samples=1, reboot=True)
    assert r["machine"][-1] == "('reset',)", r["machine"]
