"""The burn-in steps, as IPA offers them: CPU, memory, disk and network stress tests.

``burnin_cpu`` and ``burnin_memory`` run stress-ng, ``burnin_disk`` and
``burnin_network`` run fio; each reads IPA's ``agent_burnin_*`` knobs from the
node's driver_info, validates them before anything runs, bounds the tool by
its own time limit plus a margin, reports progress, stops the tool (and all
it forked) on cancel, and returns the tool's metrics.  GPU burn-in
(``burnin_gpu``, IPA's gpu-burn) is not offered.

Step lists (IPA's): every step is a deploy step and a manual clean step
(priority 0) and all but ``burnin_disk`` are service steps; all are abortable.
"""

from __future__ import annotations

from typing import Any

from agent.hardware.burnin_disk import burnin_disk
from agent.hardware.burnin_net import burnin_network
from agent.hardware.burnin_stress import burnin_cpu, burnin_memory

__all__ = ["CLEAN_STEPS", "DEPLOY_STEPS", "SERVICE_STEPS", "STEP_NAMES", "burnin_cpu",
           "burnin_disk", "burnin_memory", "burnin_network"]

STEP_NAMES = ("burnin_cpu", "burnin_disk", "burnin_memory", "burnin_network")


def _step(name: str) -> dict[str, Any]:
    return {"step": name, "priority": 0, "interface": "deploy", "reboot_requested": False,
            "abortable": True}


CLEAN_STEPS: tuple[dict[str, Any], ...] = tuple(_step(n) for n in STEP_NAMES)
DEPLOY_STEPS: tuple[dict[str, Any], ...] = tuple(_step(n) for n in STEP_NAMES)
# a service step runs on a node in use: its disks hold the tenant's data
SERVICE_STEPS: tuple[dict[str, Any], ...] = tuple(
    _step(n) for n in STEP_NAMES if n != "burnin_disk")
