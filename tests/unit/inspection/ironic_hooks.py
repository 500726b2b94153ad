"""Feed collector output to Ironic's real hooks in .venv-ironic (skip without it)."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
PYTHON = os.path.join(REPO, ".venv-ironic", "bin", "python")
SCRIPT = os.path.join(os.path.dirname(__file__), "run_ironic_hooks.py")


def run_hooks(plugin_data: dict[str, Any], **options: Any) -> dict[str, Any]:
    if not os.path.exists(PYTHON):
        pytest.skip("no .venv-ironic (tools/dev-setup --ironic installs it)")
    request = json.dumps({"plugin_data": plugin_data, **options})
    proc = subprocess.run([PYTHON, SCRIPT], input=request, capture_output=True, text=True,
                          check=True, timeout=120)
    return json.loads(proc.stdout)
