"""Root-device hint parsing and matching: the table from reference §9.2."""

from __future__ import annotations

import pytest

from agent.errors import DeviceNotFound
from agent.hardware import hints
from agent.hardware.disks import GIB, Disk


def disk(name: str = "/dev/sda", size_gib: float = 100, **kw) -> Disk:
    defaults = dict(model="Samsung SSD 860", vendor="ATA", serial="S3Z2NB0K123456A",
                    wwn="0x5002538e40a1b2c3", hctl="2:0:0:0", tran="sata", rotational=False,
                    by_path="/dev/disk/by-path/pci-0000:00:17.0-ata-3")
    defaults.update(kw)
    return Disk(name=name, size=int(size_gib * GIB), **defaults)


SDA = disk()


@pytest.mark.parametrize("hint, expected", [
    # size: numeric operators, GiB
    ({"size": 100}, True),
    ({"size": "100"}, True),
    ({"size": 99}, False),                      # no operator: exact
    ({"size": "== 100"}, True),
    ({"size": "!= 100"}, False),
    ({"size": "!= 50"}, True),
    ({"size": ">= 100"}, True),
    ({"size": ">=100"}, True),                  # operator without a space
    ({"size": "> 100"}, False),
    ({"size": "> 99"}, True),
    ({"size": "<= 100"}, True),
    ({"size": "< 100"}, False),
    ({"size": "< 101"}, True),
    ({"size": "= 50"}, True),                   # legacy "=": means >=
    ({"size": "= 100"}, True),
    ({"size": "= 101"}, False),
    ({"size": "<or> 50 <or> 100"}, True),
    ({"size": "<or> 50 <or> 60"}, False),
    ({"size": "<range-in> [ 100 200 ]"}, True),
    ({"size": "<range-in> ( 100 200 ]"}, False),  # exclusive low bound
    ({"size": "<range-in> [ 10 100 )"}, False),   # exclusive high bound
    ({"size": "<range-in> (99 101)"}, True),
    # strings: default s==, case folding, spaces quoted on both sides
    ({"model": "samsung ssd 860"}, True),
    ({"model": "SAMSUNG SSD 860"}, True),
    ({"model": "Samsung SSD"}, False),
    ({"model": "s== samsung ssd 860"}, True),
    ({"model": "s!= samsung ssd 860"}, False),
    ({"model": "s!= intel"}, True),
    ({"model": "s< t"}, True),
    ({"model": "s<= samsung ssd 860"}, True),
    ({"model": "s> a"}, True),
    ({"model": "s>= z"}, False),
    ({"model": "<in> SSD"}, True),
    ({"model": "<in> ssd 86"}, True),
    ({"model": "<in> hgst"}, False),
    ({"model": "<all-in> samsung 860"}, True),
    ({"model": "<all-in> samsung 970"}, False),
    ({"model": "<or> intel <or> Samsung SSD 860"}, True),
    ({"model": "<or> intel <or> samsung"}, False),
    ({"tran": "<or> nvme <or> sata"}, True),
    ({"tran": "<or> nvme <or> sas"}, False),
    ({"vendor": "ata"}, True),
    ({"name": "/dev/sda"}, True),
    ({"name": "sda"}, False),                   # no /dev/ is added
    ({"hctl": "2:0:0:0"}, True),
    ({"by_path": "/dev/disk/by-path/pci-0000:00:17.0-ata-3"}, True),
    ({"serial": "s3z2nb0k123456a"}, True),
    ({"wwn": "0x5002538E40A1B2C3"}, True),
    # rotational: boolean parsing
    ({"rotational": False}, True),
    ({"rotational": "false"}, True),
    ({"rotational": "0"}, True),
    ({"rotational": "yes"}, False),
    ({"rotational": True}, False),
    # all hints must match
    ({"size": ">= 50", "model": "<in> samsung", "rotational": False}, True),
    ({"size": ">= 50", "model": "<in> intel"}, False),
])
def test_hint_table(hint, expected):
    assert hints.matches(SDA, hints.parse_hints(hint)) is expected


def test_serial_and_wwn_match_any_known_identifier():
    d = disk(serial="SHORT1", serials=("SHORT1", "ATA_Samsung_SSD_SHORT1"),
             wwn="0x5000c500a1b2c3d4", wwn_with_extension="0x5000c500a1b2c3d41234567890abcdef",
             wwns=("0x5000c500a1b2c3d4", "0x5000c500a1b2c3d41234567890abcdef"))
    assert hints.matches(d, hints.parse_hints({"serial": "ata_samsung_ssd_short1"}))
    assert hints.matches(d, hints.parse_hints({"wwn": "0x5000c500a1b2c3d41234567890abcdef"}))
    assert hints.matches(d, hints.parse_hints({"wwn_with_extension": "0x5000c500a1b2c3d4"}))
    assert not hints.matches(d, hints.parse_hints({"serial": "other"}))


