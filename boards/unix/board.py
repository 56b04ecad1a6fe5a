# The unix board: a Linux host. The host's network and clock are already set up.
NAME = "unix"
CONFIG_PATH = "config.json"
HAS_NTP = False
#: The relay ends its process with an exit code on a config error; `relaybox run` reads it.
EXIT_CODES = True


class Network:
    def __init__(self, cfg, log):
        self.log = log

    async def run(self):
        self.log.info("net", "using the host's network")

    def state(self):
        return {"up": True, "ip": None, "detail": "host network"}


def led(state):
    pass


def console_echo(on):
    """The host's terminal echoes what is typed: off while a secret is typed, then on."""
    try:
        import termios

        attrs = termios.tcgetattr(0)
    except (ImportError, OSError):
        return  # stdin is not a terminal
    attrs[3] = attrs[3] | 8 if on else attrs[3] & ~8  # ECHO in c_lflag
    termios.tcsetattr(0, termios.TCSANOW, attrs)
