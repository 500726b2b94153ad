"""tools/vm-deploy picks the interpreter that has the agent's dependencies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))


def _layout(tmp_path, with_venv: bool):
    tools = tmp_path / "tools"
    tools.mkdir()
    shutil.copy(os.path.join(REPO, "tools", "vm-deploy"), tools / "vm-deploy")
    if with_venv:
        bin_dir = tmp_path / ".venv" / "bin"
        bin_dir.mkdir(parents=True)
        stand_in = bin_dir / "python"
        stand_in.write_text('#!/bin/sh\necho "venv python: $*"\n')
        stand_in.chmod(0o755)
    return tools / "vm-deploy"


def test_an_existing_venv_is_used_even_when_python3_has_some_modules(tmp_path):
    # the test's own interpreter has every dependency; .venv must still win
    script = _layout(tmp_path, with_venv=True)
    out = subprocess.run([sys.executable, str(script), "--firmware", "uefi"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"venv python: {script} --firmware uefi"


def test_without_a_venv_every_missing_module_is_named_before_anything_starts(tmp_path):
    script = _layout(tmp_path, with_venv=False)
    # -S: no site-packages, so none of the agent's dependencies can be imported
    out = subprocess.run([sys.executable, "-S", str(script)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1
    assert "psutil" in out.stderr and "requests" in out.stderr
    assert "tools/dev-setup --vm" in out.stderr
    assert "Traceback" not in out.stderr
