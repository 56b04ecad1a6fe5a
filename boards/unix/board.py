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


_saved_attrs = None  # the terminal's settings from before a secret prompt


def console_echo(on):
    """The host's terminal may echo what is typed: off while a secret is typed; then the
    settings from before the prompt come back exactly (a raw pty stays without echo)."""
    global _saved_attrs
    try:
        import termios

        if on:
            if _saved_attrs is not None:
                termios.tcsetattr(0, termios.TCSANOW, _saved_attrs)
            _saved_attrs = None
            return
        attrs = termios.tcgetattr(0)
        if _saved_attrs is None:
            _saved_attrs = [list(a) if type(a) is list else a for a in attrs]
        attrs[3] = attrs[3] & ~8  # ECHO in c_lflag
        termios.tcsetattr(0, termios.TCSANOW, attrs)
    except (ImportError, OSError):
        return  # stdin is not a terminal
