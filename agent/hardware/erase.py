"""The erase steps: choose disks, run every guard, then erase.

Nothing is written until every disk has passed its checks, so one refused
disk fails the step with all disks intact.  ``erase_devices`` tries, per
disk: NVMe format → ATA secure erase → verified discard (opt-in) → overwrite
(when the options allow one), with at most ``disk_erasure_concurrency``
disks in flight and byte progress reported across all of them.

md arrays: an array is never an erase target itself; its member disks are.
Every array with a member on a disk to erase is stopped, and its members'
superblocks zeroed, before the first disk is written, so an array holding a
disk never fails the step.  Refused instead, before anything is stopped: an
array that is in use (mounted, swap, LVM on it, open), one that also lies on
a disk not being erased (stopping it would break that disk's data), and one
that skip_block_devices keeps while its disks would be erased.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from agent.context import CommandContext
from agent.errors import AgentError, Cancelled, CleaningError, DeviceNotFound, UnsafeDevice
from agent.hardware import erase_ata, erase_nvme, erase_overwrite, hints
from agent.hardware.disks import Disk, read_member_disk
from agent.hardware.erase_base import EraseFailed, EraseOptions, EraseUnsupported
from agent.hardware.erase_guards import (
    SKIP_LISTED,
    UsageSnapshot,
    array_as_disk,
    array_refusal_reasons,
    refusal_reasons,
    skip_reason,
)
from agent.hardware.erase_metadata import erase_metadata
from agent.hardware.raid import arrays as md_arrays
from agent.hardware.raid.arrays import MdArray

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class ErasePlan:
    targets: list[Disk]                # whole disks to erase, in order
    skipped: dict[str, str]            # device -> why it is left alone
    arrays: list[MdArray]              # to stop (and forget) before the first write


def _member_disks(arrays: Sequence[MdArray], listed: set[str], root: str) -> list[Disk]:
    """Whole disks that are array members: the listing hides them behind their array."""
    found: dict[str, Disk] = {}
    for array in arrays:
        # an inactive array is not listed (it has no size) but holds its disks all the same
        if array.device not in listed and array.size > 0:
            continue
        for name in array.member_disks:
            if name in listed or name in found:
                continue
            disk = read_member_disk(root, name)
            if disk is not None:
                found[name] = disk
    return list(found.values())


def prepare(disks: Sequence[Disk], node: Any, options: EraseOptions, *, guard_shared: bool,
            arrays: Sequence[MdArray] | None = None, root: str = "/") -> ErasePlan:
    """Decide everything; raise UnsafeDevice naming every refusal before anything is done."""
    try:
        skip_parsed = hints.parse_skip_list(hints.skip_list_from_node(node))
    except DeviceNotFound as exc:
        raise CleaningError(exc.details) from None
    found = list(md_arrays.list_arrays(root) if arrays is None else arrays)
    listed = {d.name: d for d in disks}
    # an array answers to the skip list as the listing shows it
    as_disk = {a.device: listed.get(a.device) or array_as_disk(a) for a in found}
    kept = {a.device for a in found if hints.skipped_by(as_disk[a.device], skip_parsed)}
    candidates = [d for d in disks if d.kind != "md"]
    candidates += _member_disks([a for a in found if a.device not in kept], set(listed), root)
    targets: list[Disk] = []
    skipped: dict[str, str] = {}
    refused: list[str] = []
    for disk in candidates:
        why = skip_reason(disk, skip_parsed)
        if why:
            skipped[disk.name] = why
            continue
        if disk.read_only:
            if options.skip_read_only:
                skipped[disk.name] = "read-only (agent_erase_skip_read_only)"
                continue
            refused.append(f"{disk.name} is read-only (set agent_erase_skip_read_only to "
                           "skip read-only devices)")
            continue
        targets.append(disk)
    erasing = {d.name for d in targets}
    stopping = [a for a in found if erasing.intersection(a.member_disks)]
    usage = UsageSnapshot(root)
    for array in stopping:
        refused += _array_refusals(array, array.device in kept, erasing, skipped, usage,
                                   guard_shared)
    for md in (d for d in disks if d.kind == "md"):
        if md.name in kept:
            skipped.setdefault(md.name, SKIP_LISTED)
        elif md.name not in {a.device for a in stopping}:
            skipped[md.name] = "an md array with no member on a disk being erased"
    names = {a.kname for a in stopping}
    for disk in targets:
        reasons = refusal_reasons(disk, usage, guard_shared=guard_shared, stopping=names)
        if reasons:
            refused.append(f"{disk.name}: {'; '.join(reasons)}")
    if refused:
        raise UnsafeDevice("refusing to erase; nothing was written: " + " | ".join(refused))
    for name, why in skipped.items():
        LOG.info("not erasing %s: %s", name, why)
    return ErasePlan(targets, skipped, stopping)


def _array_refusals(array: MdArray, kept: bool, erasing: set[str], skipped: dict[str, str],
                    usage: UsageSnapshot, guard_shared: bool) -> list[str]:
    label = f"md array {array.device}" + (f" ({array.volume_name})" if array.volume_name
                                          else "")
    on = ", ".join(d for d in array.member_disks if d in erasing)
    if kept:
        return [f"{label} is listed in properties.skip_block_devices but has members on "
                f"{on}, which would be erased; skip those disks too, or unlist the array"]
    reasons = [f"{label} also lies on {d} ({skipped.get(d, 'not among the disks to erase')});"
               f" stopping it to erase {on} would break it there"
               for d in array.member_disks if d not in erasing]
    reasons += [f"{label} must be stopped to erase {on}, but {why}"
                for why in array_refusal_reasons(array, usage, guard_shared=guard_shared)]
    return reasons


def plan(disks: Sequence[Disk], node: Any, options: EraseOptions, *,
         guard_shared: bool) -> tuple[list[Disk], dict[str, str]]:
    """Disks to erase and the ones skipped with why; raise UnsafeDevice if any is refused."""
    decided = prepare(disks, node, options, guard_shared=guard_shared)
    return decided.targets, decided.skipped


def _stop_arrays(decided: ErasePlan) -> None:
    """Stop the planned arrays and zero their members' superblocks: nothing may reassemble."""
    if not decided.arrays:
        return
    try:
        md_arrays.stop_and_forget(decided.arrays)
    except AgentError as exc:
        raise CleaningError(f"could not stop the md arrays on the disks to erase "
                            f"({', '.join(a.device for a in decided.arrays)}): "
                            f"{exc.details}") from None


