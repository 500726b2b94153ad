"""An out-of-tree hardware manager, as a vendor would ship one.

It adds a clean step (``example_stamp``), ranks above the generic manager,
and filters the disk list: when the node's ``extra.example_allowed_disks``
names disks, every part of the agent sees only those.  Registered through
the ``deploy_agent.hardware_managers`` entry point in the neighbouring
dist-info (on ``sys.path``) or by ``pip install`` of this directory.
"""

from __future__ import annotations

import json
import os
from typing import Any

from agent.hardware.managers import HardwareManager, SupportLevel


class ExampleHardwareManager(HardwareManager):
    NAME = "example_hardware_manager"
    VERSION = "1.3"

    def evaluate_hardware_support(self) -> int:
        if os.environ.get("EXAMPLE_HWM_DISABLED") == "1":
            return SupportLevel.NONE
        return SupportLevel.SERVICE_PROVIDER

    def get_clean_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return [{"step": "example_stamp", "priority": 0, "interface": "deploy",
                 "reboot_requested": False, "abortable": True,
                 "argsinfo": {"path": {"description": "file to write the stamp to",
                                       "required": True}}}]

    def example_stamp(self, node: Any, ports: Any, path: str, ctx: Any = None
                      ) -> dict[str, Any]:
        if ctx is not None:
            ctx.progress.update(phase="stamping", done=0, total=1, unit="files")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"node": (node or {}).get("uuid"), "ports": len(ports or [])}, f)
        if ctx is not None:
            ctx.progress.update(done=1)
        return {"stamped": path}

    def filter_devices(self, disks: list[Any]) -> list[Any]:
        allowed = ((self.state.node or {}).get("extra") or {}).get("example_allowed_disks")
        if allowed is None:
            return disks
        return [d for d in disks if d.name in allowed]
