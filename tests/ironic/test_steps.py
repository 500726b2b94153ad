"""The agent's optional steps, driven by a real Ironic 39: ``inject_files`` from a deploy
template and as a service step, and manual clean steps (burn-in, pstore, UEFI NVRAM).

Ironic keeps no step results and wipes the agent's token when a flow ends, so
results are read from the agent's ``/v1/commands`` with the token Ironic held
while the flow ran (harness.StepWatch).
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import requires_loop
from tests.ironic import harness
from tests.ironic.conftest import guard_erase, to_available
from tests.ironic.test_deploy import DEPLOY_TIMEOUT_S, assert_clean_finish, whole_disk_info

pytestmark = requires_loop
MiB = harness.MiB
CLEAN_TIMEOUT_S = 240
PSTORE_BACKEND = "/sys/module/pstore/parameters/backend"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def ext4_disk_image(path: str) -> bytes:
    """A whole-disk GPT image whose one partition is an ext4 root with /etc in it."""
    root = path + ".root"
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    with open(os.path.join(root, "etc", "override"), "w", encoding="utf-8") as f:
        f.write("from the image\n")
    fs = path + ".ext4"
    with open(fs, "wb") as f:
        f.truncate(32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "img-root", "-d", root, fs], check=True,
                   capture_output=True)
    with open(path, "wb") as f:
        f.truncate(40 * MiB)
    subprocess.run(["sgdisk", "-n", "1:2048:+32M", "-c", "1:root", path], check=True,
                   capture_output=True)
    with open(fs, "rb") as src, open(path, "r+b") as dst:
        dst.seek(MiB)
        dst.write(src.read())
    with open(path, "rb") as f:
        return f.read()


@contextlib.contextmanager
def mounted_ro(disk: str, number: int = 1) -> Iterator[str]:
    """The disk's ext4 partition ``number``, mounted read-only (no journal replay)."""
    part = f"{disk}p{number}"
    if not os.path.exists(part):
        subprocess.run(["partx", "-a", "--nr", str(number), disk], check=True,
                       capture_output=True)
    with tempfile.TemporaryDirectory(prefix="inject-check-") as where:
        subprocess.run(["mount", "-t", "ext4", "-o", "ro,noload", part, where], check=True,
                       capture_output=True)
        try:
            yield where
        finally:
            subprocess.run(["umount", where], check=True, capture_output=True)


def files_on(disk: str, paths: list[str]) -> dict[str, tuple[str, int] | None]:
    """path -> (text, permission bits), or None where the file is absent."""
    found: dict[str, tuple[str, int] | None] = {}
    with mounted_ro(disk) as root:
        for path in paths:
            full = os.path.join(root, path.lstrip("/"))
            if not os.path.isfile(full):
                found[path] = None
                continue
            with open(full, encoding="utf-8") as f:
                found[path] = (f.read(), os.stat(full).st_mode & 0o7777)
    return found


@pytest.fixture
def disk(make_loop) -> str:
    return make_loop(128 * MiB)


@pytest.fixture
def deploy_template(api) -> Iterator[str]:
    """A fresh CUSTOM_ trait name; its deploy template is deleted afterwards."""
    name = f"CUSTOM_DA_INJECT_{uuid.uuid4().hex[:8].upper()}"
    yield name
    with contextlib.suppress(Exception):
        api.request("DELETE", f"/v1/deploy_templates/{name}")


