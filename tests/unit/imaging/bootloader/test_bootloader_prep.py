"""The PReP partition is cleared only when grub-install would refuse it."""

from __future__ import annotations

import pytest

from agent.imaging.bootloader import prep

SIZE = 3 * prep.CHUNK + 4096       # not a multiple of the chunk size


@pytest.fixture
def part(tmp_path):
    path = tmp_path / "prep"
    path.write_bytes(b"\0" * SIZE)
    return path


def test_blank_partition_is_left_alone(part):
    assert prep.clear_if_foreign(str(part)) is False
    assert part.read_bytes() == b"\0" * SIZE


def test_previous_grub_elf_is_left_for_grub_install_to_replace(part):
    part.write_bytes(b"\x7fELF" + b"\x01" * (SIZE - 4))
    assert prep.clear_if_foreign(str(part)) is False
    assert part.read_bytes()[:5] == b"\x7fELF\x01"


@pytest.mark.parametrize("offset", [0, prep.CHUNK + 17, SIZE - 1])
def test_foreign_bytes_anywhere_clear_the_whole_partition(part, offset):
    with open(part, "r+b") as f:
        f.seek(offset)
        f.write(b"\xaa")
    assert prep.clear_if_foreign(str(part)) is True
    assert part.read_bytes() == b"\0" * SIZE
