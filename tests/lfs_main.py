# Runs the relay with its spool on a small LittleFS2 volume in RAM, as on a board's flash.
# Usage: micropython lfs_main.py --config FILE --blocks N
import os
import sys


class RAMBlockDev:
    def __init__(self, block_size, blocks):
        self.block_size = block_size
        self.data = bytearray(block_size * blocks)

    def readblocks(self, n, buf, off=0):
        a = n * self.block_size + off
        buf[:] = memoryview(self.data)[a : a + len(buf)]

    def writeblocks(self, n, buf, off=None):
        a = n * self.block_size + (off or 0)
        self.data[a : a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return len(self.data) // self.block_size
        if op == 5:
            return self.block_size
        if op == 6:
            return 0


blocks = int(sys.argv[sys.argv.index("--blocks") + 1])
bdev = RAMBlockDev(512, blocks)
os.VfsLfs2.mkfs(bdev)
os.mount(os.VfsLfs2(bdev), "/flash")

import relaybox.app  # noqa: E402

relaybox.app.main()