def test_deploy_template_inject_files_then_service_step(api, ironic, images, agent, make_node,
                                                        disk, deploy_template, tmp_path):
    data = ext4_disk_image(str(tmp_path / "ext4-disk.img"))
    url, sha = images.add("ext4-disk.img", data)
    node_files = [{"path": "/etc/from-node", "content": b64("from node properties\n"),
                   "mode": 0o604},
                  {"path": "/etc/override", "content": b64("from node properties\n")}]
    node = make_node(disk, properties={"inject_files": node_files})
    template_files = [
        # no partition: the agent finds the one whose root holds /etc
        {"path": "/etc/deploy-agent/injected.conf", "content": b64("template says hi\n"),
         "mode": 0o640},
        # the step's files come after the node's: for one path the template wins
        {"path": "/etc/override", "partition": {"label": "img-root"},
         "content": b64("from the template\n"), "mode": 0o600}]
    # between write_image (80) and prepare_instance_boot (60)
    api.create_deploy_template(deploy_template, [
        {"interface": "deploy", "step": "inject_files", "priority": 70,
         "args": {"files": template_files}}])
    api.request("PUT", f"/v1/nodes/{node['uuid']}/traits", json={"traits": [deploy_template]})
    to_available(api, node["uuid"])
    agent.start()
    watch = harness.StepWatch(ironic.options["database"]["connection"], node["uuid"])
    api.patch_node(node["uuid"], **{f"instance_info/{k}": v for k, v in
                                    whole_disk_info(url, sha).items()},
                   **{"instance_info/traits": [deploy_template]})
    started = time.monotonic()
    api.provision(node["uuid"], "active")
    done = api.wait_for(node["uuid"], "active", DEPLOY_TIMEOUT_S, on_poll=watch)
    deploy_s = time.monotonic() - started

    assert_clean_finish(done, "active")
    # Ironic ran the template's step with its priority and arguments
    steps = {s["step"]: s for s in watch.seen["deploy_steps"]}
    assert steps["inject_files"]["priority"] == 70
    assert steps["inject_files"]["args"]["files"] == template_files
    paths = ["/etc/deploy-agent/injected.conf", "/etc/override", "/etc/from-node"]
    assert files_on(disk, paths) == {
        "/etc/deploy-agent/injected.conf": ("template says hi\n", 0o640),
        "/etc/override": ("from the template\n", 0o600),
        "/etc/from-node": ("from node properties\n", 0o604)}
    result = watch.step_results(str(tmp_path), "deploy")["inject_files"]
    assert result["command_status"] == "SUCCEEDED"
    assert result["result"].startswith("inject_files: wrote 4 file(s)"), result

    # servicing: the OS reboots into the ramdisk, which changes one file and deletes one
    agent.restart()
    service_watch = harness.StepWatch(ironic.options["database"]["connection"], node["uuid"])
    started = time.monotonic()
    api.provision(node["uuid"], "service", service_steps=[
        {"interface": "deploy", "step": "inject_files", "args": {"files": [
            {"path": "/etc/deploy-agent/injected.conf", "partition": 1,
             "content": b64("serviced\n"), "mode": 0o444},
            {"path": "/etc/from-node", "deleted": True}]}}])
    done = api.wait_for(node["uuid"], "active", DEPLOY_TIMEOUT_S, on_poll=service_watch)
    service_s = time.monotonic() - started

    assert_clean_finish(done, "active")
    # node.properties.inject_files applies again first, then the step's files
    assert files_on(disk, paths) == {
        "/etc/deploy-agent/injected.conf": ("serviced\n", 0o444),
        "/etc/override": ("from node properties\n", 0o600),
        "/etc/from-node": None}
    result = service_watch.step_results(str(tmp_path), "service")["inject_files"]
    assert result["command_status"] == "SUCCEEDED"
    print(f"deploy with an inject_files template: {deploy_s:.1f}s; "
          f"inject_files service step: {service_s:.1f}s")


def _pstore_has_no_backend() -> bool:
    # with a backend registered, the host's own crash records would be erased
    try:
        with open(PSTORE_BACKEND, encoding="ascii") as f:
            return f.read().strip() in ("", "(null)")
    except FileNotFoundError:
        return True


def _pstore_mounts() -> list[str]:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return [line for line in f if line.split()[2:3] == ["pstore"]]


