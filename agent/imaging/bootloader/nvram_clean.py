"""The ``clean_uefi_nvram`` step: remove stale UEFI boot entries.

Semantics follow IPA: ``match_patterns`` is a list of regular expressions,
matched case-insensitively (``re.search``) against each ``Boot####`` entry's
device path as ``efibootmgr -v`` prints it; an entry matching any of them is
deleted.  The default removes entries that boot from a disk partition
(``^HD\\(``) and entries that start shim or grub.  Entries without a device
path in the listing are never touched.

Beyond IPA: the entry the firmware booted this ramdisk from (``BootCurrent``)
is never removed, and the result says so; the patterns are validated before
anything runs (a 400 that does not repeat the pattern); the step fails with a
clear reason when the ramdisk was not booted in UEFI mode or efibootmgr is
missing; and the listing is read again afterwards to confirm the removals.

Step lists (IPA's): a manual clean step (priority 0, abortable) and a deploy
step (priority 0, for deploy templates), both with ``argsinfo``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Sequence
from typing import Any

from agent import tools
from agent.context import CommandContext
from agent.errors import AgentError, CleaningError, InvalidCommandParamsError, ToolError
from agent.hardware.raid.steps import error_class
from agent.imaging.bootloader import efibootmgr

LOG = logging.getLogger(__name__)

DEFAULT_MATCH_PATTERNS: tuple[str, ...] = (r"^HD\(", r"shim.*\.efi", r"grub.*\.efi")
MAX_PATTERNS = 64
MAX_PATTERN_LENGTH = 1024
_BOOT_CURRENT = re.compile(r"^BootCurrent:\s*([0-9A-Fa-f]{4})\s*$", re.MULTILINE)

ARGSINFO: dict[str, dict[str, Any]] = {
    "match_patterns": {
        "description": "A list of regular expressions; every UEFI NVRAM boot entry whose "
                       "device path matches one of them (case-insensitive) is deleted, "
                       "except the entry the ramdisk booted from. Default: "
                       + ", ".join(f'"{p}"' for p in DEFAULT_MATCH_PATTERNS) + ".",
        "required": False},
}
CLEAN_STEP: dict[str, Any] = {
    "step": "clean_uefi_nvram", "priority": 0, "interface": "deploy",
    "reboot_requested": False, "abortable": True, "argsinfo": ARGSINFO}
# IPA's deploy step carries no abortable flag (deploy steps are never aborted)
DEPLOY_STEP: dict[str, Any] = {
    "step": "clean_uefi_nvram", "priority": 0, "interface": "deploy",
    "reboot_requested": False, "argsinfo": ARGSINFO}


def validate_patterns(match_patterns: Any) -> list[re.Pattern[str]]:
    """Compiled patterns, or InvalidCommandParamsError naming the position (never the text)."""
    if match_patterns is None:
        match_patterns = list(DEFAULT_MATCH_PATTERNS)
    if not isinstance(match_patterns, list):
        raise InvalidCommandParamsError(
            f"match_patterns must be a list of regular expression strings, got "
            f"{type(match_patterns).__name__}")
    if len(match_patterns) > MAX_PATTERNS:
        raise InvalidCommandParamsError(
            f"match_patterns has {len(match_patterns)} entries; at most {MAX_PATTERNS} "
            "are accepted")
    compiled = []
    for index, item in enumerate(match_patterns):
        if not isinstance(item, str):
            raise InvalidCommandParamsError(
                f"match_patterns[{index}] must be a string, got {type(item).__name__}")
        if not item:
            raise InvalidCommandParamsError(
                f"match_patterns[{index}] is empty; it would match every boot entry")
        if len(item) > MAX_PATTERN_LENGTH:
            raise InvalidCommandParamsError(
                f"match_patterns[{index}] is {len(item)} characters long; at most "
                f"{MAX_PATTERN_LENGTH} are accepted")
        try:
            compiled.append(re.compile(item, re.IGNORECASE))
        except re.error as exc:
            # exc.msg describes the problem without quoting the pattern
            where = f" at position {exc.pos}" if exc.pos is not None else ""
            raise InvalidCommandParamsError(
                f"match_patterns[{index}] is not a valid regular expression: "
                f"{exc.msg}{where}") from None
    return compiled


def boot_current(listing: str) -> str | None:
    match = _BOOT_CURRENT.search(listing)
    return match.group(1).upper() if match else None


def _efibootmgr(*args: str) -> subprocess.CompletedProcess:
    return tools.run("efibootmgr", *args, timeout=efibootmgr.TIMEOUT)


def _entry(entry: efibootmgr.BootEntry) -> dict[str, Any]:
    return {"number": entry.number, "label": entry.label, "device_path": entry.device_path}


def _read(error_cls: type[AgentError]) -> str:
    try:
        return _efibootmgr("-v").stdout
    except ToolError as exc:
        raise error_cls(f"efibootmgr could not list the UEFI boot entries (are EFI variables "
                        f"available?): {exc.stderr or exc.details}") from exc


def clean_uefi_nvram(node: Any, ports: Any, match_patterns: Any = None,
                     ctx: CommandContext | None = None, *, root: str = "/") -> dict[str, Any]:
    """Delete the NVRAM boot entries whose device path matches; keep BootCurrent."""
    patterns = validate_patterns(match_patterns)
    ctx = ctx or CommandContext("local", "clean_uefi_nvram")
    error_cls = error_class(node, CleaningError)
    if not os.path.isdir(os.path.join(root, "sys/firmware/efi")):
        raise error_cls("this ramdisk was not booted in UEFI mode (/sys/firmware/efi is "
                        "absent), so there are no UEFI boot entries to clean")
    if tools.which("efibootmgr") is None:
        raise error_cls("efibootmgr is not installed in this ramdisk (Debian package "
                        "efibootmgr); it is needed to clean UEFI boot entries")
    listing = _read(error_cls)
    current = boot_current(listing)
    entries = efibootmgr.parse(listing)
    matching = [e for e in entries
                if e.device_path and any(p.search(e.device_path) for p in patterns)]
    protected = [e for e in matching if e.number == current]
    doomed = [e for e in matching if e.number != current]
    for entry in protected:
        LOG.info("clean_uefi_nvram: keeping Boot%s %r: the ramdisk booted from it",
                 entry.number, entry.label)
    ctx.progress.update(phase="clean_uefi_nvram", done=0, total=len(doomed), unit="entries")
    removed: list[efibootmgr.BootEntry] = []
    for entry in doomed:
        ctx.check_cancelled()
        try:
            _efibootmgr("-b", entry.number, "-B")
        except ToolError as exc:
            gone = ", ".join(f"Boot{e.number}" for e in removed) or "none"
            raise error_cls(f"efibootmgr could not delete Boot{entry.number} "
                            f"({entry.label!r}): {exc.stderr or exc.details}; already "
                            f"deleted: {gone}") from exc
        LOG.info("clean_uefi_nvram: deleted Boot%s %r (%s)", entry.number, entry.label,
                 entry.device_path)
        removed.append(entry)
        ctx.progress.update(done=len(removed), current=f"Boot{entry.number}")
    _verify(removed, current, error_cls)
    return _result(entries, removed, protected, current, match_patterns is None)


def _verify(removed: Sequence[efibootmgr.BootEntry], current: str | None,
            error_cls: type[AgentError]) -> None:
    if not removed:
        return
    left = {e.number for e in efibootmgr.parse(_read(error_cls))}
    still = [f"Boot{e.number}" for e in removed if e.number in left]
    if still:
        raise error_cls(f"efibootmgr reported success but {', '.join(still)} still "
                        "exist(s) in NVRAM; the firmware may refuse to delete them")


def _result(entries: Sequence[efibootmgr.BootEntry], removed: Sequence[efibootmgr.BootEntry],
            protected: Sequence[efibootmgr.BootEntry], current: str | None,
            default_patterns: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "removed": [_entry(e) for e in removed],
        "kept": [e.number for e in entries if e not in removed],
        "boot_current": current,
        "default_patterns": default_patterns,
    }
    if default_patterns:
        result["match_patterns"] = list(DEFAULT_MATCH_PATTERNS)
    if protected:
        result["protected"] = [
            dict(_entry(e), reason="BootCurrent: the entry this ramdisk was booted from "
                                   "is never removed") for e in protected]
    if current is None:
        result["warning"] = ("the firmware reports no BootCurrent, so the entry this "
                             "ramdisk booted from could not be identified and protected")
    return {"uefi_nvram": result}
