"""An out-of-tree hardware manager found through a real entry point.

tests/plugins/example_manager holds the module and a dist-info with an
``entry_points.txt``; putting that directory on sys.path is exactly what an
installed plugin looks like to importlib.metadata.  Its clean step must show
up in get_clean_steps and run through execute_clean_step, and its device
filter must narrow what the generic erase step sees.
"""

from __future__ import annotations

import json
import os
from importlib import metadata

import pytest

from agent import config
from agent.commands import CommandRunner
from agent.extensions.steps import CleanExtension
from agent.hardware import managers
from agent.state import AgentState
from tests.conftest import requires_loop
from tests.functional.hardware.loop_helpers import MIB, sh, signatures

PLUGIN_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "plugins", "example_manager")


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.syspath_prepend(os.path.abspath(PLUGIN_DIR))
    monkeypatch.delenv("EXAMPLE_HWM_DISABLED", raising=False)
    found = [ep for ep in metadata.entry_points(group=managers.GROUP) if ep.name == "example"]
    assert found and found[0].value == "example_manager:ExampleHardwareManager"


def runner(**flags):
    state = AgentState(config.load(read_proc=False, env={}, flags=flags))
    return CommandRunner([CleanExtension(state)]), state


def call(r, name, params):
    return r.execute(f"clean.{name}", params, wait=True).to_dict()


def test_plugin_step_is_listed_and_runs(plugin, tmp_path):
    r, state = runner()
    names = [m.name for m in managers.get_managers(state)]
    # the plugin ranks first; other in-tree managers may follow the generic one
    assert names[0] == "example_hardware_manager" and "generic_hardware_manager" in names
    listed = call(r, "get_clean_steps", {"node": {"uuid": "n-1"}, "ports": []})
    body = listed["command_result"]
    versions = body["hardware_manager_version"]
    assert versions["example_hardware_manager"] == "1.3"
    assert versions["generic_hardware_manager"] == "1.2"
    assert body["clean_steps"]["ExampleHardwareManager"][0]["step"] == "example_stamp"
    assert body["clean_steps"]["ExampleHardwareManager"][0]["argsinfo"]["path"]["required"]

    stamp = tmp_path / "stamp.json"
    step = {"step": "example_stamp", "interface": "deploy", "args": {"path": str(stamp)}}
    done = call(r, "execute_clean_step", {"step": step, "node": {"uuid": "n-1"},
                                          "ports": [{"address": "52:54:00:12:34:56"}],
                                          "clean_version": versions})
    assert done["command_status"] == "SUCCEEDED", done["command_error"]
    assert done["command_result"] == {"clean_result": {"stamped": str(stamp)},
                                      "clean_step": step}
    assert json.loads(stamp.read_text()) == {"node": "n-1", "ports": 1}
    assert done["progress"]["phase"] == "stamping"


def test_plugin_not_supporting_this_machine_is_dropped(plugin, monkeypatch):
    monkeypatch.setenv("EXAMPLE_HWM_DISABLED", "1")
    _, state = runner()
    names = [m.name for m in managers.get_managers(state)]
    assert "example_hardware_manager" not in names and "generic_hardware_manager" in names


@requires_loop
def test_plugin_filter_narrows_the_generic_erase_step(plugin, make_loop):
    target = make_loop(16 * MIB)
    bystander = make_loop(16 * MIB)
    for dev in (target, bystander):
        sh("sgdisk", "-n", "1:2048:+8M", dev)
    r, state = runner(include_loop_devices=True)
    node = {"uuid": "n-2", "extra": {"example_allowed_disks": [target]}}
    state.refresh_node(node)
    # belt and braces: never run an erase step unless only our loop device is visible
    assert [d.name for d in managers.list_disks(state)] == [target]

    step = {"step": "erase_devices_metadata", "interface": "deploy", "priority": 99}
    done = call(r, "execute_clean_step", {"step": step, "node": node, "ports": []})
    assert done["command_status"] == "SUCCEEDED", done["command_error"]
    assert list(done["command_result"]["clean_result"]["erased"]) == [target]
    assert signatures(target) == ""
    assert "gpt" in signatures(bystander)
