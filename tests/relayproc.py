"""Start the firmware under the MicroPython unix port and talk to it, for the tests."""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from relaybox_host import ROOT
from relaybox_host.run import command, environment

REPLIES = ROOT / "firmware" / "relaybox" / "replies.py"


def load_replies():
    """The firmware's reply table (plain constants), read as data."""
    ns = {}
    exec(compile(REPLIES.read_text(), str(REPLIES), "exec"), ns)
    return {k: v for k, v in ns.items() if k.isupper()}


R = load_replies()


def code(name):
    """'250 2.0.0' style prefix of a named reply, for comparisons."""
    v = R[name]
    v = v if isinstance(v, bytes) else v.encode()
    return v[:9]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """One firmware process with its own config and spool under a folder."""

    def __init__(self, build_dir, folder, heap="256K", script=None, **config):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.build_dir = build_dir
        self.heap = heap
        self.script = script
        self.port = config.pop("port", None) or free_port()
        self.config = {
            "hostname": "relaybox.test",
            "listen": {"host": "127.0.0.1", "port": self.port},
            "allow": ["127.0.0.0/8"],
            "spool": "spool",
        }
        self.config.update(config)
        self.config_path = self.folder / "config.json"
        self.config_path.write_text(json.dumps(self.config))
        self.spool = self.folder / "spool"
        self.proc = None
        self.lines = []
        self._cond = threading.Condition()

    def start(self, wait_for="listening on", timeout=20, stdin=subprocess.DEVNULL):
        cmd = command(self.build_dir, self.config_path, self.heap)
        if self.script:
            cmd[3] = str(self.script)
        self.proc = subprocess.Popen(
            cmd,
            env=environment(self.build_dir),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        if wait_for:
            self.wait_log(wait_for, timeout)
        return self

    def _pump(self):
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def log(self):
        with self._cond:
            return "\n".join(self.lines)

    def wait_log(self, pattern, timeout=20):
        """Wait until a log line matches pattern; return the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._more()):
                    raise AssertionError(
                        f"no log line matching {pattern!r}; log so far:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(min(left, 0.2))

    def _more(self):
        return not self.proc.stdout.closed and self.proc.returncode is None

    def type(self, text):
        """Send console input (a person typing, or the host tool's requests)."""
        self.proc.stdin.write(text.encode() if isinstance(text, str) else text)
        self.proc.stdin.flush()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def queued(self):
        q = self.spool / "q"
        return sorted(p.name for p in q.iterdir() if "." not in p.name) if q.exists() else []

    def message(self, id):
        """(envelope lines, message bytes) of a queued message."""
        data = (self.spool / "q" / id).read_bytes()
        head, _, body = data.partition(b"\n\n")
        return head.decode().split("\n"), body

    def connect(self, timeout=10):
        return Client(self.port, timeout)


class Client:
    """A raw SMTP client that reads whole replies, for exact byte checks."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def reply(self):
        """One complete (possibly multi-line) reply as bytes, b'' at end of stream."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return out + self.buf
                self.buf += chunk
            line, _, self.buf = self.buf.partition(b"\r\n")
            out += line + b"\r\n"
            if len(line) < 4 or line[3:4] != b"-":
                return out

    def cmd(self, line):
        self.send(line + "\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.reply()

    def closed(self, timeout=5):
        """True when the server closed the connection."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

    def close(self):
        self.sock.close()
