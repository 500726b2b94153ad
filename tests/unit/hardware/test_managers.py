"""Manager ordering, dispatch, dispatch_all and device filtering."""

from __future__ import annotations

import pytest

from agent import config
from agent.errors import IncompatibleHardwareMethodError
from agent.hardware import managers
from agent.hardware.disks import Disk
from agent.hardware.generic import GenericHardwareManager
from agent.state import AgentState


def make_state() -> AgentState:
    return AgentState(config.load(read_proc=False, env={}))


class Vendor(managers.HardwareManager):
    NAME = "vendor_hardware_manager"
    VERSION = "2.1"

    def evaluate_hardware_support(self):
        return managers.SupportLevel.MAINLINE

    def list_block_devices(self):
        return [Disk(name="/dev/sda", size=10), Disk(name="/dev/sdb", size=20)]

    def get_os_install_device(self, node=None):
        raise IncompatibleHardwareMethodError("not on this model")

    def filter_devices(self, disks):
        return [d for d in disks if d.name != "/dev/sdb"]


class Unsupported(managers.HardwareManager):
    def evaluate_hardware_support(self):
        return managers.SupportLevel.NONE

    def list_block_devices(self):
        raise AssertionError("a manager without support must never be called")


class Crashing(managers.HardwareManager):
    def evaluate_hardware_support(self):
        raise RuntimeError("probe exploded")


@pytest.fixture
def state(monkeypatch):
    monkeypatch.setattr(managers, "_discover",
                        lambda: [Unsupported, Crashing, GenericHardwareManager, Vendor])
    return make_state()


def test_ordered_by_support_level_and_unsupported_dropped(state, caplog):
    names = [m.name for m in managers.get_managers(state)]
    assert names == ["vendor_hardware_manager", "generic_hardware_manager"]
    assert "could not evaluate support: probe exploded" in caplog.text


def test_managers_are_cached_per_state(state):
    first = managers.get_managers(state)
    assert managers.get_managers(state) is first
    assert managers.get_managers(make_state()) is not first


def test_dispatch_goes_to_the_first_implementer(state):
    assert [d.name for d in managers.dispatch(state, "list_block_devices")] == [
        "/dev/sda", "/dev/sdb"]


def test_dispatch_falls_through_on_incompatible(state, monkeypatch):
    seen = []
    monkeypatch.setattr(GenericHardwareManager, "get_os_install_device",
                        lambda self, node=None: seen.append(node) or ("generic", "why"))
    assert managers.dispatch(state, "get_os_install_device", {"uuid": "n"}) == (
        "generic", "why")
    assert seen == [{"uuid": "n"}]


def test_dispatch_without_implementer_raises(state):
    with pytest.raises(IncompatibleHardwareMethodError, match="no hardware manager implements"):
        managers.dispatch(state, "flash_firmware")
    with pytest.raises(IncompatibleHardwareMethodError):
        managers.dispatch(state, "_options", None)      # private names are never dispatched


def test_dispatch_all_and_versions(state):
    assert managers.dispatch_all(state, "evaluate_hardware_support") == {
        "vendor_hardware_manager": managers.SupportLevel.MAINLINE,
        "generic_hardware_manager": managers.SupportLevel.GENERIC}
    assert managers.versions(state) == {"vendor_hardware_manager": "2.1",
                                        "generic_hardware_manager": "1.2"}


def test_every_manager_filter_applies_to_the_disk_list(state):
    assert [d.name for d in managers.list_disks(state)] == ["/dev/sda"]


def test_the_generic_manager_comes_through_the_installed_entry_points():
    assert [m.name for m in managers.get_managers(make_state())] == [
        "deploy_agent_image", "generic_hardware_manager"]


def test_no_registered_manager_is_said_plainly(monkeypatch, caplog):
    monkeypatch.setattr(managers.metadata, "entry_points", lambda group: [])
    assert managers.get_managers(make_state()) == []
    assert "no hardware manager is registered" in caplog.text


def test_broken_entry_points_are_skipped(monkeypatch, caplog):
    class EP:
        def __init__(self, name, value, target):
            self.name, self.value, self._target = name, value, target

        def load(self):
            if isinstance(self._target, Exception):
                raise self._target
            return self._target
    monkeypatch.setattr(managers.metadata, "entry_points", lambda group: [
        EP("broken", "nowhere:Nothing", ImportError("No module named 'nowhere'")),
        EP("wrong", "builtins:dict", dict), EP("vendor", "x:Vendor", Vendor)])
    names = [m.name for m in managers.get_managers(make_state())]
    assert names == ["vendor_hardware_manager"]
    assert "broken (nowhere:Nothing) failed to load" in caplog.text
    assert "is not a HardwareManager subclass" in caplog.text
