"""Plain-text tables and human units for the terminal output of the console commands."""


def table(rows, headers=None):
    """Rows of cells as left-aligned columns; the last column is never padded."""
    rows = [[cell(c) for c in row] for row in rows]
    if headers:
        rows.insert(0, list(headers))
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
    lines = []
    for r in rows:
        padded = [c.ljust(widths[i]) for i, c in enumerate(r[:-1])] + r[-1:]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def cell(value):
    """A config or status value as a person would type it back."""
    if value is None:
        return "-"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(cell(v) for v in value)
    return str(value)


def size(n):
    if n is None:
        return "-"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def duration(s):
    """Seconds as the two largest units: 45 s, 3 min 20 s, 2 h 5 min, 4 d 3 h."""
    if s is None:
        return "-"
    s = int(s)
    if s < 0:
        return "-" + duration(-s)
    for big, small, name, sub in ((86400, 3600, "d", "h"), (3600, 60, "h", "min")):
        if s >= big:
            rest = (s % big) // small
            return f"{s // big} {name}" + (f" {rest} {sub}" if rest else "")
    if s >= 60:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    return f"{s} s"
