"""Fixtures for the bootloader paths on real loop disks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from agent import config
from agent.disk import mounts
from agent.imaging.bootloader import uefi
from agent.state import AgentState

FIXTURES = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..",
                                         "fixtures", "bootloader"))
FAKE = os.path.join(os.path.dirname(__file__), "fake_efibootmgr.py")


class FakeEfi:
    """efibootmgr on PATH that records argv and keeps NVRAM in a text file."""

    def __init__(self, directory: str) -> None:
        self.bin = os.path.join(directory, "bin")
        os.makedirs(self.bin)
        self.log = os.path.join(directory, "efibootmgr.log")
        self.state = os.path.join(directory, "nvram.txt")
        wrapper = os.path.join(self.bin, "efibootmgr")
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
        os.chmod(wrapper, 0o755)
        self.seed("efibootmgr_v17_verbose.txt")

    def seed(self, fixture: str) -> None:
        shutil.copy(os.path.join(FIXTURES, fixture), self.state)
        open(self.log, "w").close()

    def calls(self) -> list[list[str]]:
        with open(self.log) as f:
            return [json.loads(line) for line in f]

    def listing(self) -> str:
        with open(self.state) as f:
            return f.read()


@pytest.fixture
def fake_efi(tmp_path, monkeypatch) -> FakeEfi:
    fake = FakeEfi(str(tmp_path / "efi"))
    monkeypatch.setenv("PATH", fake.bin + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("FAKE_EFI_LOG", fake.log)
    monkeypatch.setenv("FAKE_EFI_STATE", fake.state)
    return fake


@pytest.fixture
def uefi_booted(tmp_path, monkeypatch) -> None:
    """Pretend the ramdisk booted under UEFI (the only faked firmware fact)."""
    sysfs = tmp_path / "sys-firmware-efi"
    sysfs.mkdir()
    monkeypatch.setattr(uefi, "EFI_SYSFS", str(sysfs))


@contextlib.contextmanager
def fuse_esp(device: str):
    """ESP opener for tests: a real read-only FUSE mount (this kernel has no vfat)."""
    path = tempfile.mkdtemp(prefix="test-esp-fuse-")
    try:
        subprocess.run(["fusefat", "-o", "ro", device, path], check=True, capture_output=True)
        try:
            yield path
        finally:
            mounts.unmount_all(path)   # the production unmount, on a real mount
    finally:
        os.rmdir(path)


@contextlib.contextmanager
def mtools_esp(device: str):
    """ESP opener for tests: the ESP's files copied out with mtools (no mount at all)."""
    path = tempfile.mkdtemp(prefix="test-esp-mtools-")
    try:
        subprocess.run(["mcopy", "-s", "-n", "-i", device, "::/", path], check=True,
                       capture_output=True, env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
        yield path
    finally:
        shutil.rmtree(path)


def agent_state(disk: str, **flags) -> AgentState:
    cfg = config.load(read_proc=False, env={}, flags={
        "include_loop_devices": True, "disk_wait_attempts": 1, "disk_wait_delay": 0, **flags})
    state = AgentState(cfg)
    state.refresh_node({"uuid": "node-1", "properties": {"root_device": {"name": disk}}})
    return state


@pytest.fixture(scope="session")
def grub_root_template(tmp_path_factory) -> str:
    """A root tree with the host's real grub tools, built once and copied per test."""
    from tests.functional.imaging.bootloader import rootfs
    if shutil.which("grub-install") is None or not os.path.isdir("/usr/lib/grub/i386-pc"):
        pytest.skip("needs Debian grub2-common and grub-pc-bin on the host")
    path = str(tmp_path_factory.mktemp("grub-root"))
    rootfs.populate_root(path)
    return path


@pytest.fixture
def bios_booted(monkeypatch, tmp_path) -> None:
    """The ramdisk booted in legacy BIOS mode, whatever firmware runs these tests."""
    monkeypatch.setattr(uefi, "EFI_SYSFS", str(tmp_path / "no-such-efi-dir"))


def copy_tree(template: str):
    """A populate callback for rootfs.fill_ext4 that copies ``template`` in."""
    def populate(mnt: str) -> None:
        subprocess.run(["cp", "-a", template + "/.", mnt], check=True)
    return populate


@pytest.fixture(scope="session")
def shell_root_template(tmp_path_factory) -> str:
    """A root tree with a shell and core utilities but no grub (for recording fakes)."""
    from tests.functional.imaging.bootloader import rootfs
    path = str(tmp_path_factory.mktemp("shell-root"))
    rootfs.populate_root(path, programs=[])
    return path
