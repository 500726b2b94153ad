"""Opt-in UEFI boot of partition images on real loop disks (``uefi_partition``).

Real here: the agent's own UEFI partition-image layout (its empty ESP, the
UUIDs it reports), the ext4 root mounted with /dev /proc /sys /run bound in,
chroot, the host's real grub-mkconfig inside it, mtools writing and reading
the ESP, and every mount and unmount.  Faked: NVRAM (an efibootmgr on PATH
seeded from a captured listing), and for the grub-install path the image's
grub-install (a recording script: grub refuses a FUSE mount as EFI directory)
with the ESP mounted read-write through fusefat, as this kernel has no vfat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time

import pytest

from agent.disk import mounts
from agent.errors import CommandExecutionError, DeviceNotFound, InvalidImage
from agent.imaging import partition_image as pi
from agent.imaging.bootloader import (
    CVE_MESSAGE,
    Request,
    install_bootloader,
    uefi,
    uefi_partition,
)
from tests.conftest import requires_loop
from tests.functional.imaging.bootloader import rootfs
from tests.functional.imaging.bootloader.conftest import agent_state, mtools_esp
from tests.functional.imaging.bootloader.rootfs import assert_clean, root_files

pytestmark = requires_loop
MIB = rootfs.MIB
MTOOLS = dict(os.environ, MTOOLS_SKIP_CHECK="1")

SHIM = b"MZ shim signed"
GRUB = b"MZ grub signed"
SHIM_TREE = {
    "EFI/debian/BOOTX64.CSV": rootfs.shim_csv("shimx64.efi", "debian"),
    "EFI/debian/shimx64.efi": SHIM,
    "EFI/debian/grubx64.efi": GRUB,
    "EFI/debian/mmx64.efi": b"MZ mok manager",
}
FSTAB = "UUID=0000 / ext4 errors=remount-ro 0 1\n"
RECORDING_GRUB_INSTALL = """\
echo "$@" > /grub-install.args
grep -c ' /boot/efi ' /proc/self/mountinfo > /grub-install.mounted
for arg in "$@"; do
    case "$arg" in --efi-directory=*) efidir="${arg#--efi-directory=}" ;; esac
