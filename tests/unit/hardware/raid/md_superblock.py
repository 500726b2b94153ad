"""Write an md version-1 superblock into a file, so the real ``mdadm --examine`` can read it.

This machine's kernel has no md driver, so ``mdadm --create`` cannot run here;
the superblock layout (``struct mdp_superblock_1`` in the kernel's md_p.h) and
its checksum are public, and writing one lets the installed mdadm produce real
``--examine`` output and act on it (``--zero-superblock``).  Test-only.
"""

from __future__ import annotations

import struct
import uuid

MAGIC = 0xA92B4EFC
MAX_DEV = 384
SECTOR = 512
ROLE_SPARE = 0xFFFF
ROLE_FAULTY = 0xFFFE


def _checksum(block: bytes) -> int:
    total = sum(struct.unpack_from("<I", block, i)[0] for i in range(0, len(block) - 3, 4))
    if len(block) % 4 == 2:
        total += struct.unpack_from("<H", block, len(block) - 2)[0]
    return ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF


def write(path: str, size: int, *, version: str = "1.2", level: int = 1, raid_disks: int = 2,
          dev_number: int = 0, name: str = "any:md0", set_uuid: uuid.UUID | None = None,
          dev_uuid: uuid.UUID | None = None, roles: list[int] | None = None,
          layout: int = 0, chunk_sectors: int = 0, data_offset: int = 2048,
          events: int = 18, ctime: int = 1700000000) -> None:
    """Write a superblock for a ``size``-byte member at the place ``version`` puts it."""
    sectors = size // SECTOR
    if version == "1.2":
        super_offset = 8                                    # 4 KiB from the start
    elif version == "1.0":
        super_offset = (sectors - 16) & ~7                  # 8-12 KiB from the end
        data_offset = 0
    else:
        raise ValueError(version)
    data_size = (super_offset - 16 if version == "1.0" else sectors - data_offset) & ~7
    block = bytearray(256 + 2 * MAX_DEV)
    struct.pack_into("<II", block, 0, MAGIC, 1)
    block[16:32] = (set_uuid or uuid.UUID(int=1)).bytes
    raw_name = name.encode()[:32]
    block[32:32 + len(raw_name)] = raw_name
    struct.pack_into("<QIIQII", block, 64, ctime, level, layout, data_size, chunk_sectors,
                     raid_disks)
    struct.pack_into("<QQQ", block, 128, data_offset, data_size, super_offset)
    struct.pack_into("<I", block, 160, dev_number)
    block[168:184] = (dev_uuid or uuid.UUID(int=2)).bytes
    struct.pack_into("<QQQ", block, 192, ctime + 100, events, 2 ** 64 - 1)
    struct.pack_into("<I", block, 220, MAX_DEV)
    roles = roles if roles is not None else list(range(raid_disks))
    for i in range(MAX_DEV):
        struct.pack_into("<H", block, 256 + 2 * i, roles[i] if i < len(roles) else ROLE_SPARE)
    struct.pack_into("<I", block, 216, _checksum(bytes(block)))
    with open(path, "r+b") as f:
        f.seek(super_offset * SECTOR)
        f.write(block)
