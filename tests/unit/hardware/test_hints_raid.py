"""Root-device hints and skip lists that know md arrays, on sysfs-shaped trees."""

from __future__ import annotations

import pytest

from agent.errors import DeviceNotFound
from agent.hardware import disks, hints
from tests.unit.hardware.fake_md import add_md, add_partition, add_virtio_disk, mirror_tree


@pytest.fixture
def two_arrays(tmp_path):
    """md127 "root" (vda2+vdb2), md126 "data" (vda3+vdb3), and a spare disk vdc."""
    found = mirror_tree(tmp_path, names=("root",))
    for disk in ("vda", "vdb"):
        found[f"{disk}3"] = add_partition(tmp_path, found[disk], 3, start=22099968,
                                          sectors=16777216)
    add_md(tmp_path, "md126", [found["vda3"], found["vdb3"]], names=("data",),
           sectors=16773120)
    add_virtio_disk(tmp_path, "vdc", 6, sectors=62914560)
    return disks.list_disks(str(tmp_path))


def names(found):
    return [d.name for d in found]


def test_arrays_are_listed_with_volume_names_and_members(two_arrays):
    assert names(two_arrays) == ["/dev/md126", "/dev/md127", "/dev/vda", "/dev/vdb",
                                 "/dev/vdc"]
    md126, md127 = two_arrays[:2]
    assert (md126.kind, md126.volume_name, md126.aliases) == ("md", "data", ("/dev/md/data",))
    assert md127.volume_name == "root" and md127.member_disks == ("/dev/vda", "/dev/vdb")
    assert two_arrays[2].volume_name is None
    # the inventory's disk objects keep exactly their keys
    assert set(md127.to_dict()) == set(disks.INVENTORY_FIELDS)


def test_volume_name_hint_picks_the_array(two_arrays):
    chosen, reason = hints.select_root_device(two_arrays, {"volume_name": "root"})
    assert chosen.name == "/dev/md127"
    assert 'volume_name "root"' in reason
    chosen, _ = hints.select_root_device(two_arrays, {"volume_name": "<in> dat"})
    assert chosen.name == "/dev/md126"


@pytest.mark.parametrize("name, expected", [
    ("/dev/md127", "/dev/md127"), ("/dev/md/root", "/dev/md127"),
    ("/dev/md/data", "/dev/md126"), ("/dev/vdc", "/dev/vdc"),
])
def test_name_hint_matches_the_md_node_and_its_link(two_arrays, name, expected):
    chosen, _ = hints.select_root_device(two_arrays, {"name": name})
    assert chosen.name == expected


def test_a_volume_name_that_matches_nothing_names_the_arrays(two_arrays):
    with pytest.raises(DeviceNotFound) as exc:
        hints.select_root_device(two_arrays, {"volume_name": "boot"})
    text = exc.value.details
    assert "md arrays seen: /dev/md126 (volume_name=data" in text
    assert "/dev/md127 (volume_name=root" in text and "members on /dev/vda, /dev/vdb" in text


def test_no_arrays_at_all_is_said(tmp_path):
    add_virtio_disk(tmp_path, "vda", 4)
    with pytest.raises(DeviceNotFound, match="no md arrays were found"):
        hints.select_root_device(disks.list_disks(str(tmp_path)), {"volume_name": "root"})


def test_member_disks_are_never_chosen(two_arrays):
    # by name, the operator asks for a disk an array holds: refused, and said why
    with pytest.raises(DeviceNotFound) as exc:
        hints.select_root_device(two_arrays, {"name": "/dev/vda"})
    assert "skipped as md array members: /dev/vda (/dev/md126), /dev/vdb (/dev/md126)" \
        in exc.value.details
    # without hints the smallest disk of at least 4 GiB is an array, not a 20 GiB member
    chosen, reason = hints.select_root_device(two_arrays, None)
    assert chosen.name == "/dev/md126"


def test_skip_list_volume_name_skips_the_array(two_arrays):
    skip = [{"volume_name": "data"}]
    chosen, reason = hints.select_root_device(two_arrays, None, skip)
    assert chosen.name == "/dev/md127"
    assert "skipped by skip_block_devices: /dev/md126" in reason
    # a skipped array's member disks stay off limits too
    with pytest.raises(DeviceNotFound, match="skipped as md array members"):
        hints.select_root_device(two_arrays, {"name": "/dev/vdb"}, skip)
    with pytest.raises(DeviceNotFound):
        hints.select_root_device(two_arrays, {"volume_name": "data"}, skip)


RAID = {"logical_disks": [
    {"size_gb": 10, "raid_level": "1", "controller": "software", "volume_name": "data"},
    {"size_gb": "MAX", "raid_level": "1", "controller": "software", "volume_name": "root",
     "is_root_volume": True},
]}


@pytest.mark.parametrize("node, expected", [
    ({"target_raid_config": RAID}, {"volume_name": "root"}),
    ({"driver_internal_info": {"target_raid_config": RAID}}, {"volume_name": "root"}),
    # no is_root_volume: the first software volume
    ({"target_raid_config": {"logical_disks": [
        {"size_gb": 10, "raid_level": "1", "controller": "software", "volume_name": "a"},
        {"size_gb": 10, "raid_level": "1", "controller": "software", "volume_name": "b"}]}},
     {"volume_name": "a"}),
    # unnamed: the RAID step calls volume N "md<N>"
    ({"target_raid_config": {"logical_disks": [
        {"size_gb": 10, "raid_level": "1", "controller": "PERC"},
        {"size_gb": 10, "raid_level": "1", "controller": "software"}]}},
     {"volume_name": "md1"}),
    # hardware RAID only, an empty config, or none
    ({"target_raid_config": {"logical_disks": [{"size_gb": 10, "raid_level": "1"}]}}, None),
    ({"target_raid_config": {}}, None),
    ({}, None),
    # explicit hints always win
    ({"target_raid_config": RAID, "properties": {"root_device": {"name": "/dev/vdc"}}},
     {"name": "/dev/vdc"}),
])
def test_hints_from_node_defaults_to_the_raid_root_volume(node, expected):
    assert hints.hints_from_node(node) == expected


def test_the_install_disk_of_a_raid_node_is_its_root_array(two_arrays):
    node = {"target_raid_config": RAID}
    chosen, reason = hints.select_root_device(two_arrays, hints.hints_from_node(node),
                                              hints.skip_list_from_node(node))
    assert chosen.name == "/dev/md127" and "volume_name" in reason