def _result(decided: ErasePlan, erased: dict[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = {"erased": erased, "skipped": decided.skipped}
    if decided.arrays:
        result["arrays_stopped"] = [a.device for a in decided.arrays]
    return result


def erase_devices_metadata(disks: Sequence[Disk], node: Any, options: EraseOptions,
                           ctx: CommandContext | None = None, *, guard_shared: bool = True,
                           arrays: Sequence[MdArray] | None = None,
                           root: str = "/") -> dict[str, Any]:
    ctx = ctx or CommandContext("local", "erase")
    decided = prepare(disks, node, options, guard_shared=guard_shared, arrays=arrays,
                      root=root)
    targets = decided.targets
    _stop_arrays(decided)
    erased: dict[str, str] = {}
    ctx.progress.update(phase="erase_devices_metadata", done=0, total=len(targets),
                        unit="devices")
    for done, disk in enumerate(targets, 1):
        ctx.check_cancelled()
        erased[disk.name] = erase_metadata(disk)
        ctx.progress.update(done=done, current=disk.name)
    return _result(decided, erased)


def erase_devices_express(disks: Sequence[Disk], node: Any, options: EraseOptions,
                          ctx: CommandContext | None = None, *, guard_shared: bool = True,
                          arrays: Sequence[MdArray] | None = None,
                          root: str = "/") -> dict[str, Any]:
    """NVMe format where it applies, a metadata wipe everywhere else (fast)."""
    ctx = ctx or CommandContext("local", "erase")
    decided = prepare(disks, node, options, guard_shared=guard_shared, arrays=arrays,
                      root=root)
    targets = decided.targets
    _stop_arrays(decided)
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
    return _result(decided, erased)


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
                  ctx: CommandContext | None = None, *, guard_shared: bool = True,
                  arrays: Sequence[MdArray] | None = None, root: str = "/") -> dict[str, Any]:
    ctx = ctx or CommandContext("local", "erase")
    decided = prepare(disks, node, options, guard_shared=guard_shared, arrays=arrays,
                      root=root)
    targets = decided.targets
    _stop_arrays(decided)
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
    return _result(decided, erased)
