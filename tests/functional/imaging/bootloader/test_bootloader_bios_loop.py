"""Opt-in BIOS grub on real loop disks, with the image's (the host's) real grub in a chroot.

Everything here is real: the partition tables, the ext4 root, mounting it by
UUID, the /dev /proc /sys /run bind mounts, chroot, grub-install writing the
MBR and embedding core.img, and grub-mkconfig generating grub.cfg.
"""

from __future__ import annotations

import os
import re

import pytest

from agent.errors import CommandExecutionError, DeviceNotFound, InvalidImage
from agent.imaging.bootloader import CVE_MESSAGE, Request, install_bootloader
from tests.conftest import requires_loop
from tests.functional.imaging.bootloader import rootfs
from tests.functional.imaging.bootloader.conftest import agent_state, copy_tree
from tests.functional.imaging.bootloader.rootfs import assert_clean, read_head, root_files

pytestmark = [requires_loop, pytest.mark.usefixtures("bios_booted")]
MIB = rootfs.MIB


def mbr_disk(make_loop, populate, sector_size: int = 512) -> tuple[str, str, str]:
    dev = make_loop(96 * MIB, sector_size=sector_size)
    (root,) = rootfs.msdos(dev, ["start=2048, type=83, bootable"])
    return dev, root, rootfs.fill_ext4(root, populate)


def test_opt_in_installs_the_images_grub_on_an_mbr_disk(make_loop, grub_root_template):
    dev, root, uuid = mbr_disk(make_loop, copy_tree(grub_root_template))
    assert b"GRUB" not in read_head(dev)
    table = read_head(dev, 66, 446)
    state = agent_state(dev, enable_bios_bootloader_install=True)
    outcome = install_bootloader(state, Request(root_uuid=uuid), arch="x86_64")
    assert outcome.path == "grub-bios" and outcome.disk == dev
    mbr = read_head(dev)
    assert b"GRUB" in mbr and mbr[510:512] == b"\x55\xaa"
    assert mbr[446:512] == table                             # partition table kept
    assert b"\0" * 512 != read_head(dev, 512, 512)           # core.img in the MBR gap
    files = root_files(root, "/boot/grub/grub.cfg", "/boot/grub/i386-pc/normal.mod")
    cfg = files["/boot/grub/grub.cfg"]
    assert cfg and "menuentry 'Testix GNU/Linux'" in cfg
    assert "vmlinuz-6.1.0-test-amd64" in cfg and uuid in cfg
    assert files["/boot/grub/i386-pc/normal.mod"] is not None
    assert_clean(dev)


def test_gpt_disk_with_bios_boot_partition_and_partuuid_root(make_loop, grub_root_template):
    dev = make_loop(96 * MIB)
    bios_boot, root = rootfs.gpt(dev, [(1, rootfs.BIOS_BOOT_TYPE), (0, rootfs.LINUX_TYPE)])
    rootfs.fill_ext4(root, copy_tree(grub_root_template))
    partuuid = rootfs.sh("blkid", "-p", "-o", "value", "-s", "PART_ENTRY_UUID",
                         root).stdout.strip()
    state = agent_state(dev, enable_bios_bootloader_install=True)
    outcome = install_bootloader(state, Request(root_uuid=partuuid.upper()), arch="x86_64")
    assert outcome.path == "grub-bios"
    assert b"GRUB" in read_head(dev)
    assert read_head(bios_boot, 512) != b"\0" * 512          # core.img went here
    assert root_files(root, "/boot/grub/grub.cfg")["/boot/grub/grub.cfg"]
    assert_clean(dev)


def test_disabled_by_default_with_the_cve_message(make_loop, grub_root_template):
    dev, root, uuid = mbr_disk(make_loop, copy_tree(grub_root_template))
    with pytest.raises(InvalidImage) as err:
        install_bootloader(agent_state(dev), Request(root_uuid=uuid), arch="x86_64")
    assert err.value.details == CVE_MESSAGE
    assert read_head(dev, 440) == b"\0" * 440                 # no boot code written
    assert root_files(root, "/boot/grub/grub.cfg")["/boot/grub/grub.cfg"] is None
    assert_clean(dev)


