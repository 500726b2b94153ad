"""tools/build-burnin-tools without compiling: the install check and the wrapper."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.scripts import load_script

bt = load_script("build_burnin_tools", "tools", "build-burnin-tools")
TRUE = shutil.which("true")


def _overlay(tmp_path) -> str:
    overlay = tmp_path / "overlay"
    private = overlay / bt.PRIVATE
    private.mkdir(parents=True)
    (overlay / "usr/bin").mkdir(parents=True)
    # any dynamically linked program stands in: what matters is its NEEDED list
    shutil.copy(TRUE, overlay / "usr/bin/fio")
    shutil.copy(TRUE, private / "stress-ng")
    (overlay / "usr/bin/stress-ng").write_text(bt.WRAPPER)
    return str(overlay)


@pytest.mark.skipif(TRUE is None or not bt.needed(TRUE), reason="no dynamic 'true' here")
def test_install_names_libraries_the_tree_lacks(tmp_path):
    overlay = _overlay(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    missing = bt.install(overlay, str(root))
    assert "fio: libc.so.6" in missing and "stress-ng: libc.so.6" in missing
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    for soname in bt.needed(TRUE):
        (libdir / soname).write_bytes(b"")
    assert bt.install(overlay, str(root)) == []
    assert os.path.isfile(root / "usr/bin/fio")


def test_wrapper_runs_the_private_binary_with_its_libraries(tmp_path):
    script = tmp_path / "stress-ng"
    # same wrapper, pointed at a stand-in that prints what it was given
    fake = tmp_path / bt.PRIVATE
    fake.mkdir(parents=True)
    (fake / "stress-ng").write_text('#!/bin/sh\necho "$LD_LIBRARY_PATH|$*|$$"\n')
    (fake / "stress-ng").chmod(0o755)
    script.write_text(bt.WRAPPER.replace(f"/{bt.PRIVATE}", str(fake)))
    script.chmod(0o755)
    out = subprocess.run([str(script), "--cpu", "1", "--metrics-brief"], capture_output=True,
                         text=True, check=True, env={"PATH": os.environ["PATH"]}).stdout
    libpath, args, _ = out.strip().split("|")
    assert libpath == str(fake) and args == "--cpu 1 --metrics-brief"


def test_unknown_arch_is_refused(tmp_path):
    with pytest.raises(bt.BuildError, match="unknown architecture"):
        bt.ensure("s390x", str(tmp_path))


def test_missing_cross_compiler_names_the_packages(monkeypatch, tmp_path):
    monkeypatch.setattr(bt, "wanted_tools", lambda arch: ["fio"])
    monkeypatch.setattr(bt.shutil, "which", lambda name, **kw: None)
    with pytest.raises(bt.BuildError, match="gcc-powerpc64le-linux-gnu libc6-dev-ppc64el-cross"):
        bt.ensure("ppc64el", str(tmp_path))


def test_only_the_tools_agent_tools_puts_on_an_arch_are_built(monkeypatch):
    from agent.tools import TOOLS, Tool
    tools = dict(TOOLS, fio=Tool("fio", "fio", "x", arches=("amd64",)),
                 **{"stress-ng": Tool("stress-ng", "stress-ng", "x", arches=())})
    monkeypatch.setattr(bt.br, "load_tools", lambda: tools)
    assert bt.wanted_tools("amd64") == ["fio"]
    assert bt.wanted_tools("ppc64el") == []


def test_nothing_wanted_needs_no_compiler_or_mirror(monkeypatch, tmp_path):
    monkeypatch.setattr(bt, "wanted_tools", lambda arch: [])
    monkeypatch.setattr(bt.shutil, "which", lambda name, **kw: None)
    overlay = bt.ensure("ppc64el", str(tmp_path))
    assert os.listdir(os.path.join(overlay, "usr/bin")) == []
