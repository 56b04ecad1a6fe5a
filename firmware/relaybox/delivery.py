"""The delivery scheduler: due messages go upstream in one session; retries, dead letters."""

import asyncio
import hashlib
import time
from binascii import hexlify

from micropython import const

from . import clock, log, rewrite
from .submit import SubmitError, Upstream

_IDLE = const(300)  # look at the queue at least this often, even with nothing due
_CLOCK_RETRY = const(60)  # seconds between NTP attempts while the clock is unset
_RESYNC = const(86400)  # boards keep their RTC honest with a daily NTP query
_BOUNCE_HELO = "relaybox-bounce"  # marks our own notices, which never bounce again
_SUB = "delivery"
_SCAN = const(100)  # oldest due messages taken per round; one session takes them all
_SESSION_NOTE = "upstream"  # the session backoff, kept on flash across restarts


def _session_wide(e):
    """A failure that is not this message's: the session broke, or the server refuses the
    account's own sender (MAIL 5xx other than 552, message size), the same for all mail."""
    return e.code in (0, 421) or (e.stage == "mail" and e.code >= 500 and e.code != 552)


class Delivery:
    """Owns the upstream session; the console reads status(), the LAN server calls wake()."""

    def __init__(self, relay):
        self.spool = relay.spool
        cfg = relay.cfg
        self.ucfg = cfg.upstream()
        self.admin = cfg.get("admin")
        self.hostname = cfg.get("hostname")
        self.sender = self.ucfg["sender"] or self.ucfg["user"]
        self.schedule = self.ucfg["retry"]["schedule"] or [60]
        self.max_age = self.ucfg["retry"]["max_age"]
        # The session object holds the long-lived buffers; allocate it once, at start.
        self.up = Upstream(self.ucfg, cfg.get("hostname"), log)
        self._wake = asyncio.Event()
        self._failures = 0  # sessions in a row that could not be opened
        self._session_next = 0  # no session before this time (backoff, paused AUTH)
        self._held = {}  # id -> time: messages whose progress could not be saved wait
        self._synced = 0
        self.state = "starting"
        self.reachable = None
        self.authenticated = None
        self.last_error = None
        self.last_result = None
        self.next_attempt = None
        self.delivered = 0
        self.dead = 0
        self._key = self._config_key()
        self._note = self.spool.note(_SESSION_NOTE)  # applied once the clock is right

    def wake(self):
        """New mail was queued: look at the queue now (backoff still applies)."""
        self._wake.set()

    def retry_now(self):
        """The owner asked for a retry (and may have fixed the cause): skip the backoff."""
        self._session_next = 0
        self._note = None
        self._held = {}
        self._wake.set()

    # -- the session backoff survives a restart, so a reboot loop cannot hammer AUTH --

    def _config_key(self):
        # The backoff belongs to these settings: new credentials or a new server start afresh.
        # The CA counts by its contents: a file replaced under the same name is new too.
        u = self.ucfg
        text = "%s|%s|%s|%s|%s|%s" % (
            u["host"],
            u["port"],
            u["tls"],
            u.get("user"),
            u.get("password"),
            u.get("ca"),
        )
        h = hashlib.sha256(text.encode())
        try:
            with open(u["ca"], "rb") as f:
                buf = bytearray(512)
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    h.update(memoryview(buf)[:n])
        except OSError:
            h.update(b"no CA file")
        return hexlify(h.digest()[:8]).decode()

    def _load_backoff(self):
        # Only with a set clock: a board reads the note right after a power cut, while its
        # clock still says 2000, and a wait measured from then would already be over.
        note, self._note = self._note, None
        if not note:
            return
        if note.get("key") != self._key:
            self._save_backoff()  # other settings now: forget it
            return
        now = time.time()
        self._failures = note.get("failures", 0)
        # A clock set differently since then must not make the wait longer than a step.
        self._session_next = min(note.get("next", 0), now + self.schedule[-1])
        self.last_error = note.get("error")
        if self._session_next > now:
            log.warn(
                _SUB,
                "upstream failed before the restart (%s); next try in %d s"
                % (self.last_error, self._session_next - now),
            )

    def _save_backoff(self):
        note = None
        if self._failures:
            note = {
                "key": self._key,
                "failures": self._failures,
                "next": self._session_next,
                "error": self.last_error,
            }
        try:
            self.spool.set_note(_SESSION_NOTE, note)
        except OSError as e:
            log.error(_SUB, "session backoff not saved: %r" % e)

    def resume_at(self):
        """When the next upstream session may start (0: now); backoff after failures."""
        return self._session_next

    def status(self):
        """What the console shows about delivery."""
        return {
            "upstream": "%s:%d (%s)" % (self.ucfg["host"], self.ucfg["port"], self.ucfg["tls"]),
            "state": self.state,
            "reachable": self.reachable,
            "authenticated": self.authenticated,
            "mechanism": self.up.mechanism,
            "last_error": self.last_error,
            "last_result": self.last_result,
            "next_attempt": clock.rfc5322_date(self.next_attempt) if self.next_attempt else None,
            "queued": self.spool.count(),
            "delivered": self.delivered,
            "dead": self.dead,
            "clock_ok": clock.clock_ok(),
        }

    # -- the loop --

    async def run(self):
        log.info(_SUB, "delivering to %s as %s" % (self.status()["upstream"], self.sender))
        while True:
            try:
                wait = await self._round()
            except Exception as e:  # a bug or a broken flash must not stop delivery for good
                log.error(_SUB, "delivery round failed: %r" % e)
                self.last_error = "internal: %r" % e
                wait = self.schedule[0]
            self.next_attempt = time.time() + wait if wait < _IDLE else None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def _round(self):
        """One look at the queue; returns seconds until the next look is needed."""
        now = time.time()
        if not self._clock_ready(now):
            self.state = "waiting for clock"
            return _CLOCK_RETRY
        due, wait = self._due(now)
        if not due:
            self.state = "idle"
            return wait
        if now < self._session_next:
            self.state = "waiting to retry"
            return max(1, int(self._session_next - now))
        self.state = "sending"
        await self._session(due)
        now = time.time()
        self.state = "waiting to retry" if self._session_next > now else "idle"
        due, wait = self._due(now)
        if due:
            # Mail still due waits for the session backoff, not for the idle look.
            return max(1, int(self._session_next - now))
        return wait

    def _clock_ready(self, now):
        if self._synced and now - self._synced < _RESYNC and clock.clock_ok():
            return True
        ok = clock.sync(log)
        if ok:
            self._synced = time.time()
            self._load_backoff()
        else:
            self.last_error = "clock not set (no NTP answer): certificates cannot be checked"
        return ok

    def _due(self, now):
        """Queued ids due now (the oldest _SCAN of them) and the seconds until the next
        one is due. Every message is looked at: new mail is never stuck behind a hundred
        older messages that wait for their retry."""
        wait = [_IDLE]

        def due(id):
            nxt = max(self.spool.state(id).get("next", 0), self._held.get(id, 0))
            if nxt <= now:
                return True
            wait[0] = min(wait[0], nxt - now)
            return False

        ids = self.spool.ids(limit=_SCAN, keep=due)
        for id in list(self._held):
            if self._held[id] <= now:
                del self._held[id]
        return ids, max(1, int(wait[0]))

    def _hold(self, id):
        """A message whose outcome could not be written to flash waits like a deferral."""
        self._held[id] = time.time() + self.schedule[0]

    # -- one session --

    async def _session(self, ids):
        up = self.up
        try:
            await up.open()
        except SubmitError as e:
            self._session_failed(e, ids)
            return
        if self._failures:
            self._failures = 0
            self._save_backoff()
        self._session_next = 0
        self.reachable = self.authenticated = True
        self.last_error = None
        counts = [0, 0, 0]  # delivered, deferred, dead
        try:
            for i, id in enumerate(ids):
                if not up.alive:
                    try:
                        await up.open()
                    except SubmitError as e:
                        self._session_failed(e, ids[i:])
                        break
                try:
                    counts[await self._one(id)] += 1
                except SubmitError as e:
                    # The message was deferred; the rest wait for the session backoff
                    # instead of a new session each (a 421 says "not now" for them all).
                    counts[1] += 1
                    self._session_failed(e, ids[i + 1 :])
                    break
                if up.alive:
                    try:
                        await up.reset()
                    except SubmitError:
                        pass  # reset() closed the session; the next message reopens it
        finally:
            await up.close()
        self.last_result = "delivered %d, deferred %d, dead %d at %s" % (
            counts[0],
            counts[1],
            counts[2],
            clock.rfc5322_date(),
        )

    def _session_failed(self, e, ids):
        self._failures += 1
        self.last_error = "%s: %s" % (e.stage, " ".join(e.text.split()) or e.code)
        self.reachable = not (e.stage == "connect" and e.code == 0)
        self.authenticated = False if e.stage == "auth" else None
        if e.temporary:
            step = self.schedule[min(self._failures - 1, len(self.schedule) - 1)]
        else:
            # Wrong credentials, no usable mechanism, a bad CA file: trying again soon
            # only gets the account locked. Wait the longest step; the mail stays queued.
            step = self.schedule[-1]
        self._session_next = time.time() + step
        self._save_backoff()
        log.error(
            _SUB,
            "upstream session failed (%s); %d queued, next try in %d s"
            % (self.last_error, len(ids), step),
        )
        if not e.temporary:
            # Refused credentials or settings: no message is at fault, and each would wait
            # in vain once it is a dead letter. They all stay queued for the owner's fix.
            return
        # Messages past their age give up even when the server never answered.
        now = time.time()
        for id in ids:
            env = self._envelope(id)
            if env is None:
                continue
            st = self.spool.state(id)
            known = "seen" in st
            if self._age(env, st, now) > self.max_age:
                self._to_dead(
                    id, env, "not delivered within %d s: %s" % (self.max_age, self.last_error)
                )
            elif "seen" in st and not known:
                self.spool.set_state(id, st)

    def _age(self, env, st, now):
        """Seconds since arrival. A message taken before the board's clock was set (right
        after a power cut, before NTP) has no real arrival time: its age counts from the
        first time delivery saw it, kept in st["seen"] (the caller saves st)."""
        if clock.plausible(env.arrived):
            return now - env.arrived
        if "seen" not in st:
            st["seen"] = now
        return now - st["seen"]

    def _envelope(self, id):
        try:
            return self.spool.envelope(id)
        except (OSError, ValueError) as e:
            log.error(_SUB, "id=%s unreadable, left in the queue: %r" % (id, e))
            return None

    async def _one(self, id):
        """Send one message; return 0 delivered, 1 deferred, 2 dead. When the session as a
        whole failed, the message is deferred and the SubmitError raised.

        The state (q/ID.s) keeps "rcpts", the recipients still to try, and "failed", those
        refused for good; a recipient that got 250 is in neither and never gets it again.
        """
        env = self._envelope(id)
        if env is None:
            return self._unreadable(id)
        st = self.spool.state(id)
        rcpts = st["rcpts"] if "rcpts" in st else env.rcpts
        try:
            try:
                f = self.spool.open_message(env)
            except OSError as e:  # dropped from the console meanwhile, or a flash error
                log.error(_SUB, "id=%s cannot be opened: %r" % (id, e))
                self._hold(id)
                return 1
            try:
                src = rewrite.Outbound(f, self.sender, env.sender)
                results = await self.up.send(self.sender, rcpts, src, env.size + src.delta)
            except SubmitError as e:
                if e.results:
                    results = e.results  # every recipient refused: judge each one
                elif e.code >= 500 and not _session_wide(e):
                    failed = st.get("failed", []) + [[r, e.code, e.text] for r in rcpts]
                    st.update({"rcpts": [], "failed": failed})
                    return self._refused(id, env, st, e)
                else:
                    self._defer(id, env, st, rcpts, "%s %s %s" % (e.stage, e.code, e.text))
                    raise
            finally:
                f.close()
            return self._judge(id, env, st, results)
        except OSError as e:  # the outcome could not be written to flash
            log.error(_SUB, "id=%s state not saved: %r" % (id, e))
            self._hold(id)
            return 1

    def _judge(self, id, env, st, results):
        later = [r for r, c, _ in results if 400 <= c < 500]
        failed = st.get("failed", []) + [[r, c, t] for r, c, t in results if c >= 500]
        done = [r for r, c, _ in results if c < 400]
        self._summary(id, env, done, "sent")
        if not later and not failed:
            self.spool.remove(id)
            self.delivered += 1
            return 0
        st.update({"rcpts": later, "failed": failed})
        if done:
            # Saved at once: whatever happens next, these recipients are not sent it again.
            self.spool.set_state(id, st)
        if later:
            why = "; ".join("%s: %d %s" % (r, c, t) for r, c, t in results if r in later)
            return self._defer(id, env, st, later, why)
        return self._refused(id, env, st, None)

    def _unreadable(self, id):
        # Kept for the owner to look at, out of the queue's way.
        try:
            self.spool.to_dead(id, {"reason": "unreadable spool file", "dead_at": time.time()})
        except OSError as e:
            log.error(_SUB, "id=%s could not move to dead letters: %r" % (id, e))
            self._hold(id)
            return 1
        self.dead += 1
        log.error(_SUB, "id=%s result=dead reason=unreadable spool file" % id)
        return 2

    def _summary(self, id, env, rcpts, result):
        if rcpts:
            log.info(
                _SUB,
                "id=%s from=%s rcpt=%s size=%d result=%s"
                % (id, env.sender or "<>", ",".join(rcpts), env.size, result),
            )

    def _defer(self, id, env, st, rcpts, why):
        now = time.time()
        why = " ".join(why.split())
        if self._age(env, st, now) > self.max_age:
            st["rcpts"] = rcpts
            return self._to_dead(id, env, "gave up after %d s: %s" % (self.max_age, why), st)
        n = st.get("attempts", 0) + 1
        step = self.schedule[min(n - 1, len(self.schedule) - 1)]
        st.update({"attempts": n, "next": now + step, "error": why, "rcpts": rcpts})
        self.spool.set_state(id, st)
        log.warn(_SUB, "id=%s deferred (%s), retry in %d s" % (id, why, step))
        return 1

    def _refused(self, id, env, st, e):
        if e is not None:
            why = "%s %d %s" % (e.stage, e.code, " ".join(e.text.split()))
        else:
            why = "; ".join("%s: %d %s" % (r, c, " ".join(t.split())) for r, c, t in st["failed"])
        return self._to_dead(id, env, "refused: " + why, st)

    def _to_dead(self, id, env, why, st=None):
        st = dict(st or {})
        st.update({"reason": why, "dead_at": time.time()})
        st.pop("next", None)
        try:
            self.spool.to_dead(id, st)
        except OSError as e:
            log.error(_SUB, "id=%s could not move to dead letters: %r" % (id, e))
            self._hold(id)
            return 1
        self.dead += 1
        # Those that got it (a 250 earlier) are not named: the owner sees who still waits.
        failed = [f[0] for f in st.get("failed", ())]
        if "rcpts" in st or failed:
            missed = failed + [r for r in st.get("rcpts", ()) if r not in failed]
        else:
            missed = env.rcpts
        log.error(
            _SUB,
            "id=%s from=%s rcpt=%s size=%d result=dead reason=%s"
            % (id, env.sender or "<>", ",".join(missed), env.size, why),
        )
        if self.admin and env.helo != _BOUNCE_HELO:
            self._bounce(id, env, missed, why)
        return 2

    def _bounce(self, id, env, missed, why):
        """Queue a short notice to the admin; it goes out like any other message."""
        body = (
            "From: relaybox <%s>\r\nTo: <%s>\r\nSubject: Undelivered mail %s\r\n"
            "Date: %s\r\nMessage-ID: <%s.notice@%s>\r\nAuto-Submitted: auto-replied\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "A message could not be delivered; it is kept in the dead letters.\r\n\r\n"
            "Id: %s\r\nFrom: %s\r\nTo: %s\r\nNot delivered to: %s\r\nArrived: %s\r\n"
            "Reason: %s\r\n"
        ) % (
            self.sender,
            self.admin,
            id,
            clock.rfc5322_date(),
            id,
            self.hostname,
            id,
            env.sender or "<>",
            ", ".join(env.rcpts),
            ", ".join(missed),
            clock.rfc5322_date(env.arrived),
            why[:400],
        )
        try:
            w = self.spool.writer(self.sender, [self.admin], "local", _BOUNCE_HELO)
            w.write(body.encode())
            w.commit()
        except OSError as e:
            log.error(_SUB, "bounce notice for id=%s not queued: %r" % (id, e))
            return
        log.info(_SUB, "bounce notice for id=%s queued to %s" % (id, self.admin))
        self.wake()
