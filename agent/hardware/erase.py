"""The erase steps: choose disks, run every guard, then erase.

Nothing is written until every disk has passed its checks, so one refused
disk fails the step with all disks intact.  ``erase_devices`` tries, per
disk: NVMe format → ATA secure erase → verified discard (opt-in) → overwrite
(when the options allow one), with at most ``disk_erasure_concurrency``
disks in flight and byte progress reported across all of them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from agent.context import CommandContext
from agent.errors import Cancelled, CleaningError, DeviceNotFound, UnsafeDevice
from agent.hardware import erase_ata, erase_nvme, erase_overwrite, hints
from agent.hardware.disks import Disk
from agent.hardware.erase_base import EraseFailed, EraseOptions, EraseUnsupported
from agent.hardware.erase_guards import UsageSnapshot, refusal_reasons, virtual_media_reason
from agent.hardware.erase_metadata import erase_metadata

LOG = logging.getLogger(__name__)


def plan(disks: Sequence[Disk], node: Any, options: EraseOptions, *,
         guard_shared: bool) -> tuple[list[Disk], dict[str, str]]:
    """Disks to erase and the ones skipped with why; raise UnsafeDevice if any is refused."""
    try:
        skip_parsed = hints.parse_skip_list(hints.skip_list_from_node(node))
    except DeviceNotFound as exc:
        raise CleaningError(exc.details) from None
    usage = UsageSnapshot()
    targets: list[Disk] = []
    skipped: dict[str, str] = {}
    refused: list[str] = []
    for disk in disks:
        if hints.skipped_by(disk, skip_parsed):
            skipped[disk.name] = "listed in properties.skip_block_devices"
            continue
        # before the read-only check: the boot ISO is read-only and must be skipped, not refused
        media = virtual_media_reason(disk)
        if media:
            skipped[disk.name] = media
            continue
        if disk.read_only:
            if options.skip_read_only:
                skipped[disk.name] = "read-only (agent_erase_skip_read_only)"
                continue
            refused.append(f"{disk.name} is read-only (set agent_erase_skip_read_only to "
                           "skip read-only devices)")
            continue
        reasons = refusal_reasons(disk, usage, guard_shared=guard_shared)
        if reasons:
            refused.append(f"{disk.name}: {'; '.join(reasons)}")
            continue
        targets.append(disk)
    if refused:
        raise UnsafeDevice("refusing to erase; nothing was written: " + " | ".join(refused))
    for name, why in skipped.items():
        LOG.info("not erasing %s: %s", name, why)
    return targets, skipped


def erase_devices_metadata(disks: Sequence[Disk], node: Any, options: EraseOptions,
                           ctx: CommandContext | None = None, *,
                           guard_shared: bool = True) -> dict[str, Any]:
    ctx = ctx or CommandContext("local", "erase")
    targets, skipped = plan(disks, node, options, guard_shared=guard_shared)
    erased: dict[str, str] = {}
    ctx.progress.update(phase="erase_devices_metadata", done=0, total=len(targets),
                        unit="devices")
    for done, disk in enumerate(targets, 1):
        ctx.check_cancelled()
        erased[disk.name] = erase_metadata(disk)
        ctx.progress.update(done=done, current=disk.name)
    return {"erased": erased, "skipped": skipped}


def erase_devices_express(disks: Sequence[Disk], node: Any, options: EraseOptions,
                          ctx: CommandContext | None = None, *,
                          guard_shared: bool = True) -> dict[str, Any]:
    """NVMe format where it applies, a metadata wipe everywhere else (fast)."""
    ctx = ctx or CommandContext("local", "erase")
    targets, skipped = plan(disks, node, options, guard_shared=guard_shared)
    names = [d.name for d in targets]
    erased: dict[str, str] = {}
    ctx.progress.update(phase="erase_devices_express", done=0, total=len(targets),
                        unit="devices")
    for done, disk in enumerate(targets, 1):
        ctx.check_cancelled()
        try:
            if not options.nvme:
                raise EraseUnsupported("NVMe secure erase is disabled")
            erased[disk.name] = erase_nvme.erase(disk, names)
        except (EraseUnsupported, EraseFailed) as exc:
            LOG.info("%s: no NVMe format (%s); wiping metadata instead", disk.name, exc)
            erased[disk.name] = erase_metadata(disk)
        ctx.progress.update(done=done, current=disk.name)
    return {"erased": erased, "skipped": skipped}


class _ByteProgress:
    """Per-disk fractions summed into one byte count for the command's progress."""

    def __init__(self, ctx: CommandContext, targets: Sequence[Disk]) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._sizes = {d.name: d.size for d in targets}
        self._fraction = dict.fromkeys(self._sizes, 0.0)
        self._finished = 0
        ctx.progress.update(phase="erase_devices", done=0, total=sum(self._sizes.values()),
                            unit="bytes", devices_done=0, devices_total=len(targets))

    def for_disk(self, name: str) -> Callable[[float], None]:
        def report(fraction: float) -> None:
            with self._lock:
                self._fraction[name] = min(1.0, max(0.0, fraction))
                done = sum(int(self._sizes[n] * f) for n, f in self._fraction.items())
            self._ctx.progress.update(done=done)
        return report

    def finished(self, name: str) -> None:
        self.for_disk(name)(1.0)
        with self._lock:
            self._finished += 1
            count = self._finished
        self._ctx.progress.update(devices_done=count)


