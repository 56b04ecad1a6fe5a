"""`relaybox` console commands end to end: the firmware under MicroPython on one end of a
pty pair, the installed `relaybox` command on the other."""

import re

import pytest
from consolelink import PtyRelay

SECRET = "s3cret-Tr0ub4dor&3"
WIFI_KEY = "wifi-key-Hunter2!"
UPSTREAM = {
    "host": "127.0.0.1",
    "port": 9,
    "tls": "starttls",
    "user": "alice@example.net",
    "password": SECRET,
    "ca": "ca.pem",
}


@pytest.fixture
def board_factory(build_dir, tmp_path):
    started = []

    def make(name="board", via_run=False, **config):
        b = PtyRelay(build_dir, tmp_path / name, via_run=via_run, **config)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def board(board_factory):
    return board_factory(upstream=dict(UPSTREAM), network={"wifi": {"key": WIFI_KEY}})


def test_status_human_and_json(board):
    out = board.ok("status")
    assert re.search(r"^relaybox +0\.1\.0 on unix, up \d+ s$", out, re.M), out
    assert re.search(r"^upstream +127\.0\.0\.1:9 ", out, re.M), out
    assert re.search(r"^queue +0 messages$", out, re.M), out
    s = board.json("status")
    assert s["version"] == "0.1.0" and s["board"] == "unix", s
    assert s["queue"] == {"count": 0, "oldest_age": None}, s
