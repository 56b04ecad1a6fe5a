"""The text progress bar: redrawn in place on a terminal, one final line in logs."""

import io

from relaybox_host.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_terminal_gets_redraws_per_percent_then_the_final_line():
    out = Terminal()
    with Progress("deploy pico-w", 1000, stream=out) as bar:
        for n in range(0, 1001, 5):  # 201 updates, 101 distinct percentages
            bar.update(n)
    text = out.getvalue()
    assert text.count("\r") == 101 + 1, text[:200]
    last = text.rpartition("\r")[2]
    assert last.startswith("deploy pico-w [" + "#" * 28 + "] 100% 1000 B/1000 B "), last
    assert last.endswith("s\n")


def test_log_gets_only_the_final_line():
    out = io.StringIO()
    with Progress("waiting for RPI-RP2", 15, stream=out, unit="s") as bar:
        for n in range(1, 4):
            bar.update(n)
    assert "\r" not in out.getvalue()
    assert out.getvalue().startswith("waiting for RPI-RP2 [#####" + "." * 23 + "]  20% 3/15 s ")
