"""The command surface.  Extensions validate, then call hardware/ and imaging/.

- ``standby``: prepare_image, cache_image, partition UUIDs, sync, power
- ``steps``: clean, deploy and service steps (one extension class per step type)
- ``image``: install_bootloader; ``poll``: the inventory; ``log``: collected logs
- ``system``: lockdown; ``rescue``: finalize_rescue

Extensions are found through the ``deploy_agent.extensions`` entry-point
group, so an out-of-tree package can add commands without touching this tree.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import ClassVar

from agent.config import Config
from agent.state import AgentState

LOG = logging.getLogger(__name__)
GROUP = "deploy_agent.extensions"


class Extension:
    name: ClassVar[str]

    def __init__(self, state: AgentState) -> None:
        self.state = state

    @property
    def config(self) -> Config:
        return self.state.config


def load_extensions(state: AgentState, names: list[str] | None = None) -> list[Extension]:
    """Instantiate every extension registered under the entry-point group."""
    found = []
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        if names is not None and ep.name not in names:
            continue
        try:
            cls = ep.load()
            found.append(cls(state))
        except Exception:  # noqa: BLE001 - one broken plugin must not stop the agent
            LOG.exception("extension %s (%s) failed to load; its commands are unavailable",
                          ep.name, ep.value)
    if not found:
        LOG.error("no extensions found under %s; is the package installed?", GROUP)
    return found
