# The serial console: commands for people at a terminal and, on lines starting with
# "@", the same commands as JSON for the host tool. See docs/console.md.
import asyncio
import json
import sys

from micropython import const

from . import log
from .config import SCHEMA, SECRETS, ConfigError, parse_value

_MAX_LINE = const(4096)
MASK = "********"
_OVER = object()  # readline's answer for a line longer than the buffer
_HELP = """commands:
  help                 this list
  status               health at a glance
  show                 all settings (secrets masked)
  set KEY VALUE        change a setting (lists: a,b,c); set KEY alone prompts for secrets
  unset KEY            back to the default
  save                 write the config file
  queue                queued messages and dead letters
  retry ID             try a message now, or revive a dead letter
  drop ID              delete a message or dead letter
  logs [N]             recent log lines
  test ADDRESS         send a test message through the whole path
  reboot               restart"""


class CommandError(Exception):
    pass


def _names_secret(buf, n):
    # Whether buf[:n] is "set KEY " with KEY a secret: what follows is its value.
    words = bytes(buf[:n]).split()
    return len(words) == 2 and words[0].lower() == b"set" and words[1].decode() in SECRETS


def _internal(e):
    # The type (and errno) only: an exception's text might quote a value being set.
    log.error("console", "command failed: %s" % type(e).__name__)
    if isinstance(e, OSError) and e.args:
        return "internal: %s %s" % (type(e).__name__, e.args[0])
    return "internal: %s" % type(e).__name__


def _typed(value):
    # A value as it is typed back at `set`: true/false as in JSON, lists comma-separated.
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is list:
        return ",".join(str(v) for v in value)
    return value


def masked(key, value):
    return MASK if key in SECRETS and value is not None else value


