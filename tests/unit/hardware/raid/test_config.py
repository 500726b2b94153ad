"""Software RAID: validation, member selection and the holder-partition layout."""

from __future__ import annotations

from typing import Any

import pytest

from agent.disk import reread
from agent.errors import InvalidCommandParamsError
from agent.hardware.disks import GIB, Disk
from agent.hardware.raid import config, layout
from agent.imaging import partition_image

MiB = 1 << 20


def disk(name: str, gib: float, *, ss: int = 512, **kw: Any) -> Disk:
    return Disk(name=name, size=int(gib * GIB), logical_sectors=ss, physical_sectors=ss, **kw)


VDA, VDB, VDC, VDD = (disk(f"/dev/vd{c}", 20, serial=f"S{c}") for c in "abcd")
FOUR = [VDA, VDB, VDC, VDD]


def ld(level: str = "1", size: Any = 10, **kw: Any) -> dict[str, Any]:
    return {"controller": "software", "raid_level": level, "size_gb": size, **kw}


def plan(lds: list[dict[str, Any]], disks: list[Disk], **kw: Any) -> layout.Plan:
    parsed = config.validate({"logical_disks": lds})
    return layout.make_plan(parsed, config.select_members(parsed, disks), **kw)


def error(lds: Any, disks: list[Disk] = FOUR, **kw: Any) -> str:
    with pytest.raises(InvalidCommandParamsError) as info:
        if isinstance(lds, list):
            plan(lds, disks, **kw)
        else:
            config.validate(lds)
    assert info.value.code == 400
    return info.value.details


# --- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad, expected", [
    (None, "must be an object"),
    ({}, "no logical_disks"),
    ({"logical_disks": []}, "no logical_disks"),
    ({"logical_disks": [ld(), ld(), ld()]}, "3 logical disks were asked for; software RAID "
                                            "builds at most 2"),
    ({"logical_disks": [ld("2")]}, "raid_level is missing or not supported"),
    ({"logical_disks": [ld("5+0")]}, "raid_level is missing or not supported"),
    ({"logical_disks": [{"controller": "software", "size_gb": 1}]}, "raid_level is missing"),
    ({"logical_disks": [ld(size="MAX"), ld(size="MAX", volume_name="b")]},
     "more than one logical disk has size_gb \"MAX\""),
    ({"logical_disks": [ld(size=0)]}, "size_gb must be greater than 0"),
    ({"logical_disks": [ld(size=-5)]}, "size_gb must be greater than 0"),
    ({"logical_disks": [ld(size="lots")]}, "size_gb must be a whole number of GiB or \"MAX\""),
    ({"logical_disks": [ld(size=1.5)]}, "size_gb must be a whole number"),
    ({"logical_disks": [ld(size=True)]}, "size_gb must be a whole number"),
    ({"logical_disks": [{"controller": "software", "raid_level": "1"}]}, "size_gb is required"),
    ({"logical_disks": [ld(), ld(controller="PERC H730")]},
     "logical disk 2 does not ask for controller \"software\""),
    ({"logical_disks": [ld(volume_name="a", is_root_volume=True),
                        ld(volume_name="b", is_root_volume=True)]},
     "more than one logical disk has is_root_volume true"),
    ({"logical_disks": [ld(is_root_volume="yes")]}, "is_root_volume must be true or false"),
    ({"logical_disks": [ld(volume_name="root"), ld(volume_name="root")]},
     "volume_name root is used more than once"),
    ({"logical_disks": [ld(volume_name="a/b")]}, "volume_name must be 1 to 32"),
    ({"logical_disks": [ld(volume_name="x" * 33)]}, "volume_name must be 1 to 32"),
    ({"logical_disks": [ld(colour="red")]}, "unknown key(s) colour"),
    ({"logical_disks": [ld()], "extra": 1}, "unknown key(s) extra"),
    ({"logical_disks": ["md0"]}, "logical disk 1 must be an object"),
    ({"logical_disks": [ld(physical_disks="sda")]}, "must be a list of root-device-hint"),
    ({"logical_disks": [ld(physical_disks=[{"name": "/dev/vda"}])]},
     "physical_disks names 1 disk(s); RAID-1 needs at least 2"),
    ({"logical_disks": [ld("6", physical_disks=[{"name": "a"}, {"name": "b"}, {"name": "c"}])]},
     "RAID-6 needs at least 4"),
    ({"logical_disks": [ld(physical_disks=[{"name": "/dev/vda"}, {}])]},
     "physical_disks entry 2 is empty"),
    ({"logical_disks": [ld(physical_disks=[{"name": "/dev/vda"}, {"size": "huge", "x": 1}])]},
     "physical_disks entry 2: hint(s) size, x are unknown or have an invalid value"),
])
def test_validation_errors(bad: Any, expected: str) -> None:
    assert expected in error(bad)


