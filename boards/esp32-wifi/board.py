# Any ESP32 development board as a Wi-Fi station (stock ESP32_GENERIC build).
from linkup import WifiLink
from statusled import Led

NAME = "esp32-wifi"
CONFIG_PATH = "/config.json"
HAS_NTP = True

#: Many ESP32 DevKit boards have a blue LED on GPIO2; set None if yours uses GPIO2 otherwise.
LED_PIN = 2

led = Led(LED_PIN) if LED_PIN is not None else (lambda state: None)


class Network(WifiLink):
    def __init__(self, cfg, log):
        super().__init__(cfg, log, led)

    def _interface(self):
        import network

        # The access point interface stays off: the relay is a station on the LAN only.
        network.WLAN(network.AP_IF).active(False)
        return network.WLAN(network.STA_IF)


def reboot():
    import machine

    machine.reset()
