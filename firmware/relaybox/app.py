# Wiring: read the config, recover the spool, start the LAN server and the other tasks.
import asyncio
import sys
import time

from . import VERSION, log
from .config import Config, ConfigError
from .policy import Policy
from .smtp_server import Server
from .spool import Spool


class Relay:
    """The running relay as the console and the tasks see it."""

    def __init__(self, cfg, board):
        self.cfg = cfg
        self.board = board
        self.started = time.time()
        self.spool = Spool(cfg.path_of("spool"))
        self.server = Server(cfg, self.spool, Policy(cfg.get("allow")), self._queued)
        self.delivery = None
        self.network = None
        self.restart_needed = False

    def _queued(self, id):
        if self.delivery:
            self.delivery.wake()

    async def run(self):
        queued, dead = self.spool.recover()
        log.info("spool", "%d queued, %d dead letters in %s" % (queued, dead, self.spool.root))
        if self.board and hasattr(self.board, "Network"):
            self.network = self.board.Network(self.cfg.values, log)
            asyncio.create_task(self.network.run())
        await self.server.start()
        asyncio.create_task(self.server.watchdog())
        if self.cfg.upstream() is None:
            log.warn("relay", "no upstream configured: mail is accepted and held in the spool")
        else:
            from .delivery import Delivery

            self.delivery = Delivery(self)
            asyncio.create_task(self.delivery.run())
        log.info("relay", "relaybox %s running as %s" % (VERSION, self.cfg.get("hostname")))
        while True:
            await asyncio.sleep(3600)


def _config_path(board):
    argv = sys.argv
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 < len(argv):
            return argv[i + 1]
    return getattr(board, "CONFIG_PATH", "/config.json")


def main(config_path=None):
    try:
        import board
    except ImportError:
        board = None
    path = config_path or _config_path(board)
    try:
        cfg = Config.load(path)
        log.setup(cfg.get("log.level"), cfg.get("log.ring"))
        relay = Relay(cfg, board)
    except ConfigError as e:
        print("relaybox: config error: %s" % e)
        sys.exit(2)
    try:
        asyncio.run(relay.run())
    except KeyboardInterrupt:
        log.info("relay", "stopped")
