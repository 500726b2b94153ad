"""clean_uefi_nvram through a real efibootmgr process: the NVRAM stand-in on PATH.

This machine has no EFI variables; the fake keeps efibootmgr's own listing in
a file seeded from captured output and edits it the way firmware would.
"""

from __future__ import annotations

import os

import pytest

from agent.imaging.bootloader import efibootmgr, nvram_clean
from tests.functional.imaging.bootloader.conftest import FakeEfi


@pytest.fixture
def fake_efi(tmp_path, monkeypatch) -> FakeEfi:
    fake = FakeEfi(str(tmp_path / "efi"))
    monkeypatch.setenv("PATH", fake.bin + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("FAKE_EFI_LOG", fake.log)
    monkeypatch.setenv("FAKE_EFI_STATE", fake.state)
    return fake


@pytest.fixture
def root(tmp_path) -> str:
    (tmp_path / "root" / "sys" / "firmware" / "efi").mkdir(parents=True)
    return str(tmp_path / "root")


def test_default_clean_against_the_stand_in(fake_efi, root):
    result = nvram_clean.clean_uefi_nvram({}, [], None, root=root)["uefi_nvram"]
    assert fake_efi.calls() == [["-v"], ["-b", "0003", "-B"], ["-b", "0005", "-B"],
                                ["-b", "0006", "-B"], ["-v"]]
    left = efibootmgr.parse(fake_efi.listing())
    assert [e.number for e in left] == ["0000", "0001", "0002", "0004"]
    assert "BootOrder: 0001,0000,0002,0004" in fake_efi.listing()
    assert [e["number"] for e in result["removed"]] == ["0003", "0005", "0006"]


def test_boot_current_survives_a_pattern_that_matches_everything(fake_efi, root):
    fake_efi.seed("efibootmgr_v18_verbose.txt")
    before = fake_efi.listing()
    result = nvram_clean.clean_uefi_nvram({}, [], ["."], root=root)["uefi_nvram"]
    assert [e["number"] for e in result["removed"]] == ["0000", "0001", "0003"]
    assert [p["number"] for p in result["protected"]] == ["0002"]
    left = efibootmgr.parse(fake_efi.listing())
    assert [(e.number, e.label) for e in left] == [("0002", "Red Hat Enterprise Linux")]
    assert fake_efi.listing() != before
