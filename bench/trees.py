"""An agent process run from a chosen copy of the source tree, for before/after runs.

``--compare DIR`` in bench/limits.py and bench/peak_rss.py starts the agent
from DIR (a copy of the code before a change) in turn with this tree's, so
both are measured against the same server, device and machine load.
"""

from __future__ import annotations

import contextlib
import os
import subprocess

from bench.common import ROOT, agent_process
from bench.harness import python_env


def agent_in(root: str = ROOT, pycache: str = "/dev/shm/deploy-agent-bench-pycache"
             ) -> contextlib.AbstractContextManager[tuple[subprocess.Popen, str]]:
    """``serve --standalone`` from source tree ``root``, its bytecode cached in ``pycache``."""
    return agent_process(python_env(pycache), root=root)


def tree(path: str | None) -> list[tuple[str, str]]:
    """(label, root) for this tree and, when given, the compared one."""
    return [("", ROOT)] + ([("compared ", os.path.abspath(path))] if path else [])
