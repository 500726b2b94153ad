"""inject_files on a real loop disk: vfat ESP (mtools), ext4 root, xfs data partition.

Each test builds the disk with sgdisk + mkfs, exposes the partitions with
``partx -a`` (this kernel parses no tables itself), runs the step and reads
the result back independently: ext4/xfs through a real read-only mount,
vfat through mtools.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from agent.context import CommandContext
from agent.disk import mounts
from agent.errors import Cancelled, DeviceNotFound, ImageDownloadError
from agent.imaging import inject_files, inject_tree
from tests.conftest import requires_loop
from tests.functional.hardware.loop_helpers import expose, loop_disk, sh

pytestmark = requires_loop
MIB = 1 << 20
MTOOLS = dict(os.environ, MTOOLS_SKIP_CHECK="1")
NODE = {"uuid": "1be26c0b-03f2-4d2d-ae87-c02d7f33c123", "properties": {}}


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


@contextlib.contextmanager
def reading(node: str) -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="inject-test-")
    sh("mount", "-o", "ro", node, path)
    try:
        yield path
    finally:
        sh("umount", path)
        os.rmdir(path)


@contextlib.contextmanager
def writing(node: str) -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="inject-test-")
    sh("mount", node, path)
    try:
        yield path
    finally:
        sh("umount", path)
        os.rmdir(path)


def mtype(node: str, path: str) -> bytes:
    return subprocess.run(["mtype", "-i", node, f"::{path}"], check=True, capture_output=True,
                          env=MTOOLS).stdout


def vfat_has(node: str, path: str) -> bool:
    return subprocess.run(["mdir", "-b", "-i", node, f"::{path}"], capture_output=True,
                          env=MTOOLS).returncode == 0


def leftover_mounts() -> list[str]:
    return [p for p in mounts.mount_points() if "deploy-agent-inject-" in p]


def populate_root(root: str) -> None:
    os.makedirs(f"{root}/etc/adir")
    os.makedirs(f"{root}/usr/lib")
    os.makedirs(f"{root}/run")
    os.symlink("usr/lib", f"{root}/lib")                       # usr-merge style
    os.symlink("/tmp", f"{root}/etc/evil")                     # absolute: leaves the partition
    os.symlink("../../../..", f"{root}/etc/up")                # climbs above the root
    os.symlink("../run/stub.conf", f"{root}/etc/resolv.conf")  # the file itself is a link
    with open(f"{root}/run/stub.conf", "w") as f:
        f.write("stub\n")
    with open(f"{root}/etc/existing.conf", "w") as f:
        f.write("old\n")
    os.chown(f"{root}/etc/existing.conf", 1000, 1001)
    os.chmod(f"{root}/etc/existing.conf", 0o640)


@pytest.fixture
def disk(make_loop):
    """GPT: p1 vfat ESP (label ESP, partlabel EFI), p2 ext4 root, p3 xfs data (/srv)."""
    dev = make_loop(512 * MIB)
    sh("sgdisk", "-Z", dev, check=False)
    sh("sgdisk", "-n1:2048:+64M", "-t1:EF00", "-c1:EFI", "-n2:0:+96M", "-c2:rootpart",
       "-n3:0:+330M", "-c3:datapart", dev)
    expose(dev)
    p1, p2, p3 = (f"{dev}p{n}" for n in (1, 2, 3))
    sh("mkfs.vfat", "-n", "ESP", p1)
    sh("mkfs.ext4", "-q", "-L", "root", p2)
    sh("mkfs.xfs", "-q", "-f", "-L", "data", p3)
    sh("mmd", "-i", p1, "::/EFI", "::/EFI/BOOT", check=True)
    with writing(p2) as root:
        populate_root(root)
    with writing(p3) as root:
        os.makedirs(f"{root}/srv")
    return {"dev": dev, "p1": p1, "p2": p2, "p3": p3, "disk": loop_disk(dev)}


def run(d, files, node=NODE, **kwargs):
    return inject_files.run(d["disk"], node, [], files=files, **kwargs)


def test_writes_new_files_with_modes_and_dirmode_on_ext4(disk) -> None:
    result = run(disk, [
        {"path": "/etc/new.d/deep/app.conf", "partition": 2, "content": b64("hello\n"),
         "mode": 0o600, "dirmode": 0o750},
        {"path": "/etc/plain.conf", "partition": 2, "content": b64("")},
    ])
    part = result["partitions"][0]
    assert part["partition"] == disk["p2"] and part["fstype"] == "ext4"
    assert part["files"][0]["created_dirs"] == ["/etc/new.d", "/etc/new.d/deep"]
    with reading(disk["p2"]) as root:
        with open(f"{root}/etc/new.d/deep/app.conf") as f:
            assert f.read() == "hello\n"
        assert os.stat(f"{root}/etc/new.d/deep/app.conf").st_mode & 0o7777 == 0o600
        assert os.stat(f"{root}/etc/new.d").st_mode & 0o7777 == 0o750
        assert os.stat(f"{root}/etc/new.d/deep").st_mode & 0o7777 == 0o750
        assert os.stat(f"{root}/etc/plain.conf").st_mode & 0o7777 == 0o644
        assert os.path.getsize(f"{root}/etc/plain.conf") == 0
        assert not [n for n in os.listdir(f"{root}/etc") if n.startswith(".inject-")]
    assert leftover_mounts() == []


def test_overwrite_keeps_owner_and_mode_unless_given_and_replaces_a_symlink(disk) -> None:
    run(disk, [{"path": "/etc/existing.conf", "partition": "root", "content": b64("new\n")},
               {"path": "/etc/resolv.conf", "partition": "root",
                "content": b64("nameserver 192.0.2.1\n")}])
    with reading(disk["p2"]) as root:
        st = os.stat(f"{root}/etc/existing.conf")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1001, 0o640)
        assert open(f"{root}/etc/existing.conf").read() == "new\n"
        # the link is replaced, its target in the image left alone
        assert not os.path.islink(f"{root}/etc/resolv.conf")
        assert open(f"{root}/run/stub.conf").read() == "stub\n"
    run(disk, [{"path": "/etc/existing.conf", "partition": 2, "content": b64("x"),
                "mode": 0o604, "owner": 0, "group": 0}])
    with reading(disk["p2"]) as root:
        st = os.stat(f"{root}/etc/existing.conf")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o604)


def test_delete_with_deleted_flag_or_null_content(disk) -> None:
    result = run(disk, [{"path": "/etc/existing.conf", "partition": 2, "deleted": True},
                        {"path": "/etc/resolv.conf", "partition": 2, "content": None},
                        {"path": "/etc/never-was", "partition": 2, "deleted": True},
                        {"path": "/nodir/never-was", "partition": 2, "deleted": True}])
    actions = [f["action"] for f in result["partitions"][0]["files"]]
    assert actions == ["deleted", "deleted", "absent", "absent"]
    with reading(disk["p2"]) as root:
        assert not os.path.lexists(f"{root}/etc/existing.conf")
        assert not os.path.lexists(f"{root}/etc/resolv.conf")
        assert os.path.exists(f"{root}/run/stub.conf")       # the link went, not its target


@pytest.mark.parametrize("spec", [
    3, "3", "data", "datapart", {"fstype": "xfs"}, {"label": "<in> dat", "number": "3"},
])
def test_partition_by_number_label_partlabel_and_hints_on_xfs(disk, spec) -> None:
    result = run(disk, [{"path": "/srv/www/index.html", "partition": spec,
                         "content": b64("<html/>"), "mode": 0o644, "owner": 33, "group": 33}])
    assert result["partitions"][0]["partition"] == disk["p3"]
    with reading(disk["p3"]) as root:
        st = os.stat(f"{root}/srv/www/index.html")
        assert (st.st_uid, st.st_gid) == (33, 33)
        assert open(f"{root}/srv/www/index.html").read() == "<html/>"


def test_partition_by_fs_uuid_partuuid_and_device_path(disk) -> None:
    uuid = sh("blkid", "-p", "-o", "value", "-s", "UUID", disk["p2"]).stdout.strip()
    partuuid = sh("blkid", "-p", "-o", "value", "-s", "PART_ENTRY_UUID",
                  disk["p2"]).stdout.strip()
    run(disk, [{"path": "/etc/a", "partition": uuid.upper(), "content": b64("a")},
               {"path": "/etc/b", "partition": partuuid, "content": b64("b")},
               {"path": "/etc/c", "partition": disk["p2"], "content": b64("c")}])
    with reading(disk["p2"]) as root:
        assert [open(f"{root}/etc/{n}").read() for n in "abc"] == ["a", "b", "c"]


def test_finds_the_partition_holding_the_top_directory(disk) -> None:
    result = run(disk, [{"path": "/srv/x", "content": b64("on xfs")},
                        {"path": "/etc/x", "content": b64("on ext4")},
                        {"path": "/EFI/BOOT/x.cfg", "content": b64("on vfat")},
                        {"path": "/lib/modules-load.d/x.conf", "content": b64("via link")}])
    by_part = {p["partition"]: [f["path"] for f in p["files"]] for p in result["partitions"]}
    assert by_part == {disk["p3"]: ["/srv/x"],
                       disk["p2"]: ["/etc/x", "/lib/modules-load.d/x.conf"],
                       disk["p1"]: ["/EFI/BOOT/x.cfg"]}
    assert mtype(disk["p1"], "/EFI/BOOT/x.cfg") == b"on vfat"
    with reading(disk["p2"]) as root:
        assert open(f"{root}/usr/lib/modules-load.d/x.conf").read() == "via link"
        assert os.path.islink(f"{root}/lib")


def test_node_property_merged_and_the_argument_wins_for_one_path(disk) -> None:
    node = dict(NODE, properties={"inject_files": [
        {"path": "/etc/both", "partition": 2, "content": b64("property")},
        {"path": "/etc/prop-only", "partition": 2, "content": b64("property")}]})
    run(disk, [{"path": "/etc/both", "partition": 2, "content": b64("argument")}], node=node)
    with reading(disk["p2"]) as root:
        assert open(f"{root}/etc/both").read() == "argument"
        assert open(f"{root}/etc/prop-only").read() == "property"


@pytest.mark.parametrize("path", ["/etc/evil/x", "/etc/up/x", "/etc/existing.conf/x",
                                  "/etc/adir"])
def test_escapes_and_non_files_are_refused_with_nothing_written(disk, path) -> None:
    with pytest.raises(inject_tree.Refused):
        run(disk, [{"path": "/etc/first", "partition": 2, "content": b64("first")},
                   {"path": "/srv/first", "partition": 3, "content": b64("first")},
                   {"path": path, "partition": 2, "content": b64("bad")}])
    assert leftover_mounts() == []
    with reading(disk["p2"]) as root:
        assert not os.path.exists(f"{root}/etc/first")
    with reading(disk["p3"]) as root:
        assert not os.path.exists(f"{root}/srv/first")
    assert not os.path.exists("/tmp/x")


@pytest.mark.parametrize("spec", [9, "no-such-label", {"fstype": "btrfs"}, "/dev/nonexistent"])
def test_unknown_partition_refused_before_any_mount(disk, spec, monkeypatch) -> None:
    calls = []
    real = mounts.mount
    monkeypatch.setattr(mounts, "mount", lambda *a, **k: (calls.append(a), real(*a, **k)))
    with pytest.raises(DeviceNotFound):
        run(disk, [{"path": "/etc/first", "partition": 2, "content": b64("first")},
                   {"path": "/etc/x", "partition": spec, "content": b64("x")}])
    assert calls == []
    with reading(disk["p2"]) as root:
        assert not os.path.exists(f"{root}/etc/first")


def test_no_partition_holds_the_directory(disk) -> None:
    with pytest.raises(DeviceNotFound, match="/opt"):
        run(disk, [{"path": "/opt/x", "content": b64("x")}])
    assert leftover_mounts() == []


def test_vfat_through_mtools(disk) -> None:
    result = run(disk, [
        {"path": "/EFI/BOOT/grub.cfg", "partition": "EFI", "content": b64("set x=1\n"),
         "mode": 0o444, "owner": 0},
        {"path": "/EFI/vendor/new/shim.efi", "partition": {"label": "ESP"},
         "content": b64(b"\x00MZ")}])
    part = result["partitions"][0]
    assert part["method"] == "mtools" and part["fstype"] == "vfat"
    assert part["files"][0]["ignored_on_vfat"] == ["owner"]
    assert mtype(disk["p1"], "/EFI/BOOT/grub.cfg") == b"set x=1\n"
    assert mtype(disk["p1"], "/efi/VENDOR/new/shim.efi") == b"\x00MZ"
    attrs = sh("mattrib", "-i", disk["p1"], "::/EFI/BOOT/grub.cfg").stdout
    assert "R" in attrs.split("::")[0]
    run(disk, [{"path": "/EFI/BOOT/grub.cfg", "partition": 1, "content": b64("two\n")}])
    assert mtype(disk["p1"], "/EFI/BOOT/grub.cfg") == b"two\n"
    run(disk, [{"path": "/EFI/BOOT/grub.cfg", "partition": 1, "deleted": True}])
    assert not vfat_has(disk["p1"], "/EFI/BOOT/grub.cfg")


def test_content_from_a_node_specific_url(disk, image_server) -> None:
    image_server.files[f"cfg/{NODE['uuid']}"] = b"per-node\n"
    run(disk, [{"path": "/etc/from-url", "partition": 2,
                "content": image_server.url + "/cfg/{node[uuid]}"}], verify_ca=False)
    with reading(disk["p2"]) as root:
        assert open(f"{root}/etc/from-url").read() == "per-node\n"
    with pytest.raises(ImageDownloadError):
        run(disk, [{"path": "/etc/first", "partition": 2, "content": b64("first")},
                   {"path": "/etc/y", "partition": 2, "content": image_server.url + "/nope"}])
    with reading(disk["p2"]) as root:
        assert not os.path.exists(f"{root}/etc/first")


class CancelAfter(CommandContext):
    """Cancelled as soon as ``files`` files have been written."""

    def __init__(self, files: int) -> None:
        super().__init__("id", "inject_files")
        self.files = files

    def check_cancelled(self) -> None:
        snap = self.progress.snapshot()
        if snap["phase"] == "injecting files" and snap["done"] >= self.files:
            self.cancel_event.set()
        super().check_cancelled()


def test_cancel_between_files_unmounts(disk) -> None:
    ctx = CancelAfter(1)
    with pytest.raises(Cancelled):
        run(disk, [{"path": "/etc/one", "partition": 2, "content": b64("1")},
                   {"path": "/etc/two", "partition": 2, "content": b64("2")}], ctx=ctx)
    assert leftover_mounts() == []
    with reading(disk["p2"]) as root:
        assert os.path.exists(f"{root}/etc/one") and not os.path.exists(f"{root}/etc/two")


def test_progress_counts_files(disk) -> None:
    ctx = CommandContext("id", "inject_files")
    run(disk, [{"path": "/etc/one", "partition": 2, "content": b64("1")},
               {"path": "/srv/two", "partition": 3, "content": b64("2")}], ctx=ctx)
    snap = ctx.progress.snapshot()
    assert (snap["phase"], snap["done"], snap["total"]) == ("injecting files", 2, 2)


def test_full_filesystem_fails_unmounted_with_the_old_file_intact(make_loop) -> None:
    dev = make_loop(24 * MIB)
    sh("sgdisk", "-n1:2048:+12M", dev)
    expose(dev)
    sh("mkfs.ext4", "-q", f"{dev}p1")
    with writing(f"{dev}p1") as root:
        os.makedirs(f"{root}/etc")
        with open(f"{root}/etc/big", "w") as f:
            f.write("old")
    with pytest.raises(Exception, match="No space left|earlier file"):
        inject_files.run(loop_disk(dev), NODE, files=[
            {"path": "/etc/big", "partition": 1, "content": b64(os.urandom(16 * MIB))}])
    assert leftover_mounts() == []
    with reading(f"{dev}p1") as root:
        assert open(f"{root}/etc/big").read() == "old"
        assert [n for n in os.listdir(f"{root}/etc")] == ["big"]


def test_a_failed_unmount_says_the_partition_is_still_mounted(disk, monkeypatch) -> None:
    # a real umount --lazy cannot be made to fail here: simulate only that call
    def refuse(path: str) -> None:
        raise inject_tree.DeploymentError("umount: target is busy")

    monkeypatch.setattr(mounts, "unmount_all", refuse)
    try:
        with pytest.raises(inject_tree.StillMounted, match="still mounted"):
            run(disk, [{"path": "/etc/one", "partition": 2, "content": b64("1")}])
    finally:
        monkeypatch.undo()
        for path in leftover_mounts():
            sh("umount", path)
            os.rmdir(path)
