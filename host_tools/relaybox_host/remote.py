"""`relaybox status|config|queue|logs|send-test|reboot`: the running board, over its console.

Each command opens the port, checks that relaybox answers (`hello`), sends its requests
and prints a table, or the board's result as JSON with --json. Secrets never reach the
output: the board masks them in every answer, and values typed here are not echoed.
"""

import argparse
import getpass
import json
import os
import sys
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path

from . import serialconn
from .errors import ToolError
from .tables import cell, duration, size, table

#: Keys whose values the board never shows; kept in step with the firmware's config.SECRETS.
SECRET_KEYS = ("upstream.password", "network.wifi.key")
MASK = "********"
DEFAULT_TIMEOUT = 5.0


def connection_options(json_output=True):
    """The options every command that talks to a board shares."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--port",
        default=os.environ.get("RELAYBOX_PORT", "auto"),
        help="serial device, `auto` (the one MicroPython board on USB) or a pyserial URL "
        "such as socket://HOST:PORT (default: $RELAYBOX_PORT or auto)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT:g})",
    )
    if json_output:
        p.add_argument("--json", action="store_true", help="print the board's answer as JSON")
    return p


@contextmanager
def session(args):
    """An open console on --port that relaybox answers; errors become ToolError here."""
    try:
        console = serialconn.open_port(args.port, args.timeout)
    except serialconn.ConsoleError as e:
        raise ToolError(str(e)) from None
    try:
        console.hello()
        yield console
    except serialconn.ConsoleError as e:
        raise ToolError(str(e)) from None
    finally:
        console.close()


def add_parser(sub):
    common = connection_options()

    p = sub.add_parser("status", parents=[common], help="the board at a glance")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("config", help="show or change the board's settings")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = csub.add_parser("show", parents=[common], help="every setting (secrets masked)")
    c.set_defaults(func=cmd_config_show)
    c = csub.add_parser("get", parents=[common], help="one setting")
    c.add_argument("key")
    c.set_defaults(func=cmd_config_get)
    c = csub.add_parser(
        "set",
        parents=[common],
        help="check, set and save one setting",
        description="Without VALUE the value is read from the terminal (hidden for secrets "
        "such as upstream.password) or, when input is not a terminal, from one line of it.",
    )
    c.add_argument("key")
    c.add_argument("value", nargs="?", help="as typed at the console: 587, true, a,b,c")
    c.add_argument("--no-save", action="store_true", help="change it until the next reboot")
    c.set_defaults(func=cmd_config_set)
    c = csub.add_parser("unset", parents=[common], help="put one setting back to its default")
    c.add_argument("key")
    c.add_argument("--no-save", action="store_true", help="change it until the next reboot")
    c.set_defaults(func=cmd_config_unset)
    c = csub.add_parser(
        "import",
        parents=[common],
        help="replace the whole config from a JSON file and save it",
        description='A secret written as "********" (as export writes it) keeps its value.',
    )
    c.add_argument("file", type=Path)
    c.set_defaults(func=cmd_config_import)
    c = csub.add_parser("export", parents=[common], help="the config as JSON, secrets masked")
    c.add_argument("file", type=Path, nargs="?", help="write here instead of stdout")
    c.set_defaults(func=cmd_config_export)

    p = sub.add_parser(
        "queue",
        parents=[common],
        help="queued messages and dead letters; retry or drop one",
        description="retry ID tries a queued message now, or puts a dead letter back in the "
        "queue; drop ID deletes a queued message or a dead letter.",
    )
    p.add_argument("action", nargs="?", choices=("retry", "drop"))
    p.add_argument("id", nargs="?")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("logs", parents=[common], help="the board's recent log lines")
    p.add_argument("-n", type=int, metavar="N", help="only the last N lines")
    p.add_argument("-f", "--follow", action="store_true", help="then print new lines as they come")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser(
        "send-test", parents=[common], help="queue a test message through the whole path"
    )
    p.add_argument("address")
    p.set_defaults(func=cmd_send_test)

    p = sub.add_parser("reboot", parents=[common], help="restart the board")
    p.set_defaults(func=cmd_reboot)


def emit(args, result, human):
    """Print the result as JSON for --json, else the human text built by `human()`."""
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        text = human()
        if text:
            print(text)
    return 0


def cmd_status(args):
    with session(args) as c:
        s = c.request("status")
    return emit(args, s, lambda: status_text(s))


def status_text(s):
    net = s.get("network") or {}
    clock = s.get("clock") or {}
    up = s.get("upstream") or {}
    queue = s.get("queue") or {}
    now = _epoch(clock.get("now")) if clock.get("set") else None

    if net.get("up") is None:
        network = "managed by the host"  # the unix board has no network of its own
    elif net.get("up"):
        network = "up" + (f", {net['ip']}" if net.get("ip") else "")
    else:
        network = "down"
    if net.get("detail"):
        network += f" ({net['detail']})"
    rows = [
        ["relaybox", f"{s.get('version')} on {s.get('board')}, up {duration(s.get('uptime'))}"],
        ["network", network],
        ["clock", clock.get("now") if clock.get("set") else "not set yet"],
        ["upstream", _upstream_text(up, now)],
        [
            "queue",
            _count(queue.get("count"), "message")
            + (f", oldest {duration(queue['oldest_age'])}" if queue.get("oldest_age") else ""),
        ],
        ["dead letters", cell(s.get("dead"))],
        ["flash free", size(s.get("flash_free"))],
        ["heap free", size(s.get("heap_free"))],
    ]
    if s.get("restart_needed"):
        rows.append(["restart", "needed for saved settings: relaybox reboot"])
    return table(rows)


def _upstream_text(up, now):
    if not up.get("configured"):
        return f"{up.get('state') or 'not configured'}; mail is held in the queue"
    text = f"{up.get('host')}:{up.get('port')} {up.get('state')}"
    if up.get("reachable") is not None:
        text += ", reachable" if up["reachable"] else ", unreachable"
    if up.get("authenticated"):
        text += ", authenticated"
    elif up.get("authenticated") is False:
        text += ", authentication refused"
    if up.get("last_result"):
        text += f"; last result: {up['last_result']}"
    if up.get("last_error"):
        text += f"; last error: {up['last_error']}"
    wait = _next_in(up, now)
    if wait is not None:
        text += f"; next try in {duration(wait)}"
    return text


def _next_in(up, now):
    """Seconds to the next try: the board says so, or (older firmware) gives a date."""
    if isinstance(up.get("next_in"), (int, float)):
        return max(0, up["next_in"])
    when = _epoch(up.get("next_attempt")) if isinstance(up.get("next_attempt"), str) else None
    if when is None or now is None:
        return None
    return max(0, when - now)


def _epoch(date):
    try:
        return parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None


def _count(n, noun):
    n = n or 0
    return f"{n} {noun}" + ("" if n == 1 else "s")


def cmd_config_show(args):
    with session(args) as c:
        r = c.request("show")
    config, explicit = r.get("config", {}), set(r.get("set", []))
    rows = [[k, cell(config[k]), "" if k in explicit else "(default)"] for k in sorted(config)]
    return emit(args, r, lambda: table(rows, ["KEY", "VALUE", ""]))


def cmd_config_get(args):
    with session(args) as c:
        r = c.request("get", args.key)
    return emit(args, r, lambda: cell(r.get("value")))


def cmd_config_set(args):
    value = args.value if args.value is not None else read_value(args.key)
    with session(args) as c:
        # Set and save in one request: a value the file cannot take changes nothing.
        r = c.request("set", args.key, value, *(() if args.no_save else ("save",)))
        shown = c.request("get", args.key)
    result = dict(r, key=args.key, value=shown.get("value"), saved=r.pop("path", None))
    what = f"{args.key} = {cell(result['value'])}"
    return emit(args, result, lambda: _changed_text(what, result["saved"], r.get("restart")))


def cmd_config_unset(args):
    with session(args) as c:
        r = c.request("unset", args.key, *(() if args.no_save else ("save",)))
    result = dict(r, key=args.key, saved=r.pop("path", None))
    what = f"{args.key} is back to its default"
    return emit(args, result, lambda: _changed_text(what, result["saved"], r.get("restart")))


def _changed_text(what, saved, restart):
    text = what + (f" (saved in {saved})" if saved else " (not saved)")
    if restart:
        text += "\ntakes effect after a restart: relaybox reboot"
    return text


def read_value(key):
    """A value not given on the command line: hidden at a terminal for secrets."""
    secret = key in SECRET_KEYS
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise ToolError(f"no value for {key} on standard input")
        return line.rstrip("\r\n")
    if not secret:
        return input(f"{key}: ")
    first = getpass.getpass(f"{key} (not shown): ")
    if getpass.getpass(f"{key} again: ") != first:
        raise ToolError(f"the two entries for {key} differ; nothing was changed")
    return first


def cmd_config_import(args):
    try:
        config = json.loads(args.file.read_text())
    except OSError as e:
        raise ToolError(f"cannot read {args.file} ({e.strerror})") from None
    except ValueError as e:
        raise ToolError(f"{args.file} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ToolError(f"{args.file} must hold a JSON object, as `relaybox config export` writes")
    with session(args) as c:
        r = c.request("import", config)
    what = f"{args.file} imported"
    return emit(args, r, lambda: _changed_text(what, r.get("path"), r.get("restart")))


def cmd_config_export(args):
    with session(args) as c:
        r = c.request("export")
    text = json.dumps(r.get("config"), indent=2, sort_keys=True) + "\n"
    if args.file:
        args.file.write_text(text)
        print(f"wrote {args.file} (secrets masked as {MASK}: import keeps their values)")
        return 0
    sys.stdout.write(text)
    return 0


def cmd_queue(args):
    if args.action and args.id is None:
        raise ToolError(f"queue {args.action} needs a message ID (see `relaybox queue`)")
    if args.id is not None and not args.action:
        raise ToolError("say what to do with the message: queue retry ID or queue drop ID")
    if args.action:
        return queue_action(args)
    with session(args) as c:
        r = c.request("queue")
    return emit(args, r, lambda: queue_text(r))


def queue_text(r):
    parts = []
    for name, msgs in (("queue", r.get("queue") or []), ("dead letters", r.get("dead") or [])):
        if not msgs:
            parts.append(f"{name}: empty")
            continue
        rows = [
            [
                m.get("id"),
                m.get("from") or "<>",
                cell(m.get("rcpt")),
                size(m.get("size")),
                duration(m.get("age")),
                cell(m.get("attempts")),
                duration(m.get("next")) if name == "queue" else "-",
                m.get("error") or "",
            ]
            for m in msgs
        ]
        headers = ["ID", "FROM", "TO", "SIZE", "AGE", "TRIES", "NEXT", "LAST ERROR"]
        parts.append(f"\n{name}: {len(msgs)}\n" + table(rows, headers) + "\n")
    return "\n".join(parts).strip("\n")


def queue_action(args):
    with session(args) as c:
        r = c.request(args.action, args.id)
    if args.action == "drop":
        done = "deleted from the " + ("dead letters" if r.get("was") == "dead" else "queue")
    elif r.get("was") == "dead":
        done = "put back in the queue"
    else:
        done = "will be tried now"
    return emit(args, r, lambda: f"{r.get('id')}: {done}")


def cmd_logs(args):
    with session(args) as c:
        r = c.request("logs", args.n) if args.n is not None else c.request("logs")
        lines = r.get("lines") or []
        if args.json and not args.follow:
            return emit(args, r, None)
        for line in lines:
            _print_log(args, line)
        if args.follow:
            # Lines printed while the answer was on its way are in it: only later ones follow.
            c.on_line = lambda line: _print_log(args, line)
            try:
                c.follow()
            except KeyboardInterrupt:
                return 0
    return 0


def _print_log(args, line):
    print(json.dumps({"line": line}) if args.json else line, flush=True)


def cmd_send_test(args):
    with session(args) as c:
        r = c.request("test", args.address)
    return emit(
        args,
        r,
        lambda: (
            f"queued test message {r.get('id')} for {args.address}; "
            "follow it with `relaybox logs -f` or `relaybox queue`"
        ),
    )


def cmd_reboot(args):
    with session(args) as c:
        r = c.request("reboot")
    return emit(args, r, lambda: "the board is restarting")
