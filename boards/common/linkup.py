# Network bring-up shared by the boards: retry with backoff, never block the event loop.
import asyncio
import time

_DEFAULTS = {
    "dhcp": True,
    "ip": None,
    "netmask": "255.255.255.0",
    "gateway": None,
    "dns": None,
    "hostname": "relaybox",
    "wifi.ssid": None,
    "wifi.key": None,
}


def _lookup(cfg, key):
    # The relay hands over flat keys ("network.ip"); a plain nested dict works as well.
    if key in cfg:
        return cfg[key]
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def settings(cfg):
    """The network settings from config values, with defaults filled in."""
    s = {}
    for name, default in _DEFAULTS.items():
        value = _lookup(cfg, "network." + name)
        s[name] = default if value is None else value
    s["static"] = not s["dhcp"] and bool(s["ip"])
    return s


def status_name(module, prefix, code):
    """The constant name for a status code, e.g. STAT_NO_AP_FOUND -> "no ap found"."""
    for name in dir(module):
        if name.startswith(prefix) and getattr(module, name) == code:
            return name[len(prefix) :].lower().replace("_", " ")
    return "status %s" % code


class Link:
    """Brings one interface up and keeps it up; each board subclasses it for its hardware.

    A subclass provides `kind` and `_interface()` (create the network object, called once)
    and may override `_start(nic)` (join a Wi-Fi network, start DHCP), `_why(nic)` (a short
    reason while waiting) and `_failed(nic)` (a reason to give up this attempt early).
    """

    kind = "link"
    #: How often the interface is polled while it comes up, and once it is up.
    poll_ms = 250
    watch_ms = 2000
    #: One attempt waits this long for a link and an address before backing off.
    attempt_ms = 30000
    #: The wait after a failed attempt doubles from the first value up to the second.
    backoff_ms = (2000, 120000)

    def __init__(self, cfg, log, led=None):
        self.log = log
        self.led = led or (lambda state: None)
        self.cfg = settings(cfg)
        self.nic = None
        self.ip = None
        self.tries = 0
        self.detail = "not started"

    def state(self):
        return {"up": self.ip is not None, "ip": self.ip, "detail": self.detail}

    async def run(self):
        delay = self.backoff_ms[0]
        while True:
            self.tries += 1
            try:
                if await self._bring_up():
                    delay = self.backoff_ms[0]
                    self.tries = 0
                    await self._watch()
            except Exception as e:  # drivers raise OSError, RuntimeError and ValueError alike
                self.detail = "%s: %s, try %d" % (type(e).__name__, e, self.tries)
            self.ip = None
            self.led("error")
            self.log.warn(
                "net", "%s down: %s; next try in %.1fs" % (self.kind, self.detail, delay / 1000)
            )
            await asyncio.sleep_ms(delay)
            delay = min(delay * 2, self.backoff_ms[1])

    async def _bring_up(self):
        s = self.cfg
        if self.nic is None:
            import network

            # Set before the interface starts so that the DHCP request carries the name.
            try:
                network.hostname(s["hostname"])
            except (ValueError, OSError, AttributeError) as e:  # no name is no reason to stay off
                self.log.warn("net", "host name %r not set: %s" % (s["hostname"], e))
            self.nic = self._interface()
        nic = self.nic
        nic.active(True)
        if s["static"]:
            gateway = s["gateway"] or "0.0.0.0"
            nic.ifconfig((s["ip"], s["netmask"], gateway, s["dns"] or gateway))
        mode = "static" if s["static"] else "dhcp"
        self._start(nic)
        deadline = time.ticks_add(time.ticks_ms(), self.attempt_ms)
        while time.ticks_diff(deadline, time.ticks_ms()) > 0:
            ip = self._address(nic)
            if ip:
                self.ip = ip
                self.detail = "up, %s" % mode
                self.led("ok")
                self.log.info(
                    "net", "%s up: ip=%s host=%s (%s)" % (self.kind, ip, s["hostname"], mode)
                )
                return True
            failed = self._failed(nic)
            if failed:
                self.detail = "%s, try %d" % (failed, self.tries)
                return False
            self.detail = "%s, %s wait, try %d" % (self._why(nic), mode, self.tries)
            await asyncio.sleep_ms(self.poll_ms)
        self.detail = "no address after %ds (%s), try %d" % (
            self.attempt_ms // 1000,
            self._why(nic),
            self.tries,
        )
        return False

    async def _watch(self):
        # Poll rather than wait for an event: not every driver reports a lost link.
        while self._address(self.nic):
            await asyncio.sleep_ms(self.watch_ms)
        self.detail = "link lost"

    def _address(self, nic):
        if not nic.isconnected():
            return None
        ip = nic.ifconfig()[0]
        return None if ip == "0.0.0.0" else ip

    def _interface(self):
        raise NotImplementedError

    def _start(self, nic):
        pass

    def _why(self, nic):
        return "link down" if not nic.isconnected() else "no address"

    def _failed(self, nic):
        return None


class WifiLink(Link):
    """A Wi-Fi station: joins `network.wifi.ssid`; the key is never logged."""

    kind = "wifi"

    def _interface(self):
        import network

        return network.WLAN(network.STA_IF)

    def _start(self, nic):
        ssid = self.cfg["wifi.ssid"]
        if not ssid:
            raise ValueError("no Wi-Fi network: set network.wifi.ssid in the config")
        if nic.isconnected():
            return
        try:
            # A half-finished earlier attempt makes connect() fail on some ports.
            nic.disconnect()
        except OSError:
            pass
        nic.connect(ssid, self.cfg["wifi.key"] or "")

    def _why(self, nic):
        import network

        return "wifi " + status_name(network, "STAT_", nic.status())

    def _failed(self, nic):
        import network

        code = nic.status()
        for name in ("STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND", "STAT_CONNECT_FAIL"):
            if code == getattr(network, name, None):
                return "wifi %s (ssid %r)" % (
                    status_name(network, "STAT_", code),
                    self.cfg["wifi.ssid"],
                )
        return None
