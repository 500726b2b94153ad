"""Where a non-raw whole-disk image is staged: memory, the disk's tail, or nowhere.

Real loop devices, real qemu-img, a real HTTP server on 127.0.0.1, through
the agent's API.  Each test names what the code before memory staging did.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess

import pytest

from agent import config as config_mod
from agent.api import create_app
from agent.commands import CommandRunner
from agent.disk.partition_table import read_table
from agent.extensions import load_extensions
from agent.state import AgentState
from tests.conftest import requires_loop

pytestmark = requires_loop
MiB = 1 << 20
FILL = b"\x5c"


def make_agent(**flags):
    cfg = config_mod.load(cmdline="", env={}, flags={
        "standalone": True, "include_loop_devices": True,
        "image_download_connection_retry_interval": 0.01,
        "image_download_connection_retries": 1, "disk_wait_attempts": 1, **flags})
    state = AgentState(cfg)
    return create_app(state, CommandRunner(load_extensions(state))).test_client()


def prepare(client, server, dev, data, verify=False, **extra):
    server.files["img"] = data
    image_info = {"id": "img-1", "urls": [f"{server.url}/img"], "disk_format": "qcow2",
                  "os_hash_algo": "sha256", "os_hash_value": hashlib.sha256(data).hexdigest(),
                  **extra}
    resp = client.post("/v1/commands/?wait=true", json={
        "name": "standby.prepare_image",
        "params": {"image_info": image_info, "verify_after_write": verify,
                   "node": {"properties": {"root_device": {"name": dev}}}}})
    return resp.get_json()


def guest(tmp_path, vsize: int, random_mib: int, name: str = "disk") -> tuple[bytes, bytes]:
    """(raw guest disk, qcow2 of it): a GPT and ``random_mib`` MiB of noise from 1 MiB."""
    raw = tmp_path / f"{name}.raw"
    with open(raw, "wb") as f:
        f.truncate(vsize)
        f.seek(MiB)
        f.write(os.urandom(random_mib * MiB))
    subprocess.run(["sgdisk", "-n", "1:2048:0", str(raw)], check=True, capture_output=True)
    qcow = tmp_path / f"{name}.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)],
                   check=True, capture_output=True)
    return raw.read_bytes(), qcow.read_bytes()


def filled(make_loop, size: int) -> str:
    dev = make_loop(size)
    with open(dev, "r+b") as f:
        for _ in range(size // MiB):
            f.write(FILL * MiB)
    return dev


def digest(dev: str) -> str:
    h = hashlib.sha256()
    with open(dev, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def memfds() -> list[str]:
    """This process's open memfds: a staged image must never outlive its deploy."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "memfd:deploy-agent-image" in target:
            found.append(target)
    return found


@pytest.mark.parametrize("verify", [False, True])
def test_qcow2_too_big_to_stage_on_the_disk_goes_through_memory(image_server, make_loop,
                                                                 tmp_path, verify):
    # before: "too small to stage" (320 MiB disk - 257 MiB = 63 MiB < the file)
    raw, qcow = guest(tmp_path, 256 * MiB, 100)
    assert len(qcow) > 63 * MiB
    dev = filled(make_loop, 320 * MiB)
    body = prepare(make_agent(), image_server, dev, qcow, verify=verify)
    assert body["command_status"] == "SUCCEEDED", body["command_error"]
    write = body["command_result"]["write"]
    conv = write["conversion"]
    assert (conv["staging"], conv["staged_bytes"]) == ("memory", len(qcow))
    assert "staged_at" not in conv and conv["virtual_size"] == 256 * MiB
    assert write["image_format"] == "qcow2" and write["write_path"] == "memory"
    assert write["verified_after_write"] is verify
    with open(dev, "rb") as f:
        disk = f.read(320 * MiB)
    # the first sector and the GPT change when the backup header moves to the disk end
    assert disk[MiB:255 * MiB] == raw[MiB:255 * MiB]
    assert disk[256 * MiB:] == FILL * (64 * MiB - MiB) + disk[-MiB:]
    assert read_table(dev).ok
    assert memfds() == []


