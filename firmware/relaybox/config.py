# The relay's configuration: a JSON file checked key by key against one schema.
import json
import os

from . import policy


class ConfigError(Exception):
    def __init__(self, key, problem):
        super().__init__("%s: %s" % (key, problem))
        self.key = key
        self.problem = problem


def _hostname(v):
    if not v or len(v) > 253:
        return "must be a host name"
    for label in v.split("."):
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-":
            return "must be a host name like relaybox.lan"
        for c in label:
            if not (c.isalpha() or c.isdigit() or c == "-"):
                return "must be a host name like relaybox.lan"


def _host(v):
    if policy.parse_ip(v) is None and _hostname(v):
        return "must be an IPv4 address or a host name"


def _ipv4(v):
    if policy.parse_ip(v) is None:
        return "must be an IPv4 address like 192.168.1.20"


def _between(lo, hi):
    def check(v):
        if not lo <= v <= hi:
            return "must be from %d to %d" % (lo, hi)

    return check


def _one_of(*choices):
    def check(v):
        if v not in choices:
            return "must be one of: " + ", ".join(choices)

    return check


def _address(v):
    # A bare mailbox local@domain; the server's parser does the full RFC 5321 job.
    at = v.rfind("@")
    if at < 1 or at == len(v) - 1 or " " in v or "<" in v or len(v) > 254:
        return "must be a mail address like alice@example.net"


def _allow(v):
    if not v:
        return "must list at least one network (an empty list refuses every client)"
    try:
        policy.Policy(v)
    except ValueError as e:
        return str(e)


def _auth(v):
    for m in v:
        if m not in ("CRAM-MD5", "PLAIN", "LOGIN"):
            return "mechanisms are CRAM-MD5, PLAIN and LOGIN"
    if not v:
        return "must name at least one mechanism"


def _schedule(v):
    if not v:
        return "must list at least one delay"
    for s in v:
        if not 1 <= s <= 86400:
            return "delays must be from 1 to 86400 seconds"


def _nonempty(v):
    if not v:
        return "must not be empty"


def _wifi_key(v):
    # WPA2 (IEEE 802.11i): a passphrase of 8 to 63 printable ASCII characters, or the
    # 256-bit key itself as 64 hex digits.
    if len(v) == 64 and all(c in "0123456789abcdefABCDEF" for c in v):
        return None
    if not 8 <= len(v) <= 63 or not all(" " <= c <= "~" for c in v):
        return "must be 8 to 63 printable ASCII characters, or 64 hex digits"