def test_manual_clean_burnin_cpu_memory_and_erase_pstore(api, ironic, agent, make_node, disk,
                                                         tmp_path):
    if not _pstore_has_no_backend():
        pytest.skip("this host's pstore has a backend: erase_pstore would erase its records")
    pstore_before = _pstore_mounts()
    node = make_node(disk, driver_info={
        "agent_burnin_cpu_timeout": 2, "agent_burnin_cpu_cpu": 1,
        "agent_burnin_vm_timeout": 2, "agent_burnin_vm_vm": 1,
        "agent_burnin_vm_vm-bytes": "16m"})
    api.provision(node["uuid"], "manage")
    api.wait_for(node["uuid"], "manageable", 60)
    agent.start()
    watch = harness.StepWatch(ironic.options["database"]["connection"], node["uuid"])
    started = time.monotonic()
    api.provision(node["uuid"], "clean", clean_steps=[
        {"interface": "deploy", "step": "burnin_cpu"},
        {"interface": "deploy", "step": "burnin_memory"},
        {"interface": "deploy", "step": "erase_pstore"}])
    done = api.wait_for(node["uuid"], "manageable", CLEAN_TIMEOUT_S, on_poll=watch)
    seconds = time.monotonic() - started

    assert_clean_finish(done, "manageable")
    assert done["clean_step"] == {}
    # the steps Ironic ran, in order, and how the agent listed them
    assert [s["step"] for s in watch.seen["clean_steps"]] == [
        "burnin_cpu", "burnin_memory", "erase_pstore"]
    cached = {s["step"]: s for s in watch.seen["agent_cached_clean_steps"]["deploy"]}
    for name in ("burnin_cpu", "burnin_memory", "erase_pstore"):
        assert cached[name]["priority"] == 0 and cached[name]["abortable"] is True

    results = watch.step_results(str(tmp_path), "clean")
    cpu, memory = results["burnin_cpu"], results["burnin_memory"]
    assert cpu["command_status"] == "SUCCEEDED"
    assert (cpu["tool"], cpu["stressor"], cpu["workers"], cpu["timeout_s"]) == (
        "stress-ng", "cpu", 1, 2)
    assert cpu["metrics"]["bogo_ops"] > 0 and cpu["metrics"]["wall_clock_s"] > 0
    assert memory["command_status"] == "SUCCEEDED"
    assert (memory["stressor"], memory["vm_bytes"], memory["timeout_s"]) == ("vm", "16m", 2)
    assert memory["metrics"]["bogo_ops"] > 0
    # pstore is in this kernel but not mounted: the agent mounted it where the kernel
    # puts it, found no records (no backend), and unmounted it again
    pstore = results["erase_pstore"]["pstore"]
    assert pstore == {"mount_point": "/sys/fs/pstore", "mounted_by_agent": True, "count": 0,
                      "bytes": 0, "removed": []}
    assert _pstore_mounts() == pstore_before
    print(f"manual clean burnin_cpu + burnin_memory + erase_pstore: {seconds:.1f}s")


def test_manual_clean_burnin_disk_on_the_loop_disk(api, ironic, agent, make_node, disk,
                                                   tmp_path):
    old = harness.pattern(b"previous tenant", 16 * MiB)
    with open(disk, "r+b") as f:
        f.write(old)
    node = make_node(disk, driver_info={"agent_burnin_fio_disk_loops": 1,
                                        "agent_burnin_fio_disk_runtime": 2})
    guard_erase(api, node["uuid"], [disk], str(tmp_path))
    api.provision(node["uuid"], "manage")
    api.wait_for(node["uuid"], "manageable", 60)
    agent.start()
    watch = harness.StepWatch(ironic.options["database"]["connection"], node["uuid"])
    started = time.monotonic()
    api.provision(node["uuid"], "clean", clean_steps=[
        {"interface": "deploy", "step": "burnin_disk"}])
    done = api.wait_for(node["uuid"], "manageable", CLEAN_TIMEOUT_S, on_poll=watch)
    seconds = time.monotonic() - started

    assert_clean_finish(done, "manageable")
    result = watch.step_results(str(tmp_path), "clean")["burnin_disk"]
    assert result["command_status"] == "SUCCEEDED"
    assert (result["tool"], result["loops"], result["runtime_s"]) == ("fio", 1, 2)
    # our disk only: every other disk matched the skip hint
    assert list(result["disks"]) == [disk]
    assert disk not in result["skipped"]
    job = result["disks"][disk]
    assert job["write"]["bytes"] > 0 and job["read"]["bytes"] > 0
    assert (job["error"], job["verify_errors"]) == (0, 0)
    # fio's crc32c-carrying blocks replaced the old bytes (about half of them, sequentially)
    assert harness.read_disk(disk, 0, 16 * MiB) != old
    print(f"manual clean burnin_disk: {seconds:.1f}s")


def test_manual_clean_uefi_nvram_without_efivars_fails_with_the_reason(api, agent, make_node,
                                                                      disk):
    node = make_node(disk)
    api.provision(node["uuid"], "manage")
    api.wait_for(node["uuid"], "manageable", 60)
    agent.start()
    started = time.monotonic()
    api.provision(node["uuid"], "clean", clean_steps=[
        {"interface": "deploy", "step": "clean_uefi_nvram",
         "args": {"match_patterns": ["^HD\\("]}}])
    failed = api.wait_for(node["uuid"], "clean failed", CLEAN_TIMEOUT_S)

    error = failed["last_error"] or ""
    assert "clean_uefi_nvram" in error, error
    assert "not booted in UEFI mode" in error, error
    print(f"manual clean clean_uefi_nvram (no efivars): {time.monotonic() - started:.1f}s")