def test_disabled_is_ignored_when_asked(make_loop, grub_root_template):
    dev, _, uuid = mbr_disk(make_loop, copy_tree(grub_root_template))
    outcome = install_bootloader(agent_state(dev), Request(root_uuid=uuid, ignore_failure=True),
                                 arch="x86_64")
    assert outcome.path == "ignored" and outcome.ignored == [f"the GRUB path: {CVE_MESSAGE}"]
    assert read_head(dev, 440) == b"\0" * 440


def test_real_grub_install_failure_is_reported_and_unmounted(make_loop, grub_root_template):
    # GPT without a BIOS boot partition: grub has nowhere to embed core.img
    dev = make_loop(96 * MIB)
    (root,) = rootfs.gpt(dev, [(0, rootfs.LINUX_TYPE)])
    uuid = rootfs.fill_ext4(root, spying_on_grub_install(grub_root_template))
    state = agent_state(dev, enable_bios_bootloader_install=True)
    with pytest.raises(CommandExecutionError) as err:
        install_bootloader(state, Request(root_uuid=uuid), arch="x86_64")
    assert re.search(r"the image's /usr/sbin/grub-install --target=i386-pc /dev/loop\d+ failed "
                     r"with exit code 1: .*BIOS Boot Partition", err.value.details, re.S)
    files = root_files(root, SEEN, DEVICE_MAP)
    assert files[SEEN] == f"(hd0)\t{dev}\n"       # the failing grub-install had the map...
    assert files[DEVICE_MAP] is None               # ...and it is gone again
    assert_clean(dev)


SEEN = "/boot/device.map.seen"
DEVICE_MAP = "/boot/grub/device.map"


def spying_on_grub_install(template: str, device_map: str | None = None):
    """populate callback: the real grub-install behind a wrapper that copies device.map.

    The copy shows what grub-install read while it ran; ``device_map`` is the
    image's own file, when it should ship one.
    """
    def populate(mnt: str) -> None:
        copy_tree(template)(mnt)
        real = os.path.join(mnt, "usr/sbin/grub-install")
        os.rename(real, real + ".real")
        rootfs.write_script(real, f"cat {DEVICE_MAP} > {SEEN} 2>/dev/null || rm -f {SEEN}\n"
                                  'exec /usr/sbin/grub-install.real "$@"\n')
        if device_map is not None:
            with open(os.path.join(mnt, DEVICE_MAP.lstrip("/")), "w") as f:
                f.write(device_map)
    return populate


@pytest.mark.parametrize("sector_size", [512, 4096])
def test_device_map_names_the_disk_while_grub_install_runs(make_loop, grub_root_template,
                                                          sector_size):
    dev, root, uuid = mbr_disk(make_loop, spying_on_grub_install(grub_root_template),
                               sector_size=sector_size)
    state = agent_state(dev, enable_bios_bootloader_install=True)
    outcome = install_bootloader(state, Request(root_uuid=uuid), arch="x86_64")
    assert outcome.path == "grub-bios"
    assert b"GRUB" in read_head(dev)
    files = root_files(root, SEEN, DEVICE_MAP, "/boot/grub/i386-pc/normal.mod",
                       "/boot/grub/grub.cfg")
    assert files[SEEN] == f"(hd0)\t{dev}\n"
    assert files[DEVICE_MAP] is None                       # the agent's file is removed...
    assert files["/boot/grub/i386-pc/normal.mod"] is not None   # ...grub's own files stay
    assert uuid in files["/boot/grub/grub.cfg"]
    assert_clean(dev)


