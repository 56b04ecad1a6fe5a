# WIZnet W5500-EVB-Pico: RP2040 with a W5500 Ethernet controller on SPI0 (board pins).
from linkup import Link
from statusled import Led

NAME = "w5500-evb-pico"
CONFIG_PATH = "/config.json"
HAS_NTP = True

led = Led(25)


class Network(Link):
    kind = "ethernet"

    def __init__(self, cfg, log):
        super().__init__(cfg, log, led)

    def _interface(self):
        import network

        # No arguments: the W5500_EVB_PICO build knows its SPI bus and CS/RST/INT pins.
        return network.WIZNET5K()

    def _start(self, nic):
        if not self.cfg["static"]:
            nic.ifconfig("dhcp")


def reboot():
    import machine

    machine.reset()
