"""Build software RAID: decide everything first, then change the disks stage by stage.

The sequence and its failure policy, in order:

``prepare`` (reads only; any problem raises and no disk has been touched):
  1. validate the configuration (``config.validate``);
  2. the usable disks (``pool.build``) and each volume's members
     (``config.select_members``);
  3. the layout (``layout.make_plan``) for the node's boot mode, disk label
     and CPU architecture;
  4. safety: no member disk mounted, swap, open or held, except by arrays that
     ``delete_existing`` stops (those are checked as a whole, as
     delete_configuration checks them); no shared-SAN filesystem on a member
     (when the agent guards them); mdadm installed.

``run`` (writes; a failure raises the step's error naming every stage done,
the state each disk was left in, and that delete_configuration returns the
disks to empty):
  1. delete_existing: the whole delete_configuration (``teardown``);
  2. wipe every member disk: signatures and both table copies;
  3. write the new table with the holder partitions at the planned sectors,
     read it back and check it;
  4. make the kernel see the partitions (``reread``);
  5. ``mdadm --create`` each array and wait for its device.

Cancellation is honoured between stages; the step is not abortable by Ironic,
so a cancel only comes from the agent's own API.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from agent import tools
from agent.context import CommandContext
from agent.disk import blockdev, reread
from agent.disk import partition_table as pt
from agent.disk.usage import UsageSnapshot
from agent.errors import (
    AgentError,
    CleaningError,
    InvalidCommandParamsError,
    ToolMissing,
    UnsafeDevice,
)
from agent.hardware.disks import Disk
from agent.hardware.erase_guards import refusal_reasons
from agent.hardware.raid import arrays, config, layout, mdadm, pool, result, teardown
from agent.hardware.raid.layout import ArrayPlan, DiskLayout, Plan

LOG = logging.getLogger(__name__)
CREATE_TIMEOUT = 120.0
DEVICE_WAIT = 30.0
GPT_RAID_CODE = "FD00"


@dataclasses.dataclass
class Prepared:
    logical_disks: list[config.LogicalDisk]
    plan: Plan
    members: dict[str, Disk]                # member disks by name
    teardown: teardown.Teardown | None      # delete_existing: what is deleted first
    skipped: dict[str, str]


def prepare(listed: Sequence[Disk], node: Any, raid_config: Any, *, delete_existing: bool,
            guard_shared: bool = True, root: str = "/",
            usage: UsageSnapshot | None = None) -> Prepared:
    """Decide everything for creating ``raid_config``; raise before any write."""
    lds = config.validate(raid_config)
    found = pool.build(listed, node, with_members=delete_existing, root=root)
    members = config.select_members(lds, found.disks)
    chosen = {d.name: d for ld in lds for d in members[ld.index]}
    usage = usage if usage is not None else UsageSnapshot(root)
    stopping = found.others if delete_existing else []
    remaining = [a for a in found.arrays if a not in stopping]
    clash = sorted({ld.volume_name for ld in lds}
                   & {a.volume_name for a in remaining if a.volume_name})
    if clash:
        raise InvalidCommandParamsError(
            f"an md array named {', '.join(clash)} already exists and is kept (delete_existing "
            "is false, or skip_block_devices lists it)")
    plan = layout.make_plan(lds, members, boot_mode=pool.boot_mode(node, root),
                            label=pool.disk_label(node), cpu_arch=pool.cpu_arch(node),
                            taken_md=[a.kname for a in remaining])
    refused: list[str] = []
    plan_teardown = None
    if delete_existing:
        try:
            plan_teardown = teardown.prepare(found, usage=usage, guard_shared=guard_shared)
        except UnsafeDevice as exc:
            refused.append(exc.details)
    names = {a.kname for a in stopping}
    for disk in chosen.values():
        reasons = refusal_reasons(disk, usage, guard_shared=guard_shared, stopping=names)
        if reasons:
            refused.append(f"{disk.name}: {'; '.join(reasons)}")
    if refused:
        raise UnsafeDevice("refusing to create the software RAID configuration; nothing was "
                           "changed: " + " | ".join(refused))
    if tools.which(mdadm.TOOL) is None:
        raise ToolMissing("mdadm is not installed (Debian package mdadm); it is needed to "
                          "create software RAID")
    if not arrays.ensure_driver():
        raise ToolMissing("this kernel has no md driver (md_mod could not be loaded); "
                           "software RAID cannot be created, and nothing was changed")
    return Prepared(lds, plan, chosen, plan_teardown, found.skipped)


# --- the stages that write -----------------------------------------------------------------

def wipe(disk: DiskLayout) -> None:
    """Every signature and both copies of any table: the member starts empty.

    The first MiB of each planned partition is zeroed as well: an old
    filesystem there would otherwise show through the new partition next to
    the md superblock (mdadm writes 4 KiB in) or the later ESP.
    """
    tools.run("wipefs", "--all", "--force", disk.disk)
    heads = [h.start for h in disk.holders]
    if disk.boot_room[1]:
        heads.append(disk.boot_room[0])
    with open(disk.disk, "r+b", buffering=0) as f:
        for start in heads:
            f.seek(start)
            f.write(bytes(layout.MiB))
    blockdev.zero_edges(disk.disk)


def _holder_name(plan: Plan, array: int) -> str:
    return f"md-{plan.array(array).volume_name}"[:36]


def write_table(disk: DiskLayout, plan: Plan) -> pt.PartitionTable:
    """The holders at their planned sectors (sgdisk for GPT, sfdisk for MBR), checked."""
    ss = disk.sector_size
    if plan.label == "gpt":
        # alignment 1: the planned starts are already whole MiB; sgdisk must not move them
        args = ["--clear", "--set-alignment=1"]
        for h in disk.holders:
            first, count = h.sectors(ss)
            args += [f"--new={h.number}:{first}:{first + count - 1}",
                     f"--typecode={h.number}:{GPT_RAID_CODE}",
                     f"--change-name={h.number}:{_holder_name(plan, h.array)}"]
        tools.run("sgdisk", *args, disk.disk)
    else:
        lines = ["label: dos", "unit: sectors"]
        for h in disk.holders:
            first, count = h.sectors(ss)
            lines.append(f"{first}, {count}, fd")
        tools.run("sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", "--wipe=always",
                  disk.disk, input="\n".join(lines) + "\n")
    table = pt.read_table(disk.disk)
    got = [(p.number, p.start_bytes, p.size_bytes) for p in table.partitions]
    want = [(h.number, h.start, h.size) for h in disk.holders]
    if table.kind != ("gpt" if plan.label == "gpt" else "mbr") or got != want:
        raise AgentError(f"the partition table written to {disk.disk} is not the planned one "
                         f"(found {table.kind or 'no table'} with {len(got)} partition(s))")
    return table


def create_array(array: ArrayPlan, ctx: CommandContext | None) -> None:
    """``mdadm --create`` and wait for the device node (the one step that needs md)."""
    tools.run(mdadm.TOOL, *mdadm.create(array.md_device, array.mdadm_level, array.members,
                                        name=array.volume_name, metadata=array.metadata),
              env=mdadm.ENV, timeout=CREATE_TIMEOUT)
    deadline = time.monotonic() + DEVICE_WAIT
    while not os.path.exists(array.md_device):
        if time.monotonic() > deadline:
            raise AgentError(f"mdadm created {array.md_device} but the device did not appear "
                             f"within {DEVICE_WAIT:g}s")
        if ctx is not None:
            ctx.sleep(0.1)
        else:
            time.sleep(0.1)


class _Stages:
    """Runs the stages in order and remembers, per disk, how far each one got."""

    def __init__(self, ctx: CommandContext | None, total: int) -> None:
        self.ctx = ctx
        self.done: list[str] = []
        self.disks: dict[str, str] = {}
        self.total = total
        if ctx is not None:
            ctx.progress.update(phase="create_configuration", done=0, total=total)

    def step(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.ctx is not None:
            self.ctx.check_cancelled()
            self.ctx.progress.update(done=len(self.done), current=what)
        value = fn(*args, **kwargs)
        self.done.append(what)
        return value

    def state(self) -> str:
        disks = "; ".join(f"{name}: {how}" for name, how in self.disks.items())
        return f"Disks: {disks or 'untouched'}"


def run(prepared: Prepared, ctx: CommandContext | None = None, *,
        error_cls: type[AgentError] = CleaningError) -> dict[str, Any]:
    """Carry out a prepared creation; returns the RAID configuration for Ironic."""
    plan = prepared.plan
    stages = _Stages(ctx, 1 + 3 * len(plan.disks) + len(plan.arrays))
    try:
        old = prepared.teardown
        if old is not None and not old.empty:
            stages.step("delete the existing configuration", teardown.run, old,
                        error_cls=error_cls)
            for item in old.disks:
                stages.disks[item.disk.name] = ("no partition table (old RAID deleted)"
                                                if item.wipe else "old holders removed")
        for disk in plan.disks:
            stages.step(f"wipe {disk.disk}", wipe, disk)
            stages.disks[disk.disk] = "wiped, no partition table"
        for disk in plan.disks:
            table = stages.step(f"partition {disk.disk}", write_table, disk, plan)
            stages.disks[disk.disk] = (f"{plan.label} table with holder partition(s) "
                                       f"{', '.join(h.path for h in disk.holders)}")
            stages.step(f"re-read {disk.disk}", reread.reread, disk.disk, table=table)
        for array in plan.arrays:
            stages.step(f"create {array.md_device}", create_array, array, ctx)
            for name in array.member_disks:
                stages.disks[name] += f"; member of {array.md_device} ({array.volume_name})"
    except (AgentError, OSError) as exc:
        details = exc.details if isinstance(exc, AgentError) else str(exc)
        LOG.error("software RAID creation failed after %s: %s",
                  ", ".join(stages.done) or "no stage", details)
        raise error_cls(
            f"creating the software RAID configuration failed: {details}. Done before the "
            f"failure: {', '.join(stages.done) or 'nothing'}. {stages.state()}. "
            "delete_configuration returns these disks to empty") from None
    LOG.info("software RAID created: %s", "; ".join(
        f"{a.md_device} ({a.volume_name}, RAID-{a.raid_level}, {a.size // layout.MiB} MiB "
        f"over {', '.join(a.members)})" for a in plan.arrays))
    return result.raid_config(prepared.logical_disks, plan)

