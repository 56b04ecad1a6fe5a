# Who may relay: client addresses inside the configured private ranges, nobody else.

# Networks an allow entry must lie inside, so that no typo makes an open relay.
_PRIVATE = (
    ("10.0.0.0", 8),
    ("172.16.0.0", 12),
    ("192.168.0.0", 16),
    ("127.0.0.0", 8),
    ("169.254.0.0", 16),
    ("100.64.0.0", 10),
)


def parse_ip(text):
    """Dotted IPv4 text to an int, or None."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    n = 0
    for p in parts:
        if not p or len(p) > 3 or not p.isdigit():
            return None
        v = int(p)
        if v > 255:
            return None
        n = (n << 8) | v
    return n


def _mask(bits):
    return (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF if bits else 0


def parse_cidr(text):
    """'a.b.c.d/n' (or a bare address) to (network, mask); raises ValueError."""
    addr, _, bits = text.partition("/")
    ip = parse_ip(addr)
    if ip is None:
        raise ValueError("%r is not an IPv4 address or network" % text)
    if bits:
        if not bits.isdigit() or int(bits) > 32:
            raise ValueError("%r has a bad prefix length" % text)
        mask = _mask(int(bits))
    else:
        mask = 0xFFFFFFFF
    return ip & mask, mask


def _inside_private(net, mask):
    for base, bits in _PRIVATE:
        m = _mask(bits)
        if mask & m == m and net & m == parse_ip(base):
            return True
    return False


class Policy:
    def __init__(self, allow):
        self.nets = []
        for entry in allow:
            net, mask = parse_cidr(entry)
            if not _inside_private(net, mask):
                raise ValueError("%s is not a private or loopback range (no open relay)" % entry)
            self.nets.append((net, mask))

    def may_relay(self, peer_ip):
        ip = parse_ip(peer_ip)
        if ip is None:
            # IPv4-mapped IPv6 peers ("::ffff:a.b.c.d") are judged by their IPv4 part.
            if peer_ip.startswith("::ffff:"):
                ip = parse_ip(peer_ip[7:])
            if ip is None:
                return False
        for net, mask in self.nets:
            if ip & mask == net:
                return True
        return False
