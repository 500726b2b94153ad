"""``image.install_bootloader``: make the written disk bootable (reference §7).

1. UEFI NVRAM path, when the ramdisk booted under UEFI and efibootmgr exists:
   register the loaders the image put on its ESP.  Nothing from the image runs.
2. A null root UUID or an MBR disk signature means a whole-disk image that
   carries its own boot loader: done.
3. Otherwise the GRUB path, which runs the image's own grub as root and is
   therefore opt-in (``enable_bios_bootloader_install``, CVE-2026-43003):
   BIOS grub on x86, grub in the PReP partition on ppc64le, or for UEFI the
   ESP the agent made for a partition image filled from the image's
   /boot/efi or its grub-install (``uefi_partition``).

An md install disk (software RAID) takes its own path instead (``raid``):
boot code built from the ramdisk's grub on every member disk for BIOS, a
mirrored ESP on every member with one NVRAM entry each for UEFI.  It runs
nothing from the image, so it needs no opt-in.

``ignore_failure`` turns a failed path into a logged warning, as IPA's
``ignore_bootloader_failure`` does; cancellation is never ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import platform

from agent.context import CommandContext
from agent.errors import AgentError, Cancelled, CommandExecutionError, DeviceNotFound, InvalidImage
from agent.imaging.bootloader import (
    devices,
    grub_bios,
    prep,
    raid,
    raid_bios,
    raid_uefi,
    uefi,
    uefi_partition,
)
from agent.state import AgentState

LOG = logging.getLogger(__name__)

CVE_MESSAGE = ("Install of legacy BIOS bootloaders disabled by "
               "CONF.enable_bios_bootloader_install as part of CVE-2026-43003 mitigation.")
# §7 failure types; anything else is reported as CommandExecutionError
PASS_THROUGH = (CommandExecutionError, DeviceNotFound, InvalidImage)


@dataclasses.dataclass(frozen=True)
class Request:
    root_uuid: str | None = None
    efi_system_part_uuid: str | None = None
    prep_boot_part_uuid: str | None = None
    target_boot_mode: str = "bios"
    ignore_failure: bool = False


@dataclasses.dataclass
class Outcome:
    """What was done, for the log and for tests; the command itself returns null."""

    disk: str
    # 'uefi', 'whole-disk', 'grub-bios', 'prep', 'uefi-image-efi', 'uefi-grub-install',
    # 'raid-bios', 'raid-uefi', 'ignored'
    path: str
    uefi: uefi.UefiOutcome | None = None
    esp: uefi_partition.EspOutcome | None = None
    raid: raid_bios.BiosOutcome | raid_uefi.UefiRaidOutcome | None = None
    ignored: list[str] = dataclasses.field(default_factory=list)


def install_bootloader(state: AgentState, request: Request, *, ctx: CommandContext | None = None,
                       arch: str | None = None) -> Outcome:
    """Run §7 for ``request`` on the install disk chosen by the node's root-device hints."""
    from agent.hardware import find_install_disk

    arch = arch or platform.machine()
    disk, reason = find_install_disk(state, ctx)
    LOG.info("installing the boot loader on %s (%s): %s", disk.name, reason, request)
    outcome = Outcome(disk=disk.name, path="")
    try:
        array = raid.array_for(disk)
    except Exception as exc:  # noqa: BLE001
        _fail_or_ignore(exc, request, outcome, "software RAID boot")
        outcome.path = "ignored"
        return outcome
    if array is not None:
        _phase(ctx, "software RAID")
        try:
            outcome.path = _raid_path(disk.name, array, request, arch, outcome)
        except Exception as exc:  # noqa: BLE001
            _fail_or_ignore(exc, request, outcome, "software RAID boot")
            outcome.path = "ignored"
        return outcome
    _phase(ctx, "uefi")
    if uefi.nvram_available() and not arch.startswith("ppc64"):
        if request.target_boot_mode != "uefi":
            LOG.warning("the ramdisk booted in UEFI mode but the node's target boot mode is "
                        "%s; creating UEFI boot entries anyway", request.target_boot_mode)
        try:
            outcome.uefi = uefi.setup(disk.name, request.efi_system_part_uuid, arch=arch)
        except Exception as exc:  # noqa: BLE001 - every failure is reported or ignored alike
            _fail_or_ignore(exc, request, outcome, "UEFI boot entries")
        if outcome.uefi is not None:
            outcome.path = "uefi"
            return outcome
    elif request.target_boot_mode == "uefi":
        LOG.warning("target boot mode is UEFI but the ramdisk %s; no NVRAM boot entries can "
                    "be created", "has no efibootmgr" if uefi.efi_booted()
                    else "booted in legacy BIOS mode")
    _check_cancelled(ctx)
    if devices.is_whole_disk_id(request.root_uuid):
        LOG.info("root UUID %s: a whole-disk image with its own boot loader; nothing more to do",
                 request.root_uuid)
        outcome.path = "whole-disk"
        return outcome
    if not state.config.enable_bios_bootloader_install:
        _fail_or_ignore(InvalidImage(CVE_MESSAGE), request, outcome, "the GRUB path")
        outcome.path = "ignored"
        return outcome
    _phase(ctx, "grub")
    try:
        outcome.path = _grub_path(disk.name, request, arch, outcome)
    except Exception as exc:  # noqa: BLE001
        _fail_or_ignore(exc, request, outcome, "the GRUB path")
        outcome.path = "ignored"
    return outcome


