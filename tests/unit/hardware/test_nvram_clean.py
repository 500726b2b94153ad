"""clean_uefi_nvram on captured efibootmgr listings, through a recorder of every argv."""

from __future__ import annotations

import os
import subprocess

import pytest

from agent import tools
from agent.context import CommandContext
from agent.errors import (
    Cancelled,
    CleaningError,
    DeploymentError,
    InvalidCommandParamsError,
    ToolError,
)
from agent.imaging.bootloader import efibootmgr, nvram_clean

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "bootloader")


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


class Nvram:
    """tools.run stand-in: a listing that -b/-B edits, and every efibootmgr argv."""

    def __init__(self, listing: str, *, fail_delete: str | None = None,
                 ignore_delete: bool = False, fail_list: str | None = None) -> None:
        self.lines = listing.splitlines()
        self.calls: list[tuple[str, ...]] = []
        self.fail_delete = fail_delete
        self.ignore_delete = ignore_delete
        self.fail_list = fail_list

    def __call__(self, tool, *args, **kwargs):
        assert tool == "efibootmgr" and kwargs["timeout"] == efibootmgr.TIMEOUT
        self.calls.append(tuple(args))
        if args == ("-v",) and self.fail_list is not None:
            raise ToolError("efibootmgr -v failed with exit code 2", tool=tool, returncode=2,
                            stderr=self.fail_list)
        if "-B" in args:
            number = args[args.index("-b") + 1]
            if number == self.fail_delete:
                raise ToolError("efibootmgr failed with exit code 5", tool=tool, returncode=5,
                                stderr="Could not delete variable: Input/output error")
            if not self.ignore_delete:
                self.lines = [ln for ln in self.lines if not ln.startswith(f"Boot{number}")]
        out = "\n".join(self.lines) + "\n"
        return subprocess.CompletedProcess(["efibootmgr", *args], 0, out, "")

    def numbers(self) -> list[str]:
        return [e.number for e in efibootmgr.parse("\n".join(self.lines))]


@pytest.fixture
def uefi_root(tmp_path, monkeypatch):
    (tmp_path / "sys" / "firmware" / "efi").mkdir(parents=True)
    monkeypatch.setattr(tools, "which", lambda name: f"/usr/bin/{name}")
    return str(tmp_path)


def run(monkeypatch, nvram: Nvram, root: str, patterns=None, node=None, ctx=None):
    monkeypatch.setattr(tools, "run", nvram)
    return nvram_clean.clean_uefi_nvram(node or {}, [], patterns, ctx, root=root)


def test_default_patterns_remove_disk_shim_and_grub_entries(monkeypatch, uefi_root):
    nvram = Nvram(fixture("efibootmgr_v17_verbose.txt"))      # booted from PXE (0001)
    result = run(monkeypatch, nvram, uefi_root)["uefi_nvram"]
    assert nvram.calls == [("-v",), ("-b", "0003", "-B"), ("-b", "0005", "-B"),
                           ("-b", "0006", "-B"), ("-v",)]
    assert nvram.numbers() == ["0000", "0001", "0002", "0004"]
    assert [(e["number"], e["label"]) for e in result["removed"]] == [
        ("0003", "debian"), ("0005", "ironic1"), ("0006", "ironic1")]
    assert result["removed"][0]["device_path"].endswith("\\EFI\\debian\\shimx64.efi)")
    assert result["kept"] == ["0000", "0001", "0002", "0004"]
    assert result["boot_current"] == "0001" and "protected" not in result
    assert result["default_patterns"] is True
    assert result["match_patterns"] == ["^HD\\(", "shim.*\\.efi", "grub.*\\.efi"]


def test_the_entry_the_ramdisk_booted_from_is_never_removed(monkeypatch, uefi_root):
    nvram = Nvram(fixture("efibootmgr_v18_verbose.txt"))      # BootCurrent 0002: HD shim
    result = run(monkeypatch, nvram, uefi_root)["uefi_nvram"]
    assert nvram.calls == [("-v",)]
    assert result["removed"] == []
    assert result["protected"] == [{
        "number": "0002", "label": "Red Hat Enterprise Linux",
        "device_path": "HD(1,GPT,9ed4e54c-7d0c-4d0a-b2f6-8d3e0b5f3b9e,0x800,0x12c000)/"
                       "File(\\EFI\\redhat\\shimx64.efi)",
        "reason": "BootCurrent: the entry this ramdisk was booted from is never removed"}]


def test_protected_entry_is_kept_while_others_matching_go(monkeypatch, uefi_root):
    listing = fixture("efibootmgr_v17_verbose.txt").replace("BootCurrent: 0001",
                                                            "BootCurrent: 0005")
    nvram = Nvram(listing)
    result = run(monkeypatch, nvram, uefi_root)["uefi_nvram"]
    assert [c for c in nvram.calls if "-B" in c] == [("-b", "0003", "-B"),
                                                    ("-b", "0006", "-B")]
    assert "0005" in nvram.numbers()
    assert [p["number"] for p in result["protected"]] == ["0005"]


def test_custom_patterns_match_the_device_path_case_insensitively(monkeypatch, uefi_root):
    nvram = Nvram(fixture("efibootmgr_v18_verbose.txt"))
    result = run(monkeypatch, nvram, uefi_root, ["fvfile\\(7C04"])["uefi_nvram"]
    assert [e["label"] for e in result["removed"]] == ["EFI Internal Shell"]
    assert result["default_patterns"] is False and "match_patterns" not in result
    # labels are not matched, as in IPA
    nvram = Nvram(fixture("efibootmgr_v18_verbose.txt"))
    assert run(monkeypatch, nvram, uefi_root, ["UiApp"])["uefi_nvram"]["removed"] == []


