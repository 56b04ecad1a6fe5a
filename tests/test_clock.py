"""clock under MicroPython: RFC 5322 dates, the sanity check, NTP on boards that have it."""

import email.utils
import random

import mpdriver


def mp(script, extra_path=None):
    env = (
        {"MICROPYPATH": ".frozen:%s:%s" % (extra_path, mpdriver.FIRMWARE)} if extra_path else None
    )
    result = mpdriver.run("from relaybox import clock\n" + script, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_rfc5322_date_matches_cpython():
    rng = random.Random(5322)
    stamps = [0, 951782400, 1709164800, 2**31 - 1] + [rng.randrange(0, 2**32) for _ in range(30)]
    out = mp("".join("print(clock.rfc5322_date(%d))\n" % t for t in stamps))
    assert out == [email.utils.formatdate(t).replace("-0000", "+0000") for t in stamps]


def test_now_and_clock_ok():
    out = mp("print(clock.rfc5322_date())\nprint(clock.clock_ok())\n")
    assert email.utils.parsedate_to_datetime(out[0]).year >= 2024
    assert out[1] == "True"


LOG = """
class Log:
    def info(self, sub, msg): print("info", sub, msg)
    def warn(self, sub, msg): print("warn", sub, msg)
    def error(self, sub, msg): print("error", sub, msg)
"""


def test_sync_without_ntp_on_the_host():
    assert mp(LOG + "print(clock.sync(Log()))\n") == ["True"]


def test_sync_on_a_board_with_ntp(tmp_path):
    # The unix port has neither a board module nor ntptime: stand-ins play the board.
    (tmp_path / "board.py").write_text("HAS_NTP = True\n")
    (tmp_path / "ntptime.py").write_text(
        "host = 'pool.ntp.org'\ncalls = []\n"
        "def settime():\n    calls.append(host)\n"
        "    if host == 'down.test':\n        raise OSError(110)\n"
    )
    out = mp(
        LOG + "import ntptime\n"
        "print(clock.sync(Log(), 'time.lan'), ntptime.calls)\n"
        "print(clock.sync(Log(), 'down.test'))\n",
        extra_path=tmp_path,
    )
    assert out[0].startswith("info clock set by NTP from time.lan: "), out
    assert out[1] == "True ['time.lan']"
    assert out[2] == "warn clock NTP from down.test failed: OSError(110,)"
    # The host clock is right, so a failed query still leaves a usable clock.
    assert out[3] == "True"


def test_sync_on_a_board_whose_build_lacks_ntptime(tmp_path):
    (tmp_path / "board.py").write_text("HAS_NTP = True\n")
    # The host clock is right, so the relay goes on; the call must not raise.
    assert mp(LOG + "print(clock.sync(Log()))\n", extra_path=tmp_path) == ["True"]