def _grub_path(disk: str, request: Request, arch: str, outcome: Outcome | None = None) -> str:
    view = devices.DiskView(disk)
    assert request.root_uuid is not None
    root_device = devices.find_root(view, request.root_uuid)
    if arch.startswith("ppc64"):
        prep.install(view, root_device, request.prep_boot_part_uuid)
        return "prep"
    if request.target_boot_mode == "uefi":
        esp = uefi_partition.install(disk, root_device, request.efi_system_part_uuid, arch=arch)
        if outcome is not None:
            outcome.esp, outcome.uefi = esp, esp.uefi
        return f"uefi-{esp.method}"
    grub_bios.install(disk, root_device, arch=arch)
    return "grub-bios"


def _raid_path(md_device: str, array: raid.MdArray, request: Request, arch: str,
               outcome: Outcome) -> str:
    members = raid.member_disks(array)
    LOG.info("install disk %s is software RAID: %s", md_device, array.describe())
    if arch.startswith("ppc64"):
        raise CommandExecutionError("booting ppc64 from a software RAID install disk is not "
                                    "supported; deploy onto a single disk")
    if request.target_boot_mode == "uefi" or uefi.efi_booted():
        outcome.raid = raid_uefi.install(md_device, members, request.efi_system_part_uuid,
                                         arch=arch)
        return "raid-uefi"
    outcome.raid = raid_bios.install(md_device, members, request.root_uuid)
    return "raid-bios"


def _fail_or_ignore(exc: BaseException, request: Request, outcome: Outcome, what: str) -> None:
    if isinstance(exc, Cancelled):
        raise exc
    error = exc if isinstance(exc, PASS_THROUGH) else _wrap(exc, what)
    if not request.ignore_failure:
        if error is exc:
            raise exc
        raise error from exc
    LOG.warning("ignoring a boot loader failure in %s (ignore_bootloader_failure): %s", what,
                error.details)
    outcome.ignored.append(f"{what}: {error.details}")


def _wrap(exc: BaseException, what: str) -> CommandExecutionError:
    detail = exc.details if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}"
    return CommandExecutionError(f"{what} failed: {detail}")


def _phase(ctx: CommandContext | None, phase: str) -> None:
    if ctx is not None:
        ctx.progress.update(phase=f"install_bootloader: {phase}", unit="steps")
        ctx.check_cancelled()


def _check_cancelled(ctx: CommandContext | None) -> None:
    if ctx is not None:
        ctx.check_cancelled()
