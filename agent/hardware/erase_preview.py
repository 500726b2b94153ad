"""What the erase steps would touch on this machine for a node, without writing anything.

``deploy-agent erase-plan`` prints it, so that an operator (or a test tier
that lends its host to a real Ironic) can see, before cleaning starts, which
disks ``erase_devices*`` would erase, which it would skip, and which it would
refuse, exactly as the steps decide: the same disk list after every hardware
manager's filters, the same skip_block_devices parsing, the same guards.
``arrays_stopped`` names the md arrays the steps would stop first (their
member disks are in ``erase``; a whole disk an array holds appears there
even though the listing shows only its array).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.errors import AgentError
from agent.hardware import erase, managers
from agent.hardware.erase_base import options_from_node
from agent.hardware.raid.arrays import MdArray
from agent.state import AgentState


def _array(array: MdArray) -> dict[str, Any]:
    return {"name": array.device, "volume_name": array.volume_name,
            "members": list(array.members), "member_disks": list(array.member_disks)}


def preview(state: AgentState, node: Any, *, arrays: Sequence[MdArray] | None = None,
            root: str = "/") -> dict[str, Any]:
    """``{"disks", "erase", "skipped", "arrays_stopped", "refused"}`` for ``node``.

    Never writes, and stops nothing.
    """
    disks = managers.list_disks(state)
    options = options_from_node(node, discard=state.config.enable_discard_erase,
                                guard_shared=state.config.guard_special_filesystems)
    names = [d.name for d in disks]
    try:
        decided = erase.prepare(disks, node, options,
                                guard_shared=options.guard_shared, arrays=arrays, root=root)
    except AgentError as exc:      # UnsafeDevice, or a malformed skip list
        return {"disks": names, "erase": [], "skipped": {}, "arrays_stopped": [],
                "refused": exc.details}
    return {"disks": names, "erase": [d.name for d in decided.targets],
            "skipped": decided.skipped,
            "arrays_stopped": [_array(a) for a in decided.arrays], "refused": None}
