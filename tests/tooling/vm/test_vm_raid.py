"""tools/vm's software-RAID pieces that run without a VM: QEMU member disks, what the test
OS reports about its arrays, mdadm's library closure, and the checks of clean_result and
of member images after cleaning."""

from __future__ import annotations

import os
import shutil

import pytest
from vm import degraded, ironicraid, qemu, raidflow, testos_md
from vm.runbase import Failed

M = "DEPLOY-AGENT-TEST-OS:"
BOOTED = f"{M} booted kernel 6.1.0-57-cloud-amd64 from the deployed disk (root /dev/md127p3)"


def members_argv(absent: int | None = None, snapshot: bool = False) -> list[str]:
    m = qemu.Machine(serial_log="s.log")
    m.disks = [qemu.Disk(f"/tmp/member-{i}.img", slot=0x10 + i, serial=f"raid-member-{i}",
                         bootindex=1 + i, snapshot=snapshot) for i in range(3) if i != absent]
    return qemu.argv(m)


def devices(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]


def test_member_disks_keep_their_pci_slot_when_one_is_left_out(monkeypatch):
    monkeypatch.setattr(qemu, "binary", lambda arch: "qemu-system-x86_64")
    whole = devices(members_argv())
    assert whole == [f"virtio-blk-pci,drive=d{i},addr=0x{0x10 + i:x},serial=raid-member-{i},"
                     f"bootindex={1 + i}" for i in range(3)]
    without_0 = devices(members_argv(absent=0))
    # member 1 still sits in slot 0x11: a UEFI entry naming its device path still matches
    assert [d.split(",")[2] for d in without_0] == ["addr=0x11", "addr=0x12"]


def test_snapshot_disks_are_opened_with_an_overlay(monkeypatch):
    monkeypatch.setattr(qemu, "binary", lambda arch: "qemu-system-x86_64")
    argv = members_argv(snapshot=True)
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert len(drives) == 3 and all(d.endswith(",snapshot=on") for d in drives)
    assert not any("snapshot" in d for d in members_argv() if d.startswith("file="))


def test_a_whole_array_and_a_degraded_one_are_told_apart():
    whole = f"{BOOTED}\n{M} md md127 raid1 [2/2] [UU] vda1[0] vdb1[1]\n"
    assert degraded.verify(whole, 2, whole=True) == ("root /dev/md127p3 on md127 raid1 [2/2] "
                                                     "[UU] on vda1[0] vdb1[1]")
    with pytest.raises(Failed, match="one disk removed the array should run with 1"):
        degraded.verify(whole, 2, whole=False)
    short = f"{BOOTED}\n{M} md md127 raid5 [3/2] [_UU] vda1[1] vdb1[2]\n"
    assert "[3/2] [_UU]" in degraded.verify(short, 3, whole=False)
    with pytest.raises(Failed, match="every disk present the array is not whole"):
        degraded.verify(short, 3, whole=True)


def test_the_last_report_of_an_array_counts_and_other_arrays_are_named():
    text = (f"{BOOTED}\n{M} md md126 raid1 [2/2] [UU] vda2[0] vdb2[1]\n"
            f"{M} md md127 raid5 [3/2] [UU_] vda1[0] vdb1[1] vdc1[3]\n"
            f"{M} md: synced after 18s\n{M} md md127 raid5 [3/3] [UUU] vda1[0] vdb1[1] vdc1[2]\n")
    note = degraded.verify(text, 3, whole=True)
    assert note.startswith("root /dev/md127p3 on md127 raid5 [3/3] [UUU]")
    assert note.endswith("also md126 raid1 [2/2] [UU] on vda2[0] vdb2[1]")


def test_a_root_outside_any_array_fails():
    text = f"{M} booted kernel 6.1 from the deployed disk (root /dev/vda3)\n"
    with pytest.raises(Failed, match="root /dev/vda3 is not on an md array"):
        degraded.verify(text, 2, whole=True)


def test_a_uefi_fallback_to_the_removable_media_path_is_refused():
    good = 'BdsDxe: starting Boot000A "ironic1 (RAID, part1)" from HD(2,GPT,X,0x800,0x1)/\\EFI'
    assert degraded.uefi_entry(good) == ", firmware started Boot000A 'ironic1 (RAID, part1)'"
    fallback = 'BdsDxe: starting Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x10,0x0)'
    with pytest.raises(Failed, match="fell back to Boot0001"):
        degraded.uefi_entry(fallback)


def test_clean_result_must_describe_the_root_volume():
    with pytest.raises(Failed, match="no logical_disks"):
        raidflow.check_clean_result({}, "1")
    with pytest.raises(Failed, match="one RAID-5 root volume"):
        raidflow.check_clean_result(raidflow.target_raid_config("1"), "5")
    result = {"logical_disks": [{"size_gb": 1, "raid_level": "1", "controller": "software",
                                 "volume_name": "root", "is_root_volume": True}]}
    assert raidflow.check_clean_result(result, "1") == "root: RAID-1 1 GiB, software"


def test_md_superblocks_are_found_at_partition_starts(tmp_path):
    image = tmp_path / "member.img"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
        f.seek((2 << 20) + 4096)
        f.write(ironicraid.MD_MAGIC)
        f.seek((5 << 20) + 512)            # not where a 1.2 superblock lives
        f.write(ironicraid.MD_MAGIC)
    assert ironicraid.md_superblocks(str(image), 8) == [2]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) is missing")
def test_library_closure_names_the_loader_and_libc(tmp_path):
    binary = shutil.which("ls")
    assert binary
    found = testos_md.closure(binary)
    names = [os.path.basename(p) for p in found]
    assert names[0].startswith("ld-linux") and "libc.so.6" in names
    assert all(os.path.exists(p) for p in found)
