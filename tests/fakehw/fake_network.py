# Stands in for MicroPython's `network` on the unix port: interfaces that follow a scripted
# plan and record every call, so the board modules run without their hardware.
import time

calls = []

STA_IF = 0
AP_IF = 1
PHY_LAN8720 = 8
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_WRONG_PASSWORD = -3
STAT_NO_AP_FOUND = -2
STAT_CONNECT_FAIL = -1
STAT_GOT_IP = 3

#: Polls of isconnected() before the link comes up, and after that before it drops once.
plan = {"up_after": 2, "drop_after": None, "status": None, "ip": "10.0.0.7"}


def hostname(name=None):
    calls.append(("hostname", name))


class _Nic:
    def __init__(self, kind, args, kw):
        calls.append((kind, args, sorted(kw.items())))
        self.polls = 0
        self.up = False
        self.on = False

    def active(self, on=None):
        if on is not None:
            calls.append(("active", on))
            self.on = on
        return self.on

    def isconnected(self):
        self.polls += 1
        if not self.up and self.polls > plan["up_after"]:
            self.up, self.polls = True, 0
        elif self.up and plan["drop_after"] is not None and self.polls > plan["drop_after"]:
            self.up, self.polls = False, 0
            plan["drop_after"] = None
        return self.up

    def ifconfig(self, arg=None):
        if arg is None:
            return (plan["ip"] if self.up else "0.0.0.0", "255.255.255.0", "10.0.0.1", "10.0.0.1")
        calls.append(("ifconfig", arg))
        if arg == "dhcp":
            # extmod/network_lwip.c: starts DHCP, then busy-waits up to 10 s for the lease,
            # so nothing else runs meanwhile.
            deadline = time.ticks_add(time.ticks_ms(), 10000)
            while not self.isconnected() and time.ticks_diff(deadline, time.ticks_ms()) > 0:
                time.sleep_ms(50)

    def status(self):
        if plan["status"] is not None:
            return plan["status"]
        return STAT_GOT_IP if self.up else STAT_CONNECTING

    def connect(self, ssid, key):
        calls.append(("connect", ssid, "key of %d chars" % len(key)))

    def disconnect(self):
        calls.append(("disconnect",))

    def config(self, **kw):
        calls.append(("config", sorted(kw.items())))


def LAN(*args, **kw):
    return _Nic("LAN", args, kw)


def WLAN(*args, **kw):
    return _Nic("WLAN", args, kw)


def WIZNET5K(*args, **kw):
    return _Nic("WIZNET5K", args, kw)
