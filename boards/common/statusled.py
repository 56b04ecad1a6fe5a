# A single status LED: on when all is well, toggled by activity, blinking on errors.
from micropython import const

_BLINK_MS = const(250)


class Led:
    """Call with "off", "ok", "busy" or "error"; does nothing where the pin is missing."""

    def __init__(self, pin_id, active_low=False):
        self.pin_id = pin_id
        self.active_low = active_low
        self.pin = None
        self.timer = None
        self.usable = True

    def _open(self):
        try:
            from machine import Pin

            self.pin = Pin(self.pin_id, Pin.OUT)
        except Exception:  # no machine.Pin (unix port) or no such pin: stay dark
            self.usable = False

    def _set(self, on):
        self.pin.value(1 if on != self.active_low else 0)

    def _blink(self, _timer):
        self.pin.toggle()

    def __call__(self, state):
        if self.pin is None and self.usable:
            self._open()
        if not self.usable:
            return
        if self.timer is not None:
            self.timer.deinit()
            self.timer = None
        if state == "ok":
            self._set(True)
        elif state == "busy":
            self.pin.toggle()
        elif state == "error":
            try:
                from machine import Timer

                self.timer = Timer(period=_BLINK_MS, mode=Timer.PERIODIC, callback=self._blink)
            except Exception:  # ports whose Timer needs an id: a steady light still says "look"
                self._set(True)
        else:
            self._set(False)
