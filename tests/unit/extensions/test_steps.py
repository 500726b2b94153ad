"""Step listing and execution through the clean extension and the runner."""

from __future__ import annotations

import pytest

from agent import config, errors
from agent.commands import CommandRunner
from agent.extensions.steps import CleanExtension
from agent.hardware import managers
from agent.hardware.generic import GenericHardwareManager
from agent.state import AgentState


class Vendor(managers.HardwareManager):
    NAME = "vendor_hardware_manager"
    VERSION = "2.1"

    def evaluate_hardware_support(self):
        return managers.SupportLevel.MAINLINE

    def get_clean_steps(self, node, ports):
        return [{"step": "erase_devices", "priority": 5, "interface": "deploy",
                 "reboot_requested": False, "abortable": True},
                {"step": "upgrade_bios", "priority": 0, "interface": "management",
                 "reboot_requested": True, "abortable": False},
                {"step": "explode", "priority": 0, "interface": "deploy"},
                {"step": "refuse", "priority": 0, "interface": "deploy"},
                {"step": "promised", "priority": 0, "interface": "deploy"}]

    def erase_devices(self, node, ports, ctx=None):
        ctx.progress.update(phase="vendor-erase", done=1, total=1, unit="devices")
        return {"vendor": "erased", "node": node.get("uuid"), "ports": len(ports)}

    def upgrade_bios(self, node, ports, version, force=False):
        return {"version": version, "force": force}

    def explode(self, node, ports):
        raise KeyError("boom")

    def refuse(self, node, ports):
        raise errors.UnsafeDevice("disk is shared")


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.setattr(managers, "_discover", lambda: [GenericHardwareManager, Vendor])
    state = AgentState(config.load(read_proc=False, env={}))
    return CommandRunner([CleanExtension(state)]), state


def run(runner, name, params):
    return runner.execute(f"clean.{name}", params, wait=True).to_dict()


VERSIONS = {"vendor_hardware_manager": "2.1", "generic_hardware_manager": "1.2"}


def test_get_clean_steps_shape_and_dedup(runner):
    r, _ = runner
    result = run(r, "get_clean_steps", {"node": {"uuid": "n1"}, "ports": []})
    assert result["command_status"] == "SUCCEEDED"
    body = result["command_result"]
    assert body["hardware_manager_version"] == VERSIONS
    steps = body["clean_steps"]
    # the vendor (higher support level) owns erase_devices; generic keeps metadata
    assert [s["step"] for s in steps["GenericHardwareManager"]] == [
        "erase_devices_metadata", "erase_devices_express", "erase_pstore", "burnin_cpu",
        "burnin_disk", "burnin_memory", "burnin_network", "delete_configuration",
        "create_configuration"]
    assert steps["GenericHardwareManager"][0] == {
        "step": "erase_devices_metadata", "priority": 99, "interface": "deploy",
        "reboot_requested": False, "abortable": True}
    assert [s["step"] for s in steps["Vendor"]][:2] == ["erase_devices", "upgrade_bios"]


def test_execute_runs_the_owner_and_echoes_the_step(runner):
    r, state = runner
    step = {"step": "erase_devices", "interface": "deploy", "priority": 10, "args": {}}
    result = run(r, "execute_clean_step", {"step": step, "node": {"uuid": "n1"},
                                           "ports": [{"address": "aa"}],
                                           "clean_version": VERSIONS})
    assert result["command_status"] == "SUCCEEDED"
    assert result["command_result"] == {
        "clean_result": {"vendor": "erased", "node": "n1", "ports": 1}, "clean_step": step}
    assert result["progress"]["phase"] == "vendor-erase"
    assert state.node == {"uuid": "n1"}                   # cache refreshed from the call


def test_step_args_become_keyword_arguments(runner):
    r, _ = runner
    step = {"step": "upgrade_bios", "interface": "management",
            "args": {"version": "2.3", "force": True}}
    result = run(r, "execute_clean_step", {"step": step, "node": {}, "ports": []})
    assert result["command_result"]["clean_result"] == {"version": "2.3", "force": True}


def test_version_mismatch(runner):
    r, _ = runner
    step = {"step": "erase_devices", "interface": "deploy"}
    result = run(r, "execute_clean_step", {"step": step, "node": {}, "ports": [],
                                           "clean_version": {"generic_hardware_manager": "0.1"}})
    assert result["command_status"] == "CLEAN_VERSION_MISMATCH"
    assert result["command_result"] is None
    assert result["command_error"] == {
        "type": "VersionMismatch", "code": 409,
        "message": "Hardware managers version mismatch, reload agent with correct version",
        "details": f"Current versions: {VERSIONS}, versions used by ironic: "
                   "{'generic_hardware_manager': '0.1'}"}


@pytest.mark.parametrize("step, fragment", [
    ({"interface": "deploy"}, "'step' must name a step"),
    ({"step": "upgrade_bios", "interface": "management", "args": ["x"]},
     "'args' must be an object"),
])
def test_malformed_steps_are_refused_in_the_request(runner, step, fragment):
    # refused as a 400 before anything runs, so nothing of the step is stored (issue 15)
    r, _ = runner
    with pytest.raises(errors.InvalidCommandParamsError, match=fragment):
        run(r, "execute_clean_step", {"step": step, "node": {}, "ports": []})


@pytest.mark.parametrize("step, fragment", [
    ({"step": "reformat_universe", "interface": "deploy"},
     "clean step reformat_universe is not offered by this agent"),
    ({"step": "promised", "interface": "deploy"}, "offers clean step promised but does not"),
    ({"step": "upgrade_bios", "interface": "management", "args": {"colour": "red"}},
     "does not accept argument(s) colour"),
    ({"step": "explode", "interface": "deploy"},
     "Unexpected exception performing clean step explode. KeyError: 'boom'"),
])
def test_failures_are_cleaning_errors(runner, step, fragment):
    r, _ = runner
    result = run(r, "execute_clean_step", {"step": step, "node": {}, "ports": []})
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["type"] == "CleaningError"
    assert result["command_error"]["message"] == "Clean step failed"
    assert fragment in result["command_error"]["details"]


def test_agent_errors_keep_their_specific_type(runner):
    r, _ = runner
    result = run(r, "execute_clean_step", {"step": {"step": "refuse", "interface": "deploy"},
                                           "node": {}, "ports": []})
    assert result["command_status"] == "FAILED"
    assert result["command_error"] == {"type": "UnsafeDevice", "code": 400,
                                       "message": "Refusing to write to device",
                                       "details": "disk is shared"}


@pytest.mark.parametrize("params, fragment", [
    ({"node": {}, "ports": []}, "missing required parameter 'step'"),
    ({"step": "erase_devices"}, "'step' must be an object"),
    ({"step": {"step": "x"}, "node": []}, "'node' must be an object"),
    ({"step": {"step": "x"}, "ports": {}}, "'ports' must be a list"),
    ({"step": {"step": "x"}, "clean_version": "1.0"}, "'clean_version' must be an object"),
])
def test_wrong_parameter_types_are_rejected_in_the_request(runner, params, fragment):
    r, _ = runner
    with pytest.raises(errors.InvalidCommandParamsError, match=fragment.replace("(", r"\(")):
        r.execute("clean.execute_clean_step", params)
