"""The conductor-like driver's rules against a real agent server."""

from __future__ import annotations

import json
import tarfile
import time

import pytest

from agent import config as config_mod
from agent.driver.conductor import Conductor, DeployPlan, agent_client
from agent.errors import DeployFailed
from agent.runtime import Runtime
from tests.functional.controller.agent_proc import free_port
from tests.functional.test_agent_process import PLUGIN_DIR


@pytest.fixture
def agent(monkeypatch):
    monkeypatch.syspath_prepend(PLUGIN_DIR)
    cfg = config_mod.load(read_proc=False, env={}, flags={
        "standalone": True, "listen_host": "127.0.0.1", "listen_port": free_port(),
        "agent_token": "t" * 43})
    runtime = Runtime(cfg)
    server = runtime.start_api()
    yield agent_client(f"http://127.0.0.1:{server.port}", "t" * 43, True)
    runtime.close()


def test_a_failed_write_image_step_fails_the_deploy_with_its_details(agent, tmp_path):
    driver = Conductor(agent, poll_interval=0.05, logs_dir=str(tmp_path / "logs"))
    plan = DeployPlan(image_info={"id": "x", "urls": []}, power_off=False)
    with pytest.raises(DeployFailed) as err:
        driver.deploy(plan)
    assert "deploy step write_image failed" in err.value.details
    assert "Image 'urls' must be a list with at least one element." in err.value.details
    # logs are collected after the failure was seen, as Ironic does
    names = [c["command_name"] for c in agent.list()]
    assert names == ["get_deploy_steps", "execute_deploy_step", "collect_system_logs"]
    (saved,) = (tmp_path / "logs").iterdir()
    with tarfile.open(saved) as tar:
        assert "deploy-agent.log" in tar.getnames()


def test_a_busy_agent_is_waited_for_not_failed(agent):
    running = agent.post("testing.slow", {"steps": 40, "delay": 0.02})
    driver = Conductor(agent, poll_interval=0.05)
    with pytest.raises(DeployFailed, match="busy with slow"):
        driver.deploy(DeployPlan(image_info={"id": "x", "urls": ["http://127.0.0.1:9/x"]}))
    messages = []
    driver.emit = lambda kind, data: messages.append(data)
    result = driver.post("deploy.get_deploy_steps", {"node": {}, "ports": []}, wait=True)
    assert result["command_status"] == "SUCCEEDED"
    assert agent.get(running["id"])["command_status"] == "SUCCEEDED"
    assert any("agent busy" in m for m in messages)
    assert json.dumps(result["command_result"]["hardware_manager_version"])


def test_an_unreachable_agent_fails_after_three_attempts():
    client = agent_client("http://127.0.0.1:9", None, True)
    with pytest.raises(DeployFailed, match="unreachable after 3 attempts"):
        Conductor(client).post("standby.sync", {}, wait=True)


def test_a_short_step_is_seen_soon_then_polling_backs_off(agent):
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    driver = Conductor(agent, poll_interval=2.0, sleep=sleep)
    # a real step that runs about a second: stress-ng on one CPU for 1 s
    node = {"driver_info": {"agent_burnin_cpu_timeout": 1, "agent_burnin_cpu_cpu": 1}}
    result = driver.clean_step(node, {"step": "burnin_cpu", "interface": "deploy",
                                      "args": {}})
    assert result["tool"] == "stress-ng"
    # its end is seen within a poll or two of it, not after a whole 2 s interval
    assert sleeps and sleeps[0] == 0.05
    assert all(b == min(a * 2, 2.0) for a, b in zip(sleeps, sleeps[1:], strict=False))
