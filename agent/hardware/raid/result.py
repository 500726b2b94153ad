"""The RAID configuration a RAID step returns, which Ironic stores as the node's ``raid_config``.

Ironic's post-step hook (``AgentRAID._create_configuration_final``) fails the
step when the result is empty, then hands it to ``raid.update_raid_info``:
that copies it to ``node.raid_config`` and, for the root volume, sets
``properties.local_gb`` from ``size_gb`` (unless ``"MAX"``) and the
``raid_level`` capability.  IPA returns the requested configuration unchanged;
we return it completed with what was built: a whole number of GiB for a
``MAX`` volume, and ``physical_disks`` as the device names chosen (the
schema's list-of-strings form), so the record says which disks hold what.
Only keys of Ironic's RAID schema are used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.hardware.raid.config import SOFTWARE, LogicalDisk
from agent.hardware.raid.layout import Plan

# keys of the request carried over as they were; the rest are replaced or not schema
_KEEP = ("share_physical_disks", "disk_type", "interface_type")


def logical_disk_result(ld: LogicalDisk, plan: Plan) -> dict[str, Any]:
    array = plan.array(ld.index)
    out: dict[str, Any] = {
        "controller": SOFTWARE,
        "raid_level": ld.raid_level,
        "size_gb": array.size_gb,
        "volume_name": ld.volume_name,
        "physical_disks": list(array.member_disks),
    }
    if ld.is_root_volume:
        out["is_root_volume"] = True
    for key in _KEEP:
        if key in ld.raw:
            out[key] = ld.raw[key]
    return out


def raid_config(logical_disks: Sequence[LogicalDisk], plan: Plan) -> dict[str, Any]:
    """``{"logical_disks": [...]}`` in the request's order; never empty for a built plan."""
    if not logical_disks:
        raise ValueError("a RAID result needs at least one logical disk")
    ordered = sorted(logical_disks, key=lambda ld: ld.index)
    return {"logical_disks": [logical_disk_result(ld, plan) for ld in ordered]}
