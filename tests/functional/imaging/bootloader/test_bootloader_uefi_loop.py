"""UEFI NVRAM path on real loop disks: a GPT with a vfat ESP (mtools) and an ext4 root.

Real here: the partition table, the ESP's FAT filesystem and its files, finding
the ESP, reading it through a real FUSE mount (fusefat) or an mtools copy, and
every mount and unmount.  Faked: only NVRAM, through an efibootmgr on PATH
that starts from a captured listing (this machine has no efivarfs).
"""

from __future__ import annotations

import logging
import os
import re

import pytest

from agent.disk import mounts
from agent.errors import CommandExecutionError, DeviceNotFound, ToolError
from agent.imaging.bootloader import loaders, uefi
from tests.conftest import requires_loop
from tests.functional.imaging.bootloader import rootfs
from tests.functional.imaging.bootloader.conftest import fuse_esp, mtools_esp

pytestmark = requires_loop
MIB = rootfs.MIB

SHIM_LAYOUT = {
    "EFI/debian/BOOTX64.CSV": rootfs.shim_csv("shimx64.efi", "debian"),
    "EFI/debian/shimx64.efi": b"MZ shim",
    "EFI/debian/grubx64.efi": b"MZ grub",
    "EFI/debian/mmx64.efi": b"MZ mok manager",
    "EFI/BOOT/BOOTX64.EFI": b"MZ shim copy",
    "EFI/BOOT/fbx64.efi": b"MZ fallback",
}
GRUB_LAYOUT = {
    "EFI/debian/grubx64.efi": b"MZ grub",
    "EFI/BOOT/BOOTX64.EFI": b"MZ grub copy",
    "EFI/BOOT/BOOTAA64.EFI": b"MZ arm grub",
}


def uefi_disk(make_loop, esp_files, esp_type=rootfs.ESP_TYPE) -> tuple[str, str, str]:
    """(disk, esp node, esp filesystem UUID) for a GPT [ESP 40 MiB, ext4 root]."""
    dev = make_loop(72 * MIB)
    esp, root = rootfs.gpt(dev, [(40, esp_type), (0, rootfs.LINUX_TYPE)])
    uuid = rootfs.make_esp(esp, esp_files)
    rootfs.sh("mkfs.ext4", "-q", "-F", root)
    return dev, esp, uuid


def nothing_mounted(*needles: str) -> bool:
    return rootfs.mounts_of(*needles, "test-esp-", "deploy-agent-mnt-") == []


def boot_order(listing: str) -> list[str]:
    line = next(x for x in listing.splitlines() if x.startswith("BootOrder: "))
    return line[len("BootOrder: "):].split(",")


@pytest.mark.parametrize("opener,shim_path", [
    (mtools_esp, "\\EFI\\debian\\shimx64.efi"),
    # fusefat shows the 8.3 names, upper case: FAT does not care, and neither do we
    (fuse_esp, "\\EFI\\DEBIAN\\SHIMX64.EFI"),
])
def test_shim_csv_wins_and_replaces_the_entry_with_its_label(make_loop, fake_efi, opener,
                                                              shim_path):
    dev, esp, _ = uefi_disk(make_loop, SHIM_LAYOUT)
    outcome = uefi.setup(dev, None, arch="x86_64", open_esp=opener)
    assert fake_efi.calls() == [
        ["-v"],
        ["-b", "0003", "-B"],   # the stale "debian" entry from the captured listing
        ["-c", "-d", dev, "-p", "1", "-w", "-L", "debian", "-l", shim_path],
    ]
    listing = fake_efi.listing()
    debian = [line for line in listing.splitlines() if re.match(r"Boot\w{4}\* debian\t", line)]
    assert len(debian) == 1 and shim_path in debian[0]
    assert boot_order(listing)[0] == debian[0][4:8]
    assert outcome is not None and outcome.esp == esp and outcome.partition == 1
    assert [(x.label, x.origin.lower()) for x in outcome.loaders] == \
        [("debian", "efi/debian/bootx64.csv")]
    assert outcome.fallback_missing is None
    assert nothing_mounted(dev)


def test_plain_grub_layout_registers_each_loader_best_first(make_loop, fake_efi):
    dev, _, _ = uefi_disk(make_loop, GRUB_LAYOUT)
    outcome = uefi.setup(dev, None, arch="x86_64", open_esp=fuse_esp)
    assert fake_efi.calls() == [
        ["-v"],
        ["-b", "0005", "-B"],   # both stale ironic1 entries, active and inactive
        ["-b", "0006", "-B"],
        ["-c", "-d", dev, "-p", "1", "-w", "-L", "ironic2", "-l", "\\EFI\\BOOT\\BOOTX64.EFI"],
        ["-c", "-d", dev, "-p", "1", "-w", "-L", "ironic1", "-l",
         "\\EFI\\DEBIAN\\GRUBX64.EFI"],
    ]
    order = boot_order(fake_efi.listing())
    assert [e.number for e in reversed(outcome.entries)] == order[:2]
    assert outcome.entries[-1].label == "ironic1"      # the vendor loader boots first
    assert nothing_mounted(dev)