done
mkdir -p "$efidir/EFI/BOOT" && printf 'MZ grub removable' > "$efidir/EFI/BOOT/BOOTX64.EFI"
"""


def image(template: str, efi: dict[str, bytes] | None = None, fstab: str | None = FSTAB,
          extra=None):
    def populate(mnt: str) -> None:
        subprocess.run(["cp", "-a", template + "/.", mnt], check=True)
        os.makedirs(os.path.join(mnt, "boot/efi"), exist_ok=True)
        for rel, data in (efi or {}).items():
            path = os.path.join(mnt, "boot/efi", rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        if fstab is not None:
            os.makedirs(os.path.join(mnt, "etc"), exist_ok=True)
            with open(os.path.join(mnt, "etc/fstab"), "w") as f:
                f.write(fstab)
        if extra:
            extra(mnt)
    return populate


@pytest.fixture
def uefi_ramdisk(uefi_booted, monkeypatch) -> None:
    """UEFI-booted ramdisk whose plain UEFI path reads the ESP with mtools (no vfat here)."""
    monkeypatch.setattr(uefi, "mount_esp", mtools_esp)


def deployed(make_loop, populate, boot_mode: str = "uefi") -> tuple[str, dict, dict]:
    """A disk laid out by the agent for a partition image; (disk, layout, reported UUIDs)."""
    dev = make_loop(640 * MIB)
    layout = pi.create_layout(dev, root_mb=0, boot_mode=boot_mode)
    rootfs.fill_ext4(layout[pi.ROOT], populate)
    return dev, layout, pi.partition_uuids(layout)


def request(uuids: dict, **kw) -> Request:
    return Request(root_uuid=uuids["root uuid"],
                   efi_system_part_uuid=uuids["efi system partition uuid"],
                   target_boot_mode="uefi", **kw)


def esp_file(node: str, rel: str) -> bytes | None:
    proc = subprocess.run(["mtype", "-i", node, f"::/{rel}"], capture_output=True, env=MTOOLS)
    return proc.stdout if proc.returncode == 0 else None


def esp_listing(node: str) -> list[str]:
    proc = subprocess.run(["mdir", "-/", "-b", "-i", node, "::/"], capture_output=True,
                          text=True, env=MTOOLS)
    return sorted(line[3:] for line in proc.stdout.splitlines() if line.startswith("::/"))


@contextlib.contextmanager
def fuse_rw(device: str, target: str):
    """The ESP mounted read-write through fusefat in the foreground, waited for on the way out."""
    proc = subprocess.Popen(["fusefat", "-f", "-o", "rw+", device, target],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not mounts.is_mounted(target):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("fusefat did not mount the ESP")
            time.sleep(0.02)
        yield target
    finally:
        mounts.unmount_all(target)
        proc.wait(timeout=60)   # fusefat has written everything once it exits


def test_image_efi_files_are_copied_with_a_removable_loader_and_registered(
        make_loop, grub_root_template, fake_efi, uefi_ramdisk):
    dev, layout, uuids = deployed(make_loop, image(grub_root_template, SHIM_TREE))
    esp = layout[pi.ESP]
    assert esp_listing(esp) == []                    # the agent's ESP starts empty
    state = agent_state(dev, enable_bios_bootloader_install=True)
    outcome = install_bootloader(state, request(uuids), arch="x86_64")
    assert outcome.path == "uefi-image-efi" and outcome.ignored == []
    assert esp_file(esp, "EFI/debian/shimx64.efi") == SHIM
    # no removable loader in the image: shim copied there, with the grub it starts
    assert esp_file(esp, "EFI/BOOT/BOOTX64.EFI") == SHIM
    assert esp_file(esp, "EFI/BOOT/grubx64.efi") == GRUB
    assert esp_file(esp, "EFI/BOOT/mmx64.efi") == b"MZ mok manager"
    assert outcome.esp.removable_added == ["EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grubx64.efi",
                                           "EFI/BOOT/mmx64.efi", "EFI/BOOT/grub.cfg"]
    # grub.cfg regenerated by the image's real grub-mkconfig, copied beside its loader
    files = root_files(layout[pi.ROOT], "/boot/grub/grub.cfg", "/etc/fstab")
    cfg = files["/boot/grub/grub.cfg"]
    assert cfg and "menuentry 'Testix GNU/Linux'" in cfg
    assert esp_file(esp, "EFI/debian/grub.cfg").decode() == cfg
    assert files["/etc/fstab"] == (FSTAB + f"UUID={uuids['efi system partition uuid']}\t"
                                   "/boot/efi\tvfat\tumask=0077\t0\t1\n")
    assert fake_efi.calls() == [
        ["-v"],
        ["-b", "0003", "-B"],           # the stale "debian" entry of the captured listing
        ["-c", "-d", dev, "-p", "1", "-w", "-L", "debian", "-l", "\\EFI\\debian\\shimx64.efi"],
    ]
    assert outcome.uefi.fallback_missing is None and outcome.uefi.esp == esp
    assert_clean(dev)


def test_bios_booted_ramdisk_fills_the_esp_without_nvram(make_loop, grub_root_template,
                                                         fake_efi, bios_booted, caplog):
    tree = {"EFI/ubuntu/grubx64.efi": GRUB, "EFI/ubuntu/grub.cfg": b"configfile stub\n"}
    dev, layout, uuids = deployed(make_loop, image(grub_root_template, tree, fstab=None))
    with caplog.at_level(logging.WARNING):
        outcome = install_bootloader(agent_state(dev, enable_bios_bootloader_install=True),
                                     request(uuids), arch="x86_64")
    esp = layout[pi.ESP]
    assert outcome.path == "uefi-image-efi"
    assert esp_file(esp, "EFI/BOOT/BOOTX64.EFI") == GRUB
    assert esp_file(esp, "EFI/BOOT/grub.cfg") == b"configfile stub\n"   # the image's stub kept
    assert fake_efi.calls() == [] and outcome.uefi.entries == []
    assert "the ramdisk booted in BIOS mode" in caplog.text
    assert outcome.esp.fstab == "no-fstab"
    assert_clean(dev)


def test_rerun_overwrites_and_an_existing_removable_loader_is_kept(make_loop,
                                                                   grub_root_template,
                                                                   fake_efi, bios_booted):
    tree = {**SHIM_TREE, "EFI/BOOT/BOOTX64.EFI": b"MZ image's own fallback"}
    dev, layout, uuids = deployed(make_loop, image(grub_root_template, tree))
    state = agent_state(dev, enable_bios_bootloader_install=True)
    first = install_bootloader(state, request(uuids), arch="x86_64")
    second = install_bootloader(state, request(uuids), arch="x86_64")
    assert first.path == second.path == "uefi-image-efi"
    assert first.esp.removable_added == []
    assert esp_file(layout[pi.ESP], "EFI/BOOT/BOOTX64.EFI") == b"MZ image's own fallback"
    assert second.esp.fstab == "present"            # one fstab line, not two
    assert_clean(dev)


def test_symbolic_links_in_the_images_esp_are_not_followed(make_loop, grub_root_template,
                                                           fake_efi, bios_booted):
    def links(mnt: str) -> None:
        os.symlink("/etc/hostname", os.path.join(mnt, "boot/efi/EFI/debian/leak.txt"))
        os.symlink("/etc", os.path.join(mnt, "boot/efi/EFI/etc"))
    dev, layout, uuids = deployed(make_loop, image(grub_root_template, SHIM_TREE,
                                                   extra=links))
    outcome = install_bootloader(agent_state(dev, enable_bios_bootloader_install=True),
                                 request(uuids), arch="x86_64")
    assert sorted(outcome.esp.skipped) == ["EFI/debian/leak.txt", "EFI/etc"]
    listing = [x.lower() for x in esp_listing(layout[pi.ESP])]
    assert "efi/debian/leak.txt" not in listing and "efi/etc/" not in listing
    assert_clean(dev)


def test_grub_install_runs_in_the_chroot_with_the_esp_on_boot_efi(
        make_loop, grub_root_template, fake_efi, uefi_ramdisk, monkeypatch):
    def fake_grub(mnt: str) -> None:
        rootfs.write_script(os.path.join(mnt, "usr/sbin/grub-install"), RECORDING_GRUB_INSTALL)
    dev, layout, uuids = deployed(make_loop, image(grub_root_template, extra=fake_grub))
    monkeypatch.setattr(uefi_partition, "mount_esp_rw", fuse_rw)
    outcome = install_bootloader(agent_state(dev, enable_bios_bootloader_install=True),
                                 request(uuids), arch="x86_64")
    assert outcome.path == "uefi-grub-install"
    files = root_files(layout[pi.ROOT], "/grub-install.args", "/grub-install.mounted",
                       "/boot/grub/grub.cfg", "/etc/fstab")
    assert files["/grub-install.args"] == ("--target=x86_64-efi --efi-directory=/boot/efi "
                                           "--removable --no-nvram\n")
    assert files["/grub-install.mounted"] == "1\n"   # the ESP, mounted inside the chroot
    assert "menuentry 'Testix GNU/Linux'" in files["/boot/grub/grub.cfg"]
    assert "\t/boot/efi\tvfat\t" in files["/etc/fstab"]
    assert esp_file(layout[pi.ESP], "EFI/BOOT/BOOTX64.EFI") == b"MZ grub removable"
    assert fake_efi.calls()[-1] == ["-c", "-d", dev, "-p", "1", "-w", "-L", "ironic1", "-l",
                                    "\\EFI\\BOOT\\BOOTX64.EFI"]
    assert_clean(dev)
    assert rootfs.mounts_of("fusefat") == []


def test_grub_install_path_with_this_kernels_vfat_mount_fails_cleanly(
        make_loop, grub_root_template, fake_efi, uefi_ramdisk):
    # the production mount: this kernel has no vfat, so it must fail clearly, unmount the
    # image's root and its bind mounts, and touch no NVRAM
    dev, layout, uuids = deployed(make_loop, image(grub_root_template))
    with pytest.raises(CommandExecutionError) as err:
        install_bootloader(agent_state(dev, enable_bios_bootloader_install=True),
                           request(uuids), arch="x86_64")
    assert f"could not mount the EFI system partition {layout[pi.ESP]} on " in err.value.details
    assert fake_efi.calls() == []
    assert_clean(dev)


def test_neither_efi_files_nor_grub_is_a_clear_error(make_loop, shell_root_template,
                                                     fake_efi, bios_booted):
    dev, _, uuids = deployed(make_loop, image(shell_root_template,
                                              {"EFI/debian/grub.cfg": b"cfg only\n"}))
    state = agent_state(dev, enable_bios_bootloader_install=True)
    with pytest.raises(CommandExecutionError, match=(
            r"the image's /boot/efi holds no UEFI boot loader for x86_64, and the image has "
            r"no grub-install or grub-mkconfig")):
        install_bootloader(state, request(uuids), arch="x86_64")
    assert_clean(dev)


def test_failure_is_ignored_on_request(make_loop, shell_root_template, fake_efi, bios_booted,
                                       caplog):
    dev, _, uuids = deployed(make_loop, image(shell_root_template))
    state = agent_state(dev, enable_bios_bootloader_install=True)
    with caplog.at_level(logging.WARNING):
        outcome = install_bootloader(state, request(uuids, ignore_failure=True), arch="x86_64")
    assert outcome.path == "ignored"
    assert len(outcome.ignored) == 1 and outcome.ignored[0].startswith(
        "the GRUB path: the image's /boot/efi holds no UEFI boot loader")
    assert "ignoring a boot loader failure in the GRUB path" in caplog.text
    assert_clean(dev)


def test_unknown_root_uuid_is_device_not_found(make_loop, grub_root_template, fake_efi,
                                               bios_booted):
    dev, _, uuids = deployed(make_loop, image(grub_root_template, SHIM_TREE))
    bad = Request(root_uuid="0b5e55ed-0000-4000-8000-000000000000",
                  efi_system_part_uuid=uuids["efi system partition uuid"],
                  target_boot_mode="uefi")
    with pytest.raises(DeviceNotFound, match="No partition with UUID 0b5e55ed-"):
        install_bootloader(agent_state(dev, enable_bios_bootloader_install=True), bad,
                           arch="x86_64")
    assert_clean(dev)


def test_no_esp_is_device_not_found(make_loop, grub_root_template, fake_efi, bios_booted):
    # laid out for BIOS (GPT, no ESP) but asked to boot UEFI without an ESP UUID
    dev, _, uuids = deployed(make_loop, image(grub_root_template, SHIM_TREE),
                             boot_mode="bios")
    assert uuids["efi system partition uuid"] is None
    with pytest.raises(DeviceNotFound, match=f"No EFI partition could be detected on device "
                                             f"{dev} and no EFI system partition UUID"):
        install_bootloader(agent_state(dev, enable_bios_bootloader_install=True),
                           request(uuids), arch="x86_64")
    assert_clean(dev)


def test_off_without_the_opt_in(make_loop, grub_root_template, fake_efi, bios_booted):
    dev, layout, uuids = deployed(make_loop, image(grub_root_template, SHIM_TREE))
    with pytest.raises(InvalidImage) as err:
        install_bootloader(agent_state(dev), request(uuids), arch="x86_64")
    assert err.value.details == CVE_MESSAGE
    assert esp_listing(layout[pi.ESP]) == []
    assert_clean(dev)
