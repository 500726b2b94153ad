"""standby's power refusal names the reason that actually applies."""

from __future__ import annotations

from typing import Any

import pytest

from agent import config
from agent.errors import PowerActionRefused
from agent.extensions.standby import StandbyExtension, refuse_unless_ramdisk
from agent.state import AgentState


def _refusal(monkeypatch, allowed: bool = False, **load: Any) -> str:
    monkeypatch.setattr(AgentState, "power_actions_allowed", property(lambda self: allowed))
    ext = StandbyExtension(AgentState(config.load(read_proc=False, **load)))
    with pytest.raises(PowerActionRefused) as caught:
        refuse_unless_ramdisk(ext, "standby.power_off")
    return caught.value.details


@pytest.mark.parametrize("load, named", [
    ({"env": {}, "flags": {"ramdisk": "false"}}, "--ramdisk false"),
    ({"env": {"DEPLOY_AGENT_RAMDISK": "false"}}, "DEPLOY_AGENT_RAMDISK=false"),
])
def test_an_explicit_false_is_named_as_such(monkeypatch, load: dict, named: str) -> None:
    details = _refusal(monkeypatch, **load)
    assert f"ramdisk is set to false by {named}" in details
    assert "not an initramfs" not in details
    assert "machine was left running" in details


def test_auto_on_a_disk_root_blames_the_root_filesystem(monkeypatch) -> None:
    details = _refusal(monkeypatch, env={})
    assert "the root filesystem is not an initramfs" in details
    assert "set to false" not in details


def test_allowed_means_no_refusal(monkeypatch) -> None:
    monkeypatch.setattr(AgentState, "power_actions_allowed", property(lambda self: True))
    ext = StandbyExtension(AgentState(config.load(read_proc=False, env={})))
    assert refuse_unless_ramdisk(ext, "standby.power_off") is None
