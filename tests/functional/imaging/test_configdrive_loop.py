"""Config drive placement on real loop devices, read back the way cloud-init finds it."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess

import pycdlib
import pytest

from agent.disk import partition_table as pt
from agent.disk import reread
from agent.errors import DeploymentError, InvalidCommandParamsError
from agent.imaging import configdrive as cd
from tests.conftest import requires_loop

pytestmark = requires_loop
MiB = 1024 * 1024
CONTENT = {
    "meta_data": {"uuid": "0f6b4c1c-6bd1-4d2a-9f43-3e1b2f0c9a77", "name": "node-7",
                  "public_keys": {"mykey": "ssh-ed25519 AAAAC3Nza test@example"}},
    "user_data": "#!/bin/sh\necho 'first boot' > /tmp/marker\n",
    "network_data": {"links": [{"id": "tap0", "type": "phy", "mtu": 1500,
                                "ethernet_mac_address": "fa:16:3e:00:00:01"}],
                     "networks": [{"id": "net0", "link": "tap0", "type": "ipv4_dhcp"}],
                     "services": [{"type": "dns", "address": "192.0.2.53"}]},
}


def sfdisk(target: str, script: str) -> None:
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", target], input=script,
                   check=True, capture_output=True, text=True)


def blkid(node: str) -> dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-o", "export", node], capture_output=True,
                         text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def cloud_init_read(disk: str) -> tuple[str, dict[str, bytes]]:
    """Locate the config drive by filesystem type and label (blkid), read it unmounted."""
    name = os.path.basename(disk)
    found = []
    for entry in sorted(os.listdir(f"/sys/block/{name}")):
        if not os.path.exists(f"/sys/block/{name}/{entry}/partition"):
            continue
        info = blkid(f"/dev/{entry}")
        if info.get("TYPE") in ("iso9660", "vfat") and \
                info.get("LABEL", "").lower() == "config-2":
            found.append((f"/dev/{entry}", info["TYPE"]))
    assert len(found) == 1, found
    node, fstype = found[0]
    files = {}
    for fname in ("meta_data.json", "user_data", "network_data.json"):
        path = f"openstack/latest/{fname}"
        if fstype == "iso9660":
            iso = pycdlib.PyCdlib()
            with open(node, "rb") as f:
                iso.open_fp(f)
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=f"/{path}")
                iso.close()
            files[fname] = out.getvalue()
        else:
            files[fname] = subprocess.run(["mtype", "-i", node, f"::/{path}"], check=True,
                                          capture_output=True,
                                          env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}
                                          ).stdout
    return node, files


def assert_cloud_init_sees_content(disk: str) -> str:
    node, files = cloud_init_read(disk)
    assert json.loads(files["meta_data.json"]) == CONTENT["meta_data"]
    assert files["user_data"].decode() == CONTENT["user_data"]
    assert json.loads(files["network_data.json"]) == CONTENT["network_data"]
    return node


def region_digest(dev: str, start: int, length: int) -> str:
    fd = os.open(dev, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return hashlib.sha256(os.pread(fd, length, start)).hexdigest()
    finally:
        os.close(fd)


def write_image(tmp_path, dev: str, size: int, script: str) -> None:
    """Build a disk image file with sfdisk and copy it onto the start of ``dev``."""
    img = tmp_path / "image.raw"
    with open(img, "wb") as f:
        f.truncate(size)
    sfdisk(str(img), script)
    with open(img, "rb") as src, open(dev, "r+b") as dst:
        dst.write(src.read())
        dst.flush()
        os.fsync(dst.fileno())


@pytest.fixture(scope="module")
def drive() -> bytes:
    # the normal Ironic wire form: gzip + base64 of the ISO, built here from JSON
    wire = base64.b64encode(gzip.compress(cd.decode_configdrive(CONTENT))).decode()
    return cd.decode_configdrive(wire)


def test_gpt_image_smaller_than_disk(make_loop, tmp_path, drive):
    dev = make_loop(128 * MiB)
    img = tmp_path / "gpt.raw"
    with open(img, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(["sgdisk", "-n", "1:1M:+8M", "-c", "1:root", str(img)], check=True,
                   capture_output=True)
    subprocess.run(["dd", f"if={img}", f"of={dev}", "bs=1M", "conv=fsync", "status=none"],
                   check=True)
    assert pt.read_table(dev).backup_misplaced
    root_before = region_digest(dev, MiB, 8 * MiB)

    result = cd.write_configdrive(dev, drive)

    table = pt.read_table(dev)
    assert table.ok and table.backup_lba == table.last_lba
    part = table.get(2)
    assert part.name == "config-v2"
    assert part.end_bytes > 128 * MiB - MiB and part.start_bytes >= 128 * MiB - 66 * MiB
    assert result == {"partition": f"{dev}p2", "created": True, "filesystem": "iso9660",
                      "size": len(drive), "partition_size": part.size_bytes,
                      "verified_by": "pycdlib", "reread": result["reread"]}
    assert result["reread"]["method"] in ("kernel", "blkpg")
    assert region_digest(dev, MiB, 8 * MiB) == root_before
    assert assert_cloud_init_sees_content(dev) == f"{dev}p2"
    assert blkid(f"{dev}p2")["PART_ENTRY_NAME"] == "config-v2"


def test_mbr_image_gets_a_primary_partition(make_loop, tmp_path, drive):
    dev = make_loop(128 * MiB)
    write_image(tmp_path, dev, 16 * MiB, "label: dos\nstart=2048, size=8192, type=83, "
                                         "bootable\n")
    result = cd.write_configdrive(dev, drive)
    part = pt.read_table(dev).get(2)
    assert result["created"] and result["partition"] == f"{dev}p2"
    assert part.mbr_role == "primary" and part.mbr_type == pt.MBR_LINUX
    assert part.end_bytes == 128 * MiB
    assert_cloud_init_sees_content(dev)


def test_mbr_with_four_primaries_fails_cleanly(make_loop, tmp_path, drive):
    dev = make_loop(96 * MiB)
    write_image(tmp_path, dev, 8 * MiB, "label: dos\n" + "".join(
        f"start={2048 * (i + 1)}, size=2048, type=83\n" for i in range(4)))
    before = region_digest(dev, 0, 96 * MiB)
    with pytest.raises(DeploymentError, match="already has four primary partitions"):
        cd.write_configdrive(dev, drive)
    assert region_digest(dev, 0, 96 * MiB) == before


def test_existing_config_v2_partition_is_reused(make_loop, drive):
    dev = make_loop(128 * MiB)
    sfdisk(dev, 'label: gpt\nstart=2048, size=40960, name="root"\n'
                'size=16384, name="config-v2"\n')
    before = pt.read_table(dev)
    result = cd.write_configdrive(dev, drive)
    assert result["created"] is False and result["partition"] == f"{dev}p2"
    after = pt.read_table(dev)
    assert after.partitions == before.partitions
    assert_cloud_init_sees_content(dev)


def test_existing_label_config_2_is_reused_on_mbr(make_loop, drive):
    dev = make_loop(128 * MiB)
    sfdisk(dev, "label: dos\nstart=2048, size=40960, type=83\nsize=16384, type=c\n")
    node = reread.reread(dev).partitions[2]
    subprocess.run(["mkfs.vfat", "-n", "CONFIG-2", node], check=True, capture_output=True)
    result = cd.write_configdrive(dev, drive)
    assert result["created"] is False and result["partition"] == node
    assert len(pt.read_table(dev).partitions) == 2
    assert blkid(node)["TYPE"] == "iso9660"      # the old vfat is gone, not shadowing
    assert_cloud_init_sees_content(dev)


def test_two_candidates_are_an_error(make_loop, drive):
    dev = make_loop(128 * MiB)
    sfdisk(dev, 'label: gpt\nstart=2048, size=8192, name="config-v2"\nsize=8192\n')
    node = reread.reread(dev).partitions[2]
    subprocess.run(["mkfs.ext4", "-q", "-L", "config-2", node], check=True,
                   capture_output=True)
    before = region_digest(dev, 0, 128 * MiB)
    with pytest.raises(DeploymentError, match="More than one partition with label config-2"):
        cd.write_configdrive(dev, drive)
    assert region_digest(dev, 0, 128 * MiB) == before


def test_drive_larger_than_existing_partition(make_loop):
    big = cd.decode_configdrive({"meta_data": {}, "user_data": os.urandom(2 * MiB)})
    dev = make_loop(64 * MiB)
    sfdisk(dev, 'label: gpt\nstart=2048, size=2048, name="config-v2"\n')
    before = region_digest(dev, 0, 64 * MiB)
    with pytest.raises(DeploymentError, match="does not fit into"):
        cd.write_configdrive(dev, big)
    assert region_digest(dev, 0, 64 * MiB) == before


def test_4k_sectors_fall_back_to_vfat(make_loop, drive):
    dev = make_loop(256 * MiB, sector_size=4096)
    sfdisk(dev, 'label: gpt\nstart=256, size=5120, name="root"\n')
    result = cd.write_configdrive(dev, drive)
    assert result["filesystem"] == "vfat" and result["verified_by"] == "mtools"
    assert result["created"] and pt.read_table(dev).sector_size == 4096
    info = blkid(result["partition"])
    assert info["TYPE"] == "vfat" and info["LABEL"] == "CONFIG-2"
    assert info["BLOCK_SIZE"] == "4096"
    assert assert_cloud_init_sees_content(dev) == result["partition"]


def test_forced_rebuild_on_512_byte_sectors(make_loop, drive):
    dev = make_loop(128 * MiB)
    sfdisk(dev, 'label: gpt\nstart=2048, size=8192, name="root"\n')
    result = cd.write_configdrive(dev, drive, rebuild=True)
    assert result["filesystem"] == "vfat"
    assert "CD001" not in open(result["partition"], "rb").read(40000).decode("latin-1")
    assert_cloud_init_sees_content(dev)


def test_explicit_partition(make_loop, drive):
    dev = make_loop(64 * MiB)
    sfdisk(dev, "label: dos\nstart=2048, size=8192, type=83\nsize=8192, type=83\n")
    node = reread.reread(dev).partitions[1]
    result = cd.write_configdrive(dev, drive, partition=node)
    assert result["partition"] == node and result["created"] is False
    assert_cloud_init_sees_content(dev)


def test_explicit_partition_of_another_disk(make_loop, drive):
    dev, other = make_loop(64 * MiB), make_loop(64 * MiB)
    for d in (dev, other):
        sfdisk(d, "label: dos\nstart=2048, size=8192, type=83\n")
    node = reread.reread(other).partitions[1]
    with pytest.raises(DeploymentError, match=f"{node} is not a partition of {dev}"):
        cd.write_configdrive(dev, drive, partition=node)


def test_disk_without_partition_table(make_loop, drive):
    dev = make_loop(64 * MiB)
    with open(dev, "r+b") as f:
        f.write(os.urandom(4096))          # something, but not a partition table
    before = region_digest(dev, 0, 64 * MiB)
    with pytest.raises(DeploymentError, match="has no partition table"):
        cd.write_configdrive(dev, drive)
    assert region_digest(dev, 0, 64 * MiB) == before


def test_corrupt_primary_gpt_is_detected_and_refused(make_loop, drive):
    dev = make_loop(128 * MiB)
    sfdisk(dev, 'label: gpt\nstart=2048, size=8192, name="root"\n')
    with open(dev, "r+b") as f:
        f.seek(512 + 40)
        f.write(b"\xff\xff")
    table = pt.read_table(dev)
    assert not table.primary_ok and table.backup_ok
    with pytest.raises(DeploymentError, match="primary copy is damaged"):
        cd.write_configdrive(dev, drive)


def test_not_an_iso_is_rejected_before_touching_the_disk(make_loop):
    dev = make_loop(64 * MiB)
    sfdisk(dev, 'label: gpt\nstart=2048, size=8192, name="config-v2"\n')
    before = region_digest(dev, 0, 64 * MiB)
    with pytest.raises(InvalidCommandParamsError, match="not an ISO9660 image"):
        cd.write_configdrive(dev, b"\0" * 40000)
    assert region_digest(dev, 0, 64 * MiB) == before


def test_kernel_mount_check_with_a_driver_the_kernel_has(make_loop, tmp_path):
    # iso9660/vfat cannot be mounted here, so the mount logic is exercised with ext4
    dev = make_loop(64 * MiB)
    sfdisk(dev, "label: gpt\nstart=2048, size=16384\nsize=16384\n")
    nodes = reread.reread(dev).partitions
    good, empty = nodes[1], nodes[2]
    subprocess.run(["mkfs.ext4", "-q", good], check=True, capture_output=True)
    with pytest.raises(DeploymentError, match="mounts but has no openstack/ directory"):
        cd._kernel_mount_check(good, "ext4")
    os.makedirs(tmp_path / "tree" / "openstack" / "latest")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tmp_path / "tree"), good], check=True,
                   capture_output=True)
    assert cd._kernel_mount_check(good, "ext4") == "mount"
    assert not os.path.ismount(str(tmp_path / "tree"))
    # a driver that refuses the filesystem is what triggers the vfat rebuild
    assert cd._kernel_mount_check(empty, "ext4") == "mount-failed"
    assert cd._kernel_mount_check(good, "iso9660") == \
        ("mount-failed" if cd._kernel_has("iso9660") else None)
