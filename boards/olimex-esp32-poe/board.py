# Olimex ESP32-POE / POE-ISO: LAN8720 PHY at address 0, RMII clock driven out on GPIO17.
from linkup import Link, status_name

NAME = "olimex-esp32-poe"
CONFIG_PATH = "/config.json"
HAS_NTP = True


class Network(Link):
    kind = "ethernet"

    def _interface(self):
        import network
        from machine import Pin

        return network.LAN(
            mdc=Pin(23),
            mdio=Pin(18),
            power=Pin(12),
            phy_type=network.PHY_LAN8720,
            phy_addr=0,
            ref_clk=Pin(17),
            ref_clk_mode=Pin.OUT,
        )

    def _why(self, nic):
        import network

        return "ethernet " + status_name(network, "ETH_", nic.status())


def led(state):
    # The board has no user LED (GPIO34 is a button); nothing to show.
    pass


def reboot():
    import machine

    machine.reset()
