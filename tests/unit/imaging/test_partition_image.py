"""Partition-image layout planning: order, sizes and types, and parameter validation."""

from __future__ import annotations

import pytest

from agent.disk import partition_table as pt
from agent.errors import DeploymentError, InvalidCommandParamsError
from agent.imaging import partition_image as pi

MiB = 1024 * 1024


def keys(specs):
    return [s.key for s in specs]


def test_uefi_defaults_to_gpt_with_esp_first():
    label, specs = pi.plan_layout(root_mb=100, swap_mb=8, ephemeral_mb=16,
                                  boot_mode="uefi", configdrive_size=90000)
    assert label == "gpt"
    assert keys(specs) == [pi.ESP, pi.EPHEMERAL, pi.SWAP, pi.CONFIGDRIVE, pi.ROOT]
    esp, eph, swap, cfg, root = specs
    assert esp.size_bytes == 550 * MiB and esp.type_guid == pt.ESP_GUID
    assert esp.mbr_type == pt.MBR_ESP
    assert swap.type_guid == pt.LINUX_SWAP_GUID and swap.mbr_type == pt.MBR_SWAP
    assert cfg.size_bytes == MiB and cfg.name == "config-v2"
    assert root.size_bytes == 100 * MiB and not root.bootable


def test_bios_defaults_to_msdos_with_bootable_root():
    label, specs = pi.plan_layout(root_mb=100)
    assert label == "msdos" and keys(specs) == [pi.ROOT]
    assert specs[0].bootable


def test_bios_on_gpt_gets_bios_boot_partition():
    label, specs = pi.plan_layout(root_mb=100, disk_label="gpt", swap_mb=4)
    assert label == "gpt" and keys(specs) == [pi.BIOS_BOOT, pi.SWAP, pi.ROOT]
    assert specs[0].type_guid == pt.BIOS_BOOT_GUID and specs[0].size_bytes == MiB
    assert not specs[-1].bootable


@pytest.mark.parametrize("label", ["gpt", "msdos"])
def test_ppc64le_gets_prep_and_no_bios_boot(label):
    _label, specs = pi.plan_layout(root_mb=100, disk_label=label, cpu_arch="ppc64le")
    assert keys(specs) == [pi.PREP, pi.ROOT]
    prep = specs[0]
    assert prep.size_bytes == 8 * MiB and prep.type_guid == pt.PREP_GUID
    assert prep.mbr_type == pt.MBR_PREP and prep.bootable


def test_uefi_on_ppc64le_has_no_prep():
    _label, specs = pi.plan_layout(root_mb=10, boot_mode="uefi", cpu_arch="ppc64le")
    assert keys(specs) == [pi.ESP, pi.ROOT]


def test_config_drive_size_rounds_up_to_mib():
    _label, specs = pi.plan_layout(root_mb=10, configdrive_size=3 * MiB + 1)
    assert specs[0].key == pi.CONFIGDRIVE and specs[0].size_bytes == 4 * MiB


def test_root_zero_fills_the_disk():
    _label, specs = pi.plan_layout(root_mb=0)
    assert specs[-1].size_bytes == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(root_mb=-1), "root_mb must be a non-negative integer"),
    (dict(root_mb="10"), "root_mb must be a non-negative integer"),
    (dict(root_mb=10, swap_mb=True), "swap_mb must be"),
    (dict(root_mb=10, boot_mode="efi"), "deploy_boot_mode must be 'bios' or 'uefi'"),
    (dict(root_mb=10, disk_label="sun"), "disk_label must be 'gpt' or 'msdos'"),
])
def test_invalid_parameters(kwargs, match):
    with pytest.raises(InvalidCommandParamsError, match=match):
        pi.plan_layout(**kwargs)


def test_config_drive_too_big():
    with pytest.raises(DeploymentError, match="exceeds maximum limit of 64MiB"):
        pi.plan_layout(root_mb=10, configdrive_size=64 * MiB + 1)
