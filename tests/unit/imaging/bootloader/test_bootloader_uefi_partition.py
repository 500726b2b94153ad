"""The file-level steps of ``uefi_partition`` on plain directories (no disks, no root).

tests/functional/imaging/bootloader/test_bootloader_uefi_partition_loop.py runs
the whole path on loop disks.
"""

from __future__ import annotations

import os

import pytest

from agent.errors import CommandExecutionError, InvalidImage
from agent.imaging.bootloader import grub_bios, loaders, uefi_partition


def tree(base, files: dict[str, bytes]) -> str:
    for rel, data in files.items():
        path = os.path.join(base, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return str(base)


def read(base: str, rel: str) -> bytes | None:
    path = os.path.join(base, rel)
    return open(path, "rb").read() if os.path.isfile(path) else None


@pytest.mark.parametrize("arch,platform", [("x86_64", "x86_64-efi"), ("aarch64", "arm64-efi"),
                                           ("arm64", "arm64-efi"), ("i686", "i386-efi"),
                                           ("riscv64", "riscv64-efi")])
def test_grub_platform_per_architecture(arch, platform):
    assert uefi_partition.grub_target(arch) == platform


def test_no_grub_platform_for_power():
    with pytest.raises(loaders.UnsupportedArch):
        uefi_partition.grub_target("ppc64le")


def test_shim_goes_to_the_removable_path_with_its_second_stage(tmp_path):
    stage = tree(tmp_path, {"EFI/centos/shimx64.efi": b"shim", "EFI/centos/grubx64.efi": b"grub",
                            "EFI/centos/mmx64.efi": b"mm", "EFI/centos/grub.cfg": b"cfg"})
    made = uefi_partition.add_removable(stage, "x86_64")
    assert made == ["EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grubx64.efi", "EFI/BOOT/mmx64.efi",
                    "EFI/BOOT/grub.cfg"]
    assert read(stage, "EFI/BOOT/BOOTX64.EFI") == b"shim"
    assert read(stage, "EFI/BOOT/grubx64.efi") == b"grub"
    assert loaders.scan(stage, "x86_64").fallback == "EFI/BOOT/BOOTX64.EFI"


def test_plain_grub_goes_to_the_removable_path_in_the_existing_directory_case(tmp_path):
    stage = tree(tmp_path, {"EFI/debian/grubaa64.efi": b"grub", "EFI/debian/grub.cfg": b"stub",
                            "efi/boot/readme.txt": b"x"})
    made = uefi_partition.add_removable(stage, "aarch64")
    assert made == ["efi/boot/BOOTAA64.EFI", "efi/boot/grub.cfg"]   # FAT: one directory
    assert read(stage, "efi/boot/BOOTAA64.EFI") == b"grub"


def test_an_existing_removable_loader_is_left_alone(tmp_path):
    stage = tree(tmp_path, {"EFI/debian/grubx64.efi": b"grub", "EFI/Boot/bootx64.efi": b"own"})
    assert uefi_partition.add_removable(stage, "x86_64") == []
    assert read(stage, "EFI/Boot/bootx64.efi") == b"own"
    assert not os.path.exists(os.path.join(stage, "EFI/BOOT"))


def test_the_images_grub_cfg_and_grubenv_go_beside_loaders_lacking_them(tmp_path):
    root = tree(tmp_path / "root", {"boot/grub2/grub.cfg": b"full", "boot/grub2/grubenv": b"env"})
    stage = tree(tmp_path / "stage", {"EFI/redhat/shimx64.efi": b"s",
                                      "EFI/fedora/grubx64.efi": b"g",
                                      "EFI/fedora/GRUB.CFG": b"own stub",
                                      "EFI/BOOT/BOOTX64.EFI": b"b", "EFI/tools/x.efi": b"t"})
    grub = grub_bios.ImageGrub("/usr/sbin/grub2-install", "/usr/sbin/grub2-mkconfig",
                               "/boot/grub2/grub.cfg")
    uefi_partition.add_grub_files(root, grub, stage)
    assert read(stage, "EFI/redhat/grub.cfg") == b"full"
    assert read(stage, "EFI/redhat/grubenv") == b"env"
    assert read(stage, "EFI/fedora/GRUB.CFG") == b"own stub"       # case-insensitive: kept
    assert read(stage, "EFI/fedora/grub.cfg") is None
    assert read(stage, "EFI/fedora/grubenv") == b"env"
    assert read(stage, "EFI/BOOT/grub.cfg") is None                 # not a vendor directory
    assert read(stage, "EFI/tools/grub.cfg") is None


def test_staging_copies_regular_files_only_and_refuses_more_than_the_esp_holds(tmp_path):
    root = tree(tmp_path / "root", {"boot/efi/EFI/debian/grubx64.efi": b"g" * 100,
                                    "etc/secret": b"ramdisk"})
    os.symlink("/etc/secret", os.path.join(root, "boot/efi/EFI/debian/abs-link"))
    os.mkfifo(os.path.join(root, "boot/efi/EFI/debian/fifo"))
    stage = str(tmp_path / "stage")
    os.mkdir(stage)
    skipped = uefi_partition.stage_image_esp(root, stage, limit=1000)
    assert sorted(skipped) == ["EFI/debian/abs-link", "EFI/debian/fifo"]
    assert os.listdir(os.path.join(stage, "EFI/debian")) == ["grubx64.efi"]
    with pytest.raises(InvalidImage, match="more than the 0 MiB EFI system partition"):
        uefi_partition.stage_image_esp(root, str(tmp_path / "stage2"), limit=99)


def test_esp_files_are_staged_on_the_temporary_filesystem_with_the_most_room(monkeypatch,
                                                                           tmp_path):
    # in the ramdisk /tmp is the root tmpfs its unpacked files nearly fill; /run has room
    full, roomy = str(tmp_path / "tmp"), str(tmp_path / "run")
    os.mkdir(full)
    os.mkdir(roomy)
    monkeypatch.setattr(uefi_partition.tempfile, "gettempdir", lambda: full)
    monkeypatch.setattr(uefi_partition, "SCRATCH_DIRS", (str(tmp_path / "absent"), roomy))
    free = {full: 80 << 10, roomy: 180 << 20}
    monkeypatch.setattr(uefi_partition, "free_bytes", lambda path: free.get(path))
    assert uefi_partition.scratch_dir() == roomy
    free[full] = 1 << 30
    assert uefi_partition.scratch_dir() == full


def test_staging_more_than_the_scratch_space_holds_is_refused_clearly(monkeypatch, tmp_path):
    root = tree(tmp_path / "root", {"boot/efi/EFI/debian/grubx64.efi": b"g" * 100})
    stage = str(tmp_path / "stage")
    os.mkdir(stage)
    monkeypatch.setattr(uefi_partition, "free_bytes", lambda path: 99)
    with pytest.raises(CommandExecutionError, match=r"more than the 0 MiB free in .* to stage"):
        uefi_partition.stage_image_esp(root, stage, limit=1000)
    monkeypatch.setattr(uefi_partition, "free_bytes", lambda path: None)   # unknown: try
    assert uefi_partition.stage_image_esp(root, stage, limit=1000) == []


def test_an_image_esp_that_is_a_link_out_of_the_image_stays_inside_it(tmp_path):
    root = tree(tmp_path / "root", {"srv/efi/EFI/x/grubx64.efi": b"g"})
    os.makedirs(os.path.join(root, "boot"))
    os.symlink("/srv/efi", os.path.join(root, "boot/efi"))   # resolved inside the image
    stage = str(tmp_path / "stage")
    os.mkdir(stage)
    uefi_partition.stage_image_esp(root, stage, limit=0)
    assert read(stage, "EFI/x/grubx64.efi") == b"g"


@pytest.mark.parametrize("fstab,result,tail", [
    ("UUID=r / ext4 defaults 0 1\n", "added",
     "UUID=r / ext4 defaults 0 1\nUUID=AB12-CD34\t/boot/efi\tvfat\tumask=0077\t0\t1\n"),
    ("UUID=r / ext4 defaults 0 1", "added",
     "UUID=r / ext4 defaults 0 1\nUUID=AB12-CD34\t/boot/efi\tvfat\tumask=0077\t0\t1\n"),
    ("# UUID=old /boot/efi vfat 0 0\n", "added", None),
    ("UUID=ab12-cd34 /boot/efi vfat umask=0077 0 1\n", "present", None),
    ("LABEL=OLD-ESP /boot/efi/ vfat defaults 0 2\n", "other-entry", None),
])
def test_fstab_gets_one_boot_efi_line(tmp_path, fstab, result, tail):
    root = tree(tmp_path, {"etc/fstab": fstab.encode()})
    assert uefi_partition.add_fstab_entry(root, "AB12-CD34") == result
    text = open(os.path.join(root, "etc/fstab")).read()
    if tail is not None:
        assert text == tail
    elif result != "added":
        assert text == fstab
    else:
        assert text.endswith("UUID=AB12-CD34\t/boot/efi\tvfat\tumask=0077\t0\t1\n")


def test_no_fstab_is_left_absent(tmp_path):
    assert uefi_partition.add_fstab_entry(str(tmp_path), "AB12-CD34") == "no-fstab"
    assert not os.path.exists(tmp_path / "etc/fstab")
