"""tools/vm/partflow.py without a VM: the partition image made from a whole-disk image, and
the read-back of a deployed disk (ESP loaders through mtools, fstab through debugfs).

Real mkfs.ext4, mkfs.vfat, mtools, sgdisk, sfdisk and debugfs on image files; no loop
devices.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest
from vm import partflow, testos
from vm.runbase import Failed

TOOLS = ("mkfs.ext4", "mkfs.vfat", "mcopy", "mmd", "sgdisk", "sfdisk", "debugfs", "e2fsck",
         "zstd")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason="needs " + ", ".join(TOOLS))
MIB = 1 << 20
LOADER = b"MZ fake grubx64.efi " * 100
ESP_SERIAL = "DEADBEEF"
ESP_UUID = "DEAD-BEEF"


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True,
                          env=os.environ | partflow.MTOOLS_ENV).stdout


def fat(path: str, files: dict[str, bytes], work: str) -> None:
    run("mkfs.vfat", "-C", "-i", ESP_SERIAL, path, "4096")
    made: set[str] = set()
    for name, data in files.items():
        parts = name.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in made:
                run("mmd", "-i", path, "::/" + directory)
                made.add(directory)
        src = os.path.join(work, "payload")
        with open(src, "wb") as f:
            f.write(data)
        run("mcopy", "-o", "-i", path, src, "::/" + name)


def disk(path: str, parts: list[tuple[str, str, str]]) -> None:
    """A GPT image with ``(name, type code, image file)`` partitions, 1 MiB aligned."""
    sizes = [-(-os.path.getsize(image) // MIB) for _, _, image in parts]
    with open(path, "wb") as f:
        f.truncate((2 + sum(sizes)) * MIB)
    argv = ["sgdisk"]
    start = 2048
    for number, ((name, code, _), mib) in enumerate(zip(parts, sizes, strict=True), 1):
        argv += ["-n", f"{number}:{start}:+{mib}M", "-t", f"{number}:{code}",
                 "-c", f"{number}:{name}"]
        start += mib * 2048
    run(*argv, path)
    for part, (_, _, image) in zip(partflow.partitions(path), parts, strict=True):
        with open(image, "rb") as src, open(path, "r+b") as dst:
            dst.seek(part["start"] * 512)
            shutil.copyfileobj(src, dst)


@pytest.fixture
def whole_disk(tmp_path) -> testos.TestOS:
    """A stand-in for the cached test OS: GPT with an ESP and an ext4 root, as testos.py lays
    them out (the names are what partflow looks for)."""
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "boot" / "vmlinuz").write_bytes(b"kernel")
    (tree / "boot" / "initrd.img").write_bytes(b"initrd")
    root_uuid = str(uuid.uuid4())
    root = str(tmp_path / "root.img")
    run("mkfs.ext4", "-q", "-F", "-U", root_uuid, "-d", str(tree), root, "8M")
    esp = str(tmp_path / "esp.img")
    fat(esp, {"EFI/debian/grubx64.efi": LOADER, "EFI/BOOT/BOOTX64.EFI": LOADER},
        str(tmp_path))
    image = str(tmp_path / "testos.img")
    disk(image, [("esp", "EF00", esp), ("root", "8300", root)])
    return testos.TestOS(str(tmp_path), image, image + ".zst", "0" * 64, root_uuid)


def fs_uuid(image: str) -> str:
    return run("blkid", "-p", "-o", "value", "-s", "UUID", image).strip()


def cat(image: str, path: str) -> str:
    return run("debugfs", "-R", f"cat {path}", image)


def test_the_partition_image_is_the_root_with_the_loader_under_boot_efi(whole_disk, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    partflow.assemble(whole_disk, str(out))
    made = partflow.load(str(out))
    assert made is not None
    # the same filesystem UUID: the loader's embedded config finds root by it
    assert fs_uuid(made.image) == whole_disk.root_fs_uuid == made.root_fs_uuid
    assert cat(made.image, "/boot/efi/EFI/debian/grubx64.efi").encode() == LOADER
    # no removable copy: the agent has to add EFI/BOOT/BOOTX64.EFI itself
    assert "File not found" in subprocess.run(
        ["debugfs", "-R", "stat /boot/efi/EFI/BOOT", made.image],
        capture_output=True, text=True).stderr
    assert cat(made.image, "/etc/fstab").split() == [f"UUID={whole_disk.root_fs_uuid}", "/",
                                                     "ext4", "defaults", "0", "1"]
    with open(made.kernel, "rb") as f:
        assert f.read() == b"kernel"
    with open(made.image, "rb") as f:
        assert subprocess.run(["zstd", "-dc", made.served], check=True,
                              capture_output=True).stdout == f.read()


def deployed(tmp_path, made: partflow.PartitionImage, *, removable: bool = True,
             fstab_line: bool = True) -> str:
    """The disk as the agent leaves it: ESP filled from the image, fstab line appended."""
    tmp_path = tmp_path / f"deployed-{len(list(tmp_path.glob('deployed-*')))}"
    tmp_path.mkdir()
    files = {"EFI/debian/grubx64.efi": LOADER}
    if removable:
        files["EFI/BOOT/BOOTX64.EFI"] = LOADER
    esp = str(tmp_path / "new-esp.img")
    fat(esp, files, str(tmp_path))
    root = str(tmp_path / "deployed-root.img")
    shutil.copyfile(made.image, root)
    if fstab_line:
        fstab = tmp_path / "fstab"
        fstab.write_text(cat(made.image, "/etc/fstab")
                         + f"UUID={ESP_UUID}\t/boot/efi\tvfat\tumask=0077\t0\t1\n")
        run("debugfs", "-w", "-R", "rm /etc/fstab", root)
        run("debugfs", "-w", "-R", f"write {fstab} /etc/fstab", root)
    path = str(tmp_path / "disk.img")
    disk(path, [("efi-part", "EF00", esp), ("root", "8300", root)])
    return path


@pytest.fixture
def made(whole_disk, tmp_path) -> partflow.PartitionImage:
    out = tmp_path / "out"
    out.mkdir()
    partflow.assemble(whole_disk, str(out))
    found = partflow.load(str(out))
    assert found is not None
    return found


def test_a_disk_the_agent_finished_passes_the_read_back(made, tmp_path):
    summary = partflow.check_disk(deployed(tmp_path, made), ESP_UUID, made.loader_sha256)
    assert "EFI/BOOT/BOOTX64.EFI" in summary and f"UUID={ESP_UUID} /boot/efi vfat" in summary


def test_a_missing_removable_loader_fails_the_read_back(made, tmp_path):
    with pytest.raises(Failed, match="lacks EFI/BOOT/BOOTX64.EFI"):
        partflow.check_disk(deployed(tmp_path, made, removable=False), ESP_UUID,
                            made.loader_sha256)


def test_an_fstab_without_the_esp_fails_the_read_back(made, tmp_path):
    with pytest.raises(Failed, match="does not mount the new ESP"):
        partflow.check_disk(deployed(tmp_path, made, fstab_line=False), ESP_UUID,
                            made.loader_sha256)
    # nor does a line for another ESP count
    with pytest.raises(Failed, match="does not mount the new ESP"):
        partflow.check_disk(deployed(tmp_path, made), "0000-0000", made.loader_sha256)


def test_a_loader_that_is_not_the_images_fails_the_read_back(made, tmp_path):
    with pytest.raises(Failed, match="not the image's grubx64.efi"):
        partflow.check_disk(deployed(tmp_path, made), ESP_UUID, "0" * 64)


def test_the_option_is_for_uefi_on_amd64_alone(capsys):
    from vm import cli

    assert cli.parse_args(["--partition-image", "--firmware", "uefi"]).partition_image
    for wrong in (["--partition-image"], ["--partition-image", "--firmware", "uefi", "--raid",
                                          "1"], ["--partition-image", "--ironic"]):
        with pytest.raises(SystemExit):
            cli.parse_args(wrong)
        assert "--partition-image runs with --firmware uefi" in capsys.readouterr().err
