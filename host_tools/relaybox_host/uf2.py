"""UF2 files for the RP2040 boot ROM: encode a flash image, read one back, merge two.

A UF2 file is a run of 512-byte blocks, each carrying 256 bytes for one flash address
(the payload size the RP2040 boot ROM accepts), the family ID and a block number.
"""

import struct

_MAGIC_START0 = 0x0A324655  # "UF2\n"
_MAGIC_START1 = 0x9E5D5157
_MAGIC_END = 0x0AB16F30
_FLAG_FAMILY = 0x00002000  # the family ID field is valid
_PAYLOAD = 256
_BLOCK = 512
_HEADER = struct.Struct("<8I")


def encode(data, address, family_id):
    """The UF2 file that writes `data` to flash starting at `address`."""
    count = (len(data) + _PAYLOAD - 1) // _PAYLOAD
    return _blocks(
        [(address + i * _PAYLOAD, data[i * _PAYLOAD : (i + 1) * _PAYLOAD]) for i in range(count)],
        family_id,
    )


def _blocks(chunks, family_id):
    out = bytearray()
    total = len(chunks)
    for n, (addr, payload) in enumerate(chunks):
        payload = bytes(payload).ljust(_PAYLOAD, b"\xff")
        head = _HEADER.pack(
            _MAGIC_START0, _MAGIC_START1, _FLAG_FAMILY, addr, _PAYLOAD, n, total, family_id
        )
        out += head + payload.ljust(_BLOCK - _HEADER.size - 4, b"\x00")
        out += struct.pack("<I", _MAGIC_END)
    return bytes(out)


def decode(blob):
    """[(address, payload, family_id)] for every block; raise ValueError on a bad file."""
    if len(blob) % _BLOCK:
        raise ValueError("a UF2 file is a whole number of 512-byte blocks")
    chunks = []
    for off in range(0, len(blob), _BLOCK):
        block = blob[off : off + _BLOCK]
        m0, m1, flags, addr, size, _n, _total, family = _HEADER.unpack_from(block)
        (m_end,) = struct.unpack_from("<I", block, _BLOCK - 4)
        if (m0, m1, m_end) != (_MAGIC_START0, _MAGIC_START1, _MAGIC_END):
            raise ValueError(f"bad UF2 magic in block {off // _BLOCK}")
        if size > _BLOCK - _HEADER.size - 4:
            raise ValueError(f"bad payload size in block {off // _BLOCK}")
        family = family if flags & _FLAG_FAMILY else None
        chunks.append((addr, block[_HEADER.size : _HEADER.size + size], family))
    return chunks


def merge(first, second, family_id):
    """One UF2 holding the blocks of both files, renumbered as a single transfer.

    The boot ROM counts blocks against the `total` field and reboots when it has them
    all, so two files copied one after the other would reboot the board in between.
    """
    chunks = []
    for addr, payload, family in decode(first) + decode(second):
        if family not in (None, family_id):
            raise ValueError(f"block for family {family:#x}, expected {family_id:#x}")
        if len(payload) != _PAYLOAD:
            raise ValueError("only 256-byte UF2 payloads can be merged")
        chunks.append((addr, payload))
    addresses = [a for a, _ in chunks]
    if len(set(addresses)) != len(addresses):
        raise ValueError("the two UF2 files write to the same flash addresses")
    return _blocks(chunks, family_id)
