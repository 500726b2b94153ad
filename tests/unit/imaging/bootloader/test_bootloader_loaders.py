"""Loader discovery on ESP trees laid out in plain directories (the seam)."""

from __future__ import annotations

import os

import pytest

from agent.imaging.bootloader import loaders


def tree(tmp_path, files: dict[str, bytes]) -> str:
    for rel, data in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(tmp_path)


def csv(text: str, encoding: str = "utf-16-le", bom: bytes = b"\xff\xfe") -> bytes:
    return bom + text.encode(encoding)


@pytest.mark.parametrize("data", [
    csv("shimx64.efi,Red Hat Enterprise Linux,,This is the boot entry for RHEL\n"),
    csv("shimx64.efi,Red Hat Enterprise Linux,,This is the boot entry for RHEL\n", bom=b""),
    csv("shimx64.efi,Red Hat Enterprise Linux,,comment\r\n", "utf-16-be", b"\xfe\xff"),
    csv("shimx64.efi,Red Hat Enterprise Linux,,comment\n", "utf-16-be", b""),
    b"shimx64.efi,Red Hat Enterprise Linux,,comment\n",
    csv("\n  \nshimx64.efi , Red Hat Enterprise Linux , \\fallback ,x\nother.efi,Other,,\n"),
])
def test_parse_csv_encodings(data):
    name, label, _ = loaders.parse_csv(data)
    assert (name, label) == ("shimx64.efi", "Red Hat Enterprise Linux")


def test_parse_csv_without_entry():
    with pytest.raises(ValueError, match="no entry"):
        loaders.parse_csv(csv("\n\n"))


def test_csv_wins_over_every_efi_file(tmp_path):
    root = tree(tmp_path, {
        "EFI/redhat/BOOTX64.CSV": csv("shimx64.efi,Red Hat Enterprise Linux,,\n"),
        "EFI/redhat/shimx64.efi": b"MZ", "EFI/redhat/grubx64.efi": b"MZ",
        "EFI/BOOT/BOOTX64.EFI": b"MZ"})
    scan = loaders.scan(root, "x86_64")
    assert scan.loaders == [loaders.Loader("EFI/redhat/shimx64.efi",
                                           "Red Hat Enterprise Linux",
                                           "EFI/redhat/BOOTX64.CSV")]
    assert scan.loaders[0].efi_path == "\\EFI\\redhat\\shimx64.efi"
    assert scan.fallback == "EFI/BOOT/BOOTX64.EFI" and scan.problems == []


def test_names_are_case_insensitive_and_reported_as_found(tmp_path):
    root = tree(tmp_path, {"efi/Debian/bootx64.csv": csv("SHIMX64.EFI,debian,,\n"),
                           "efi/Debian/ShimX64.efi": b"MZ", "efi/boot/bootx64.efi": b"MZ"})
    scan = loaders.scan(root, "x86_64")
    assert [(x.path, x.label) for x in scan.loaders] == [("efi/Debian/ShimX64.efi", "debian")]
    assert scan.fallback == "efi/boot/bootx64.efi"


def test_arch_csv_before_generic_csv(tmp_path):
    root = tree(tmp_path, {"EFI/a/BOOT.CSV": csv("grubx64.efi,generic,,\n"),
                           "EFI/a/grubx64.efi": b"MZ",
                           "EFI/z/BOOTX64.CSV": csv("shimx64.efi,specific,,\n"),
                           "EFI/z/shimx64.efi": b"MZ"})
    assert [x.label for x in loaders.scan(root, "x86_64").loaders] == ["specific"]


def test_broken_csvs_fall_back_to_files_and_are_reported(tmp_path):
    root = tree(tmp_path, {"EFI/a/BOOTX64.CSV": csv("missing.efi,gone,,\n"),
                           "EFI/b/BOOTX64.CSV": csv("..\\a\\x.efi,escape,,\n"),
                           "EFI/c/BOOTX64.CSV": csv("shimx64.efi,,,\n"),
                           "EFI/c/shimx64.efi": b"MZ",
                           "EFI/d/BOOTX64.CSV": b"\xff\xfe\x00\xd8",   # lone surrogate
                           "EFI/BOOT/BOOTX64.EFI": b"MZ"})
    scan = loaders.scan(root, "x86_64")
    assert [(x.path, x.label, x.origin) for x in scan.loaders] == [
        ("EFI/c/shimx64.efi", "ironic1", "file"), ("EFI/BOOT/BOOTX64.EFI", "ironic2", "file")]
    assert len(scan.problems) == 4
    assert "EFI/a/BOOTX64.CSV names missing.efi, which is not in EFI/a" in scan.problems
    assert any("EFI/d/BOOTX64.CSV is unreadable" in p for p in scan.problems)


def test_one_loader_per_directory_best_first_and_fallback_last(tmp_path):
    # directories in case-insensitive order, EFI/BOOT last; shim beats grub in a directory
    root = tree(tmp_path, {"EFI/ubuntu/grubx64.efi": b"MZ", "EFI/ubuntu/shimx64.efi": b"MZ",
                           "EFI/ubuntu/mmx64.efi": b"MZ", "EFI/BOOT/BOOTX64.EFI": b"MZ",
                           "EFI/BOOT/fbx64.efi": b"MZ", "EFI/Microsoft/Boot/winload.efi": b"MZ",
                           "EFI/alt/grubx64.efi": b"MZ"})
    scan = loaders.scan(root, "x86_64")
    assert [(x.path, x.label) for x in scan.loaders] == [
        ("EFI/alt/grubx64.efi", "ironic1"), ("EFI/Microsoft/Boot/winload.efi", "ironic2"),
        ("EFI/ubuntu/shimx64.efi", "ironic3"), ("EFI/BOOT/BOOTX64.EFI", "ironic4")]


def test_loaders_for_other_architectures_are_skipped(tmp_path):
    root = tree(tmp_path, {"EFI/BOOT/BOOTAA64.EFI": b"MZ", "EFI/BOOT/BOOTIA32.EFI": b"MZ",
                           "EFI/debian/grubaa64.efi": b"MZ"})
    scan = loaders.scan(root, "x86_64")
    assert scan.loaders == [] and scan.fallback is None
    assert scan.expected_fallback == "EFI/BOOT/BOOTX64.EFI"
    arm = loaders.scan(root, "aarch64")
    assert [x.path for x in arm.loaders] == ["EFI/debian/grubaa64.efi", "EFI/BOOT/BOOTAA64.EFI"]
    assert arm.fallback == "EFI/BOOT/BOOTAA64.EFI"


def test_symlinks_and_directories_named_like_loaders_are_ignored(tmp_path):
    root = tree(tmp_path, {"EFI/real/grubx64.efi": b"MZ"})
    os.makedirs(os.path.join(root, "EFI/dir/shimx64.efi"))
    os.makedirs(os.path.join(root, "EFI/link"))
    os.symlink("/etc/passwd", os.path.join(root, "EFI/link/shimx64.efi"))
    assert [x.path for x in loaders.scan(root, "x86_64").loaders] == ["EFI/real/grubx64.efi"]


def test_unsupported_architecture():
    with pytest.raises(loaders.UnsupportedArch, match="UEFI boot is not supported on "
                                                      "architecture 'ppc64le'"):
        loaders.suffix_for("ppc64le")