def test_an_image_without_udevadm_fails_on_a_loop_disk_and_cleans_up(make_loop,
                                                                     grub_root_template):
    # The no-udev case on any host: the device.map names the drive, but grub
    # still asks the image's udevadm where a loop partition starts (loop
    # devices answer no HDIO_GETGEO), so this install cannot succeed.
    def populate(mnt: str) -> None:
        spying_on_grub_install(grub_root_template)(mnt)
        for directory in ("usr/sbin", "usr/bin"):     # merged /usr: these are all there is
            path = os.path.join(mnt, directory, "udevadm")
            if os.path.lexists(path):
                os.unlink(path)
        assert rootfs.sh("chroot", mnt, "sh", "-c", "command -v udevadm",
                         check=False).returncode != 0
    dev, root, uuid = mbr_disk(make_loop, populate)
    state = agent_state(dev, enable_bios_bootloader_install=True)
    with pytest.raises(CommandExecutionError, match=r"cannot find a GRUB drive for "
                                                    rf"{dev}p1"):
        install_bootloader(state, Request(root_uuid=uuid), arch="x86_64")
    files = root_files(root, SEEN, DEVICE_MAP)
    assert files[SEEN] == f"(hd0)\t{dev}\n" and files[DEVICE_MAP] is None
    assert read_head(dev, 440) == b"\0" * 440
    assert_clean(dev)


def test_the_images_own_device_map_is_left_byte_identical(make_loop, grub_root_template):
    dev = make_loop(96 * MIB)
    (root,) = rootfs.msdos(dev, ["start=2048, type=83, bootable"])
    own = f"# written by the image's installer\n(hd0)   {dev}  \n"
    uuid = rootfs.fill_ext4(root, spying_on_grub_install(grub_root_template, own))
    state = agent_state(dev, enable_bios_bootloader_install=True)
    install_bootloader(state, Request(root_uuid=uuid), arch="x86_64")
    assert b"GRUB" in read_head(dev)
    files = root_files(root, SEEN, DEVICE_MAP)
    assert files[SEEN] == own                   # grub-install read the image's file
    assert files[DEVICE_MAP] == own
    assert_clean(dev)


def test_image_without_grub_is_invalid(make_loop):
    dev, _, uuid = mbr_disk(make_loop, lambda mnt: os.makedirs(os.path.join(mnt, "boot")))
    state = agent_state(dev, enable_bios_bootloader_install=True)
    with pytest.raises(InvalidImage, match="the image has no grub-install or grub-mkconfig"):
        install_bootloader(state, Request(root_uuid=uuid), arch="x86_64")
    assert_clean(dev)


def test_symlinked_run_in_the_image_is_refused(make_loop, grub_root_template):
    def populate(mnt: str) -> None:
        copy_tree(grub_root_template)(mnt)
        os.rmdir(os.path.join(mnt, "run"))
        os.symlink("/etc", os.path.join(mnt, "run"))    # would bind /run over the host's /etc
    dev, _, uuid = mbr_disk(make_loop, populate)
    state = agent_state(dev, enable_bios_bootloader_install=True)
    with pytest.raises(InvalidImage, match="the image's /run is a symbolic link to '/etc'"):
        install_bootloader(state, Request(root_uuid=uuid), arch="x86_64")
    assert rootfs.mounts_of(" /etc ") == []
    assert read_head(dev, 440) == b"\0" * 440
    assert_clean(dev)


def test_unknown_root_uuid_is_device_not_found(make_loop, grub_root_template):
    dev, _, _ = mbr_disk(make_loop, copy_tree(grub_root_template))
    state = agent_state(dev, enable_bios_bootloader_install=True)
    with pytest.raises(DeviceNotFound, match="No partition with UUID 6d1c0c2a-0000-4000-8000-"
                                             "000000000000 was found on"):
        install_bootloader(state, Request(root_uuid="6d1c0c2a-0000-4000-8000-000000000000"),
                           arch="x86_64")
    assert_clean(dev)


def test_whole_disk_root_id_needs_no_grub(make_loop):
    dev = make_loop(32 * MIB)
    rootfs.msdos(dev, ["start=2048, type=83"])
    outcome = install_bootloader(agent_state(dev), Request(root_uuid="0x00000000"),
                                 arch="x86_64")
    assert outcome.path == "whole-disk"
