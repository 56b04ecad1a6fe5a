"""What the owner sees: delivery state in `relaybox status`, and mail flowing once the
upstream is fixed from the console. Firmware on a pty pair, upstream in aiosmtpd."""

import re
import smtplib

import pytest
from consolelink import PtyRelay, wait_for
from upstream_server import Certs, Upstream, free_port

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH")

MSG = b"From: nas@lan\r\nSubject: disk full\r\n\r\nsda at 99%\r\n"


@pytest.fixture
def board_factory(build_dir, tmp_path):
    started = []

    def make(**config):
        b = PtyRelay(build_dir, tmp_path / "board", **config)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        b.stop()


def test_status_shows_why_mail_waits_and_mail_flows_after_the_fix(board_factory, tmp_path):
    certs = Certs(str(tmp_path))
    with Upstream(certs, "plain") as bad, Upstream(certs, "starttls") as good:
        cfg = bad.config(retry={"schedule": [1], "max_age": 3600})
        board = board_factory(upstream=cfg)
        with smtplib.SMTP("127.0.0.1", board.port, timeout=30) as s:
            s.sendmail("nas@lan", ["alice@example.net"], MSG)

        def upstream():
            return board.json("status")["upstream"]

        wait_for(lambda: upstream()["last_error"], "an upstream error in status", timeout=20)
        up = upstream()
        assert up["last_error"] == "tls: server does not offer STARTTLS; not sending", up
        assert up["reachable"] is True and up["authenticated"] is None, up
        assert board.json("status")["queue"]["count"] == 1
        assert bad.handler.auth_attempts == [] and bad.messages == []

        board.ok("config", "set", "upstream.port", str(good.port))
        wait_for(lambda: good.messages, "delivery after the fix", timeout=20)
        wait_for(lambda: board.json("status")["queue"]["count"] == 0, "an empty queue")
        up = upstream()
        assert up["authenticated"] is True and up["last_error"] is None, up
        assert up["last_result"].startswith("delivered 1, deferred 0, dead 0 at "), up
    assert good.messages[0].rcpts == ["alice@example.net"]


def test_human_status_while_a_retry_waits(board_factory, tmp_path):
    certs = Certs(str(tmp_path))
    with Upstream(certs, "starttls") as up:
        cfg = up.config(port=free_port(), retry={"schedule": [120], "max_age": 3600})
    board = board_factory(upstream=cfg)
    with smtplib.SMTP("127.0.0.1", board.port, timeout=30) as s:
        s.sendmail("nas@lan", ["alice@example.net"], MSG)
    wait_for(lambda: board.json("status")["upstream"]["last_error"], "a failed try", timeout=20)
    r = board.relaybox("status")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    row = [line for line in r.stdout.splitlines() if line.startswith("upstream")]
    assert len(row) == 1, r.stdout
    assert ", unreachable; last error: connect: " in row[0], row
    assert re.search(r"; next try in (2 min|1 min \d+ s)$", row[0]), row