def test_missing_removable_fallback_is_reported(make_loop, fake_efi, caplog):
    files = {k: v for k, v in SHIM_LAYOUT.items() if not k.startswith("EFI/BOOT/")}
    dev, esp, _ = uefi_disk(make_loop, files)
    with caplog.at_level(logging.WARNING):
        outcome = uefi.setup(dev, None, arch="x86_64", open_esp=mtools_esp)
    assert outcome.fallback_missing == "EFI/BOOT/BOOTX64.EFI"
    assert f"the removable-media fallback EFI/BOOT/BOOTX64.EFI is missing on {esp}" \
        in caplog.text
    assert fake_efi.calls()[-1][-1] == "\\EFI\\debian\\shimx64.efi"


def test_empty_esp_touches_no_nvram(make_loop, fake_efi):
    dev, _, _ = uefi_disk(make_loop, {"EFI/debian/grub.cfg": b"search --fs-uuid\n"})
    assert uefi.setup(dev, None, arch="x86_64", open_esp=fuse_esp) is None
    assert fake_efi.calls() == []
    assert nothing_mounted(dev)


def test_untyped_esp_is_found_by_its_recorded_uuid(make_loop, fake_efi):
    basic_data = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
    dev, esp, uuid = uefi_disk(make_loop, GRUB_LAYOUT, esp_type=basic_data)
    outcome = uefi.setup(dev, uuid.lower(), arch="x86_64", open_esp=mtools_esp)
    assert outcome.esp == esp
    assert ["-c", "-d", dev, "-p", "1", "-w", "-L", "ironic1", "-l",
            "\\EFI\\debian\\grubx64.efi"] in fake_efi.calls()


def test_no_esp_is_device_not_found(make_loop, fake_efi):
    dev = make_loop(32 * MIB)
    rootfs.gpt(dev, [(0, rootfs.LINUX_TYPE)])
    with pytest.raises(DeviceNotFound, match=re.escape(
            f"No EFI partition could be detected on device {dev} (no partition has the ESP "
            "type, nor UUID 1234-ABCD). Are you using a UEFI-compatible image?")):
        uefi.setup(dev, "1234-ABCD", arch="x86_64", open_esp=mtools_esp)
    assert fake_efi.calls() == []


def test_production_vfat_mount_fails_cleanly_on_this_kernel(make_loop, fake_efi):
    # this kernel has no vfat driver: the real mount path must fail clearly and leave
    # neither a mount nor its temporary directory behind
    dev, esp, _ = uefi_disk(make_loop, SHIM_LAYOUT)
    with pytest.raises(CommandExecutionError) as err:
        uefi.setup(dev, None, arch="x86_64")
    assert f"could not mount the EFI system partition {esp} on " in err.value.details
    assert "vfat" in err.value.details
    target = re.search(r" on (\S+): ", err.value.details).group(1)
    assert not os.path.exists(target)
    assert fake_efi.calls() == []
    assert nothing_mounted(dev)


def test_failure_while_the_esp_is_mounted_still_unmounts(make_loop, fake_efi, monkeypatch):
    dev, _, _ = uefi_disk(make_loop, SHIM_LAYOUT)
    seen = []

    def broken_scan(tree, arch):
        seen.append(mounts.mounted_under(tree))
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(loaders, "scan", broken_scan)
    with pytest.raises(OSError, match="Input/output error"):
        uefi.setup(dev, None, arch="x86_64", open_esp=fuse_esp)
    assert len(seen) == 1 and len(seen[0]) == 1      # it really was mounted during the scan
    assert nothing_mounted(dev)


def test_efibootmgr_failure_is_a_tool_error_with_nothing_mounted(make_loop, fake_efi,
                                                                 monkeypatch):
    dev, _, _ = uefi_disk(make_loop, SHIM_LAYOUT)
    monkeypatch.setenv("FAKE_EFI_FAIL", "create")
    with pytest.raises(ToolError, match="exit code 5: Could not prepare Boot variable: No "
                                        "space left on device"):
        uefi.setup(dev, None, arch="x86_64", open_esp=fuse_esp)
    assert nothing_mounted(dev)


def test_unsupported_architecture_fails_before_mounting(make_loop, fake_efi):
    dev, _, _ = uefi_disk(make_loop, SHIM_LAYOUT)
    with pytest.raises(loaders.UnsupportedArch, match="'ppc64le'"):
        uefi.setup(dev, None, arch="ppc64le", open_esp=fuse_esp)
    assert fake_efi.calls() == []
