"""Find and run inspection collectors; a failing collector is recorded, never fatal.

A collector is a function ``collect(state, data)`` that adds keys to
``data``.  Ironic's hooks read the keys (``inventory``, ``root_disk``,
``logs``, ``pci_devices``, ``lldp_raw``, ``data``, ...), so a collector
writes its own keys and leaves the others alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from agent.state import AgentState

LOG = logging.getLogger(__name__)

GROUP = "deploy_agent.inspection_collectors"
Collector = Callable[[AgentState, dict[str, Any]], None]


def available() -> dict[str, Any]:
    """Every registered collector's entry point, by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=GROUP)}


def run(state: AgentState, names: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Run ``names`` in order; return the data and one line per collector that failed."""
    found = available()
    data: dict[str, Any] = {}
    failures: list[str] = []
    timings: dict[str, float] = {}
    for name in names:
        ep = found.get(name)
        if ep is None:
            failures.append(f"collector {name!r} is not installed (known: "
                            f"{', '.join(sorted(found)) or 'none'})")
            continue
        started = time.monotonic()
        try:
            fn = ep.load()
            fn(state, data)
        except Exception as exc:  # noqa: BLE001 - one collector must not stop the others
            LOG.exception("inspection collector %s failed", name)
            failures.append(f"collector {name} failed: {type(exc).__name__}: {exc}")
        timings[name] = round(time.monotonic() - started, 3)
    LOG.info("inspection collectors ran: %s", ", ".join(f"{n} {t:.3f}s"
                                                         for n, t in timings.items()) or "none")
    configuration = data.get("configuration")
    if isinstance(configuration, dict):
        configuration["collector_seconds"] = timings
    return data, failures
