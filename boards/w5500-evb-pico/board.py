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
        # active(True) starts DHCP on this lwIP build; ifconfig("dhcp") is not called since
        # it waits up to 10 s for a lease and would stop the relay meanwhile.
        return network.WIZNET5K()


def reboot():
    import machine

    machine.reset()
