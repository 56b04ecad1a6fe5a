# Wiring: read the config, recover the spool, start the LAN server and the other tasks.
import asyncio
import gc
import os
import sys
import time

from . import VERSION, clock, log
from .config import Config, ConfigError
from .policy import Policy
from .smtp_server import Server
from .spool import DEAD, QUEUE, Spool

_CA_FILE = "upstream-ca.pem"
_REBOOT_EXIT = 3  # `relaybox run` starts the firmware again on this exit code
_STOP_MS = 3000  # the longest a stop waits for clients to take their 421
# What an OSError from the spool folder or the listening socket means to the owner.
_WHY = {
    2: "a folder on the path does not exist",
    13: "permission denied",
    17: "exists and is not a folder",
    20: "not a folder",
    30: "read-only file system",
    98: "address in use",
    99: "not an address of this host",
}


def _why(err):
    n = err.args[0] if err.args else None
    return _WHY.get(n) or "error %s" % n


class Relay:
    """The running relay as the console and the tasks see it."""

    def __init__(self, cfg, board):
        self.cfg = cfg
        self.board = board
        self.started = time.time()
        self.spool = Spool(cfg.path_of("spool"))
        self.server = Server(cfg, self.spool, Policy(cfg.get("allow")), self._queued)
        self.delivery = None
        self._delivery_task = None
        self.network = None
        self.restart_needed = False
        self.console_echo = False

    def _queued(self, id):
        if self.delivery:
            self.delivery.wake()

    async def run(self, console=True):
        try:
            queued, dead = self.spool.recover()
        except OSError as e:
            raise ConfigError("spool", "cannot use %s: %s" % (self.spool.root, _why(e))) from None
        if self.board and hasattr(self.board, "Network"):
            self.network = self.board.Network(self.cfg.values, log)
            asyncio.create_task(self.network.run())
        if console:
            # Before the server listens: a heap too small for the console is known before
            # the relay says it is up, and the relay then runs without one.
            try:
                from . import console as _console

                # A board's serial line has no terminal driver to echo what a person types.
                echo = getattr(self.board, "CONSOLE_ECHO", sys.platform not in ("linux", "darwin"))
                _console.start(self, echo)
                self.console_echo = echo
            except MemoryError:
                log.error("relay", "not enough memory for the console: running without it")
        await self._listen()
        log.info("spool", "%d queued, %d dead letters in %s" % (queued, dead, self.spool.root))
        asyncio.create_task(self.server.watchdog())
        self.start_delivery()
        log.info("relay", "relaybox %s running as %s" % (VERSION, self.cfg.get("hostname")))
        while True:
            await asyncio.sleep(3600)

    async def _listen(self):
        where = "%s:%d" % (self.cfg.get("listen.host"), self.cfg.get("listen.port"))
        waiting = False
        while True:
            try:
                return await self.server.start()
            except OSError as e:
                if not self.network or self.network.state()["up"]:
                    raise ConfigError(
                        "listen", "cannot listen on %s: %s" % (where, _why(e))
                    ) from None
                # A fixed address is the board's only once its network is up; the console
                # answers meanwhile.
                if not waiting:
                    log.warn("smtp", "cannot listen on %s before the network is up" % where)
                    waiting = True
                await asyncio.sleep_ms(1000)

    def stop(self):
        """After SIGINT: every client hears 421 (RFC 5321 section 3.8), for a bounded
        time; a message still in DATA is dropped, never half queued."""
        asyncio.run(self.server.stop(_STOP_MS))

    def start_delivery(self):
        """(Re)start delivery with the current upstream settings."""
        if self._delivery_task:
            self._delivery_task.cancel()
            self._delivery_task = self.delivery = None
        if self.cfg.upstream() is None:
            missing = self.cfg.missing()
            if missing:
                log.warn("relay", "upstream incomplete (%s): mail is held" % ", ".join(missing))
            else:
                log.warn("relay", "no upstream configured: mail is accepted and held in the spool")
            return
        from .delivery import Delivery

        self.delivery = Delivery(self)
        self._delivery_task = asyncio.create_task(self.delivery.run())

    # -- what the console asks --

    def hello(self):
        # echo: whether the board echoes what is typed (a terminal must then not do it too).
        return {
            "name": "relaybox",
            "version": VERSION,
            "board": self._board_name(),
            "echo": self.console_echo,
        }

    def _board_name(self):
        return getattr(self.board, "NAME", "unknown")

    def status(self):
        now = time.time()
        up = self.cfg.upstream()
        if up is None:
            missing = self.cfg.missing()
            upstream = {
                "configured": False,
                "state": "incomplete: needs " + ", ".join(missing)
                if missing
                else "not configured",
            }
        else:
            upstream = {"configured": True, "host": up["host"], "port": up["port"]}
            d = self.delivery.status() if self.delivery else {}
            upstream["state"] = d.get("state", "starting")
            upstream["authenticated"] = d.get("authenticated")
            upstream["reachable"] = d.get("reachable")
            upstream["last_error"] = d.get("last_error")
            upstream["last_result"] = d.get("last_result")
            upstream["next_attempt"] = d.get("next_attempt")  # a date, for people
            # Seconds from now, so that the host needs neither the board's clock nor a parser.
            nxt = self.delivery.next_attempt if self.delivery else None
            upstream["next_in"] = max(0, int(nxt - now)) if nxt else None
            upstream["delivered"] = d.get("delivered")
        oldest = self.spool.ids(QUEUE, 1)
        oldest_age = None
        if oldest:
            try:
                oldest_age = _age(self.spool.envelope(oldest[0]).arrived, now)
            except (OSError, ValueError):
                pass
        out = {
            "version": VERSION,
            "board": self._board_name(),
            "uptime": int(now - self.started),
            "network": self.network.state() if self.network else {"up": None},
            "clock": {"set": clock.clock_ok(), "now": clock.rfc5322_date()},
            "upstream": upstream,
            "queue": {"count": self.spool.count(QUEUE), "oldest_age": oldest_age},
            "dead": self.spool.count(DEAD),
            "flash_free": self.spool.free_bytes(),
            "restart_needed": self.restart_needed,
        }
        # Collected last, so that the garbage of listing the spool is not counted as used.
        gc.collect()
        out["heap_free"] = gc.mem_free()
        return out

    def set_config(self, key, value, save=False):
        """Change one key; with save the file is written too, and a change that cannot be
        saved leaves the running config as it was."""
        return self._change(key, save, lambda: self.cfg.set(key, value, save))

    def unset_config(self, key, save=False):
        return self._change(key, save, lambda: self.cfg.unset(key, save))

    def _change(self, key, save, change):
        before = self.cfg.values
        restart = change()
        if save:
            try:
                self.save_config()
            except BaseException:
                self.cfg.values = before
                raise
        self._changed(key, restart)
        return restart

    def _changed(self, key, restart):
        if restart:
            self.restart_needed = True
        elif key.startswith("upstream.") or key == "admin":
            self.start_delivery()
        elif key == "log.level":
            log.setup(self.cfg.get("log.level"), self.cfg.get("log.ring"))

    def save_config(self):
        self.cfg.save()
        log.info("console", "config saved to %s" % self.cfg.path)
        return self.cfg.path

    def import_config(self, data, mask):
        """Replace the whole config; secrets given as the mask keep their value."""
        fresh = Config.from_json(data, self.cfg.path)
        from .config import SECRETS

        for key in SECRETS:
            if fresh.values.get(key) == mask:
                if key in self.cfg.values:
                    fresh.values[key] = self.cfg.values[key]
                else:
                    del fresh.values[key]
        fresh.validate()
        fresh.save()
        self.cfg.values = fresh.values
        self.restart_needed = True
        log.info("console", "config imported and saved to %s" % self.cfg.path)
        return {"path": self.cfg.path, "restart": True}

    def put_ca(self, pem):
        """Install the CA the upstream certificate must chain to (from `relaybox trust`)."""
        from .tlsconn import TLSError, client_context

        path = self.cfg.folder.rstrip("/") + "/" + _CA_FILE
        with open(path + ".tmp", "w") as f:
            f.write(pem)
        try:
            client_context(path + ".tmp")  # mbedTLS itself must accept it
        except TLSError as e:
            os.remove(path + ".tmp")
            from .console import CommandError

            raise CommandError("not a usable CA certificate: %s" % e) from None
        os.rename(path + ".tmp", path)
        self.set_config("upstream.ca", _CA_FILE)
        log.info("console", "upstream CA written to %s" % path)
        return _CA_FILE

    def _where(self, id):
        if not _is_id(id):
            # Never a path: "../x" must not reach a file outside the spool.
            from .console import CommandError

            raise CommandError("not a message ID: %r (16 hex digits, as queue lists them)" % id)
        for area in (QUEUE, DEAD):
            try:
                os.stat("%s/%s/%s" % (self.spool.root, area, id))
                return area
            except OSError:
                pass
        from .console import CommandError

        raise CommandError("no message %s" % id)

    def queue(self):
        now = time.time()
        # A message waits for its own next try and for the session backoff, if any.
        resume = self.delivery.resume_at() if self.delivery else 0
        out = {}
        for area, name in ((QUEUE, "queue"), (DEAD, "dead")):
            items = []
            for id in self.spool.ids(area, 50):
                st = self.spool.state(id, area)
                try:
                    env = self.spool.envelope(id, area)
                except (OSError, ValueError) as e:
                    # Shown all the same: the owner decides what becomes of it.
                    why = st.get("reason") or "unreadable spool file: %s" % e
                    items.append(
                        {
                            "id": id,
                            "from": "?",
                            "rcpt": [],
                            "size": 0,
                            "age": None,
                            "attempts": 0,
                            "next": 0,
                            "error": why,
                        }
                    )
                    continue
                nxt = max(st.get("next", 0), resume) if area == QUEUE else 0
                items.append(
                    {
                        "id": id,
                        "from": env.sender,
                        "rcpt": env.rcpts,
                        "size": env.size,
                        "age": _age(env.arrived, now),
                        "attempts": st.get("attempts", 0),
                        "next": max(0, int(nxt - now)) if nxt else 0,
                        "error": st.get("error") or st.get("reason"),
                    }
                )
            out[name] = items
        return out

    def retry(self, id):
        area = self._where(id)
        if area == DEAD:
            self.spool.revive(id)
        else:
            st = self.spool.state(id)
            st["next"] = 0
            self.spool.set_state(id, st)
        if self.delivery:
            self.delivery.retry_now()
        log.info("console", "id=%s retry requested" % id)
        return {"id": id, "was": "queue" if area == QUEUE else "dead"}

    def drop(self, id):
        area = self._where(id)
        self.spool.remove(id, area)
        log.info("console", "id=%s dropped by the owner" % id)
        return {"id": id, "was": "queue" if area == QUEUE else "dead"}

    def send_test(self, address):
        from .config import ConfigError, check_value

        try:
            check_value("admin", address)  # the same mailbox check as the admin address
        except ConfigError as e:
            from .console import CommandError

            raise CommandError("%s: %s" % (address, e.problem)) from None
        host = self.cfg.get("hostname")
        up = self.cfg.upstream()
        sender = up["sender"] if up else "relaybox@" + host
        w = self.spool.writer(sender, [address], "console", host)
        try:
            text = (
                "From: relaybox <%s>\r\nTo: <%s>\r\nSubject: relaybox test message\r\n"
                "Date: %s\r\nMessage-ID: <%s@%s>\r\n\r\n"
                "This message was sent from the console of relaybox %s (%s).\r\n"
                "If you read it, mail from your devices reaches you.\r\n"
                % (sender, address, clock.rfc5322_date(), w.id, host, host, VERSION)
            )
            w.write(text.encode())
            id = w.commit()
        except BaseException:
            w.abort()
            raise
        log.info("console", "id=%s test message to <%s> queued" % (id, address))
        self._queued(id)
        return id

    def reboot(self):
        async def later():
            await asyncio.sleep_ms(300)  # let the answer reach the host first
            log.info("relay", "rebooting")
            if self.board and hasattr(self.board, "reboot"):
                self.board.reboot()
            raise SystemExit(_REBOOT_EXIT)

        asyncio.create_task(later())


def _is_id(id):
    # The spool's names: 16 lowercase hex digits (Spool._new_id).
    if type(id) is not str or len(id) != 16:
        return False
    for c in id:
        if c not in "0123456789abcdef":
            return False
    return True


def _age(arrived, now):
    # None for mail stamped by a clock that was not set yet: its age is unknown.
    return max(0, int(now - arrived)) if clock.plausible(arrived) else None


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
    relay = None
    try:
        cfg = Config.load(path)
        log.setup(cfg.get("log.level"), cfg.get("log.ring"))
        relay = Relay(cfg, board)
        # The spool folder and the listening address are only tried here.
        asyncio.run(relay.run())
    except ConfigError as e:
        print("relaybox: config error: %s" % e)
        if board is None or getattr(board, "EXIT_CODES", False):
            sys.exit(2)
        # A board soft-resets on exit and runs main.py again, forever: stay at the REPL.
        return
    except KeyboardInterrupt:
        if relay:
            try:
                relay.stop()
            except KeyboardInterrupt:
                pass  # a second Ctrl-C: no more farewells
        log.info("relay", "stopped")