def test_every_problem_is_reported_at_once_and_values_are_not_echoed() -> None:
    secret = "s3cr3t-value-from-the-caller"
    details = error({"logical_disks": [
        ld(secret, controller=secret), ld(size=secret, volume_name="v2"),
        ld(physical_disks=[{"serial": f"<range-in> {secret}"}, {"name": "x"}],
           volume_name="v3")]})
    for part in ("3 logical disks", "logical disk 1: raid_level", "logical disk 1 does not ask",
                 "logical disk 2: size_gb", "logical disk 3: physical_disks entry 1: hint(s) "
                 "serial"):
        assert part in details
    assert secret not in details


def test_valid_config_parses_with_defaults() -> None:
    parsed = config.validate({"logical_disks": [
        ld(size="MAX", volume_name="data"), ld("1+0", size="7", is_root_volume=True)]})
    assert [(p.index, p.raid_level, p.size_gb, p.volume_name, p.is_root_volume, p.is_max)
            for p in parsed] == [(0, "1", None, "data", False, True),
                                 (1, "1+0", 7, "md1", True, False)]


def test_software_requested() -> None:
    assert config.software_requested({"logical_disks": [ld(controller="x"), ld()]})
    assert not config.software_requested({"logical_disks": [ld(controller="PERC")]})
    assert not config.software_requested({"logical_disks": "nope"})
    assert not config.software_requested(None)


# IPA: 2 for any software level, 3 for RAID-5, 4 for RAID-6; 1+0 is striped mirrors
@pytest.mark.parametrize("level, fewest", [("0", 2), ("1", 2), ("1+0", 4), ("5", 3), ("6", 4)])
def test_too_few_disks_for_each_level(level: str, fewest: int) -> None:
    details = error([ld(level, size=1)], FOUR[:fewest - 1])
    assert f"RAID-{level} needs at least {fewest} disks, {fewest - 1} usable" in details
    assert plan([ld(level, size=1)], FOUR[:fewest]).arrays[0].raid_level == level


def test_md_and_read_only_devices_are_never_members() -> None:
    md = disk("/dev/md0", 20, kind="md")
    ro = disk("/dev/vde", 20, read_only=True)
    p = plan([ld()], [md, VDA, ro, VDB])
    assert p.arrays[0].member_disks == ("/dev/vda", "/dev/vdb")


def test_physical_disks_pick_first_free_match_in_order() -> None:
    p = plan([ld(physical_disks=[{"serial": "Sd"}, {"size": ">= 10"}])], FOUR)
    assert p.arrays[0].member_disks == ("/dev/vdd", "/dev/vda")
    # the second entry matches every disk; the one the first entry took is skipped
    p = plan([ld(physical_disks=[{"serial": "Sa"}, {"size": ">= 10"}])], FOUR)
    assert p.arrays[0].member_disks == ("/dev/vda", "/dev/vdb")


def test_physical_disks_matching_nothing() -> None:
    details = error([ld(physical_disks=[{"serial": "nope"}, {"name": "/dev/vda"}])])
    assert "physical_disks entry 1 matches none of the 4 usable disk(s)" in details
    assert "needs at least" not in details          # the real reason is not drowned
    details = error([ld(physical_disks=[{"name": "/dev/vda"}, {"name": "/dev/vda"}])])
    assert "entry 2 matches only disks already taken by earlier entries" in details


# --- layout ------------------------------------------------------------------------------

