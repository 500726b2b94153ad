"""One agent process listens for LLDP once: later inventories reuse what was heard."""

from __future__ import annotations

from agent import config as agent_config
from agent.hardware import lldp, managers
from agent.state import AgentState
from tests.unit.hardware.lldp_frames import SWITCH_TLVS


class Counting:
    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, names, timeout, root):
        self.calls += 1
        return self.answers.pop(0) if self.answers else {}


def test_the_cache_listens_again_only_while_nothing_was_heard():
    capture = Counting([{}, {"eno1": SWITCH_TLVS, "eno2": []}])
    cache = lldp.CaptureCache(capture)
    assert cache.get(["eno1", "eno2"], 5, "/") == {}
    assert cache.get(["eno1", "eno2"], 5, "/") == {"eno1": SWITCH_TLVS}
    assert cache.get(["eno1", "eno2"], 5, "/") == {"eno1": SWITCH_TLVS}
    assert capture.calls == 2


def test_repeated_hardware_info_listens_once(monkeypatch):
    calls = []

    def capture_up(names, timeout, root="/"):
        calls.append(list(names))
        return {names[0]: SWITCH_TLVS} if names else {}

    monkeypatch.setattr(lldp, "capture_up", capture_up)
    cfg = agent_config.load(read_proc=False, env={},
                            flags={"standalone": True, "skip_bmc_detect": True},
                            cmdline="ipa-collect-lldp=1 ipa-lldp-timeout=1")
    state = AgentState(cfg)
    first = managers.dispatch(state, "list_hardware_info")
    second = managers.dispatch(state, "list_hardware_info")
    assert first["interfaces"], "this test needs a physical NIC (the agent looks up with one)"
    assert len(calls) == 1
    assert first["interfaces"][0]["lldp"] == second["interfaces"][0]["lldp"] == SWITCH_TLVS