def erase_one(disk: Disk, options: EraseOptions, erasing: Sequence[str],
              progress: Callable[[float], None], check_cancelled: Callable[[], None]) -> str:
    """Erase one disk with the first method that applies; raise CleaningError if none."""
    failures: list[str] = []
    methods: list[tuple[str, Callable[[], str]]] = []
    if options.nvme:
        methods.append(("NVMe format", lambda: erase_nvme.erase(disk, erasing)))
    if options.ata:
        methods.append(("ATA secure erase", lambda: erase_ata.erase(disk)))
    if options.discard:
        methods.append(("discard", lambda: erase_overwrite.discard(disk, progress)))
    for label, method in methods:
        check_cancelled()
        try:
            return method()
        except EraseUnsupported as exc:
            LOG.info("%s: %s does not apply: %s", disk.name, label, exc)
        except EraseFailed as exc:
            failures.append(f"{label}: {exc}")
            if not options.continue_if_failed:
                raise CleaningError(f"{disk.name}: {label} failed: {exc}; set "
                                    "agent_continue_if_secure_erase_failed to fall back to "
                                    "overwriting") from None
            LOG.warning("%s: %s failed (%s); falling back", disk.name, label, exc)
    if not options.overwrite_allowed:
        LOG.warning("%s: no secure erase applied and overwriting is disabled "
                    "(agent_erase_devices_iterations=0, agent_erase_devices_zeroize=false); "
                    "the disk was NOT erased", disk.name)
        return "not erased: no secure erase available and overwriting disabled"
    try:
        return erase_overwrite.overwrite(disk, options.iterations, options.zeroize, progress,
                                         check_cancelled)
    except (EraseFailed, EraseUnsupported) as exc:
        failures.append(f"overwrite: {exc}")
        raise CleaningError(f"{disk.name}: every erase method failed: "
                            f"{'; '.join(failures)}") from None


def erase_devices(disks: Sequence[Disk], node: Any, options: EraseOptions,
                  ctx: CommandContext | None = None, *,
                  guard_shared: bool = True) -> dict[str, Any]:
    ctx = ctx or CommandContext("local", "erase")
    targets, skipped = plan(disks, node, options, guard_shared=guard_shared)
    progress = _ByteProgress(ctx, targets)
    names = [d.name for d in targets]
    erased: dict[str, str] = {}
    failed: dict[str, str] = {}

    def work(disk: Disk) -> str:
        result = erase_one(disk, options, names, progress.for_disk(disk.name),
                           ctx.check_cancelled)
        progress.finished(disk.name)
        return result

    with concurrent.futures.ThreadPoolExecutor(
            max_workers=options.concurrency, thread_name_prefix="erase") as pool:
        futures = {pool.submit(work, disk): disk for disk in targets}
        for future in concurrent.futures.as_completed(futures):
            disk = futures[future]
            try:
                erased[disk.name] = future.result()
                LOG.info("%s: %s", disk.name, erased[disk.name])
            except Cancelled:
                raise
            except CleaningError as exc:
                failed[disk.name] = exc.details
            except Exception as exc:  # noqa: BLE001 - other disks keep going; reported below
                failed[disk.name] = f"{type(exc).__name__}: {exc}"
    if failed:
        raise CleaningError("erase failed on " + "; ".join(
            f"{n}: {why}" if not why.startswith(n) else why for n, why in sorted(failed.items()))
            + (f" (erased: {', '.join(sorted(erased))})" if erased else ""))
    return {"erased": erased, "skipped": skipped}
