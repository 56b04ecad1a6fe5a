# Raspberry Pi Pico W: RP2040 with a CYW43439 Wi-Fi chip, which also drives the LED.
from linkup import WifiLink
from statusled import Led

NAME = "pico-w"
CONFIG_PATH = "/config.json"
HAS_NTP = True

# Chip power saving delays incoming packets by up to a beacon interval; a server wants
# them at once (value from the Pico W's MicroPython documentation for "no power save").
_PM_PERFORMANCE = 0xA11140

led = Led("LED")


class Network(WifiLink):
    def __init__(self, cfg, log):
        super().__init__(cfg, log, led)

    def _interface(self):
        import network

        nic = network.WLAN(network.STA_IF)
        nic.active(True)
        nic.config(pm=_PM_PERFORMANCE)
        return nic


def reboot():
    import machine

    machine.reset()