def test_sizes_match_the_partition_image_layout_and_the_kernel_naming_rule() -> None:
    # layout cannot import agent.imaging (same floor, imaging imports hardware)
    assert layout.ESP_MB == partition_image.ESP_MB
    assert layout.BIOS_BOOT_MB == partition_image.BIOS_BOOT_MB
    assert layout.PREP_MB == partition_image.PREP_MB
    for name in ("/dev/sda", "/dev/vdb", "/dev/nvme0n1", "/dev/loop3", "/dev/mmcblk0",
                 "/dev/md0"):
        assert layout.partition_path(name, 2) == f"/dev/{reread._part_name(name[5:], 2)}"
    assert layout.partition_path("/dev/nvme1n1", 1) == "/dev/nvme1n1p1"
    assert layout.partition_path("/dev/sdb", 3) == "/dev/sdb3"


@pytest.mark.parametrize("boot_mode, label, arch, room_mb", [
    ("uefi", None, None, 550), ("bios", "gpt", None, 1), ("bios", None, None, 0),
    ("bios", "gpt", "ppc64le", 8), ("uefi", "msdos", None, 550)])
def test_boot_room_at_the_front(boot_mode: str, label: str | None, arch: str | None,
                                room_mb: int) -> None:
    p = plan([ld()], [VDA, VDB], boot_mode=boot_mode, label=label, cpu_arch=arch)
    assert p.label == (label or ("gpt" if boot_mode == "uefi" else "msdos"))
    for d in p.disks:
        assert d.boot_room == (MiB, room_mb * MiB)
        assert d.holders[0].start == (1 + room_mb) * MiB


