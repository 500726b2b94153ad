"""Non-raw partition images, and cancelling a staged image, on real loop devices.

The root filesystem is a real ext4 made by mkfs, wrapped by the real qemu-img;
the agent fetches it from a real HTTP server on 127.0.0.1 and deploys it
through ``deploy.prepare``, which lets the tests watch the disk (through
``Progress``) while qemu-img is writing it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from agent import config as config_mod
from agent.disk.partition_table import read_table
from agent.errors import Cancelled, InvalidImage
from agent.imaging import deploy, image_info
from agent.progress import Progress
from agent.state import AgentState
from tests.conftest import requires_loop
from tests.functional.imaging.test_staging import digest, filled, guest, memfds

pytestmark = requires_loop
MiB = 1 << 20
UUID = "0d6c3c5e-5d1c-4b53-8f0e-2f6b1a7c9d41"


def agent_state(dev: str, **flags) -> AgentState:
    cfg = config_mod.load(cmdline="", env={}, flags={
        "standalone": True, "include_loop_devices": True,
        "image_download_connection_retry_interval": 0.01,
        "image_download_connection_retries": 1, "disk_wait_attempts": 1, **flags})
    state = AgentState(cfg)
    state.refresh_node({"properties": {"root_device": {"name": dev}}})
    return state


def spec_for(server, data: bytes, **extra) -> image_info.ImageSpec:
    server.files["root"] = data
    return image_info.validate({
        "id": "root-1", "urls": [f"{server.url}/root"], "os_hash_algo": "sha256",
        "os_hash_value": hashlib.sha256(data).hexdigest(), **extra}, md5_allowed=False)


def ext4_root(tmp_path, size_mib: int = 16) -> bytes:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "noise").write_bytes(os.urandom(4 * MiB))
    (tree / "etc").mkdir()
    (tree / "etc" / "hostname").write_text("staged\n")
    image = tmp_path / "root.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-U", UUID, "-d", str(tree), str(image),
                    f"{size_mib}M"], check=True, capture_output=True)
    return image.read_bytes()


def qcow2_of(tmp_path, raw: bytes, *opts: str) -> bytes:
    src, out = tmp_path / "src.raw", tmp_path / "out.qcow2"
    src.write_bytes(raw)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", *opts, str(src),
                    str(out)], check=True, capture_output=True)
    return out.read_bytes()


class Watch(Progress):
    """Records the disk's partition table each time qemu-img reports progress."""

    def __init__(self, dev: str) -> None:
        super().__init__()
        self.dev = dev
        self.tables: list[str | None] = []

    def update(self, phase=None, done=None, total=None, unit=None, **extra) -> None:
        super().update(phase, done, total, unit, **extra)
        if phase == "convert":
            self.tables.append(read_table(self.dev).kind)


@pytest.mark.parametrize("budget,staging", [("auto", "memory"), (0, "disk-tail")])
def test_qcow2_root_image_is_converted_into_the_root_partition(image_server, make_loop,
                                                               tmp_path, budget, staging):
    root = ext4_root(tmp_path)
    qcow = qcow2_of(tmp_path, root, "-c")
    dev = filled(make_loop, 96 * MiB)
    state = agent_state(dev, image_staging_memory_mb=budget)
    watch = Watch(dev)
    out = deploy.prepare(state, spec_for(image_server, qcow, image_type="partition",
                                         root_mb=40, disk_label="msdos"),
                         progress=watch)
    conv = out["write"]["conversion"]
    assert conv["staging"] == staging and out["write"]["image_format"] == "qcow2"
    assert watch.tables and set(watch.tables) == {None}     # no table while qemu-img writes
    table = read_table(dev)
    assert table.kind == "mbr" and table.ok
    part = max(table.partitions, key=lambda p: p.number)
    assert part.size_bytes == 40 * MiB and part.bootable
    with open(dev, "rb") as f:
        f.seek(part.start_bytes)
        assert f.read(len(root)) == root
    assert state.partition_uuids["root uuid"] == UUID
    assert memfds() == []


