"""The stdlib archive hook: modules move into pythonXY.zip and still import, with sources."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from tests.scripts import load_script

zip_python = load_script("ramdisk_zip_python", "elements", "deploy-agent-ramdisk",
                         "post-install.d", "99-deploy-agent-ramdisk-zip-python")
VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"


def tree(tmp_path):
    stdlib = tmp_path / "usr/lib" / VERSION
    (stdlib / "pkgmod").mkdir(parents=True)
    (stdlib / "os.py").write_text("# a stand-in: its presence marks the stdlib\n")
    (stdlib / "alpha.py").write_text('"""doc"""\nVALUE = 41 + 1\ndef boom():\n'
                                     '    raise ValueError("from alpha")\n')
    (stdlib / "_data__real.py").write_text("DATA = {'k': 'v'}\n")
    (stdlib / "_data__alias.py").symlink_to("_data__real.py")
    (stdlib / "pkgmod/__init__.py").write_text("from .inner import X\n")
    (stdlib / "pkgmod/inner.py").write_text("X = 'inner'\n")
    (stdlib / "pkgmod/README.rst").write_text("documentation only\n")
    (stdlib / "withdata").mkdir()
    (stdlib / "withdata/__init__.py").write_text("")
    (stdlib / "withdata/grammar.bin").write_bytes(b"\x00data")
    (stdlib / "lib-dynload").mkdir()
    (stdlib / "lib-dynload/_fast.so").write_bytes(b"\x7fELF")
    (stdlib / "sitecustomize.py").symlink_to("/etc/nowhere/sitecustomize.py")
    (stdlib / "__pycache__").mkdir()
    (stdlib / "__pycache__" / f"alpha.cpython-{sys.version_info.major}{sys.version_info.minor}.pyc"
     ).write_bytes(b"stale")
    return stdlib


def test_pure_python_moves_into_the_archive_and_imports_from_it(tmp_path, monkeypatch):
    stdlib = tree(tmp_path)
    monkeypatch.setenv("ARCH", "ppc64el")
    assert zip_python.main(["99", str(tmp_path)]) == 0
    archive = tmp_path / "usr/lib" / f"python{sys.version_info.major}{sys.version_info.minor}.zip"
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"alpha.py", "alpha.pyc", "pkgmod/inner.pyc", "_data__alias.pyc"} <= names
    assert not (stdlib / "alpha.py").exists() and not (stdlib / "pkgmod").exists()
    assert not list((stdlib / "__pycache__").glob("alpha.*"))
    # data files, extension modules and the /etc link stay where code expects them
    assert (stdlib / "withdata/grammar.bin").exists() and "withdata/__init__.py" not in names
    assert (stdlib / "lib-dynload/_fast.so").exists()
    assert os.path.islink(stdlib / "sitecustomize.py")

    probe = ("import sys, traceback\nsys.path.insert(0, sys.argv[1])\n"
             "import alpha, pkgmod, _data__alias\n"
             "print(alpha.VALUE, pkgmod.X, _data__alias.DATA['k'], alpha.__doc__)\n"
             "print(type(alpha.__loader__).__name__, alpha.__cached__ is None)\n"
             "try:\n    alpha.boom()\nexcept ValueError:\n    traceback.print_exc()\n")
    out = subprocess.run([sys.executable, "-I", "-c", probe, str(archive)],
                         capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "42 inner v None"            # compiled at -OO: no docstrings
    assert lines[1].startswith("zipimporter")
    # the traceback names the module inside the archive as the ramdisk sees it, with its line
    assert f"/usr/lib/python{sys.version_info.major}{sys.version_info.minor}.zip/alpha.py" \
        in out.stderr
    assert 'raise ValueError("from alpha")' in out.stderr


def test_off_where_pages_are_small_unless_asked(tmp_path, monkeypatch):
    stdlib = tree(tmp_path)
    monkeypatch.setenv("ARCH", "amd64")
    monkeypatch.delenv("DIB_DEPLOY_AGENT_ZIP_STDLIB", raising=False)
    assert zip_python.main(["99", str(tmp_path)]) == 0
    assert (stdlib / "alpha.py").exists()
    monkeypatch.setenv("DIB_DEPLOY_AGENT_ZIP_STDLIB", "1")
    assert zip_python.main(["99", str(tmp_path)]) == 0
    assert not (stdlib / "alpha.py").exists()
