"""The raid steps: what Ironic is offered, what create reads, and validation before any write."""

from __future__ import annotations

from typing import Any

import pytest

from agent import config as agent_config
from agent import tools
from agent.commands import CommandRunner
from agent.errors import CleaningError, DeploymentError, InvalidCommandParamsError, ServicingError
from agent.extensions.steps import CleanExtension, DeployExtension, ServiceExtension
from agent.hardware import managers
from agent.hardware.disks import GIB, Disk
from agent.hardware.generic import GenericHardwareManager
from agent.hardware.raid import apply, pool, steps, teardown
from agent.state import AgentState


def disk(name: str, gib: float = 20, **kw: Any) -> Disk:
    # names no device on this machine has: a write would fail loudly
    return Disk(name=f"/dev/raidtest-{name}", size=int(gib * GIB), serial=f"S-{name}",
                kind="disk", **kw)


A, B, C, D = (disk(c) for c in "abcd")


def ld(level: str = "1", size: Any = 10, **kw: Any) -> dict[str, Any]:
    return {"controller": "software", "raid_level": level, "size_gb": size, **kw}


@pytest.fixture
def no_writes(monkeypatch):
    """Every way the runner writes, replaced by a failure: validation must stop first."""
    calls: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError(f"something was about to be written: {args}")

    monkeypatch.setattr(apply, "run", refuse)
    monkeypatch.setattr(teardown, "run", refuse)
    monkeypatch.setattr(tools, "run", refuse)
    monkeypatch.setattr(apply, "refusal_reasons", lambda *a, **k: [])
    return calls


def create(disks: list[Disk], lds: list[dict[str, Any]], node: dict[str, Any] | None = None
           ) -> str:
    with pytest.raises(InvalidCommandParamsError) as info:
        steps.create(disks, node or {}, {"logical_disks": lds}, None, delete_existing=False,
                     guard_shared=False, error_cls=CleaningError)
    assert info.value.code == 400
    return info.value.details


@pytest.mark.parametrize("lds, disks, expected", [
    ([ld("4")], [A, B], "raid_level is missing or not supported"),
    ([ld("5")], [A, B], "RAID-5 needs at least 3 disks, 2 usable disk(s) found"),
    ([ld("1+0")], [A, B, C], "RAID-1+0 needs at least 4 disks"),
    ([ld(size="MAX"), ld(size="MAX", volume_name="b")], [A, B],
     "more than one logical disk has size_gb \"MAX\""),
    ([ld(size=20)], [A, B], "needs a 20481 MiB holder partition on each member, but "
                            "/dev/raidtest-a has 20478 MiB"),
    ([ld(size=15), ld(size=10, volume_name="b")], [A, B], "logical disk 2 (b): RAID-1 of 10 "
                                                          "GiB needs"),
    ([ld(physical_disks=[{"serial": "S-a"}, {"serial": "nope"}])], [A, B],
     "logical disk 1 (md0): physical_disks entry 2 matches none of the 2 usable disk(s)"),
    ([ld(physical_disks=[{"name": "/dev/raidtest-a"}])], [A, B],
     "physical_disks names 1 disk(s); RAID-1 needs at least 2"),
    ([ld(), ld(controller="hardware", volume_name="b")], [A, B],
     "logical disk 2 does not ask for controller \"software\""),
])
def test_validation_errors_write_nothing(no_writes, lds, disks, expected):
    details = create(disks, lds)
    assert expected in details
    assert no_writes == []


def test_validation_error_does_not_echo_the_callers_values(no_writes):
    details = create([A, B], [ld(physical_disks=[{"serial": "SECRET-VALUE"}, {"serial": "x"}])])
    assert "SECRET-VALUE" not in details


def test_the_skip_list_removes_disks_before_selection(no_writes):
    node = {"properties": {"skip_block_devices": [{"serial": "S-b"}]}}
    details = create([A, B], [ld()], node)
    assert "RAID-1 needs at least 2 disks, 1 usable disk(s) found" in details
    assert no_writes == []


def test_read_only_and_md_disks_are_not_candidates(no_writes):
    ro = disk("ro", read_only=True)
    md = Disk(name="/dev/md9", size=40 * GIB, kind="md")
    details = create([A, ro, md], [ld()])
    assert "1 usable disk(s) found" in details


def test_a_configuration_without_software_volumes_is_refused_clearly(no_writes):
    with pytest.raises(InvalidCommandParamsError, match="no logical disk asks for controller"):
        steps.create([A, B], {}, {"logical_disks": [{"controller": "perc", "raid_level": "1",
                                                     "size_gb": 10}]}, None,
                     delete_existing=False, guard_shared=False, error_cls=CleaningError)


def test_a_volume_name_kept_by_an_existing_array_is_refused(no_writes, monkeypatch):
    from agent.hardware.raid.arrays import MdArray
    running = MdArray(kname="md5", level="1", state="clean", members=("/dev/x1", "/dev/y1"),
                      member_disks=("/dev/x", "/dev/y"), size=GIB, volume_name="root")
    monkeypatch.setattr(pool.md_arrays, "list_arrays", lambda root="/": [running])
    details = create([A, B], [ld(volume_name="root")])
    assert "an md array named root already exists" in details


# --- what create_configuration reads ---------------------------------------------------------

TARGET = {"logical_disks": [ld(is_root_volume=True, volume_name="root"),
                            ld(level="0", size="MAX", volume_name="data")]}