def test_root_image_larger_than_the_root_partition_is_refused_before_any_write(
        image_server, make_loop, tmp_path):
    big = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(big), "64M"], check=True,
                   capture_output=True)
    dev = filled(make_loop, 96 * MiB)
    before = digest(dev)
    with pytest.raises(InvalidImage) as exc:
        deploy.prepare(agent_state(dev), spec_for(image_server, big.read_bytes(),
                                                  image_type="partition", root_mb=24))
    assert exc.value.details == (f"the qcow2 partition image's virtual size ({64 * MiB} "
                                 f"bytes) is larger than the root partition ({24 * MiB} bytes)")
    assert digest(dev) == before


def test_backing_file_root_image_is_refused_before_any_write(image_server, make_loop,
                                                             tmp_path):
    evil = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname",
                    "-u", str(evil), "8M"], check=True, capture_output=True)
    dev = filled(make_loop, 96 * MiB)
    before = digest(dev)
    with pytest.raises(InvalidImage, match="backing file"):
        deploy.prepare(agent_state(dev), spec_for(image_server, evil.read_bytes(),
                                                  image_type="partition", root_mb=24))
    assert digest(dev) == before


def test_root_image_must_be_a_permitted_format(image_server, make_loop, tmp_path):
    root = ext4_root(tmp_path)
    dev = filled(make_loop, 96 * MiB)
    before = digest(dev)
    with pytest.raises(InvalidImage, match="format vdi is not permitted"):
        deploy.prepare(agent_state(dev), spec_for(image_server, _vdi(tmp_path, root),
                                                  image_type="partition", root_mb=24))
    assert digest(dev) == before


def _vdi(tmp_path, raw: bytes) -> bytes:
    src, out = tmp_path / "src.raw", tmp_path / "out.vdi"
    src.write_bytes(raw)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vdi", str(src), str(out)],
                   check=True, capture_output=True)
    return out.read_bytes()


# --- cancelling: the memory goes back, and the disk says what it holds ---------------------

class CancelAt(Progress):
    def __init__(self, phase: str) -> None:
        super().__init__()
        self.at = phase
        self.seen = False
        self.held: list[str] = []      # the staged memory at the moment of cancelling

    def update(self, phase=None, done=None, total=None, unit=None, **extra) -> None:
        super().update(phase, done, total, unit, **extra)
        snap = self.snapshot()
        if snap["phase"] == self.at and snap["done"]:
            self.seen = True

    def check(self) -> None:
        if self.seen:
            self.held = memfds()
            raise Cancelled("cancelled by the test")


def test_cancel_while_staging_in_memory_leaves_the_disk_untouched(image_server, make_loop,
                                                                  tmp_path):
    _raw, qcow = guest(tmp_path, 64 * MiB, 30)
    image_server.throttle_s = 0.01
    dev = filled(make_loop, 128 * MiB)
    before = digest(dev)
    progress = CancelAt("write")
    with pytest.raises(Cancelled) as exc:
        deploy.prepare(agent_state(dev), spec_for(image_server, qcow, disk_format="qcow2"),
                       progress=progress, cancel_check=progress.check)
    assert exc.value.details.endswith(f"{dev} was not touched")
    assert digest(dev) == before
    assert len(progress.held) == 1 and memfds() == []


def test_cancel_while_converting_from_memory_leaves_no_table(image_server, make_loop,
                                                             tmp_path):
    _raw, qcow = guest(tmp_path, 128 * MiB, 60)
    dev = filled(make_loop, 192 * MiB)
    progress = CancelAt("convert")
    with pytest.raises(Cancelled) as exc:
        deploy.prepare(agent_state(dev), spec_for(image_server, qcow, disk_format="qcow2"),
                       progress=progress, cancel_check=progress.check)
    assert "will not boot" in exc.value.details
    assert read_table(dev).kind is None
    with open(dev, "rb") as f:
        assert f.read(MiB) == bytes(MiB)
    assert len(progress.held) == 1 and memfds() == []