@pytest.mark.parametrize("ss", [512, 4096])
def test_raid1_holders_aligned_for_both_sector_sizes(ss: int) -> None:
    disks = [disk("/dev/sda", 20, ss=ss), disk("/dev/nvme0n1", 20, ss=ss)]
    p = plan([ld("1", 10, volume_name="root")], disks, boot_mode="uefi")
    (array,) = p.arrays
    assert array.md_device == "/dev/md0" and array.mdadm_level == "1"
    assert array.members == ("/dev/sda1", "/dev/nvme0n1p1")
    assert array.member_size == 10 * GIB and array.size == 10 * GIB and array.size_gb == 10
    for d in p.disks:
        (h,) = d.holders
        assert d.sector_size == ss
        assert (h.number, h.start, h.size) == (1, 551 * MiB, 10 * GIB + MiB)
        assert h.start % MiB == 0 and h.size % MiB == 0
        assert h.sectors(ss) == (551 * MiB // ss, (10 * GIB + MiB) // ss)


@pytest.mark.parametrize("level, disks, member", [
    ("0", 2, 6 * GIB), ("0", 3, 4 * GIB), ("1", 3, 12 * GIB), ("1+0", 4, 6 * GIB),
    ("1+0", 5, -(-(24 * GIB) // 5 // MiB) * MiB), ("5", 3, 6 * GIB), ("5", 4, 4 * GIB),
    ("6", 4, 6 * GIB), ("6", 5, 4 * GIB)])
def test_member_share_per_level(level: str, disks: int, member: int) -> None:
    pool = [disk(f"/dev/sd{c}", 40) for c in "abcde"[:disks]]
    (array,) = plan([ld(level, 12)], pool).arrays
    assert array.member_size == member
    assert array.size >= 12 * GIB            # never smaller than asked
    assert array.size - 12 * GIB < disks * MiB


def test_two_volumes_stack_and_max_takes_the_rest_of_the_smallest_member() -> None:
    small, big = disk("/dev/sda", 20), disk("/dev/sdb", 30.5)
    p = plan([ld("1", "MAX", volume_name="data"), ld("1", 5, volume_name="root",
                                                     is_root_volume=True)],
             [small, big], boot_mode="bios", label="gpt")
    data, root = p.arrays
    # the caller's order names the md devices; MAX is laid out last
    assert (data.md_device, root.md_device) == ("/dev/md0", "/dev/md1")
    assert root.members == ("/dev/sda1", "/dev/sdb1")
    assert data.members == ("/dev/sda2", "/dev/sdb2")
    rest = 20 * GIB - MiB - 2 * MiB - (5 * GIB + MiB)    # edges, boot room, root holder
    assert data.member_size == rest - MiB                # minus md data offset
    assert data.size_gb == data.size // GIB == 14
    for d in p.disks:
        assert [h.end for h in d.holders][-1] <= 20 * GIB - MiB   # the smaller disk rules
        assert d.holders[0].end == d.holders[1].start


def test_member_of_a_disk_size_not_a_whole_mib() -> None:
    odd = Disk(name="/dev/sda", size=10 * GIB + 4096 * 3, logical_sectors=4096)
    p = plan([ld("1", "MAX")], [odd, disk("/dev/sdb", 10, ss=4096)])
    assert p.arrays[0].member_size == 10 * GIB - 3 * MiB


def test_volumes_on_different_disks_get_their_own_partition_numbers() -> None:
    p = plan([ld("1", 2, physical_disks=[{"name": "/dev/vda"}, {"name": "/dev/vdb"}]),
              ld("1", 3, volume_name="b", physical_disks=[{"name": "/dev/vdb"},
                                                          {"name": "/dev/vdc"}])], FOUR)
    assert p.arrays[0].members == ("/dev/vda1", "/dev/vdb1")
    assert p.arrays[1].members == ("/dev/vdb2", "/dev/vdc1")
    assert [d.disk for d in p.disks] == ["/dev/vda", "/dev/vdb", "/dev/vdc"]


def test_sizes_that_do_not_fit() -> None:
    details = error([ld("1", 20)], [VDA, VDB])
    assert "logical disk 1 (md0): RAID-1 of 20 GiB needs a 20481 MiB holder partition" in details
    assert "/dev/vda has 20478 MiB" in details and "/dev/vdb has 20478 MiB" in details
    # the boot room counts: 19 GiB fits on 19.5 GiB disks for BIOS on MBR, not with an ESP
    half = [disk("/dev/vda", 19.5), disk("/dev/vdb", 19.5)]
    plan([ld("1", 19)], half)
    assert "needs a 19457 MiB holder partition on each member, but /dev/vda has 19416 MiB" \
        in error([ld("1", 19)], half, boot_mode="uefi")
    # members of different sizes: only the small one is named
    details = error([ld("1", 15)], [disk("/dev/sda", 10), disk("/dev/sdb", 40)])
    assert "/dev/sda has" in details and "/dev/sdb has" not in details


def test_max_with_no_room_left() -> None:
    tight = [Disk(name=n, size=19 * GIB + 3 * MiB) for n in ("/dev/vda", "/dev/vdb")]
    plan([ld("1", 19)], tight)
    details = error([ld("1", 19, volume_name="a"), ld("1", "MAX", volume_name="b")], tight)
    assert "logical disk 2 (b): size_gb \"MAX\" finds no space left" in details


def test_msdos_label_stops_at_two_tib_of_sectors() -> None:
    huge = [disk("/dev/sda", 4096), disk("/dev/sdb", 4096)]
    mbr = plan([ld("1", "MAX")], huge, label="msdos")
    gpt = plan([ld("1", "MAX")], huge, label="gpt")
    assert mbr.disks[0].holders[0].end == 2 ** 32 * 512
    assert gpt.disks[0].holders[0].end == 4096 * GIB - MiB


def test_taken_md_names_are_skipped() -> None:
    p = plan([ld(size=2, volume_name="a"), ld(size=2, volume_name="b")], FOUR,
             taken_md={"/dev/md0", "md2"})
    assert [a.md_device for a in p.arrays] == ["/dev/md1", "/dev/md3"]


@pytest.mark.parametrize("kw, expected", [
    ({"boot_mode": "legacy"}, "boot mode"), ({"label": "apm"}, "disk label")])
def test_bad_boot_parameters(kw: dict[str, str], expected: str) -> None:
    assert expected in error([ld()], FOUR, **kw)


def test_bad_sector_size() -> None:
    assert "logical sector size of 520 bytes" in error([ld()], [disk("/dev/sda", 20, ss=520),
                                                              VDB])