def test_target_config_prefers_ironics_filtered_copy():
    node = {"target_raid_config": TARGET,
            "driver_internal_info": {"target_raid_config": {"logical_disks": [ld()]}}}
    assert steps.target_config(node) == {"logical_disks": [ld()]}
    assert steps.target_config({"target_raid_config": TARGET}) == TARGET


@pytest.mark.parametrize("root, nonroot, names", [
    (True, True, ["root", "data"]), (False, True, ["data"]), (True, False, ["root"]),
    ("false", "true", ["data"]),
])
def test_target_config_filters_like_ironic(root, nonroot, names):
    got = steps.target_config({"target_raid_config": TARGET}, root, nonroot)
    assert [x["volume_name"] for x in got["logical_disks"]] == names


@pytest.mark.parametrize("node, root, nonroot, expected", [
    ({}, True, True, "the node has no target_raid_config"),
    ({"target_raid_config": {}}, True, True, "the node has no target_raid_config"),
    ({"target_raid_config": TARGET}, False, False, "empty after skipping the root volume and "
                                                   "skipping non-root volumes"),
    ({"target_raid_config": TARGET}, "maybe", True, "create_root_volume must be true or false"),
])
def test_target_config_errors(node, root, nonroot, expected):
    with pytest.raises(InvalidCommandParamsError, match=expected):
        steps.target_config(node, root, nonroot)


@pytest.mark.parametrize("state, default, expected", [
    ("clean wait", DeploymentError, CleaningError),
    ("cleaning", DeploymentError, CleaningError),
    ("service wait", CleaningError, ServicingError),
    ("deploy wait", CleaningError, DeploymentError),
    ("wait call-back", CleaningError, DeploymentError),
    (None, DeploymentError, DeploymentError),
])
def test_error_class_follows_the_provision_state(state, default, expected):
    assert steps.error_class({"provision_state": state}, default) is expected


@pytest.mark.parametrize("node, efi, expected", [
    ({"instance_info": {"deploy_boot_mode": "uefi"}}, False, "uefi"),
    ({"instance_info": {"capabilities": {"boot_mode": "bios"}}}, True, "bios"),
    ({"properties": {"capabilities": "disk_label:gpt,boot_mode:uefi"}}, False, "uefi"),
    ({}, True, "uefi"),
    ({}, False, "bios"),
])
def test_boot_mode_from_the_node_else_how_the_ramdisk_booted(tmp_path, node, efi, expected):
    if efi:
        (tmp_path / "sys/firmware/efi").mkdir(parents=True)
    assert pool.boot_mode(node, str(tmp_path)) == expected


def test_disk_label_and_bad_values():
    assert pool.disk_label({"properties": {"capabilities": "disk_label:msdos"}}) == "msdos"
    assert pool.disk_label({}) is None
    with pytest.raises(InvalidCommandParamsError):
        pool.disk_label({"instance_info": {"disk_label": "sun"}})


# --- what Ironic is offered -------------------------------------------------------------------

@pytest.fixture
def runner(monkeypatch):
    monkeypatch.setattr(managers, "_discover", lambda: [GenericHardwareManager])
    state = AgentState(agent_config.load(read_proc=False, env={}))
    return CommandRunner([CleanExtension(state), DeployExtension(state),
                          ServiceExtension(state)])


def listed(runner, kind: str) -> dict[str, dict[str, Any]]:
    body = runner.execute(f"{kind}.get_{kind}_steps", {"node": {}, "ports": []},
                          wait=True).to_dict()["command_result"]
    assert body["hardware_manager_version"] == {"generic_hardware_manager": "1.2"}
    return {s["step"]: s for s in body[f"{kind}_steps"]["GenericHardwareManager"]
            if s["interface"] == "raid"}


def test_raid_steps_as_ironic_sees_them(runner):
    clean = listed(runner, "clean")
    assert set(clean) == {"delete_configuration", "create_configuration"}
    for step in clean.values():
        assert step["priority"] == 0 and step["abortable"] is False
        assert step["reboot_requested"] is False
    assert set(clean["create_configuration"]["argsinfo"]) == {"create_root_volume",
                                                              "create_nonroot_volumes"}
    deploy = listed(runner, "deploy")
    assert list(deploy) == ["apply_configuration"]
    assert deploy["apply_configuration"]["priority"] == 0
    assert deploy["apply_configuration"]["argsinfo"]["raid_config"]["required"] is True
    assert set(listed(runner, "service")) == {"apply_configuration", "create_configuration",
                                              "delete_configuration"}


def test_create_step_runs_with_ironics_args_and_fails_cleanly(runner, no_writes, monkeypatch):
    monkeypatch.setattr(managers, "list_disks", lambda state: [A, B])
    node = {"provision_state": "clean wait", "driver_internal_info": {"target_raid_config": {
        "logical_disks": [ld(physical_disks=[{"serial": "S-a"}, {"serial": "S-z"}])]}}}
    step = {"step": "create_configuration", "interface": "raid", "priority": 0,
            "args": {"create_root_volume": True, "create_nonroot_volumes": True}}
    result = runner.execute("clean.execute_clean_step", {"step": step, "node": node,
                                                         "ports": []}, wait=True).to_dict()
    assert result["command_status"] == "FAILED"
    assert "physical_disks entry 2 matches none" in result["command_error"]["details"]
    assert no_writes == []
