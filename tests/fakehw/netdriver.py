# Runs one board module's Network under the unix port against the fake network and machine
# modules. argv[1] is a JSON scenario; prints a JSON report of states, log lines and calls.
import asyncio
import json
import sys
import time

import fake_machine
import fake_network

sys.modules["network"] = fake_network
sys.modules["machine"] = fake_machine

import board  # noqa: E402

scenario = json.loads(sys.argv[1])
fake_network.plan.update(scenario.get("plan", {}))
lines = []


class Log:
    def _add(self, level, sub, msg):
        lines.append("%s %s: %s" % (level, sub, msg))

    def info(self, sub, msg):
        self._add("info", sub, msg)

    def warn(self, sub, msg):
        self._add("warn", sub, msg)

    def error(self, sub, msg):
        self._add("error", sub, msg)

    def debug(self, sub, msg):
        self._add("debug", sub, msg)


net = board.Network(scenario["cfg"], Log())
# Milliseconds instead of seconds, so that a test sees several attempts.
net.poll_ms = 10
net.watch_ms = 10
net.attempt_ms = 150
net.backoff_ms = (100, 400)
states = []
ticks = [0]
gap = [0]  # the longest time the loop was held between two ticks, in ms
leds = []  # the LED pin's value at each tick, where the board has one


async def ticker():
    last = time.ticks_ms()
    while True:
        ticks[0] += 1
        now = time.ticks_ms()
        gap[0] = max(gap[0], time.ticks_diff(now, last))
        last = now
        for pin in fake_machine.pins:
            if pin.mode == fake_machine.Pin.OUT:
                leds.append(pin.v)
        await asyncio.sleep_ms(5)


async def main():
    asyncio.create_task(ticker())
    task = asyncio.create_task(net.run())
    for _ in range(scenario.get("samples", 40)):
        await asyncio.sleep_ms(20)
        s = net.state()
        if not states or states[-1] != s:
            states.append(s)
    task.cancel()


asyncio.run(main())
if scenario.get("reboot"):
    board.reboot()
report = {
    "states": states,
    "log": lines,
    "network": [repr(c) for c in fake_network.calls],
    "machine": [repr(c) for c in fake_machine.calls],
    "ticks": ticks[0],
    "gap_ms": gap[0],
    "led": "".join(str(v) for v in leds),
}
print(json.dumps(report))
