"""image.install_bootloader through the v1 API, on real loop disks (reference §7).

The ESP is read through a real FUSE mount (this kernel has no vfat driver) and
NVRAM is the recording efibootmgr; everything else is real.
"""

from __future__ import annotations

import pytest

from agent.api import create_app
from agent.commands import CommandRunner
from agent.extensions import load_extensions
from agent.imaging.bootloader import CVE_MESSAGE, uefi
from tests.conftest import requires_loop
from tests.functional.imaging.bootloader import rootfs
from tests.functional.imaging.bootloader.conftest import agent_state, fuse_esp
from tests.functional.imaging.bootloader.test_bootloader_uefi_loop import SHIM_LAYOUT, uefi_disk

pytestmark = requires_loop
MIB = rootfs.MIB


def client_for(dev: str, **flags):
    state = agent_state(dev, standalone=True, **flags)   # standalone: no agent token
    runner = CommandRunner(load_extensions(state, ["image"]))
    return create_app(state, runner).test_client()


def post(client, params: dict) -> tuple[int, dict]:
    resp = client.post("/v1/commands/?wait=true",
                       json={"name": "image.install_bootloader", "params": params})
    return resp.status_code, resp.get_json()


@pytest.fixture
def fuse_opener(monkeypatch):
    # the ESP seam: the production opener mounts vfat, which this kernel cannot
    monkeypatch.setattr(uefi, "mount_esp", fuse_esp)


def test_uefi_partition_image_succeeds_with_null_result(make_loop, fake_efi, uefi_booted,
                                                        fuse_opener):
    dev, _, esp_uuid = uefi_disk(make_loop, SHIM_LAYOUT)
    status, body = post(client_for(dev), {
        "root_uuid": "0b6f1a52-77c1-4d8e-a1c9-5e3f2b7d9a10", "efi_system_part_uuid": esp_uuid,
        "target_boot_mode": "uefi"})
    assert status == 200, body
    assert body["command_status"] == "SUCCEEDED", body["command_error"]
    assert body["command_name"] == "install_bootloader"
    assert body["command_result"] is None and body["command_error"] is None
    assert fake_efi.calls()[-1] == ["-c", "-d", dev, "-p", "1", "-w", "-L", "debian", "-l",
                                    "\\EFI\\DEBIAN\\SHIMX64.EFI"]
    assert rootfs.mounts_of(dev, "test-esp-") == []


def test_nvram_failure_is_a_command_execution_error(make_loop, fake_efi, uefi_booted,
                                                    fuse_opener, monkeypatch):
    dev, _, _ = uefi_disk(make_loop, SHIM_LAYOUT)
    monkeypatch.setenv("FAKE_EFI_FAIL", "create")
    _, body = post(client_for(dev), {"root_uuid": None, "target_boot_mode": "uefi"})
    assert body["command_status"] == "FAILED"
    error = body["command_error"]
    assert error["type"] == "CommandExecutionError"
    assert error["details"].startswith("UEFI boot entries failed: efibootmgr -c -d ")
    assert error["details"].endswith("failed with exit code 5: Could not prepare Boot "
                                     "variable: No space left on device")
    assert rootfs.mounts_of(dev, "test-esp-") == []


def test_empty_esp_on_a_partition_image_needs_the_opt_in(make_loop, fake_efi, uefi_booted,
                                                          fuse_opener):
    dev, _, _ = uefi_disk(make_loop, {"EFI/placeholder.txt": b""})
    _, body = post(client_for(dev), {"root_uuid": "0b6f1a52-77c1-4d8e-a1c9-5e3f2b7d9a10",
                                     "target_boot_mode": "uefi"})
    assert body["command_status"] == "FAILED"
    assert body["command_error"]["type"] == "InvalidImage"
    assert body["command_error"]["code"] == 400
    assert body["command_error"]["details"] == CVE_MESSAGE
    assert fake_efi.calls() == []


def test_missing_esp_is_ignored_on_request_and_a_whole_disk_image_is_done(
        make_loop, fake_efi, uefi_booted, fuse_opener):
    dev = make_loop(32 * MIB)
    rootfs.gpt(dev, [(0, rootfs.LINUX_TYPE)])
    _, body = post(client_for(dev), {"root_uuid": "0x00000000", "target_boot_mode": "uefi"})
    assert body["command_status"] == "FAILED"
    assert body["command_error"]["type"] == "DeviceNotFound"
    assert "Are you using a UEFI-compatible image?" in body["command_error"]["details"]
    _, body = post(client_for(dev), {"root_uuid": "0x00000000", "target_boot_mode": "uefi",
                                     "ignore_bootloader_failure": True})
    assert body["command_status"] == "SUCCEEDED" and body["command_result"] is None


def test_bios_partition_image_disabled_by_default(make_loop, bios_booted):
    dev = make_loop(32 * MIB)
    rootfs.msdos(dev, ["start=2048, type=83"])
    _, body = post(client_for(dev), {"root_uuid": "7d3c8a1e-5b2f-4c6d-9e0a-1b2c3d4e5f60"})
    assert body["command_status"] == "FAILED"
    assert body["command_error"]["type"] == "InvalidImage"
    assert body["command_error"]["details"] == CVE_MESSAGE
    # the config default for ignore_bootloader_failure applies when the param is absent
    _, body = post(client_for(dev, ignore_bootloader_failure=True),
                   {"root_uuid": "7d3c8a1e-5b2f-4c6d-9e0a-1b2c3d4e5f60"})
    assert body["command_status"] == "SUCCEEDED"
    # and an explicit false wins over the config
    _, body = post(client_for(dev, ignore_bootloader_failure=True),
                   {"root_uuid": "7d3c8a1e-5b2f-4c6d-9e0a-1b2c3d4e5f60",
                    "ignore_bootloader_failure": False})
    assert body["command_status"] == "FAILED"


@pytest.mark.parametrize("params,message", [
    ({"root_uuid": 5}, "'root_uuid' must be a string or null, got int"),
    ({"efi_system_part_uuid": ["x"]}, "'efi_system_part_uuid' must be a string or null"),
    ({"target_boot_mode": "legacy"}, "'target_boot_mode' must be one of bios, uefi, "
                                     "got 'legacy'"),
    ({"ignore_bootloader_failure": "maybe"}, "'ignore_bootloader_failure' must be a boolean"),
])
def test_bad_params_are_a_400_before_anything_runs(make_loop, params, message):
    dev = make_loop(32 * MIB)
    status, body = post(client_for(dev), params)
    assert status == 400
    assert message in body["faultstring"]
