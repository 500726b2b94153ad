"""Real loop devices carrying real signatures, and independent checks on them."""

from __future__ import annotations

import os
import subprocess

from agent.hardware import disks

MIB = 1024 * 1024
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ENV = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1")


def sh(*argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), input=input, text=True, capture_output=True,
                          check=check, env=ENV)


def loop_disk(dev: str):
    """The agent's view of a loop device, read from the live sysfs."""
    disk = disks.read_disk("/", os.path.basename(dev), "loop", {})
    assert disk is not None, f"{dev} is not visible in /sys/block"
    return disk


def part(dev: str, number: int) -> str:
    return f"{dev}p{number}"


def expose(dev: str) -> None:
    """Add partition nodes through BLKPG: this kernel parses no tables itself."""
    sh("partx", "-a", dev)


def signatures(device: str) -> str:
    """What wipefs finds (empty when clean)."""
    return sh("wipefs", device).stdout.strip()


def blkid_finds(device: str, offset: int | None = None, size: int | None = None) -> str:
    """``blkid -p`` output; empty when it finds nothing (exit code 2)."""
    argv = ["blkid", "-p", "-o", "export"]
    if offset is not None:
        argv += ["-O", str(offset), "-S", str(size)]
    proc = sh(*argv, device, check=False)
    assert proc.returncode in (0, 2), proc.stderr
    return proc.stdout.strip() if proc.returncode == 0 else ""


def read_at(device: str, offset: int, length: int) -> bytes:
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)
