"""Which root UUIDs mean "whole-disk image, it boots by itself"."""

from __future__ import annotations

import pytest

from agent.imaging.bootloader import devices


@pytest.mark.parametrize("value", [None, "0x00000000", "0xDEADbeef", " 0x12345678 "])
def test_whole_disk_ids(value):
    assert devices.is_whole_disk_id(value)


@pytest.mark.parametrize("value", ["deadbeef-01", "0x1234", "0x123456789",
                                   "6d1c0c2a-0000-4000-8000-000000000000"])
def test_partition_ids(value):
    assert not devices.is_whole_disk_id(value)
