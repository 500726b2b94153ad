"""blockdev.zero_edges on real loop devices: both ends, image ends, direct I/O, small disks."""

from __future__ import annotations

import os

import pytest

from agent.disk import blockdev
from tests.conftest import requires_loop

pytestmark = requires_loop
MiB = 1 << 20


def filled(make_loop, size: int, sector_size: int = 512) -> str:
    dev = make_loop(size, sector_size)
    with open(dev, "r+b") as f:
        f.write(b"\xff" * size)
    return dev


def zero_ranges(dev: str) -> list[tuple[int, int]]:
    """The (start, end) runs of zero bytes on ``dev``, read independently."""
    with open(dev, "rb") as f:
        data = f.read()
    runs, start = [], None
    for offset in range(0, len(data), 512):
        zero = not any(data[offset:offset + 512])
        if zero and start is None:
            start = offset
        if not zero and start is not None:
            runs.append((start, offset))
            start = None
    if start is not None:
        runs.append((start, len(data)))
    return runs


def test_head_and_tail_are_zeroed_and_nothing_else(make_loop):
    dev = filled(make_loop, 8 * MiB)
    assert blockdev.zero_edges(dev) == [(0, MiB), (7 * MiB, 8 * MiB)]
    assert zero_ranges(dev) == [(0, MiB), (7 * MiB, 8 * MiB)]


def test_an_image_end_inside_the_disk_is_zeroed_too(make_loop):
    dev = filled(make_loop, 8 * MiB)
    fd = os.open(dev, os.O_WRONLY)
    try:
        ranges = blockdev.zero_edges(fd, 8 * MiB, extra_ends=[5 * MiB, 8 * MiB])
    finally:
        os.close(fd)
    assert ranges == [(0, MiB), (4 * MiB, 5 * MiB), (7 * MiB, 8 * MiB)]
    assert zero_ranges(dev) == ranges


def test_direct_io_descriptor_gets_whole_sectors_from_an_aligned_buffer(make_loop):
    dev = filled(make_loop, 8 * MiB, sector_size=4096)
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    try:
        # an image end that is not a sector multiple: widened to whole sectors
        ranges = blockdev.zero_edges(fd, extra_ends=[5 * MiB + 100])
    finally:
        os.close(fd)
    assert ranges == [(0, MiB), (4 * MiB, 5 * MiB + 4096), (7 * MiB, 8 * MiB)]
    assert zero_ranges(dev) == ranges


def test_a_disk_smaller_than_both_edges_is_zeroed_whole(make_loop):
    dev = filled(make_loop, 3 * MiB // 2)
    assert blockdev.zero_edges(dev) == [(0, 3 * MiB // 2)]
    assert zero_ranges(dev) == [(0, 3 * MiB // 2)]


def test_a_failing_descriptor_raises(make_loop):
    dev = make_loop(4 * MiB)
    fd = os.open(dev, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            blockdev.zero_edges(fd)
    finally:
        os.close(fd)
