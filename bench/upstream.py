"""Upstream benchmark: the firmware's submission client against CPython's smtplib.

Both talk to the same aiosmtpd upstream over STARTTLS with CRAM-MD5: 100 small messages in
one session, and one 10 MB message. For the firmware it also reports the live heap peak
(sampled after gc.collect) and whether the 10 MB send works in a 96 KB heap. Prints
figures; never fails on timing. Run with `.venv/bin/python bench/upstream.py`.
"""

import json
import smtplib
import ssl
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import mpdriver  # noqa: E402
from test_submit import DRIVER  # noqa: E402
from upstream_server import PASSWORD, USER, Certs, Upstream  # noqa: E402

warnings.filterwarnings("ignore")

SMALL = b"Subject: bench\r\nFrom: cam@lan\r\n\r\n" + (b"x" * 76 + b"\r\n") * 25  # ~2 KB
LINE = b"0123456789" * 9 + b"abcdefg\r\n"
BIG = b"Subject: big\r\n\r\n" + LINE * (10 * 1024 * 1024 // len(LINE))

# A task in the driver that keeps the largest live heap seen between awaits.
SAMPLER = """PEAK = [0]


async def sampler():
    import gc
    while True:
        gc.collect()
        PEAK[0] = max(PEAK[0], gc.mem_alloc())
        await asyncio.sleep_ms(5)


async def main():
    asyncio.create_task(sampler())
    await send_all()


async def send_all():"""


def firmware(up, paths, heap="256K", sample=False):
    msgs = [["alice@example.net", ["bob@example.org"], p] for p in paths]
    script = DRIVER % (json.dumps(up.config()), json.dumps(msgs))
    if sample:
        script = script.replace("async def main():", SAMPLER, 1)
        script += "\nprint('RESULT', json.dumps({'peak': PEAK[0]}))\n"
    t0 = time.perf_counter()
    r = mpdriver.run(script, heap=heap, timeout=600)
    dt = time.perf_counter() - t0
    results = [json.loads(x[7:]) for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    ok = r.returncode == 0 and sum(1 for x in results if "sent" in x) == len(paths)
    peak = next((x["peak"] for x in results if "peak" in x), None)
    return dt, ok, peak


def reference(up, bodies):
    ctx = ssl.create_default_context(cafile=up.certs.ca_pem)
    t0 = time.perf_counter()
    with smtplib.SMTP("localhost", up.port) as s:
        s.starttls(context=ctx)
        s.login(USER, PASSWORD)
        for body in bodies:
            s.sendmail("alice@example.net", ["bob@example.org"], body)
    return time.perf_counter() - t0


def main():
    with tempfile.TemporaryDirectory() as tmp:
        certs = Certs(tmp)
        small = []
        for i in range(100):
            p = Path(tmp) / ("s%d" % i)
            p.write_bytes(SMALL)
            small.append(str(p))
        big = Path(tmp) / "big"
        big.write_bytes(BIG)

        with Upstream(certs, "starttls") as up:
            dt, ok, _ = firmware(up, small)
            print(
                "100 x 2 KB, one session   firmware %6.2f s (%s)" % (dt, "ok" if ok else "FAILED")
            )
        with Upstream(certs, "starttls") as up:
            ref = reference(up, [SMALL] * 100)
            print("100 x 2 KB, one session   smtplib  %6.2f s   ratio %.1f" % (ref, dt / ref))
        with Upstream(certs, "starttls") as up:
            dt, ok, peak = firmware(up, [str(big)], sample=True)
            print(
                "10 MB                     firmware %6.2f s (%s)" % (dt, "ok" if ok else "FAILED")
            )
            if peak:
                print(
                    "  live heap peak (incl. interpreter, asyncio, json): %d KB" % (peak // 1024)
                )
        with Upstream(certs, "starttls") as up:
            ref = reference(up, [BIG])
            print("10 MB                     smtplib  %6.2f s   ratio %.1f" % (ref, dt / ref))
        with Upstream(certs, "starttls") as up:
            dt, ok, _ = firmware(up, [str(big)], heap="96K")
            print(
                "10 MB with --heap 96K     firmware %6.2f s (%s)" % (dt, "ok" if ok else "FAILED")
            )


if __name__ == "__main__":
    main()