def test_neither_memory_nor_disk_can_stage_it(image_server, make_loop, tmp_path):
    _raw, qcow = guest(tmp_path, 256 * MiB, 100)
    dev = filled(make_loop, 320 * MiB)
    before = digest(dev)
    body = prepare(make_agent(image_staging_memory_mb=16), image_server, dev, qcow)
    assert body["command_status"] == "FAILED"
    error = body["command_error"]
    assert error["type"] == "InvalidImage"
    assert "the memory budget is 16777216 bytes (image_staging_memory_mb)" in error["details"]
    assert f"has {63 * MiB} bytes beyond the image's virtual size" in error["details"]
    assert f"({len(qcow)} bytes)" in error["details"]
    assert digest(dev) == before
    assert memfds() == []


def test_a_file_larger_than_the_budget_is_staged_on_the_disk_tail(image_server, make_loop,
                                                                  tmp_path):
    raw, qcow = guest(tmp_path, 64 * MiB, 40)
    dev = filled(make_loop, 256 * MiB)
    body = prepare(make_agent(image_staging_memory_mb=8), image_server, dev, qcow, verify=True)
    assert body["command_status"] == "SUCCEEDED", body["command_error"]
    conv = body["command_result"]["write"]["conversion"]
    assert (conv["staging"], conv["staged_at"]) == ("disk-tail", 65 * MiB)
    assert conv["staged_bytes"] == -(-len(qcow) // 4096) * 4096
    assert conv["staging_memory_budget"] == 8 * MiB
    with open(dev, "rb") as f:
        assert f.read(63 * MiB)[MiB:] == raw[MiB:63 * MiB]
    assert read_table(dev).ok


def test_compressed_file_outgrowing_the_budget_stops_with_the_disk_untouched(
        image_server, make_loop, tmp_path):
    # the tail (70 - 65 = 5 MiB) is smaller than the 8 MiB budget, so memory is tried;
    # before: the disk was wiped and the tail overflowed
    _raw, qcow = guest(tmp_path, 64 * MiB, 40)
    dev = filled(make_loop, 70 * MiB)
    before = digest(dev)
    body = prepare(make_agent(image_staging_memory_mb=8), image_server, dev,
                   gzip.compress(qcow, compresslevel=1))
    assert body["command_status"] == "FAILED"
    error = body["command_error"]
    assert error["type"] == "InvalidImage", error
    assert ("outgrew its staging area at byte 8388608: the memory budget is 8388608 bytes "
            "(image_staging_memory_mb) and the target has 5242880 bytes") in error["details"]
    assert f"{dev} was not touched" in error["details"]
    assert digest(dev) == before
    assert memfds() == []


def test_bad_checksum_in_memory_leaves_the_disk_untouched(image_server, make_loop, tmp_path):
    # before: staged on the disk's tail, so the failure left a wiped disk
    _raw, qcow = guest(tmp_path, 64 * MiB, 20)
    dev = filled(make_loop, 256 * MiB)
    before = digest(dev)
    body = prepare(make_agent(), image_server, dev, qcow, os_hash_value="7" * 64)
    assert body["command_status"] == "FAILED"
    error = body["command_error"]
    assert error["type"] == "ImageChecksumError"
    assert error["details"].endswith(f"{dev} was not touched")
    assert digest(dev) == before
    assert sum(1 for e in image_server.log if e["path"] == "img") == 2   # one retry
    assert memfds() == []


def test_read_back_of_a_memory_staged_image_notices_a_changed_byte(make_loop, tmp_path):
    from agent.errors import ImageChecksumError
    from agent.imaging import formats, staging
    raw, qcow = guest(tmp_path, 32 * MiB, 8)
    dev = filled(make_loop, 64 * MiB)
    place = staging.choose(dev, 64 * MiB, formats.inspect(qcow), len(qcow), 64 * MiB)
    seen: list[tuple[int, int]] = []
    with staging.MemoryStage(place, dev) as stage:
        stage.write(memoryview(qcow))
        stage.seal()
        staging.convert(place, stage.path, stage.position, dev, lambda d, t: None, lambda: None)
        staging.verify_converted(stage, dev, 32 * MiB, lambda d, t: seen.append((d, t)),
                                 lambda: None)
        assert seen[-1] == (32 * MiB, 32 * MiB)
        with open(dev, "r+b") as f:
            f.seek(5 * MiB + 3)
            f.write(bytes([raw[5 * MiB + 3] ^ 1]))
            f.flush()
            os.fsync(f.fileno())
        with pytest.raises(ImageChecksumError, match="does not hold the guest bytes"):
            staging.verify_converted(stage, dev, 32 * MiB, lambda d, t: None, lambda: None)
