"""Benchmarks: relaybox under MicroPython against a CPython reference measured in the same run.

Prints figures and ratios; never fails on timing. Run with `make bench`; `--heap-only` prints
only the smallest heaps.
"""

import asyncio
import os
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from relaybox_host.build import compile_firmware  # noqa: E402
from relaybox_host.run import environment, micropython_exe  # noqa: E402
from relayproc import Relay, free_port  # noqa: E402

SMALL = b"Subject: bench\r\nFrom: cam@lan\r\n\r\n" + (b"x" * 76 + b"\r\n") * 25  # ~2 KB
BIG_LINE = b"0123456789" * 7 + b"\r\n"
BIG = b"Subject: big\r\n\r\n" + BIG_LINE * (10 * 1024 * 1024 // len(BIG_LINE))


class Reference:
    """aiosmtpd on CPython, storing each message the way relaybox does (tmp, close, rename)."""

    def __init__(self, folder):
        from aiosmtpd.controller import Controller

        self.folder = Path(folder)
        (self.folder / "tmp").mkdir(parents=True)
        (self.folder / "q").mkdir()
        self.n = 0
        self.port = free_port()
        self.controller = Controller(
            self, hostname="127.0.0.1", port=self.port, data_size_limit=20 * 1024 * 1024
        )

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        tmp = self.folder / "tmp" / str(self.n)
        with open(tmp, "wb") as f:
            f.write(envelope.content)
        os.rename(tmp, self.folder / "q" / str(self.n))
        return "250 OK"

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()


def send_many(port, count, msg):
    t0 = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
        for _ in range(count):
            s.sendmail("cam@lan", ["alice@example.net"], msg)
    return time.perf_counter() - t0


def parallel(port, clients, each, msg):
    t0 = time.perf_counter()

    def one():
        try:
            send_many(port, each, msg)
        except (OSError, smtplib.SMTPException):
            pass  # counted by the caller from what reached the spool

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def boots(build, heap, folder, clients):
    boots.runs += 1
    r = Relay(build, Path(folder) / f"{heap}-{clients}-{boots.runs}", heap=heap)
    try:
        r.start(timeout=10)
        parallel(r.port, clients, 5, SMALL)
        return len(r.queued()) == clients * 5 and r.proc.poll() is None
    except Exception:
        return False
    finally:
        r.stop()


boots.runs = 0


def smallest_heap(build, folder, clients=1, confirm=3):
    """Binary search, then confirmed: the floor must pass `confirm` runs in a row, since
    one lucky run below the real floor (or one unlucky above it) would mislead the search."""
    lo, hi = 16, 512  # KiB
    while hi - lo > 2:
        mid = (lo + hi) // 2
        if boots(build, f"{mid}K", folder, clients):
            hi = mid
        else:
            lo = mid
    while not all(boots(build, f"{hi}K", folder, clients) for _ in range(confirm)):
        hi += 2
    return hi


IMPORTS = """
import gc
import asyncio, json
gc.collect()
base = gc.mem_free()
for m in %r:
    gc.collect(); a = gc.mem_free()
    __import__(m)
    gc.collect(); print(m, a - gc.mem_free())
gc.collect(); print("total", base - gc.mem_free())
import sys; print("bits", 64 if sys.maxsize > 2**32 else 32)
"""


def import_costs(build):
    # Leaves first, so that each line is the cost of that module alone.
    order = [
        "replies",
        "log",
        "policy",
        "clock",
        "config",
        "spool",
        "message",
        "address",
        "smtp_server",
        "app",
        "console",
        "sasl",
        "tlsconn",
        "submit",
        "rewrite",
        "delivery",
    ]
    names = {p.stem for p in (build / "lib" / "relaybox").glob("*.mpy")} - {"__init__"}
    mods = ["relaybox." + n for n in order if n in names]
    mods += ["relaybox." + n for n in sorted(names - set(order))]
    out = subprocess.run(
        [micropython_exe(), "-X", "heapsize=1M", "-c", IMPORTS % mods],
        env=environment(build),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split() for line in out.splitlines()]


def main():
    heap_only = "--heap-only" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build = tmp / "build"
        compile_firmware("unix", build)
        if heap_only:
            return print_heaps(build, tmp)

        costs = import_costs(build)
        bits = costs.pop()[1]
        print(f"== import cost (bytes of MicroPython heap, {bits}-bit unix port)")
        for name, size in costs:
            print(f"  {name:24} {int(size):7d}")

        print("== throughput (loopback; relaybox under MicroPython vs aiosmtpd under CPython)")
        relay = Relay(build, tmp / "relay", heap="256K").start()
        try:
            with Reference(tmp / "ref") as ref:
                for label, run in (
                    ("300 x 2 KB, one session", lambda p: send_many(p, 300, SMALL)),
                    ("4 clients x 75 x 2 KB", lambda p: parallel(p, 4, 75, SMALL)),
                    ("1 x 10 MB", lambda p: send_many(p, 1, BIG)),
                ):
                    ours = run(relay.port)
                    theirs = run(ref.port)
                    print(
                        f"  {label:26} relaybox {ours:6.2f} s   reference {theirs:6.2f} s"
                        f"   ratio {ours / theirs:5.2f}"
                    )
        finally:
            relay.stop()

        print_heaps(build, tmp)


def print_heaps(build, tmp):
    print("== smallest heap (KiB) that boots and takes every message (no upstream)")
    for clients in (1, 4):
        print(f"  {clients} client(s) x 5 messages: {smallest_heap(build, tmp, clients)}")


if __name__ == "__main__":
    asyncio.set_event_loop(asyncio.new_event_loop())
    main()