def test_missing_attribute_never_matches_even_negated():
    d = disk(model=None)
    assert not hints.matches(d, hints.parse_hints({"model": "s!= intel"}))


@pytest.mark.parametrize("bad, fragment", [
    ({"size": 0}, "greater than 0"),
    ({"size": -5}, "greater than 0"),
    ({"size": "ten"}, "not a whole number"),
    ({"size": "1.5"}, "not a whole number"),
    ({"size": True}, "integer"),
    ({"size": "s== 100"}, "compares strings"),
    ({"size": "<in> 10"}, "compares strings"),
    ({"size": "<range-in> 10 20"}, "<range-in>"),
    ({"model": ">= 5"}, "compares numbers"),
    ({"model": ""}, "empty"),
    ({"model": {"a": 1}}, "expected a string"),
    ({"model": "<in>"}, "needs a value"),
    ({"rotational": "maybe"}, "boolean"),
    ({"colour": "red"}, "unknown root device hint(s) colour"),
])
def test_invalid_hints_raise_device_not_found(bad, fragment):
    with pytest.raises(DeviceNotFound) as exc:
        hints.parse_hints(bad)
    assert fragment in exc.value.details


def test_hints_must_be_an_object():
    with pytest.raises(DeviceNotFound, match="must be an object"):
        hints.parse_hints(["size", 10])


DISKS = [disk("/dev/sda", 500, model="big"), disk("/dev/sdb", 3, model="tiny"),
         disk("/dev/sdc", 20, model="small", tran="nvme"), disk("/dev/sdd", 20, model="twin")]


def test_default_is_smallest_disk_of_at_least_4_gib_then_name():
    chosen, reason = hints.select_root_device(DISKS, None)
    assert chosen.name == "/dev/sdc"            # 3 GiB is too small; sdc < sdd by name
    assert "smallest disk of at least 4 GiB" in reason
    assert "no root device hints" in reason


def test_exactly_4_gib_qualifies_as_default():
    chosen, _ = hints.select_root_device([disk("/dev/sda", 4), disk("/dev/sdb", 8)], {})
    assert chosen.name == "/dev/sda"


def test_first_match_in_listing_order_wins_and_reason_names_the_hints():
    chosen, reason = hints.select_root_device(DISKS, {"size": ">= 10"})
    assert chosen.name == "/dev/sda"
    assert "size \">= 10\"" in reason and "/dev/sda" in reason


def test_skip_list_removes_disks_from_choice_and_is_reported():
    chosen, reason = hints.select_root_device(DISKS, None, [{"name": "/dev/sdc"}])
    assert chosen.name == "/dev/sdd"
    assert "skipped by skip_block_devices: /dev/sdc" in reason


def test_skip_list_volume_name_is_accepted_and_matches_nothing():
    chosen, _ = hints.select_root_device(DISKS, None, [{"volume_name": "root"}])
    assert chosen.name == "/dev/sdc"


def test_no_match_lists_candidates():
    with pytest.raises(DeviceNotFound) as exc:
        hints.select_root_device(DISKS, {"model": "<in> hgst"})
    assert "No suitable device was found for deployment using these hints" in exc.value.details
    assert "/dev/sda (500.0 GiB, model=big" in exc.value.details


def test_no_disk_big_enough():
    with pytest.raises(DeviceNotFound, match="no disk is at least 4 GiB"):
        hints.select_root_device([disk("/dev/sda", 1)], None)


def test_bad_skip_list_is_rejected():
    with pytest.raises(DeviceNotFound, match="skip_block_devices must be a list"):
        hints.select_root_device(DISKS, None, {"name": "/dev/sda"})


def test_hints_come_from_instance_info_before_properties():
    node = {"instance_info": {"root_device": {"name": "/dev/sdb"}},
            "properties": {"root_device": {"name": "/dev/sda"},
                           "skip_block_devices": [{"name": "/dev/sdc"}]}}
    assert hints.hints_from_node(node) == {"name": "/dev/sdb"}
    assert hints.hints_from_node({"properties": {"root_device": {"size": 5}}}) == {"size": 5}
    assert hints.hints_from_node({}) is None
    assert hints.skip_list_from_node(node) == [{"name": "/dev/sdc"}]
