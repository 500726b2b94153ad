"""Disk burn-in with fio (``burnin_disk``): destructive, verified read-write on every disk.

As IPA: one fio run with a job per disk, all disks at once: sequential
read-write, 4 KiB blocks, direct I/O through libaio at queue depth 32, every
block written carrying a crc32c that is checked when read back, verification
errors counted rather than stopping the run.  Knobs: ``agent_burnin_fio_disk_loops``
(default 4), ``agent_burnin_fio_disk_runtime`` (seconds, 0: no time limit,
run the loops), ``agent_burnin_fio_disk_outputfile``.

Beyond IPA, because this step overwrites whole disks:
- it answers to ``properties.skip_block_devices``, skips Ironic's virtual media
  and read-only devices, and refuses — before anything is written — a disk
  that is in use (mounted, swap, held, open) or carries a shared-SAN
  filesystem, and an md array (burn in its member disks after deleting it);
- a verification error fails the step (fio itself exits 0 on them);
- fio's block dumps (``verify_dump``) are not written: thousands of files in
  the ramdisk's memory help nobody once the node powers off;
- without a runtime the run is still bounded, by a floor of 1 MiB/s over
  every pass (``BOUND_FLOOR_RATE``), far below what any working disk does.

``agent_burnin_fio_disk_smart_test`` (IPA: a SMART self test afterwards) is
refused when true: smartctl is not in this ramdisk, and a silent skip would
pass a test that never ran.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from agent import errors, tools
from agent.context import CommandContext
from agent.disk.usage import UsageSnapshot
from agent.hardware import burnin_fio, hints
from agent.hardware import burnin_run as run
from agent.hardware.disks import Disk, list_disks
from agent.hardware.erase_guards import refusal_reasons, skip_reason

LOG = logging.getLogger(__name__)

DEFAULT_LOOPS = 4
MAX_LOOPS = 1000
BOUND_FLOOR_RATE = 1024 * 1024          # bytes/s
# per pass: half the disk written and read in the mix, the written half read back to verify
PASS_FACTOR = 1.5


def _options(node: Any) -> tuple[int, int, str | None]:
    info = run.driver_info(node)
    loops = run.int_knob(info, "agent_burnin_fio_disk_loops", DEFAULT_LOOPS, 1, MAX_LOOPS)
    runtime = run.duration_knob(info, "agent_burnin_fio_disk_runtime", 0, 0)
    outputfile = run.outputfile_knob(info, "agent_burnin_fio_disk_outputfile")
    if run.bool_knob(info, "agent_burnin_fio_disk_smart_test", False):
        raise run.bad_knob("agent_burnin_fio_disk_smart_test",
                           "is not supported by this agent (no smartctl in the ramdisk); "
                           "unset it or set it to false")
    return loops, runtime, outputfile


def plan(disks: Sequence[Disk], node: Any, *, guard_shared: bool = True,
         root: str = "/") -> tuple[list[Disk], dict[str, str]]:
    """Disks to burn in and the ones skipped with why; UnsafeDevice names every refusal."""
    try:
        skip_parsed = hints.parse_skip_list(hints.skip_list_from_node(node))
    except errors.DeviceNotFound:
        raise errors.InvalidCommandParamsError(
            "properties.skip_block_devices must be a list of root device hint objects"
        ) from None
    targets: list[Disk] = []
    skipped: dict[str, str] = {}
    refused: list[str] = []
    for disk in disks:
        why = skip_reason(disk, skip_parsed)
        if why:
            skipped[disk.name] = why
            continue
        if disk.read_only:
            skipped[disk.name] = "read-only: it cannot be written"
            continue
        if disk.kind == "md":
            refused.append(f"{disk.name} is an md array: delete it (delete_configuration) "
                           "to burn in its member disks, or list it in skip_block_devices")
            continue
        targets.append(disk)
    usage = UsageSnapshot(root)
    for disk in targets:
        reasons = refusal_reasons(disk, usage, guard_shared=guard_shared)
        if reasons:
            refused.append(f"{disk.name}: {'; '.join(reasons)}")
    if refused:
        raise errors.UnsafeDevice("refusing the disk burn-in; nothing was written: "
                                  + " | ".join(refused))
    return targets, skipped


def fio_args(targets: Sequence[Disk], loops: int, runtime: int) -> list[str]:
    args = ["--rw=readwrite", "--bs=4k", "--direct=1", "--ioengine=libaio", "--iodepth=32",
            "--verify=crc32c", "--continue_on_error=verify", f"--loops={loops}",
            # a stopped run would leave a <job>-verify.state file in the working directory
            "--verify_state_save=0",
            "--output-format=json", f"--status-interval={burnin_fio.STATUS_INTERVAL_S}"]
    if runtime:
        args += [f"--runtime={runtime}", "--time_based"]
    for disk in targets:
        # options after a --name belong to that job: one job per disk
        args += [f"--name={disk.name}", f"--filename={disk.name}"]
    return args


def burnin_disk(node: Any, ports: Any = None, ctx: CommandContext | None = None,
                disks: Sequence[Disk] | None = None, *, guard_shared: bool = True,
                root: str = "/") -> dict[str, Any]:
    """Burn in every listed disk with fio; raise on a tool failure or any verify error."""
    loops, runtime, outputfile = _options(node)
    ctx = ctx or CommandContext("local", "burnin_disk")
    listed = list(disks) if disks is not None else list_disks(root)
    targets, skipped = plan(listed, node, guard_shared=guard_shared, root=root)
    for name, why in skipped.items():
        LOG.info("not burning in %s: %s", name, why)
    result: dict[str, Any] = {"tool": "fio", "loops": loops, "runtime_s": runtime,
                              "disks": {}, "skipped": skipped}
    if not targets:
        LOG.warning("disk burn-in: no disk to burn in")
        return result
    if runtime:
        limit = run.bound(runtime)
        total = None
    else:
        biggest = max(d.size for d in targets)
        limit = run.bound(PASS_FACTOR * loops * biggest / BOUND_FLOOR_RATE)
        # every pass writes half of each disk
        total = loops * sum(d.size for d in targets) // 2

    def report(latest: dict[str, Any]) -> None:
        read, written = burnin_fio.moved(stream.jobs())
        ctx.progress.update(done=written, read_bytes=read)

    stream = burnin_fio.ReportStream(on_report=report)
    ctx.progress.update(phase="fio disk burn-in", done=0, total=total, unit="bytes",
                        disks=[d.name for d in targets])
    LOG.info("disk burn-in of %s: %d loop(s), runtime %ss, bounded at %.0fs",
             ", ".join(d.name for d in targets), loops, runtime or "unlimited", limit)
    try:
        outcome = run.run_tool("fio", fio_args(targets, loops, runtime), ctx, limit=limit,
                               label="burnin_disk", on_line=stream.feed)
    except errors.ToolError as exc:
        raise run.step_error(node, exc.details or str(exc)) from None
    burnin_fio.save_report(stream, outputfile)
    jobs = {str(j.get("jobname")): burnin_fio.job_summary(j) for j in stream.jobs()}
    result["disks"] = {d.name: jobs.get(d.name, {}) for d in targets}
    why = tools.tail(outcome.stderr or "\n".join(stream.notices), 1500)
    bad = [f"{name}: {s['verify_errors']} verification error(s), first errno "
           f"{s['first_error']}" if s["verify_errors"] else f"{name}: I/O error {s['error']}"
           for name, s in result["disks"].items()
           if s and (s["verify_errors"] or s["error"])]
    if outcome.returncode != 0 or bad or len(jobs) < len(targets):
        summary = "; ".join(bad) or (f"exit code {outcome.returncode}"
                                     if outcome.returncode else "no report for every disk")
        raise run.step_error(node, f"fio (disk) failed: {summary}: {why}")
    ctx.progress.update(done=total or burnin_fio.moved(stream.jobs())[1])
    return result