def test_an_empty_list_removes_nothing(monkeypatch, uefi_root):
    nvram = Nvram(fixture("efibootmgr_v17_verbose.txt"))
    assert run(monkeypatch, nvram, uefi_root, [])["uefi_nvram"]["removed"] == []
    assert nvram.calls == [("-v",)]


def test_entries_without_a_device_path_are_never_touched(monkeypatch, uefi_root):
    nvram = Nvram(fixture("efibootmgr_v17.txt"))
    assert run(monkeypatch, nvram, uefi_root, [".*"])["uefi_nvram"]["removed"] == []


@pytest.mark.parametrize("patterns, expected", [
    ("^HD\\(", "must be a list of regular expression strings, got str"),
    ({"a": 1}, "got dict"),
    (["ok", 3], "match_patterns[1] must be a string, got int"),
    (["ok", ""], "match_patterns[1] is empty"),
    (["grub(SECRET"], "match_patterns[0] is not a valid regular expression: missing ), "
                      "unterminated subpattern at position 4"),
    (["x"] * 65, "65 entries; at most 64"),
    (["a" * 1025], "1025 characters long"),
])
def test_bad_patterns_are_a_400_before_anything_runs(monkeypatch, tmp_path, patterns,
                                                     expected):
    nvram = Nvram(fixture("efibootmgr_v17_verbose.txt"))
    with pytest.raises(InvalidCommandParamsError) as exc:
        run(monkeypatch, nvram, str(tmp_path), patterns)      # not even UEFI: validated first
    assert exc.value.code == 400
    assert expected in exc.value.details
    assert "SECRET" not in exc.value.details
    assert nvram.calls == []


@pytest.mark.parametrize("state, error", [
    ("clean wait", CleaningError), ("cleaning", CleaningError),
    ("deploying", DeploymentError), ("wait call-back", DeploymentError),
])
def test_not_booted_in_uefi_mode_fails_clearly(monkeypatch, tmp_path, state, error):
    nvram = Nvram(fixture("efibootmgr_v17_verbose.txt"))
    with pytest.raises(error, match="not booted in UEFI mode"):
        run(monkeypatch, nvram, str(tmp_path), node={"provision_state": state})
    assert nvram.calls == []


def test_missing_efibootmgr_fails_clearly(monkeypatch, uefi_root):
    monkeypatch.setattr(tools, "which", lambda name: None)
    nvram = Nvram(fixture("efibootmgr_v17_verbose.txt"))
    with pytest.raises(CleaningError, match="efibootmgr is not installed.*Debian package"):
        run(monkeypatch, nvram, uefi_root)
    assert nvram.calls == []


def test_no_efi_variables_fails_with_efibootmgrs_reason(monkeypatch, uefi_root):
    nvram = Nvram("", fail_list=fixture("efibootmgr_no_efivars.stderr").strip())
    with pytest.raises(CleaningError) as exc:
        run(monkeypatch, nvram, uefi_root)
    assert "EFI variables are not supported on this system." in exc.value.details


def test_a_failed_delete_names_what_was_already_deleted(monkeypatch, uefi_root):
    nvram = Nvram(fixture("efibootmgr_v17_verbose.txt"), fail_delete="0005")
    with pytest.raises(CleaningError) as exc:
        run(monkeypatch, nvram, uefi_root)
    assert "could not delete Boot0005 ('ironic1')" in exc.value.details
    assert "Input/output error" in exc.value.details
    assert "already deleted: Boot0003" in exc.value.details
    assert ("-b", "0006", "-B") not in nvram.calls


def test_an_entry_that_survives_its_delete_fails_the_step(monkeypatch, uefi_root):
    nvram = Nvram(fixture("efibootmgr_v17_verbose.txt"), ignore_delete=True)
    with pytest.raises(CleaningError, match="Boot0003, Boot0005, Boot0006 still exist"):
        run(monkeypatch, nvram, uefi_root)


def test_without_boot_current_the_result_warns(monkeypatch, uefi_root):
    listing = fixture("efibootmgr_v17_verbose.txt").replace("BootCurrent: 0001\n", "")
    result = run(monkeypatch, Nvram(listing), uefi_root)["uefi_nvram"]
    assert result["boot_current"] is None
    assert "could not be identified" in result["warning"]
    assert len(result["removed"]) == 3


def test_cancel_stops_before_the_first_delete(monkeypatch, uefi_root):
    ctx = CommandContext("c1", "clean_uefi_nvram")
    ctx.cancel_event.set()
    nvram = Nvram(fixture("efibootmgr_v17_verbose.txt"))
    with pytest.raises(Cancelled):
        run(monkeypatch, nvram, uefi_root, ctx=ctx)
    assert nvram.calls == [("-v",)]


def test_progress_counts_deleted_entries(monkeypatch, uefi_root):
    ctx = CommandContext("c1", "clean_uefi_nvram")
    run(monkeypatch, Nvram(fixture("efibootmgr_v17_verbose.txt")), uefi_root, ctx=ctx)
    snap = ctx.progress.snapshot()
    assert (snap["phase"], snap["done"], snap["total"], snap["unit"]) == (
        "clean_uefi_nvram", 3, 3, "entries")


def test_step_dicts_are_ipas():
    common = {"step": "clean_uefi_nvram", "priority": 0, "interface": "deploy",
              "reboot_requested": False, "argsinfo": nvram_clean.ARGSINFO}
    assert nvram_clean.CLEAN_STEP == dict(common, abortable=True)
    assert nvram_clean.DEPLOY_STEP == common
    info = nvram_clean.ARGSINFO["match_patterns"]
    assert info["required"] is False
    assert '"^HD\\(", "shim.*\\.efi", "grub.*\\.efi"' in info["description"]
