"""The relay as a whole under MicroPython: start-up on a small heap, and status."""

import json
import subprocess
import time

import mpdriver
import pytest


def test_relay_that_says_it_listens_keeps_running_at_any_heap(relay_factory):
    """The console's buffers are taken before the server listens: on a heap too small for
    them the relay runs without a console (and says so) or stops before it claims to be up,
    never the moment after."""
    skipped = 0
    for kib in range(80, 132, 4):
        r = relay_factory(f"heap{kib}", start=False, heap=f"{kib}K")
        r.start(wait_for=None)
        deadline = time.monotonic() + 10
        while r.proc.poll() is None and "running as" not in r.log():
            assert time.monotonic() < deadline, r.log()
            time.sleep(0.05)
        time.sleep(0.3)
        if "listening on" in r.log():
            assert r.proc.poll() is None, f"{kib}K:\n{r.log()}"
        skipped += "running without it" in r.log()
        r.stop()
    assert skipped, "no heap in the range was too small for the console alone"


STATUS = """
import gc
from relaybox.app import Relay
from relaybox.config import Config

relay = Relay(Config({"spool": "spool"}, "./config.json"), None)
relay.spool.recover()
for i in range(300):
    open("spool/q/%016d" % i, "w").close()
st = relay.status()
gc.collect()
print(st["queue"]["count"], gc.mem_free() - st["heap_free"])
"""


def test_status_heap_free_does_not_count_listing_garbage():
    result = mpdriver.run(STATUS)
    assert result.returncode == 0, result.stdout + result.stderr
    count, missing = map(int, result.stdout.split())
    assert count == 300
    # The status dict itself is all that may differ; 300 directory entries are ~40 KB.
    assert missing < 2048, result.stdout


LATE_NETWORK = """
import asyncio
import board


class Network:
    # A board whose link is not up yet (DHCP, a PHY), or up when UP says so.
    def __init__(self, cfg, log):
        pass

    async def run(self):
        pass

    def state(self):
        return {"up": %r, "ip": None, "detail": "stand-in"}


board.Network = Network
import relaybox.app

relaybox.app.main()
"""


@pytest.mark.parametrize("up", [False, True])
def test_fixed_listen_address_waits_for_the_board_network(relay_factory, tmp_path, up):
    """Before a board's network is up its own address cannot be bound: the relay waits
    (and the console answers) instead of stopping. Once the network is up, an address
    that is not the board's is a config error."""
    script = tmp_path / "late.py"
    script.write_text(LATE_NETWORK % up)
    relay = relay_factory(script=script, start=False)
    relay.config["listen"]["host"] = "192.0.2.1"  # TEST-NET-1: no host's address
    relay.config_path.write_text(json.dumps(relay.config))
    relay.start(wait_for=None, stdin=subprocess.PIPE)
    if up:
        relay.wait_log("relaybox: config error: listen: cannot listen on 192.0.2.1:")
        assert relay.proc.wait(10) == 2
        return
    relay.wait_log("cannot listen on 192.0.2.1:%d before the network is up" % relay.port)
    time.sleep(2)
    assert relay.proc.poll() is None, relay.log()
    relay.type("status\n")
    relay.wait_log("queue")
