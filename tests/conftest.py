"""Shared fixtures: real loop devices backed by sparse files."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest


def _root_with_loop() -> bool:
    return os.geteuid() == 0 and shutil.which("losetup") is not None


requires_loop = pytest.mark.skipif(not _root_with_loop(),
                                   reason="needs root and losetup for loop devices")


def _drop_partitions(dev: str) -> None:
    # partitions added through BLKPG keep the loop device busy; remove them
    subprocess.run(["partx", "-d", dev], capture_output=True)


def _partition_nodes(dev: str) -> list[str]:
    name = os.path.basename(dev)
    try:
        return [p for p in os.listdir(f"/sys/block/{name}") if p.startswith(name + "p")]
    except OSError:
        return []


def _attach_clean(backing: str, sector_size: int, created: list[tuple[str, str]]) -> str:
    """Attach ``backing`` to a loop device that carries no partition nodes.

    Partitions added through BLKPG outlive a detach when the kernel parses no tables, so a
    loop number freed by an interrupted run can come back with a stale ``p1``; a test that
    then adds its own partition 1 fails.  Such a device is dropped clean or, if it cannot be,
    held (so ``losetup -f`` moves on) and released with the others at teardown.
    """
    for _ in range(8):
        out = subprocess.run(["losetup", "-f", "--show", "--sector-size", str(sector_size),
                              backing], check=True, capture_output=True, text=True)
        dev = out.stdout.strip()
        if _partition_nodes(dev):
            _drop_partitions(dev)
        if not _partition_nodes(dev):
            return dev
        created.append((dev, ""))
    raise RuntimeError("no loop device without stale partition nodes")


@pytest.fixture
def make_loop(tmp_path) -> Iterator[Callable[..., str]]:
    """Factory: ``make_loop(size_bytes, sector_size=512, backing_dir=None) -> /dev/loopN``."""
    created: list[tuple[str, str]] = []

    def make(size: int, sector_size: int = 512, backing_dir: str | None = None) -> str:
        directory = backing_dir or str(tmp_path)
        backing = os.path.join(directory, f"disk{len(created)}.img")
        with open(backing, "wb") as f:
            f.truncate(size)
        dev = _attach_clean(backing, sector_size, created)
        created.append((dev, backing))
        return dev

    yield make
    for dev, backing in reversed(created):
        for node in [dev] + [f"/dev/{p}" for p in _partition_nodes(dev)]:
            subprocess.run(["umount", "-l", node], capture_output=True)
        _drop_partitions(dev)
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        try:
            if backing:
                os.unlink(backing)
        except OSError:
            pass


@pytest.fixture
def loop_disk(make_loop) -> str:
    """A 256 MiB loop device with 512-byte sectors."""
    return make_loop(256 * 1024 * 1024)


@pytest.fixture
def image_server():
    from tests.imgserver import ImageServer
    server = ImageServer().start()
    yield server
    server.stop()
