# The unix board: a Linux host. The host's network and clock are already set up.
NAME = "unix"
CONFIG_PATH = "config.json"
HAS_NTP = False


class Network:
    def __init__(self, cfg, log):
        self.log = log

    async def run(self):
        self.log.info("net", "using the host's network")

    def state(self):
        return {"up": True, "ip": None, "detail": "host network"}


def led(state):
    pass
