"""Writing below a root directory without leaving it (the mount point stands in as tmp_path)."""

from __future__ import annotations

import os

import pytest

from agent.imaging import inject_tree
from agent.imaging.inject_tree import Refused, apply, check, holds_dir


@pytest.fixture
def root(tmp_path):
    base = tmp_path / "root"
    (base / "etc").mkdir(parents=True)
    (base / "usr" / "lib").mkdir(parents=True)
    (base / "outside").mkdir()
    os.symlink("usr/lib", base / "lib")
    os.symlink(str(tmp_path / "victim"), base / "etc" / "abs")
    os.symlink("../..", base / "etc" / "up")
    os.symlink("../outside/../usr", base / "etc" / "winding")
    (base / "etc" / "file").write_text("f")
    (tmp_path / "victim").mkdir()
    return str(base)


def parts(path: str) -> list[str]:
    return path.strip("/").split("/")


def test_writes_and_creates_directories_with_dirmode(root) -> None:
    out = apply(root, parts("/etc/a/b/c.conf"), data=b"x", mode=0o640, dirmode=0o711)
    assert out.created_dirs == ["/etc/a", "/etc/a/b"] and out.mode == 0o640
    assert open(f"{root}/etc/a/b/c.conf", "rb").read() == b"x"
    assert os.stat(f"{root}/etc/a/b").st_mode & 0o7777 == 0o711
    assert os.stat(f"{root}/etc/a/b/c.conf").st_mode & 0o7777 == 0o640


def test_default_modes_ignore_the_umask(root) -> None:
    old = os.umask(0o077)
    try:
        apply(root, parts("/etc/d/f"), data=b"")
    finally:
        os.umask(old)
    assert os.stat(f"{root}/etc/d").st_mode & 0o7777 == 0o755
    assert os.stat(f"{root}/etc/d/f").st_mode & 0o7777 == 0o644


def test_relative_symlinks_inside_the_root_are_followed(root) -> None:
    apply(root, parts("/lib/x.conf"), data=b"1")
    apply(root, parts("/etc/winding/y"), data=b"2")
    assert open(f"{root}/usr/lib/x.conf").read() == "1"
    assert open(f"{root}/usr/y").read() == "2"
    assert holds_dir(root, "lib") and not holds_dir(root, "nope")


@pytest.mark.parametrize("path", ["/etc/abs/x", "/etc/up/x", "/etc/file/x"])
def test_escapes_are_refused_in_the_dry_run_and_the_write(root, tmp_path, path) -> None:
    with pytest.raises(Refused):
        check(root, parts(path), delete=False)
    with pytest.raises(Refused):
        apply(root, parts(path), data=b"bad")
    with pytest.raises(Refused):
        apply(root, parts(path), data=None)
    assert os.listdir(tmp_path / "victim") == []
    assert not os.path.exists(tmp_path / "x")


def test_a_symlink_loop_is_refused(root) -> None:
    os.symlink("loop2", f"{root}/etc/loop1")
    os.symlink("loop1", f"{root}/etc/loop2")
    with pytest.raises(Refused, match="too many"):
        apply(root, parts("/etc/loop1/x"), data=b"")


def test_a_symlink_at_the_path_is_replaced_not_followed(root, tmp_path) -> None:
    os.symlink(str(tmp_path / "victim" / "f"), f"{root}/etc/link")
    out = apply(root, parts("/etc/link"), data=b"mine")
    assert out.replaced_symlink
    assert not os.path.islink(f"{root}/etc/link")
    assert os.listdir(tmp_path / "victim") == []


def test_delete_removes_a_link_itself_and_reports_absent(root, tmp_path) -> None:
    (tmp_path / "victim" / "keep").write_text("k")
    os.symlink(str(tmp_path / "victim" / "keep"), f"{root}/etc/link")
    assert apply(root, parts("/etc/link"), data=None).action == "deleted"
    assert (tmp_path / "victim" / "keep").exists()
    assert apply(root, parts("/etc/link"), data=None).action == "absent"
    assert apply(root, parts("/nodir/x"), data=None).action == "absent"
    assert not os.path.exists(f"{root}/nodir")


def test_directories_are_not_files(root) -> None:
    with pytest.raises(Refused, match="directory"):
        check(root, parts("/etc"), delete=True)
    with pytest.raises(Refused, match="directory"):
        apply(root, parts("/usr/lib"), data=b"")
    with pytest.raises(Refused, match="directory"):
        apply(root, parts("/usr/lib"), data=None)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_overwrite_keeps_owner_and_mode_and_is_atomic(root, monkeypatch) -> None:
    path = f"{root}/etc/file"
    os.chown(path, 1234, 4321)
    os.chmod(path, 0o4750)
    apply(root, parts("/etc/file"), data=b"new")
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 4321, 0o4750)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(inject_tree.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        apply(root, parts("/etc/file"), data=b"newer")
    assert open(path).read() == "new"
    assert sorted(os.listdir(f"{root}/etc")) == ["abs", "file", "up", "winding"]