def _age(seconds):
    if seconds is None:
        return "-"
    if seconds < 120:
        return "%ds" % seconds
    if seconds < 7200:
        return "%dm" % (seconds // 60)
    if seconds < 172800:
        return "%dh" % (seconds // 3600)
    return "%dd" % (seconds // 86400)


def _size(n):
    if n < 10240:
        return "%dB" % n
    if n < 10485760:
        return "%dK" % (n // 1024)
    if n < 10737418240:
        return "%dM" % (n // 1048576)
    return "%dG" % (n // 1073741824)  # a host's disk under `relaybox run`


class Console:
    def __init__(self, relay, stream_in, out=None, echo=False):
        self.relay = relay
        self.cfg = relay.cfg
        self.inp = stream_in
        self.out = out or sys.stdout
        self.echo = echo
        self.buf = bytearray(_MAX_LINE)
        self.secret_key = None  # set while prompting for a secret value
        self.after_cr = False

    def write(self, text):
        self.out.write(text + "\n")  # one write: a stream that drops, drops whole lines

    async def readline(self):
        """One line (bytes, without the end) or None at end of input; bounded, and the
        rest of an over-long line is thrown away."""
        n = 0
        over = False
        stars = False
        while True:
            try:
                c = await self.inp.read(1)
            except OSError:  # the terminal hung up (EIO): the same as its end
                return None
            if not c:
                return None
            b = c[0]
            after_cr, self.after_cr = self.after_cr, b == 13
            if b == 10 and after_cr:
                continue  # CR LF (what terminals send): the CR already ended the line
            if b in (10, 13):
                if self.echo:
                    self.out.write("\r\n")
                if over:
                    return _OVER
                return bytes(self.buf[:n])
            if self.echo and b in (8, 127):
                if n:
                    n -= 1
                    self.out.write("\b \b")
                continue
            if n >= _MAX_LINE:
                over = True
                continue
            self.buf[n] = b
            n += 1
            if self.echo and self.secret_key is None and self.buf[0] != 0x40 and 32 <= b < 127:
                # The value of `set SECRET VALUE` typed inline is echoed as stars.
                self.out.write("*" if stars else chr(b))
                if b == 32 and not stars:
                    stars = _names_secret(self.buf, n)

    async def run(self):
        while True:
            line = await self.readline()
            if self.secret_key and (line is None or line is _OVER):
                self.secret_key = None  # the prompt is abandoned
                self._terminal_echo(True)
            if line is None:
                log.info("console", "console input closed; the relay keeps running")
                return
            try:
                if line is _OVER:
                    if self.buf[0] == 0x40:
                        self.write('@{"id": null, "ok": false, "error": "line too long"}')
                    else:
                        self.write("error: line too long (at most %d bytes)" % _MAX_LINE)
                    continue
                self.handle(line)
            except Exception as e:  # a console bug must not stop the relay
                log.error("console", "command failed: %r" % e)

    def handle(self, line):
        if self.secret_key:
            key, self.secret_key = self.secret_key, None
            self._terminal_echo(True)
            if not self.echo:
                self.out.write("\n")  # the line end typed was not echoed: end the prompt
            if not line or line.startswith(b"@"):
                # An empty line, or the host tool's next request: the prompt is abandoned.
                self.write("%s: not changed" % key)
            else:
                try:
                    value = line.decode()  # as typed: spaces may belong to a secret
                except UnicodeError:
                    self.write("error: %s: not valid UTF-8; not changed" % key)
                    return
                self._human("set", [key, value])
                return
        if line.startswith(b"@"):
            self._machine(line)
            return
        try:
            text = line.decode().strip()
        except UnicodeError:
            self.write("error: not a command (help lists them)")
            return
        if not text:
            return
        words = text.split(None, 2)
        self._human(words[0].lower(), words[1:])

    def _machine(self, line):
        req_id = None
        try:
            req = json.loads(line[1:])
            req_id = req.get("id")
            result = self.call(req.get("cmd"), req.get("args") or [], machine=True)
            answer = {"id": req_id, "ok": True, "result": result}
        except (CommandError, ConfigError) as e:
            answer = {"id": req_id, "ok": False, "error": str(e)}
        except (ValueError, AttributeError, TypeError):
            answer = {"id": req_id, "ok": False, "error": "bad request"}
        except Exception as e:  # answered all the same: the host must not wait in vain
            answer = {"id": req_id, "ok": False, "error": _internal(e)}
        try:
            self._answer(answer)
        except Exception as e:
            self.write("@" + json.dumps({"id": req_id, "ok": False, "error": _internal(e)}))

    def _answer(self, answer):
        result = answer.get("result")
        if type(result) is not dict or "lines" not in result:
            self.write("@" + json.dumps(answer))
            return
        # Log lines go out one by one: the whole answer as one string may not fit the heap.
        w = self.out.write
        w('@{"id": %s, "ok": true, "result": {"lines": [' % json.dumps(answer["id"]))
        sep = ""
        for line in result["lines"]:
            w(sep)
            w(json.dumps(line))
            sep = ", "
        w("]}}\n")

    def call(self, cmd, args, machine=False):
        fn = _COMMANDS.get(cmd)
        if fn is None:
            raise CommandError("unknown command %r (help lists them)" % cmd)
        return fn(self, args, machine)

    # -- the commands; each returns a JSON-able result --

    def c_hello(self, args, machine):
        return self.relay.hello()

    def c_status(self, args, machine):
        return self.relay.status()

    def c_show(self, args, machine):
        out = {}
        for key in SCHEMA:
            v = self.cfg.get(key)
            if v is not None:
                out[key] = masked(key, v)
        return {"config": out, "set": sorted(self.cfg.values)}

    def c_get(self, args, machine):
        key = self._key(args)
        return {"key": key, "value": masked(key, self.cfg.get(key))}

    def c_set(self, args, machine):
        # The host tool adds "save": set and save as one step, or nothing changes.
        save = machine and len(args) == 3 and args[2] == "save"
        if len(args) != 2 + save:
            raise CommandError("usage: set KEY VALUE")
        key, value = args[0], args[1]
        if key not in SCHEMA:
            raise ConfigError(key, "unknown key")
        if type(value) is str and SCHEMA[key][0] is not str:
            value = parse_value(key, value)
        restart = self.relay.set_config(key, value, save)
        log.info("console", "set %s = %s" % (key, masked(key, value)))
        return self._changed(restart, save)

    def c_unset(self, args, machine):
        save = machine and len(args) == 2 and args[1] == "save"
        key = self._key(args[:1] if save else args)
        restart = self.relay.unset_config(key, save)
        log.info("console", "unset %s" % key)
        return self._changed(restart, save)

    def _changed(self, restart, save):
        out = {"restart": restart}
        if save:
            out["path"] = self.cfg.path
        return out

    def c_save(self, args, machine):
        return {"path": self.relay.save_config()}

    def c_export(self, args, machine):
        data = self.cfg.as_json()
        for key in SECRETS:
            parts = key.split(".")
            node = data
            for p in parts[:-1]:
                node = node.get(p) if type(node) is dict else None
            if type(node) is dict and parts[-1] in node:
                node[parts[-1]] = MASK
        return {"config": data}

    def c_import(self, args, machine):
        if len(args) != 1 or type(args[0]) is not dict:
            raise CommandError("usage: import CONFIG (a JSON object)")
        return self.relay.import_config(args[0], MASK)

    def c_put_ca(self, args, machine):
        if len(args) != 1 or type(args[0]) is not str:
            raise CommandError("usage: put_ca PEM")
        return {"path": self.relay.put_ca(args[0])}

    def c_queue(self, args, machine):
        return self.relay.queue()

    def c_retry(self, args, machine):
        return self.relay.retry(self._id(args))

    def c_drop(self, args, machine):
        return self.relay.drop(self._id(args))

    def c_logs(self, args, machine):
        n = None
        if args:
            n = args[0]
            if type(n) is str and n.isdigit():
                n = int(n)
            if type(n) is not int or n < 0:
                raise CommandError("usage: logs [N], N the number of last lines (0 or more)")
        return {"lines": log.lines(n)}

    def c_test(self, args, machine):
        if len(args) != 1:
            raise CommandError("usage: test ADDRESS")
        return {"id": self.relay.send_test(str(args[0]))}

    def c_reboot(self, args, machine):
        self.relay.reboot()
        return {"rebooting": True}

    def c_help(self, args, machine):
        return {"help": _HELP}

    def _key(self, args):
        if len(args) != 1:
            raise CommandError("give one KEY")
        if args[0] not in SCHEMA:
            raise ConfigError(args[0], "unknown key")
        return args[0]

    def _id(self, args):
        if len(args) != 1:
            raise CommandError("usage: retry|drop ID")
        return str(args[0])

    # -- people --

    def _terminal_echo(self, on):
        # Where a terminal driver echoes (the unix board), the board can switch it off.
        fn = getattr(self.relay.board, "console_echo", None)
        if fn:
            fn(on)

    def _human(self, cmd, args):
        if cmd == "set" and len(args) == 1 and args[0] in SECRETS:
            self.secret_key = args[0]
            self._terminal_echo(False)
            self.out.write("value for %s (not shown): " % args[0])
            return
        try:
            result = self.call(cmd, args)
        except (CommandError, ConfigError) as e:
            self.write("error: %s" % e)
            return
        except Exception as e:
            self.write("error: %s" % _internal(e))
            return
        show = _SHOW.get(cmd)
        if show:
            show(self, result)
        else:
            self.write("ok")

    def _status_text(self, s):
        up = s["upstream"]
        net = s["network"]
        lines = [
            "relaybox %s on %s, up %s" % (s["version"], s["board"], _age(s["uptime"])),
            "network   %s %s" % ("up" if net.get("up") else "DOWN", net.get("ip") or "")
            + ("(%s)" % net["detail"] if net.get("detail") else ""),
            "clock     %s" % (s["clock"]["now"] if s["clock"]["set"] else "NOT SET"),
            "upstream  %s" % up["state"]
            + (" %s:%s" % (up["host"], up["port"]) if up.get("host") else "")
            + {True: " reachable", False: " UNREACHABLE"}.get(up.get("reachable"), "")
            + (" authenticated" if up.get("authenticated") else ""),
        ]
        if up.get("last_result"):
            lines.append("          last result: %s" % up["last_result"])
        if up.get("last_error"):
            lines.append("          last error: %s" % up["last_error"])
        if up.get("next_in") is not None:
            lines.append("          next try in %s" % _age(up["next_in"]))
        q = s["queue"]
        lines.append(
            "queue     %d message(s), oldest %s; %d dead letter(s)"
            % (q["count"], _age(q["oldest_age"]), s["dead"])
        )
        lines.append(
            "memory    flash free %s, heap free %s"
            % (_size(s["flash_free"]), _size(s["heap_free"]))
        )
        if s["restart_needed"]:
            lines.append("note      settings changed that need save + reboot")
        self.write("\n".join(lines))

    def _show_text(self, r):
        config = r["config"]
        for key in sorted(config):
            value = config[key]
            mark = "" if key in r["set"] else "  (default)"
            self.write("%-26s %s%s" % (key, _typed(value), mark))

    def _queue_text(self, r):
        for title, items in (("queue", r["queue"]), ("dead letters", r["dead"])):
            self.write("%s: %d" % (title, len(items)))
            for m in items:
                self.write(
                    "  %s  %-6s %-6s from <%s> to %s%s"
                    % (
                        m["id"],
                        _age(m["age"]),
                        _size(m["size"]),
                        m["from"],
                        ",".join(m["rcpt"]),
                        ("  [%s]" % m["error"]) if m.get("error") else "",
                    )
                )

    def _lines_text(self, lines):
        for line in lines:
            self.write(line)

    def _set_text(self, r):
        self.write("ok (needs save + reboot)" if r["restart"] else "ok (save to keep it)")


_COMMANDS = {
    "hello": Console.c_hello,
    "status": Console.c_status,
    "show": Console.c_show,
    "get": Console.c_get,
    "set": Console.c_set,
    "unset": Console.c_unset,
    "save": Console.c_save,
    "export": Console.c_export,
    "import": Console.c_import,
    "put_ca": Console.c_put_ca,
    "queue": Console.c_queue,
    "retry": Console.c_retry,
    "drop": Console.c_drop,
    "logs": Console.c_logs,
    "test": Console.c_test,
    "reboot": Console.c_reboot,
    "help": Console.c_help,
}
_SHOW = {
    "help": lambda c, r: c.write(r["help"]),
    "status": lambda c, r: c._status_text(r),
    "show": lambda c, r: c._show_text(r),
    "get": lambda c, r: c.write("%s = %s" % (r["key"], _typed(r["value"]))),
    "set": lambda c, r: c._set_text(r),
    "unset": lambda c, r: c._set_text(r),
    "save": lambda c, r: c.write("saved to %s" % r["path"]),
    "queue": lambda c, r: c._queue_text(r),
    "retry": lambda c, r: c.write("%s: will be tried now" % r["id"]),
    "drop": lambda c, r: c.write("%s: dropped" % r["id"]),
    "logs": lambda c, r: c._lines_text(r["lines"]),
    "test": lambda c, r: c.write("test message queued as %s" % r["id"]),
    "reboot": lambda c, r: c.write("rebooting"),
    "export": lambda c, r: c.write(json.dumps(r["config"])),
    "import": lambda c, r: c.write("imported and saved to %s" % r["path"]),
    "put_ca": lambda c, r: c.write("CA written to %s (save to keep it)" % r["path"]),
}


def start(relay, echo, out=None):
    """Start the console on the board's stdin (answers to `out`, default stdout)."""
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    return asyncio.create_task(Console(relay, asyncio.StreamReader(stdin), out, echo).run())
