# Makes an image file the root filesystem of the MicroPython unix port, as flash is on a board.
# Usage: micropython flash_root.py IMAGE BLOCKS PROGSIZE [boot | exec CODE]
# "boot" then runs /main.py as the board would, "exec" runs CODE; `micropython -i` with
# neither leaves the REPL.
import os
import sys

_BLOCK = 4096


class FileFlash:
    """A block device over an image file; erased blocks read 0xFF like NOR flash."""

    def __init__(self, path, blocks):
        self.f = open(path, "r+b")
        self.blocks = blocks

    def readblocks(self, n, buf, off=0):
        self.f.seek(n * _BLOCK + off)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=None):
        if off is None:
            self.ioctl(6, n)
            off = 0
        self.f.seek(n * _BLOCK + off)
        self.f.write(buf)
        # Flushed at once so the host can read the image while the relay still runs.
        self.f.flush()

    def ioctl(self, op, arg):
        if op == 4:
            return self.blocks
        if op == 5:
            return _BLOCK
        if op == 6:
            self.f.seek(arg * _BLOCK)
            self.f.write(b"\xff" * _BLOCK)
            return 0
        return None


_image, _blocks, _progsize = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
_vfs = os.VfsLfs2(FileFlash(_image, _blocks), progsize=_progsize)
# The host's root goes away: from here on the process sees only the image, like a board.
os.umount("/")
os.mount(_vfs, "/")
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]
del sys.argv[1:4]

if sys.argv[1:2] == ["boot"]:
    del sys.argv[1]
    with open("/main.py") as _f:
        exec(_f.read(), {"__name__": "__main__"})
elif sys.argv[1:2] == ["exec"]:
    exec(sys.argv[2])