# key: (type, default, check, restart needed when changed)
# A default of None means "absent unless set"; REQUIRED keys must be set when their
# section exists.
REQUIRED = object()
SCHEMA = {
    "hostname": (str, "relaybox.lan", _hostname, True),
    "listen.host": (str, "0.0.0.0", _ipv4, True),
    "listen.port": (int, 25, _between(1, 65535), True),
    "allow": (
        list,
        ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
        _allow,
        True,
    ),
    # RFC 5321 section 4.5.3.1.7: a 10 MB message is common; a board's flash is the real limit.
    "max_message_bytes": (int, 10485760, _between(1024, 1 << 30), True),
    # RFC 5321 section 4.5.3.1.8: servers must take at least 100 recipients.
    "max_recipients": (int, 100, _between(1, 1000), True),
    "max_clients": (int, 4, _between(1, 64), True),
    # RFC 5321 section 4.5.3.2.7 suggests 5 minutes of server patience.
    "idle_timeout": (int, 300, _between(1, 3600), True),
    "max_errors": (int, 10, _between(1, 100), True),
    "spool": (str, "spool", _nonempty, True),
    "admin": (str, None, _address, False),
    "log.level": (str, "info", _one_of("debug", "info", "warn", "error"), False),
    "log.ring": (int, 50, _between(5, 1000), True),
    "upstream.host": (str, REQUIRED, _host, False),
    "upstream.port": (int, None, _between(1, 65535), False),
    "upstream.tls": (str, None, _one_of("starttls", "implicit"), False),
    "upstream.user": (str, REQUIRED, _nonempty, False),
    "upstream.password": (str, REQUIRED, _nonempty, False),
    "upstream.ca": (str, REQUIRED, _nonempty, False),
    "upstream.sender": (str, None, _address, False),
    "upstream.auth": (list, ["CRAM-MD5"], _auth, False),
    "upstream.timeout": (int, 30, _between(1, 600), False),
    "upstream.retry.schedule": (list, [60, 300, 900, 1800, 3600], _schedule, False),
    # RFC 5321 section 4.5.4.1: give up after 4-5 days.
    "upstream.retry.max_age": (int, 432000, _between(60, 30 * 86400), False),
    "network.dhcp": (bool, True, None, True),
    "network.ip": (str, None, _ipv4, True),
    "network.netmask": (str, None, _ipv4, True),
    "network.gateway": (str, None, _ipv4, True),
    "network.dns": (str, None, _ipv4, True),
    "network.hostname": (str, "relaybox", _hostname, True),
    "network.wifi.ssid": (str, None, _nonempty, True),
    "network.wifi.key": (str, None, _wifi_key, True),
}
SECRETS = ("upstream.password", "network.wifi.key")
_ITEM_TYPES = {"allow": str, "upstream.auth": str, "upstream.retry.schedule": int}
_PATHS = ("spool", "upstream.ca")


def _typename(t):
    return {str: "a string", int: "an integer", bool: "true or false", list: "a list"}[t]


def check_value(key, value):
    """Raise ConfigError unless value is acceptable for key."""
    spec = SCHEMA.get(key)
    if spec is None:
        raise ConfigError(key, "unknown key")
    kind, _, check, _ = spec
    # JSON true/false are ints to isinstance(); keep them apart.
    if type(value) is not kind:
        raise ConfigError(key, "must be " + _typename(kind))
    if kind is list:
        item = _ITEM_TYPES[key]
        for v in value:
            if type(v) is not item:
                raise ConfigError(key, "items must be " + _typename(item))
    problem = check(value) if check else None
    if problem:
        raise ConfigError(key, problem)


