# The only code that touches message files on flash.
#
# Layout under the spool folder:
#   tmp/ID      a message being received; removed at boot if the power went
#   q/ID        a committed message: envelope lines, a blank line, then the message
#   q/ID.s      its delivery state (JSON), replaced atomically; optional
#   dead/ID     a message the upstream refused for good, with dead/ID.s saying why
# A message is committed by renaming tmp/ID to q/ID after the file was closed, which
# LittleFS (and POSIX) make atomic: q/ holds only whole messages.
import json
import os
import time
from binascii import hexlify

from micropython import const

from . import log

_MAGIC = b"RBX1\n"
_OUT_SIZE = const(512)  # batches short lines into fewer flash writes
_MAX_ENV_LINE = const(1100)  # a command line is at most 1000 octets
_ENOENT = const(2)
_ENOSPC = const(28)
_DIR = const(0x4000)  # the type os.ilistdir gives a folder
QUEUE = "q"
DEAD = "dead"


class Envelope:
    def __init__(self, id, sender, rcpts, arrived, peer, helo, offset, size):
        self.id = id
        self.sender = sender
        self.rcpts = rcpts
        self.arrived = arrived
        self.peer = peer
        self.helo = helo
        self.offset = offset  # where the message starts in the file
        self.size = size  # of the message, without the envelope


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f)
        f.flush()  # on the disk before the caller renames it


def _remove(path):
    try:
        os.remove(path)
    except OSError as e:
        if e.errno != _ENOENT:
            raise


class Writer:
    """Streams one incoming message into tmp/; commit() makes it part of the queue."""

    def __init__(self, spool, id, sender, rcpts, peer, helo):
        self.spool = spool
        self.id = id
        self.tmp = "%s/tmp/%s" % (spool.root, id)
        self.buf = bytearray(_OUT_SIZE)
        self.n = 0
        self.size = 0
        self.f = open(self.tmp, "wb")
        try:
            w = self.f.write
            w(_MAGIC)
            w("F %s\n" % sender)
            for r in rcpts:
                w("T %s\n" % r)
            w("A %d\nP %s\nH %s\n\n" % (int(time.time()), peer, helo))
        except Exception:
            self.abort()
            raise

    def write(self, data):
        n = len(data)
        self.size += n
        if self.n + n > _OUT_SIZE:
            self._flush()
            if n > _OUT_SIZE:
                self.f.write(data)
                return
        self.buf[self.n : self.n + n] = data
        self.n += n

    def _flush(self):
        if self.n:
            self.f.write(memoryview(self.buf)[: self.n])
            self.n = 0

    def commit(self):
        """Close and rename into the queue; only then may the client hear 250."""
        try:
            self._flush()
            # flush() is fsync on a host and a sync on LittleFS: the data is on the disk
            # before the rename can be, so a power cut cannot leave a renamed empty file.
            self.f.flush()
            self.f.close()
            self.f = None
            os.rename(self.tmp, "%s/%s/%s" % (self.spool.root, QUEUE, self.id))
        except Exception:
            self.abort()
            raise
        return self.id

    def abort(self):
        if self.f:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None
        try:
            _remove(self.tmp)
        except OSError:
            pass


