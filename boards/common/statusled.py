# A single status LED: on when all is well, toggled by activity, blinking on errors.
import asyncio

from micropython import const

_BLINK_MS = const(250)


class Led:
    """Call with "off", "ok", "busy" or "error"; does nothing where the pin is missing."""

    def __init__(self, pin_id, active_low=False):
        self.pin_id = pin_id
        self.active_low = active_low
        self.pin = None
        self.blinker = None
        self.usable = True

    def _open(self):
        try:
            from machine import Pin

            self.pin = Pin(self.pin_id, Pin.OUT)
        except Exception:  # no machine.Pin (unix port) or no such pin: stay dark
            self.usable = False

    def _set(self, on):
        self.pin.value(1 if on != self.active_low else 0)

    async def _blink(self):
        # A task, not machine.Timer: the ESP32 port has no Timer without a hardware id,
        # and a sleeping task costs nothing between toggles.
        while True:
            self.pin.toggle()
            await asyncio.sleep_ms(_BLINK_MS)

    def __call__(self, state):
        if self.pin is None and self.usable:
            self._open()
        if not self.usable:
            return
        if self.blinker is not None:
            self.blinker.cancel()
            self.blinker = None
        if state == "ok":
            self._set(True)
        elif state == "busy":
            self.pin.toggle()
        elif state == "error":
            try:
                self.blinker = asyncio.create_task(self._blink())
            except Exception:  # called outside the event loop: a steady light still says "look"
                self._set(True)
        else:
            self._set(False)
