"""What the erase steps would touch on this machine for a node, without writing anything.

``deploy-agent erase-plan`` prints it, so that an operator (or a test tier
that lends its host to a real Ironic) can see, before cleaning starts, which
disks ``erase_devices*`` would erase, which it would skip, and which it would
refuse, exactly as the steps decide: the same disk list after every hardware
manager's filters, the same skip_block_devices parsing, the same guards.
"""

from __future__ import annotations

from typing import Any

from agent.errors import AgentError
from agent.hardware import erase, managers
from agent.hardware.erase_base import options_from_node
from agent.state import AgentState


def preview(state: AgentState, node: Any) -> dict[str, Any]:
    """``{"disks", "erase", "skipped", "refused"}`` for ``node``; never writes."""
    disks = managers.list_disks(state)
    options = options_from_node(node, discard=state.config.enable_discard_erase)
    names = [d.name for d in disks]
    try:
        targets, skipped = erase.plan(disks, node, options,
                                      guard_shared=state.config.guard_special_filesystems)
    except AgentError as exc:      # UnsafeDevice, or a malformed skip list
        return {"disks": names, "erase": [], "skipped": {}, "refused": exc.details}
    return {"disks": names, "erase": [d.name for d in targets], "skipped": skipped,
            "refused": None}
