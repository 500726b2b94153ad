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


@pytest.fixture
def make_loop(tmp_path) -> Iterator[Callable[..., str]]:
    """Factory: ``make_loop(size_bytes, sector_size=512, backing_dir=None) -> /dev/loopN``."""
    created: list[tuple[str, str]] = []

    def make(size: int, sector_size: int = 512, backing_dir: str | None = None) -> str:
        directory = backing_dir or str(tmp_path)
        backing = os.path.join(directory, f"disk{len(created)}.img")
        with open(backing, "wb") as f:
            f.truncate(size)
        out = subprocess.run(["losetup", "-f", "--show", "--sector-size", str(sector_size),
                              backing], check=True, capture_output=True, text=True)
        dev = out.stdout.strip()
        created.append((dev, backing))
        return dev

    yield make
    for dev, backing in reversed(created):
        subprocess.run(["umount", "-l", dev], capture_output=True)
        _drop_partitions(dev)
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        try:
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
