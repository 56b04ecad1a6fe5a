"""`relaybox run` as a person or a service manager uses it: signals, the firmware child,
the build folder and the --heap argument."""

import os
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from relayproc import free_port

RELAYBOX = Path(sys.executable).with_name("relaybox")


def _children(pid):
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def run(tmp_path):
    """Starts `relaybox run` with its own temporary folder; kills what is left after."""
    procs = []

    def start(wait=True):
        port = free_port()
        cfg = tmp_path / "config.json"
        cfg.write_text(
            '{"listen": {"host": "127.0.0.1", "port": %d}, "allow": ["127.0.0.0/8"]}' % port
        )
        (tmp_path / "tmp").mkdir(exist_ok=True)
        proc = subprocess.Popen(
            [str(RELAYBOX), "run", "--config", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, TMPDIR=str(tmp_path / "tmp")),
            start_new_session=True,  # apart from the test's own process group
        )
        procs.append(proc)
        deadline = time.monotonic() + 30
        while wait:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                    assert s.noop()[0] == 250
                break
            except OSError:
                assert time.monotonic() < deadline, "relaybox run did not start"
                time.sleep(0.1)
        proc.port = port
        return proc

    yield start
    for p in procs:
        for child in _children(p.pid):
            os.kill(child, signal.SIGKILL)
        if p.poll() is None:
            p.kill()
        p.wait()


def test_sigint_to_relaybox_alone_stops_the_firmware(run):
    proc = run()
    proc.send_signal(signal.SIGINT)  # not to the group, as `kill -INT PID` does
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert b"relay: stopped" in out


def test_closed_terminal_stops_the_relay_in_order(run, tmp_path):
    """A hang-up reaches the whole process group, as when the terminal is closed."""
    proc = run()
    os.killpg(proc.pid, signal.SIGHUP)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert b"relay: stopped" in out
    assert list((tmp_path / "tmp").iterdir()) == []


def test_ctrl_c_twice_stops_without_a_traceback(run):
    proc = run()
    client = smtplib.SMTP("127.0.0.1", proc.port, timeout=5)  # a session to say 421 to
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    client.close()
    assert b"Traceback" not in out, out
    assert b"relay: stopped" in out, out


def test_firmware_dies_with_relaybox(run):
    proc = run()
    (child,) = _children(proc.pid)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while _alive(child):
        assert time.monotonic() < deadline, "the firmware outlived relaybox run"
        time.sleep(0.05)
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", proc.port, timeout=2)


def test_sigterm_while_compiling_leaves_no_build_folder(run, tmp_path):
    proc = run(wait=False)
    deadline = time.monotonic() + 10
    while not list((tmp_path / "tmp").glob("relaybox-unix-*")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.005)
    proc.terminate()
    out, _ = proc.communicate(timeout=15)
    assert b"relaybox: stopped before the firmware started" in out, out
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("heap", ["abc", "0", "12Q", "-5", ""])
def test_heap_must_be_a_size(heap):
    proc = subprocess.run([str(RELAYBOX), "run", "--heap", heap], capture_output=True, text=True)
    assert proc.returncode == 2
    want = f"relaybox run: error: argument --heap: {heap!r} is not a size like 256K, 1M or 262144"
    assert proc.stderr.splitlines()[-1] == want, proc.stderr


def test_a_terminal_nobody_reads_does_not_stop_the_relay(tmp_path):
    """The output goes to a pseudo-terminal that is never read (a paused terminal, a serial
    bridge with nobody on it): the relay keeps taking mail, and says what it dropped."""
    import pty

    port = free_port()
    cfg = tmp_path / "config.json"
    cfg.write_text(
        '{"listen": {"host": "127.0.0.1", "port": %d}, "allow": ["127.0.0.0/8"],'
        ' "log": {"level": "debug"}}' % port
    )
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(RELAYBOX), "run", "--config", str(cfg)],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                smtplib.SMTP("127.0.0.1", port, timeout=5).quit()
                break
            except OSError:
                assert time.monotonic() < deadline, "the relay did not start"
                time.sleep(0.2)
        # 3000 log lines: far more than a terminal buffer and what relaybox holds back.
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            for i in range(3000):
                s.sendmail("dev@lan", ["you@example.net"], b"Subject: %d\r\n\r\nx\r\n" % i)
        queued = list((tmp_path / "spool" / "q").iterdir())
        assert len(queued) == 3000
        # Reading again, the terminal gets the output that fitted and a note of the rest.
        os.set_blocking(master, False)
        seen = b""
        deadline = time.monotonic() + 10
        while b"bytes of output dropped" not in seen and time.monotonic() < deadline:
            try:
                seen += os.read(master, 65536)
            except BlockingIOError:
                time.sleep(0.05)
            except OSError:
                break
        assert b"bytes of output dropped (nothing read them)" in seen, seen[-500:]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(master)
