# Stands in for MicroPython's `machine` Pin and Timer on the unix port, recording calls.
calls = []
pins = []  # every Pin made, so a test can watch an LED over time


def reset():
    calls.append(("reset",))


class Pin:
    IN = 0
    OUT = 1

    def __init__(self, id, mode=-1):
        self.id = id
        self.v = 0
        self.mode = mode
        calls.append(("Pin", id, mode))
        pins.append(self)

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v

    def toggle(self):
        self.v ^= 1

    def __repr__(self):
        return "Pin(%r)" % (self.id,)


class Timer:
    """Like the ESP32 port's: the id is required (Timer(period=...) is a TypeError there)."""

    PERIODIC = 1

    def __init__(self, id, period=0, mode=0, callback=None):
        calls.append(("Timer", id, period))

    def deinit(self):
        calls.append(("Timer.deinit",))
