"""find_install_disk on real loop devices: default choice, hints, skip list, waiting."""

from __future__ import annotations

import os

import pytest

from agent import config
from agent.errors import DeviceNotFound
from agent.hardware import find_install_disk, managers
from agent.state import AgentState
from tests.conftest import requires_loop
from tests.functional.hardware.loop_helpers import MIB

pytestmark = requires_loop
GIB = 1024 * MIB
PLUGIN_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "plugins", "example_manager")


@pytest.fixture
def loops(make_loop, monkeypatch):
    # the example manager's filter keeps every other loop on this machine out of view
    monkeypatch.syspath_prepend(os.path.abspath(PLUGIN_DIR))
    return [make_loop(2 * GIB), make_loop(6 * GIB), make_loop(5 * GIB)]   # sparse files


def state_for(loops, node_extra=None, **flags):
    flags = {"include_loop_devices": True, "disk_wait_attempts": 3, "disk_wait_delay": 0,
             **flags}
    state = AgentState(config.load(read_proc=False, env={}, flags=flags))
    node = {"uuid": "n", "extra": {"example_allowed_disks": loops}, **(node_extra or {})}
    state.refresh_node(node)
    return state


def test_default_is_the_smallest_disk_of_at_least_4_gib(loops):
    disk, reason = find_install_disk(state_for(loops))
    assert disk.name == loops[2] and disk.size == 5 * GIB
    assert "smallest disk of at least 4 GiB" in reason


def test_instance_info_hints_win(loops):
    node = {"instance_info": {"root_device": {"size": ">= 6"}},
            "properties": {"root_device": {"name": loops[0]}}}
    disk, reason = find_install_disk(state_for(loops, node))
    assert disk.name == loops[1]
    assert 'size ">= 6"' in reason


def test_name_hint_and_skip_list(loops):
    node = {"properties": {"root_device": {"name": loops[0]}}}
    assert find_install_disk(state_for(loops, node))[0].name == loops[0]
    node = {"properties": {"skip_block_devices": [{"name": loops[2]}]}}
    disk, reason = find_install_disk(state_for(loops, node))
    assert disk.name == loops[1] and f"skipped by skip_block_devices: {loops[2]}" in reason


def test_no_match_after_waiting_every_attempt(loops, monkeypatch):
    state = state_for(loops, {"properties": {"root_device": {"model": "<in> hgst"}}})
    calls = []
    real = managers.dispatch
    monkeypatch.setattr(managers, "dispatch", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    with pytest.raises(DeviceNotFound, match="No suitable device was found for deployment "
                                             "using these hints"):
        find_install_disk(state)
    assert calls.count("get_os_install_device") == 3


def test_invalid_hints_fail_without_waiting(loops, monkeypatch):
    state = state_for(loops, {"properties": {"root_device": {"size": "big"}}},
                      disk_wait_delay=30)
    calls = []
    monkeypatch.setattr(managers, "dispatch", lambda *a, **k: calls.append(a[1]))
    with pytest.raises(DeviceNotFound, match="not a whole number of GiB"):
        find_install_disk(state)
    assert calls == []
