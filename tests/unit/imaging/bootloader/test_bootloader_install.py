"""The §7 decision flow: which path runs, what is ignored, how errors are typed.

Disks and paths are stubbed here; tests/functional/imaging/bootloader runs the
same flow on real loop disks.
"""

from __future__ import annotations

import types

import pytest

from agent import config, hardware
from agent.errors import Cancelled, CommandExecutionError, DeviceNotFound, InvalidImage
from agent.imaging.bootloader import CVE_MESSAGE, Request, install, install_bootloader, uefi
from agent.state import AgentState


@pytest.fixture
def state(monkeypatch):
    monkeypatch.setattr(hardware, "find_install_disk",
                        lambda st, ctx=None: (types.SimpleNamespace(name="/dev/sdz"), "hint"))
    return AgentState(config.load(read_proc=False, env={}, flags={}))


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(install, "_grub_path",
                        lambda disk, req, arch, outcome=None: seen.append(("grub", disk, arch))
                        or "grub-bios")
    return seen


def uefi_mode(monkeypatch, result):
    monkeypatch.setattr(uefi, "nvram_available", lambda: True)

    def setup(disk, esp_uuid, *, arch):
        if isinstance(result, BaseException):
            raise result
        return result
    monkeypatch.setattr(uefi, "setup", setup)


def test_uefi_success_stops_there(state, calls, monkeypatch):
    uefi_mode(monkeypatch, object())
    outcome = install_bootloader(state, Request(root_uuid="abc", target_boot_mode="uefi"),
                                 arch="x86_64")
    assert outcome.path == "uefi" and calls == []


def test_uefi_error_is_ignored_on_request_and_the_grub_path_follows(state, calls, monkeypatch):
    uefi_mode(monkeypatch, DeviceNotFound("No EFI partition could be detected"))
    state.config.set("enable_bios_bootloader_install", True)
    outcome = install_bootloader(state, Request(root_uuid="abc", ignore_failure=True),
                                 arch="x86_64")
    assert outcome.path == "grub-bios" and calls == [("grub", "/dev/sdz", "x86_64")]
    assert outcome.ignored == ["UEFI boot entries: No EFI partition could be detected"]


def test_unexpected_exceptions_become_command_execution_errors(state, calls, monkeypatch):
    uefi_mode(monkeypatch, OSError(5, "Input/output error"))
    with pytest.raises(CommandExecutionError) as err:
        install_bootloader(state, Request(root_uuid="abc"), arch="x86_64")
    assert err.value.details == "UEFI boot entries failed: OSError: [Errno 5] Input/output error"
    assert isinstance(err.value.__cause__, OSError)


def test_cancellation_is_never_ignored(state, calls, monkeypatch):
    uefi_mode(monkeypatch, Cancelled("install_bootloader was cancelled by request"))
    with pytest.raises(Cancelled):
        install_bootloader(state, Request(root_uuid="abc", ignore_failure=True), arch="x86_64")


def test_empty_esp_and_whole_disk_image_is_done(state, calls, monkeypatch):
    uefi_mode(monkeypatch, None)
    for root in (None, "0x00000000", "0x1234ABCD"):
        outcome = install_bootloader(state, Request(root_uuid=root), arch="x86_64")
        assert outcome.path == "whole-disk"
    assert calls == []


def test_grub_path_needs_the_opt_in(state, calls, monkeypatch):
    monkeypatch.setattr(uefi, "nvram_available", lambda: False)
    with pytest.raises(InvalidImage) as err:
        install_bootloader(state, Request(root_uuid="abc"), arch="x86_64")
    assert err.value.details == CVE_MESSAGE and err.value.code == 400
    assert calls == []


def test_ppc64le_never_tries_uefi(state, calls, monkeypatch):
    uefi_mode(monkeypatch, AssertionError("UEFI on ppc64le"))
    state.config.set("enable_bios_bootloader_install", True)
    assert install_bootloader(state, Request(root_uuid="abc"), arch="ppc64le").path == \
        "grub-bios"
    assert calls == [("grub", "/dev/sdz", "ppc64le")]


def test_uefi_grub_path_fills_the_partition_images_esp(monkeypatch):
    view = types.SimpleNamespace()
    monkeypatch.setattr(install.devices, "DiskView", lambda disk: view)
    monkeypatch.setattr(install.devices, "find_root", lambda v, uuid: "/dev/sdz2")
    seen = []
    esp = types.SimpleNamespace(method="image-efi", uefi="registered")

    def fill(disk, root, esp_uuid, *, arch):
        seen.append((disk, root, esp_uuid, arch))
        return esp
    monkeypatch.setattr(install.uefi_partition, "install", fill)
    outcome = install.Outcome(disk="/dev/sdz", path="")
    request = Request(root_uuid="abc", efi_system_part_uuid="ABCD-1234",
                      target_boot_mode="uefi")
    assert install._grub_path("/dev/sdz", request, "x86_64", outcome) == "uefi-image-efi"
    assert seen == [("/dev/sdz", "/dev/sdz2", "ABCD-1234", "x86_64")]
    assert outcome.esp is esp and outcome.uefi == "registered"
