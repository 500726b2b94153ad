"""Who uses a disk: a procfs/sysfs-shaped tree for md/dm (absent here), real loop devices else."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from agent.disk import usage
from agent.disk.usage import Use
from tests.conftest import requires_loop
from tests.holders import holder

MiB = 1 << 20
ME = os.getpid()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def block(root: Path, rel: str, name: str, devno: str, partition: int | None = None) -> Path:
    """sys/devices/<rel>/<name> with its dev file, linked from /sys/class/block and /sys/dev."""
    real = root / "sys/devices" / rel / name
    write(real / "dev", devno + "\n")
    if partition is not None:
        write(real / "partition", f"{partition}\n")
    for links, link in ((root / "sys/class/block", name), (root / "sys/dev/block", devno)):
        links.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(real, links), links / link)
    return real


def hold(holder_dir: Path, held: Path) -> None:
    """``held``/holders/<holder> and <holder>/slaves/<held>, as the kernel links them."""
    (held / "holders").mkdir(exist_ok=True)
    os.symlink(os.path.relpath(holder_dir, held / "holders"), held / "holders" / holder_dir.name)
    (holder_dir / "slaves").mkdir(exist_ok=True)
    os.symlink(os.path.relpath(held, holder_dir / "slaves"), holder_dir / "slaves" / held.name)


def node(root: Path, rel: str, major: int, minor: int) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
    return str(path)


def process(root: Path, pid: int, comm: str, *targets: str) -> None:
    fd_dir = root / f"proc/{pid}/fd"
    fd_dir.mkdir(parents=True)
    write(root / f"proc/{pid}/comm", comm + "\n")
    for number, target in enumerate(targets, 3):
        os.symlink(target, fd_dir / str(number))


@pytest.fixture
def server(tmp_path: Path) -> Path:
    """sda1 mounted twice, sda2 under LVM which holds /, sda3 swap, sdc in an md mirror."""
    root = tmp_path
    disk = "pci0000:00/0000:00:17.0/ata3/host2/target2:0:0/2:0:0:0/block"
    sda = block(root, disk, "sda", "8:0")
    block(root, f"{disk}/sda", "sda1", "8:1", partition=1)
    sda2 = block(root, f"{disk}/sda", "sda2", "8:2", partition=2)
    block(root, f"{disk}/sda", "sda3", "8:3", partition=3)
    (sda / "queue").mkdir()                       # a non-partition subdirectory
    dm = block(root, "virtual/block", "dm-0", "253:0")
    write(dm / "dm/name", "vg-root\n")
    write(dm / "dm/uuid", "LVM-k2Yq0aZ\n")
    hold(dm, sda2)
    sdc = block(root, disk.replace("ata3", "ata4"), "sdc", "8:32")
    md = block(root, "virtual/block", "md0", "9:0")
    write(md / "md/level", "raid1\n")
    hold(md, sdc)
    write(root / "proc/self/mountinfo",
          "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
          "27 1 253:0 / / rw,relatime - ext4 /dev/mapper/vg-root rw\n"
          "40 27 8:1 / /boot rw,relatime - ext4 /dev/sda1 rw\n"
          "41 27 8:1 /x /mnt/with\\040space rw,relatime - ext4 /dev/sda1 rw\n")
    node(root, "dev/sda3", 8, 3)
    os.makedirs(root / "dev/disk/by-id")
    os.symlink("../../sda3", root / "dev/disk/by-id/ata-SWAP-part3")
    write(root / "proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n"
                               "/dev/disk/by-id/ata-SWAP-part3 partition 8388604 0 -2\n"
                               "/swapfile file 1024 0 -3\n")
    dev_sda = node(root, "dev/sda", 8, 0)
    process(root, 4242, "qemu-img", dev_sda, "/dev/null", "/nonexistent/gone")
    process(root, 4243, "qemu-img", dev_sda)
    process(root, 99, "(udev-worker)", dev_sda)
    process(root, 98, "systemd-udevd", dev_sda)
    process(root, ME, "deploy-agent", dev_sda)
    write(root / "proc/4343/fd", "not a directory")            # unreadable: skipped
    write(root / "proc/4343/comm", "hidden\n")
    (root / "proc/self").mkdir(exist_ok=True)
    return root


def test_every_kind_of_user_is_found_node_by_node(server):
    snap = usage.UsageSnapshot(str(server))
    opened = sorted([(4242, "qemu-img"), (4243, "qemu-img"), (ME, "deploy-agent")])
    assert snap.uses("sda") == [
        *(Use("open", "/dev/sda", f"process {pid} ({comm})") for pid, comm in opened),
        Use("mounted", "/dev/sda1", "/boot, /mnt/with space"),
        Use("root", "/dev/sda2"),
        Use("holder", "/dev/sda2", "device-mapper /dev/dm-0 (vg-root, LVM)"),
        Use("swap", "/dev/sda3"),
    ]
    assert snap.uses("sdc") == [Use("holder", "/dev/sdc", "md RAID /dev/md0 (raid1)")]
    assert snap.unreadable == [4343]


def test_udev_probers_are_never_users_and_self_only_when_asked(server):
    users = {u.detail for u in usage.UsageSnapshot(str(server)).uses("sda") if u.kind == "open"}
    assert not any("udev" in d for d in users)
    assert f"process {ME} (deploy-agent)" in users
    exempt = usage.UsageSnapshot(str(server), exempt_self=True).uses("sda")
    assert [u.detail for u in exempt if u.kind == "open"] == [
        "process 4242 (qemu-img)", "process 4243 (qemu-img)"]


def test_root_is_found_through_the_stack_below_it(server):
    assert usage.root_devnos(str(server)) == {os.makedev(253, 0), os.makedev(8, 2)}
    assert usage.root_device_names(str(server)) == {"dm-0", "sda2"}


def test_an_initramfs_root_has_no_block_device(tmp_path):
    write(tmp_path / "proc/self/mountinfo", "1 1 0:2 / / rw - rootfs rootfs rw\n")
    assert usage.root_device_names(str(tmp_path)) == set()
    assert usage.root_devnos(str(tmp_path)) == {os.makedev(0, 2)}


def test_unknown_disk_has_no_users(server):
    assert usage.UsageSnapshot(str(server)).uses("sdzz") == []
    assert usage.family("sdzz", str(server)) == []


def test_descriptions_and_summary_put_the_root_first():
    uses = [Use("open", "/dev/sda", "process 7 (dd)"), Use("mounted", "/dev/sda1", "/boot"),
            Use("swap", "/dev/sda3"), Use("holder", "/dev/sdc", "md RAID /dev/md0 (raid1)"),
            Use("root", "/dev/sda2")]
    assert usage.summary(uses) == (
        "/dev/sda2 holds the running system's root filesystem; "
        "/dev/sda is open by process 7 (dd); /dev/sda1 is mounted on /boot; "
        "/dev/sda3 is in use as swap; /dev/sdc is held by md RAID /dev/md0 (raid1)")


def test_many_mount_points_are_cut_short(tmp_path):
    block(tmp_path, "virtual/block", "loop9", "7:9")
    write(tmp_path / "proc/self/mountinfo", "".join(
        f"{n} 1 7:9 / /m{n} rw - ext4 /dev/loop9 rw\n" for n in range(7)))
    (found,) = usage.UsageSnapshot(str(tmp_path)).uses("loop9")
    assert found.describe() == "/dev/loop9 is mounted on /m0, /m1, /m2, /m3 and 3 more"


# --- the live system, on real loop devices ---------------------------------------------------



def live(device: str, **kw: bool) -> list[Use]:
    return usage.UsageSnapshot(**kw).uses(device)


@requires_loop
def test_real_mount_is_found(make_loop, tmp_path):
    dev = make_loop(32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert live(dev) == []
    subprocess.run(["mount", dev, str(mnt)], check=True)
    try:
        assert live(dev) == [Use("mounted", dev, str(mnt))]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert live(dev) == []


@requires_loop
def test_real_mounted_partition_is_found_on_the_partition(make_loop, tmp_path):
    dev = make_loop(32 * MiB)
    subprocess.run(["sgdisk", "-n", "1:2048:+16M", dev], check=True, capture_output=True)
    subprocess.run(["partx", "-a", dev], check=True, capture_output=True)
    part = f"{dev}p1"
    subprocess.run(["mkfs.ext4", "-q", "-F", part], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", part, str(mnt)], check=True)
    try:
        assert live(dev) == [Use("mounted", part, str(mnt))]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@requires_loop
def test_real_swap_is_found(make_loop):
    dev = make_loop(16 * MiB)
    subprocess.run(["mkswap", dev], check=True, capture_output=True)
    subprocess.run(["swapon", dev], check=True)
    try:
        assert live(dev) == [Use("swap", dev)]
    finally:
        subprocess.run(["swapoff", dev], check=True)
    assert live(dev) == []


@requires_loop
def test_a_process_holding_the_disk_open_is_found(make_loop):
    dev = make_loop(16 * MiB)
    with holder(dev) as proc:
        comm = Path(f"/proc/{proc.pid}/comm").read_text().strip()
        assert Use("open", dev, f"process {proc.pid} ({comm})") in live(dev)
    assert live(dev) == []


@requires_loop
def test_a_udev_prober_is_not_a_user(make_loop):
    dev = make_loop(16 * MiB)
    with holder(dev, "systemd-udevd") as proc:
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "systemd-udevd"
        assert live(dev) == []
    with holder(dev, "(udev-worker)"):
        assert live(dev) == []


@requires_loop
def test_this_process_is_exempt_only_when_the_caller_says_so(make_loop):
    dev = make_loop(16 * MiB)
    fd = os.open(dev, os.O_RDONLY)
    try:
        comm = Path("/proc/self/comm").read_text().strip()
        assert live(dev) == [Use("open", dev, f"process {ME} ({comm})")]
        assert live(dev, exempt_self=True) == []
    finally:
        os.close(fd)


@requires_loop
def test_the_live_root_is_the_mount_on_slash():
    st = os.stat("/")
    assert st.st_dev in usage.root_devnos()