class Spool:
    def __init__(self, root):
        self.root = root
        self._count = 0

    def _path(self, area, name):
        return "%s/%s/%s" % (self.root, area, name)

    def recover(self):
        """Prepare the folders and clean up after a power cut; return (queued, dead)."""
        for d in ("", "/tmp", "/" + QUEUE, "/" + DEAD):
            if not _exists(self.root + d):
                os.mkdir(self.root + d)
        for area in ("tmp", QUEUE, DEAD):
            for entry in os.ilistdir(self.root + "/" + area):
                if entry[1] == _DIR:
                    log.warn("spool", "skipped folder %s/%s/%s" % (self.root, area, entry[0]))
        self._sweep("tmp", lambda area, name: True)
        self._sweep(QUEUE, self._orphan)
        self._sweep(DEAD, self._orphan)
        return self.count(QUEUE), self.count(DEAD)

    def _orphan(self, area, name):
        """Leftovers of a power cut: a state file without its message, or a temporary."""
        return name.endswith(".tmp") or (
            name.endswith(".s") and not _exists(self._path(area, name[:-2]))
        )

    def _sweep(self, area, doomed):
        # Remove after listing, a few at a time: deleting while a directory is being
        # read may skip entries on some filesystems, and a long list costs RAM.
        while True:
            batch = []
            for name in self._names(area):
                if doomed(area, name):
                    batch.append(name)
                    if len(batch) == 16:
                        break
            for name in batch:
                _remove(self._path(area, name))
            if len(batch) < 16:
                return

    def _names(self, area):
        # Only files: a folder someone made in the spool is neither a message nor ours.
        for entry in os.ilistdir(self.root + "/" + area):
            if entry[1] != _DIR:
                yield entry[0]

    def _new_id(self):
        # Time first so that names sort by arrival; random bits because a board's
        # clock may restart from the same value after a power cut.
        while True:
            self._count = (self._count + 1) & 0xFFFF
            id = "%08x%04x%s" % (
                int(time.time()) & 0xFFFFFFFF,
                self._count,
                hexlify(os.urandom(2)).decode(),
            )
            if not _exists(self._path(QUEUE, id)) and not _exists(self._path("tmp", id)):
                return id

    def writer(self, sender, rcpts, peer, helo):
        """Start a message; raises OSError when the flash is full or broken."""
        return Writer(self, self._new_id(), sender, rcpts, peer, helo)

    def free_bytes(self):
        st = os.statvfs(self.root)
        return st[0] * st[4]

    def ids(self, area=QUEUE, limit=50, keep=None):
        """The oldest message ids in an area (at most limit), oldest first; with `keep`,
        only the ids for which keep(id) is true."""
        out = []
        for name in self._names(area):
            if "." in name or (keep and not keep(name)):
                continue
            if len(out) < limit:
                out.append(name)
                out.sort()
            elif name < out[-1]:
                out[-1] = name
                out.sort()
        return out

    def count(self, area=QUEUE):
        n = 0
        for name in self._names(area):
            if "." not in name:
                n += 1
        return n

    def envelope(self, id, area=QUEUE):
        path = self._path(area, id)
        with open(path, "rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                raise ValueError("not a spool file: " + id)
            sender, rcpts, arrived, peer, helo = "", [], 0, "", ""
            offset = len(_MAGIC)
            while True:
                line = f.readline(_MAX_ENV_LINE)
                offset += len(line)
                if not line.endswith(b"\n"):
                    raise ValueError("damaged envelope: " + id)
                if line == b"\n":
                    break
                tag, value = line[:1], line[2:-1].decode()
                if tag == b"F":
                    sender = value
                elif tag == b"T":
                    rcpts.append(value)
                elif tag == b"A":
                    arrived = int(value)
                elif tag == b"P":
                    peer = value
                elif tag == b"H":
                    helo = value
        size = os.stat(path)[6] - offset
        return Envelope(id, sender, rcpts, arrived, peer, helo, offset, size)

    def open_message(self, env, area=QUEUE):
        """A binary file positioned at the first byte of the message."""
        f = open(self._path(area, env.id), "rb")
        f.seek(env.offset)
        return f

    def state(self, id, area=QUEUE):
        """Delivery state saved with set_state, or {} when there is none yet."""
        try:
            with open(self._path(area, id + ".s")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def set_state(self, id, state, area=QUEUE):
        tmp = self._path(area, id + ".s.tmp")
        _write_json(tmp, state)
        os.rename(tmp, self._path(area, id + ".s"))

    def remove(self, id, area=QUEUE):
        """Delete a message after the upstream took it (or the owner dropped it)."""
        _remove(self._path(area, id))
        _remove(self._path(area, id + ".s"))

    def to_dead(self, id, state):
        """Move a refused message to the dead-letter area with the reason in state."""
        self.set_state(id, state, DEAD)
        os.rename(self._path(QUEUE, id), self._path(DEAD, id))
        _remove(self._path(QUEUE, id + ".s"))

    def revive(self, id):
        """Put a dead letter back in the queue (the owner fixed the cause). Only the
        recipients that did not get it are tried again."""
        st = self.state(id, DEAD)
        if "rcpts" in st:
            rest = st["rcpts"] + [f[0] for f in st.get("failed", ()) if f[0] not in st["rcpts"]]
            # Written first: a power cut before the rename leaves an orphan that recover()
            # removes, and the message stays a dead letter.
            self.set_state(id, {"rcpts": rest})
        os.rename(self._path(DEAD, id), self._path(QUEUE, id))
        _remove(self._path(DEAD, id + ".s"))

    def note(self, name):
        """A small record kept beside the areas (the upstream backoff), or None."""
        try:
            with open("%s/%s.json" % (self.root, name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def set_note(self, name, value):
        """Replace a note atomically; None removes it."""
        path = "%s/%s.json" % (self.root, name)
        if value is None:
            _remove(path)
            return
        _write_json(path + ".tmp", value)
        os.rename(path + ".tmp", path)


def is_full(err):
    return isinstance(err, OSError) and err.args and err.args[0] == _ENOSPC
