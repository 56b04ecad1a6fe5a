# WT32-ETH01: ESP32 with a LAN8720 PHY, 50 MHz RMII clock from an oscillator into GPIO0.
from linkup import Link, status_name

NAME = "esp32-eth"
CONFIG_PATH = "/config.json"
HAS_NTP = True

#: GPIO16 enables the PHY's clock oscillator on the board (set None if yours lacks it).
POWER_PIN = 16


class Network(Link):
    kind = "ethernet"

    def _interface(self):
        import network
        from machine import Pin

        return network.LAN(
            mdc=Pin(23),
            mdio=Pin(18),
            power=None if POWER_PIN is None else Pin(POWER_PIN),
            phy_type=network.PHY_LAN8720,
            phy_addr=1,
        )

    def _why(self, nic):
        import network

        return "ethernet " + status_name(network, "ETH_", nic.status())


def led(state):
    # The board has power and link LEDs only, none the firmware can drive.
    pass


def reboot():
    import machine

    machine.reset()