def parse_value(key, text):
    """A value typed at the console ('587', 'true', 'a,b') converted for key."""
    spec = SCHEMA.get(key)
    if spec is None:
        raise ConfigError(key, "unknown key")
    kind = spec[0]
    if kind is str:
        return text
    if kind is bool:
        word = text.lower()
        if word in ("true", "yes", "on", "1"):
            return True
        if word in ("false", "no", "off", "0"):
            return False
        raise ConfigError(key, "must be true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(key, "must be an integer") from None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if _ITEM_TYPES[key] is int:
        try:
            return [int(t) for t in items]
        except ValueError:
            raise ConfigError(key, "items must be integers") from None
    return items


def _flatten(d, prefix, out):
    for k, v in d.items():
        key = prefix + k
        if key + "." in _SECTIONS and v is not None:
            if type(v) is not dict:
                raise ConfigError(key, "must be an object")
            _flatten(v, key + ".", out)
        else:
            out[key] = v


_SECTIONS = set()
for _k in SCHEMA:
    _parts = _k.split(".")
    for _i in range(1, len(_parts)):
        _SECTIONS.add(".".join(_parts[:_i]) + ".")


class Config:
    """Validated settings; `values` holds only what the file sets, `get` adds defaults."""

    def __init__(self, values, path=None, complete=True):
        self.path = path
        self.values = values
        self.folder = _dirname(path) if path else "."
        self.validate(complete)

    @classmethod
    def load(cls, path):
        try:
            with open(path) as f:
                data = json.load(f)
        except OSError:
            raise ConfigError(path, "cannot read the config file") from None
        except ValueError as e:
            raise ConfigError(path, "not valid JSON (%s)" % e) from None
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls, data, path):
        if type(data) is not dict:
            raise ConfigError(path, "must hold a JSON object")
        values = {}
        _flatten(data, "", values)
        # An explicit null section ("upstream": null) means "not configured".
        values = {k: v for k, v in values.items() if v is not None}
        return cls(values, path)

    def validate(self, complete=True):
        """Check every value; complete=False lets a section be half set while editing."""
        for key in sorted(self.values):
            check_value(key, self.values[key])
        if not complete:
            return
        for key, spec in SCHEMA.items():
            if spec[1] is REQUIRED and key not in self.values:
                section = key.rpartition(".")[0]
                if self.has(section):
                    raise ConfigError(key, "is required when %s is set" % section)
        if self.get("network.dhcp") is False and "network.ip" not in self.values:
            # Without an address the board would quietly stay on DHCP.
            raise ConfigError("network.ip", "is required when network.dhcp is false")
        if self.has("upstream"):
            tls = self.get("upstream.tls")
            port = self.get("upstream.port")
            if tls is None and port not in (None, 465, 587):
                raise ConfigError("upstream.tls", "set starttls or implicit for port %d" % port)
            user = self.get("upstream.user")
            if user and "@" not in user and self.get("upstream.sender") is None:
                # The sender defaults to the account name, which is no address here.
                raise ConfigError(
                    "upstream.sender", "is required when upstream.user is no address"
                )

    def has(self, section):
        prefix = section + "."
        for k in self.values:
            if k == section or k.startswith(prefix):
                return True
        return False

    def missing(self):
        """Required keys not yet set in a section that is partly set."""
        out = []
        for key, spec in SCHEMA.items():
            if spec[1] is REQUIRED and key not in self.values:
                if self.has(key.rpartition(".")[0]):
                    out.append(key)
        return out

    def get(self, key):
        if key in self.values:
            return self.values[key]
        default = SCHEMA[key][1]
        return None if default is REQUIRED else default

    def path_of(self, key):
        """A file setting resolved against the config file's folder."""
        p = self.get(key)
        if p is None or p.startswith("/"):
            return p
        return self.folder.rstrip("/") + "/" + p

    def upstream(self):
        """The upstream settings with defaults filled in, or None when not configured."""
        if not self.has("upstream") or self.missing():
            return None
        u = {}
        for key in SCHEMA:
            if key.startswith("upstream."):
                name = key[9:]
                u[name] = self.path_of(key) if key in _PATHS else self.get(key)
        u["retry"] = {"schedule": u.pop("retry.schedule"), "max_age": u.pop("retry.max_age")}
        if u["tls"] is None:
            u["tls"] = "implicit" if u["port"] == 465 else "starttls"
        if u["port"] is None:
            u["port"] = 465 if u["tls"] == "implicit" else 587
        if u["sender"] is None:
            u["sender"] = u["user"]
        return u

    def set(self, key, value, complete=False):
        """Check and set one key; return True when the change needs a restart. With
        complete=True the whole result must be ready to save, or nothing changes."""
        check_value(key, value)
        trial = dict(self.values)
        trial[key] = value
        Config(trial, self.path, complete)
        self.values = trial
        return SCHEMA[key][3]

    def unset(self, key, complete=False):
        if key not in SCHEMA:
            raise ConfigError(key, "unknown key")
        trial = {k: v for k, v in self.values.items() if k != key}
        Config(trial, self.path, complete)
        self.values = trial
        return SCHEMA[key][3]

    def as_json(self):
        """The nested JSON form, secrets included: for the file only."""
        out = {}
        for key in sorted(self.values):
            node = out
            parts = key.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = self.values[key]
        return out

    def save(self):
        """Write the file atomically: a power cut leaves the old or the new file whole."""
        self.validate()
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.as_json(), f)
        os.rename(tmp, self.path)


def _dirname(path):
    i = path.rfind("/")
    if i < 0:
        return "."
    return path[:i] or "/"
