"""The stand-in controller behaves like Ironic 39's ramdisk endpoints (reference §8)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests

from agent.driver.standin import StandinController
from tests.functional.controller.agent_proc import ROOT, free_port

MAC = "52:54:00:aa:bb:cc"


@pytest.fixture
def standin():
    controller = StandinController(version="1.99").start()
    yield controller
    controller.stop()


def lookup(standin, addresses=MAC, version="1.62", **params):
    headers = {"X-OpenStack-Ironic-API-Version": version} if version else {}
    return requests.get(f"{standin.url}/v1/lookup", params={"addresses": addresses, **params},
                        headers=headers, timeout=10)


def beat(standin, uuid, body, version="1.68"):
    return requests.post(f"{standin.url}/v1/heartbeat/{uuid}", json=body, timeout=10,
                         headers={"X-OpenStack-Ironic-API-Version": version})


def fault(resp):
    return json.loads(resp.json()["error_message"])["faultstring"]


def test_root_reports_the_configured_version(standin):
    body = requests.get(standin.url + "/", timeout=10).json()
    assert body["default_version"]["version"] == "1.99"


def test_token_is_issued_once_then_masked(standin):
    node = standin.add_node({"properties": {"root_device": {"name": "/dev/sda"}},
                          "instance_info": {"configdrive": "secret"}}, macs=[MAC])
    first = lookup(standin).json()
    assert first["node"]["uuid"] == node.uuid
    assert first["node"]["properties"]["root_device"] == {"name": "/dev/sda"}
    assert first["node"]["instance_info"]["configdrive"] == "******"
    assert len(first["config"]["agent_token"]) == 43 == len(node.token)
    assert first["config"]["heartbeat_timeout"] == 300
    assert lookup(standin).json()["config"]["agent_token"] == "******"


def test_lookup_errors_like_ironic(standin):
    standin.add_node(macs=[MAC])
    assert lookup(standin, version=None).status_code == 404          # served as 1.1
    assert lookup(standin, addresses="52:54:00:00:00:00").status_code == 404
    assert lookup(standin, addresses="garbage").status_code == 400
    assert lookup(standin, version="2.0").status_code == 406
    standin.add_node(macs=["52:54:00:00:00:11"], provision_state="active")
    assert lookup(standin, addresses="52:54:00:00:00:11").status_code == 404


def test_heartbeat_rules_and_pinning(standin):
    node = standin.add_node(macs=[MAC])
    token = lookup(standin).json()["config"]["agent_token"]
    good = {"callback_url": "https://127.0.0.1:9999", "agent_token": token,
            "agent_version": "1.0", "agent_verify_ca": "PEM-A"}
    cases = [
        ({**good, "agent_token": None}, "Agent token is required for heartbeat processing."),
        ({**good, "agent_token": "x" * 43}, "Invalid or missing agent token received."),
        ({k: v for k, v in good.items() if k != "agent_version"},
         "Agent did not transmit a version"),
        ({**good, "callback_url": "http://127.0.0.1:9999"}, "TLS is required by configuration"),
        ({**good, "callback_url": "ftp:/x"},
         'An issue with the supplied "callback_url" has been detected.'),
    ]
    for body, message in cases:
        resp = beat(standin, node.uuid, body)
        assert resp.status_code == 400 and fault(resp).startswith(message), body
    assert beat(standin, node.uuid, good).status_code == 202
    assert node.agent_url == "https://127.0.0.1:9999" and node.agent_verify_ca == "PEM-A"
    changed = beat(standin, node.uuid, {**good, "callback_url": "https://127.0.0.2:9999"})
    assert fault(changed) == 'Detected change in ramdisk provided "callback_url"'
    changed = beat(standin, node.uuid, {**good, "agent_verify_ca": "PEM-B"})
    assert fault(changed) == 'Detected change in ramdisk provided "agent_verify_ca"'
    old = beat(standin, node.uuid, good, version="1.62")
    assert fault(old) == 'Field "agent_verify_ca" not recognised in this version'
    assert beat(standin, "no-such-node", good).status_code == 404

    info = requests.get(f"{standin.url}/standin/nodes/{node.uuid}", timeout=10).json()
    assert info["heartbeats"] == 1 and info["agent_token"] == token
    assert requests.post(f"{standin.url}/standin/nodes/{node.uuid}/reset", timeout=10).ok
    assert node.agent_url is None and node.token is None
    assert len(lookup(standin).json()["config"]["agent_token"]) == 43


def test_every_request_is_recorded(standin):
    standin.add_node(macs=[MAC])
    lookup(standin)
    entry = standin.requests[-1]
    assert entry["kind"] == "lookup" and entry["status"] == 200
    assert entry["headers"]["X-OpenStack-Ironic-API-Version"] == "1.62"
    assert entry["args"]["addresses"] == MAC


def test_runs_as_a_command_for_operators(tmp_path):
    port = free_port()
    spec = tmp_path / "node.json"
    spec.write_text(json.dumps({"node": {"uuid": "0f6a9d9e-1111-2222-3333-444455556666"},
                                "macs": [MAC], "config": {"heartbeat_timeout": 60}}))
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "standin",
                             "--port", str(port), "--node-json", str(spec)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = requests.get(f"{url}/v1/lookup", params={"addresses": MAC}, timeout=5,
                                    headers={"X-OpenStack-Ironic-API-Version": "1.62"})
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "stand-in controller did not start"
                time.sleep(0.1)
        body = resp.json()
        assert body["node"]["uuid"] == "0f6a9d9e-1111-2222-3333-444455556666"
        assert body["config"]["heartbeat_timeout"] == 60
    finally:
        proc.terminate()
        proc.wait(10)
    assert f"ipa-api-url={url}" in proc.stdout.read()
