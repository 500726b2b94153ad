"""efibootmgr output parsing and the replace-then-create sequence, on captured listings."""

from __future__ import annotations

import os
import subprocess

import pytest

from agent import tools
from agent.errors import CommandExecutionError, ToolError
from agent.imaging.bootloader import efibootmgr
from agent.imaging.bootloader.loaders import Loader

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "bootloader")


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


def test_parse_v17_verbose():
    entries = efibootmgr.parse(fixture("efibootmgr_v17_verbose.txt"))
    assert [e.number for e in entries] == ["0000", "0001", "0002", "0003", "0004", "0005",
                                           "0006"]
    assert entries[2].label == "UEFI QEMU HARDDISK QM00001"     # trailing blank dropped
    assert entries[3].device_path == ("HD(1,GPT,4f8c2d6e-1b3a-4c5d-9e7f-0a1b2c3d4e5f,0x800,"
                                      "0x113000)/File(\\EFI\\debian\\shimx64.efi)")
    assert entries[6] == efibootmgr.BootEntry(
        "0006", "ironic1", False,
        "HD(1,GPT,0b6f1a52-77c1-4d8e-a1c9-5e3f2b7d9a10,0x800,0x100000)/File(\\EFI\\ubuntu\\"
        "grubx64.efi)")
    assert all(e.active for e in entries[:6])


def test_parse_v17_plain_has_labels_only():
    entries = efibootmgr.parse(fixture("efibootmgr_v17.txt"))
    assert [(e.label, e.device_path) for e in entries][3:7:2] == [("debian", None),
                                                                  ("ironic1", None)]
    assert entries[1].label == "UEFI PXEv4 (MAC:525400A1B2C3)"


@pytest.mark.parametrize("name", ["efibootmgr_v18.txt", "efibootmgr_v18_verbose.txt"])
def test_parse_v18_with_and_without_dp_lines(name):
    entries = efibootmgr.parse(fixture(name))
    assert [(e.number, e.label) for e in entries] == [
        ("0000", "UiApp"), ("0001", "UEFI Misc Device"), ("0002", "Red Hat Enterprise Linux"),
        ("0003", "EFI Internal Shell")]
    assert entries[2].device_path.endswith("/File(\\EFI\\redhat\\shimx64.efi)")


class FakeEfibootmgr:
    """tools.run stand-in: replays a listing and records every efibootmgr argv."""

    def __init__(self, listing: str, created: str = "") -> None:
        self.listing = listing
        self.created = created
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, tool, *args, **kwargs):
        assert tool == "efibootmgr" and kwargs["timeout"] == efibootmgr.TIMEOUT
        self.calls.append(tuple(args))
        out = self.listing
        if args[0] == "-c":
            label = args[args.index("-L") + 1]
            out = self.listing + self.created.format(label=label)
        return subprocess.CompletedProcess(["efibootmgr", *args], 0, out, "")


def test_register_removes_same_labels_then_creates_least_preferred_first(monkeypatch):
    fake = FakeEfibootmgr(fixture("efibootmgr_v17_verbose.txt"), "Boot0007* {label}\n")
    monkeypatch.setattr(tools, "run", fake)
    loaders = [Loader("EFI/debian/grubx64.efi", "ironic1", "file"),
               Loader("EFI/BOOT/BOOTX64.EFI", "ironic2", "file")]
    entries = efibootmgr.register("/dev/sda", 1, loaders)
    assert fake.calls == [
        ("-v",), ("-b", "0005", "-B"), ("-b", "0006", "-B"),
        ("-c", "-d", "/dev/sda", "-p", "1", "-w", "-L", "ironic2", "-l",
         "\\EFI\\BOOT\\BOOTX64.EFI"),
        ("-c", "-d", "/dev/sda", "-p", "1", "-w", "-L", "ironic1", "-l",
         "\\EFI\\debian\\grubx64.efi")]
    assert [e.label for e in entries] == ["ironic2", "ironic1"]


def test_labels_with_spaces_are_matched_exactly(monkeypatch):
    fake = FakeEfibootmgr(fixture("efibootmgr_v18_verbose.txt"), "Boot0004* {label}\n")
    monkeypatch.setattr(tools, "run", fake)
    efibootmgr.register("/dev/nvme0n1", 2, [Loader("EFI/redhat/shimx64.efi",
                                                   "Red Hat Enterprise Linux", "csv")])
    assert fake.calls[1] == ("-b", "0002", "-B")
    assert fake.calls[2][-3:] == ("Red Hat Enterprise Linux", "-l",
                                  "\\EFI\\redhat\\shimx64.efi")
    assert len(fake.calls) == 3


def test_created_entry_missing_from_the_listing_is_an_error(monkeypatch):
    monkeypatch.setattr(tools, "run", FakeEfibootmgr(fixture("efibootmgr_v18.txt")))
    with pytest.raises(CommandExecutionError, match="lists no boot entry labelled 'ironic1' "
                                                    "for \\\\EFI\\\\BOOT\\\\BOOTX64.EFI on "
                                                    "/dev/sda partition 1"):
        efibootmgr.register("/dev/sda", 1, [Loader("EFI/BOOT/BOOTX64.EFI", "ironic1", "file")])


def test_no_efivars_error_names_the_tool(tmp_path, monkeypatch):
    # the real efibootmgr, run where efivarfs is absent: exit code and message as captured
    if tools.which("efibootmgr") is None:
        pytest.skip("efibootmgr is not installed")
    if os.path.isdir("/sys/firmware/efi/efivars") and os.listdir("/sys/firmware/efi/efivars"):
        pytest.skip("this machine has real EFI variables; not touching them")
    with pytest.raises(ToolError) as err:
        efibootmgr.list_entries()
    assert err.value.tool == "efibootmgr" and err.value.returncode == 2
    assert err.value.stderr == fixture("efibootmgr_no_efivars.stderr").strip()
