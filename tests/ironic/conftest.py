"""Fixtures of the real-Ironic tier: one Ironic for the session, a node, an agent, a disk.

Run it with ``tox -e ironic`` or ``.venv/bin/pytest tests/ironic`` after
``tools/dev-setup --ironic``.  Without Ironic's virtualenv the tier skips,
unless IRONIC_REQUIRED=1 (CI), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.ironic import harness

sys.path.insert(0, os.path.join(harness.REPO, "tools"))
from realironic.client import Ironic  # noqa: E402
from realironic.server import IronicMissing, IronicServer, installed_version  # noqa: E402

REQUIRED = os.environ.get("IRONIC_REQUIRED") == "1"
# failed tests leave the Ironic and agent logs here (the tmp directories go away)
KEPT_LOGS = os.path.join(harness.REPO, ".cache", "ironic-tier")
# the agent heartbeats every 30-60 % of this; Ironic acts on heartbeats
HEARTBEAT_TIMEOUT_S = 8

pytestmark = pytest.mark.timeout(600)


def _skip_or_fail(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"IRONIC_REQUIRED=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def ironic(tmp_path_factory) -> Iterator[IronicServer]:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        _skip_or_fail("the real-Ironic tier needs root and loop devices")
    if os.path.exists("/sys/firmware/efi"):
        # the agent would take this UEFI host for a UEFI-booted ramdisk and add
        # boot entries to its NVRAM after every deploy
        _skip_or_fail("this host booted in UEFI mode; the tier runs on BIOS hosts only")
    try:
        installed_version()
    except IronicMissing as exc:
        _skip_or_fail(str(exc))
    server = IronicServer(str(tmp_path_factory.mktemp("ironic")), extra_options={
        "api": {"ramdisk_heartbeat_timeout": str(HEARTBEAT_TIMEOUT_S)},
    })
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def api(ironic) -> Ironic:
    return Ironic(ironic.url)


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Iterator[harness.FileServer]:
    server = harness.FileServer(str(tmp_path_factory.mktemp("images"))).start()
    yield server
    server.stop()


@pytest.fixture
def agent(tmp_path, ironic, request) -> Iterator[harness.Agent]:
    """The ramdisk's agent (not started: a test boots it when its flow needs it)."""
    booted = harness.Agent(str(tmp_path), ironic.url)
    keep_logs_of(request, booted)
    yield booted
    booted.stop()


NODE_INTERFACES = {
    "driver": "fake-hardware", "boot_interface": "fake", "deploy_interface": "direct",
    "power_interface": "fake",
    # the fake management interface refuses "boot device disk"
    "management_interface": "noop", "inspect_interface": "agent",
    "rescue_interface": "agent", "network_interface": "noop",
}


@pytest.fixture
def make_node(api) -> Iterator[Callable[..., dict[str, Any]]]:
    """``make_node(disk, **fields)``: an enrolled node whose port is this host's NIC."""
    created: list[str] = []
    mac = harness.host_mac()

    def make(disk: str, **fields: Any) -> dict[str, Any]:
        properties = {"root_device": {"name": disk}, **fields.pop("properties", {})}
        driver_info = {"deploy_forces_oob_reboot": True, **fields.pop("driver_info", {})}
        node = api.create_node(**NODE_INTERFACES, properties=properties,
                               driver_info=driver_info, **fields)
        created.append(node["uuid"])
        api.create_port(node["uuid"], mac)
        return node

    yield make
    for uuid in created:
        try:
            api.request("PUT", f"/v1/nodes/{uuid}/maintenance", json={"reason": "test done"})
            api.delete_node(uuid)
        except Exception as exc:  # noqa: BLE001 - one stuck node must not hide the test result
            print(f"could not delete node {uuid}: {exc}", file=sys.stderr)


def to_available(api: Ironic, uuid: str, timeout: float = 120) -> dict[str, Any]:
    api.provision(uuid, "manage")
    api.wait_for(uuid, "manageable", 60)
    api.provision(uuid, "provide")
    return api.wait_for(uuid, "available", timeout)


def guard_erase(api: Ironic, node_uuid: str, disks: list[str], work_dir: str,
                cmdline_path: str | None = None) -> dict[str, Any]:
    """Skip every disk but the one given; stop unless the agent would write exactly it.

    One ``s!=`` name hint, rather than a list of the other disks' names, also
    covers loop devices that other tests create while this one runs, so a
    cleaning test can never reach a disk that is not its own.
    """
    if len(disks) != 1:
        raise ValueError("guard_erase confines a step to exactly one disk")
    node = api.patch_node(node_uuid, **{"properties/skip_block_devices":
                                        [{"name": f"s!= {disks[0]}"}]})
    node_file = os.path.join(work_dir, "erase-plan-node.json")
    with open(node_file, "w", encoding="utf-8") as f:
        json.dump({"properties": node["properties"], "driver_info": node["driver_info"]}, f)
    argv = [sys.executable, "-m", "agent.cli", "erase-plan", "--include-loop-devices",
            "--node", node_file]
    if cmdline_path:
        argv += ["--cmdline", cmdline_path]
    out = subprocess.run(argv, cwd=harness.REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=harness.REPO))
    answer = dict(json.loads(out.stdout))
    if answer["erase"] != disks or answer["refused"]:
        pytest.fail(f"refusing to clean: the agent would write {answer['erase']} "
                    f"(refused: {answer['refused']}), not exactly {disks}", pytrace=False)
    return answer


def keep_logs_of(request, *things: Any) -> None:
    """Have a failure of this test keep the logs of these agents and Ironic servers."""
    kept = request.node.__dict__.setdefault("ironic_tier_logs", [])
    kept.extend(things)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    os.makedirs(KEPT_LOGS, exist_ok=True)
    stem = item.nodeid.replace("/", "_").replace("::", "-")
    things = [v for v in item.funcargs.values() if isinstance(v, IronicServer)]
    things += item.__dict__.get("ironic_tier_logs", [])
    for n, thing in enumerate(things):
        if isinstance(thing, IronicServer):
            path, tail, what = thing.log_path, thing.log_tail(60), "Ironic"
        else:
            path, tail, what = thing.log_path, "".join(thing.log().splitlines(True)[-60:]), \
                f"agent {thing.name}"
        if not path or not os.path.exists(path):
            continue
        kept = os.path.join(KEPT_LOGS, f"{stem}.{n}.log")
        shutil.copyfile(path, kept)
        report.sections.append((f"{what} log (tail; whole log in {kept})", tail))
