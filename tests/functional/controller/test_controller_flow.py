"""An agent booted against the stand-in controller: lookup, token, heartbeat, TLS pinning."""

from __future__ import annotations

import ipaddress
import ssl
import urllib.parse

import pytest
import requests
from cryptography import x509

from agent import tls
from agent.driver.client import AgentAPIError
from agent.driver.conductor import agent_client
from agent.driver.standin import StandinController
from agent.ironic.session import local_macs
from tests.functional.controller.agent_proc import AgentProcess


@pytest.fixture
def controller():
    fake = StandinController(config={"heartbeat_timeout": 100}).start()
    yield fake
    fake.stop()


@pytest.fixture
def agents(tmp_path):
    started: list[AgentProcess] = []

    def start(api_url: str, **kwargs) -> AgentProcess:
        proc = AgentProcess(tmp_path, api_url, name=f"agent{len(started)}", **kwargs).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def write_pem(tmp_path, name: str, pem: str) -> str:
    path = tmp_path / name
    path.write_text(pem)
    return str(path)


def test_lookup_token_heartbeat_and_certificate_pinning(controller, agents, tmp_path):
    node = controller.add_node({"properties": {"cpu_arch": "x86_64"}},
                               macs=local_macs(wait=False))
    agent = agents(controller.url)
    beat = controller.wait_for_heartbeats(node.uuid)[0]

    lookup = next(r for r in controller.requests if r["kind"] == "lookup")
    assert lookup["headers"]["X-OpenStack-Ironic-API-Version"] == "1.62"
    assert lookup["headers"]["X-OpenStack-Request-ID"] == "req-test-8"
    assert set(lookup["args"]["addresses"].split(",")) == set(node.macs)
    assert lookup["response"]["config"]["agent_token"] == node.token

    assert beat["headers"]["X-OpenStack-Ironic-API-Version"] == "1.68"
    assert beat["headers"]["Content-Type"] == "application/json"
    body = beat["json"]
    assert set(body) == {"callback_url", "agent_token", "agent_version", "agent_verify_ca"}
    assert body["callback_url"] == agent.url
    assert body["agent_token"] == node.token and len(node.token) >= 32
    cert = x509.load_pem_x509_certificate(body["agent_verify_ca"].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]

    # the conductor trusts only the pinned PEM, with hostname (IP SAN) checking
    pinned = agent_client(agent.url, node.token,
                          write_pem(tmp_path, "pinned.crt", body["agent_verify_ca"]))
    assert pinned.list() == []
    other_pem, _ = tls.generate_certificate("127.0.0.1")
    stranger = agent_client(agent.url, node.token,
                            write_pem(tmp_path, "other.crt", other_pem))
    with pytest.raises(requests.exceptions.SSLError):
        stranger.list()

    # the controller's tls_min_version (1.3, as Ironic sends) is what the agent serves
    ctx = ssl.create_default_context(cafile=str(tmp_path / "pinned.crt"))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        import socket
        with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as raw:
            ctx.wrap_socket(raw, server_hostname="127.0.0.1").close()

    for token in ("wrong-" + node.token, None):
        client = agent_client(agent.url, token,
                              str(tmp_path / "pinned.crt"))
        with pytest.raises(AgentAPIError) as err:
            client.list()
        assert err.value.status == 401
        assert err.value.faultstring_text == "401 Unauthorized: Token invalid."


def test_clean_step_flow_and_the_forced_heartbeat_when_it_ends(controller, agents, tmp_path):
    # heartbeat_timeout 100 s puts regular heartbeats 30-60 s apart, so a
    # second heartbeat within 25 s can only be the forced one
    node = controller.add_node(macs=None)
    agent = agents(controller.url)
    first = controller.wait_for_heartbeats(node.uuid)[0]
    client = agent_client(agent.url, node.token,
                          write_pem(tmp_path, "ca.crt", first["json"]["agent_verify_ca"]))
    listed = client.post("clean.get_clean_steps", {"node": {"uuid": node.uuid}, "ports": []},
                         wait=True)["command_result"]
    steps = {s["step"]: s for group in listed["clean_steps"].values() for s in group}
    assert steps["erase_devices_metadata"]["priority"] == 99
    assert steps["erase_devices"]["priority"] == 10
    assert all(s["abortable"] for s in steps.values() if s["interface"] == "deploy")
    versions = listed["hardware_manager_version"]

    # the conductor's stale versions: the step is refused, and the async end
    # of the command forces a heartbeat so the conductor re-fetches the steps
    step = {"interface": "deploy", "step": "erase_devices_metadata", "args": {}}
    client.post("clean.execute_clean_step", {"step": step, "node": {}, "ports": [],
                                             "clean_version": {"gone": "0.1"}})
    beats = controller.wait_for_heartbeats(node.uuid, count=2, timeout=25)
    last = client.list()[-1]
    assert last["command_name"] == "execute_clean_step"
    assert last["command_status"] == "CLEAN_VERSION_MISMATCH"
    assert last["command_error"]["type"] == "VersionMismatch"
    assert str(versions) in last["command_error"]["details"]
    assert beats[1]["time"] - beats[0]["time"] >= 4.9
    assert beats[1]["json"] == first["json"]  # callback URL and certificate never change


def test_restarted_agent_gets_masked_token_and_locks_down(controller, agents):
    node = controller.add_node(macs=None)
    first = agents(controller.url)
    controller.wait_for_heartbeats(node.uuid)
    first.stop()
    accepted = len(controller.heartbeats(node.uuid))

    second = agents(controller.url)
    log = second.wait_for_log("LOCKDOWN")
    assert "masked agent token" in log
    lookups = [r for r in controller.requests if r["kind"] == "lookup"]
    assert lookups[-1]["response"]["config"]["agent_token"] == "******"
    assert second.proc.poll() is None, "a locked-down agent idles instead of exiting"
    assert len(controller.heartbeats(node.uuid)) == accepted
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{second.url}/v1/commands/", verify=False, timeout=5)
    assert "API listening" not in second.log()


def test_preset_token_works_with_a_masked_lookup(controller, agents, tmp_path):
    token = "vmedia-pregenerated-token-0123456789abcdef"
    node = controller.add_node(macs=None, token=token)
    agent = agents(controller.url, params={"ipa-agent-token": token})
    beat = controller.wait_for_heartbeats(node.uuid)[0]
    lookup = next(r for r in controller.requests if r["kind"] == "lookup")
    assert lookup["response"]["config"]["agent_token"] == "******"
    assert beat["json"]["agent_token"] == token
    client = agent_client(agent.url, token,
                          write_pem(tmp_path, "ca.crt", beat["json"]["agent_verify_ca"]))
    assert client.list() == []


def test_lookup_retries_then_heartbeats_keep_coming(controller, agents):
    node = controller.add_node(macs=None)
    controller.lookup_statuses = [500, 404]
    controller.config["heartbeat_timeout"] = 1  # regular heartbeats 0.3-0.6 s apart
    agents(controller.url)
    beats = controller.wait_for_heartbeats(node.uuid, count=3)
    statuses = [r["status"] for r in controller.requests if r["kind"] == "lookup"]
    assert statuses == [500, 404, 200]
    assert len({b["json"]["callback_url"] for b in beats}) == 1


def test_lookup_timeout_exits_non_zero_with_a_clear_log(controller, agents):
    controller.add_node(macs=["aa:bb:cc:dd:ee:ff"])
    agent = agents(controller.url, params={"ipa-lookup-timeout": "1"})
    assert agent.wait_exit() == 1
    log = agent.log()
    assert "no node found after" in log and "ipa-lookup-timeout" in log
    assert [r["status"] for r in controller.requests if r["kind"] == "lookup"][-1] == 404


def test_old_api_without_auto_tls_heartbeats_plain_http(tmp_path, agents):
    fake = StandinController(version="1.62", require_tls=False,
                          config={"heartbeat_timeout": 100}).start()
    try:
        node = fake.add_node(macs=None)
        agent = agents(fake.url)
        beat = fake.wait_for_heartbeats(node.uuid)[0]
        assert beat["headers"]["X-OpenStack-Ironic-API-Version"] == "1.62"
        assert "agent_verify_ca" not in beat["json"]
        url = beat["json"]["callback_url"]
        assert urllib.parse.urlsplit(url).scheme == "http" and url.endswith(f":{agent.port}")
        assert agent_client(url, node.token, True).list() == []
    finally:
        fake.stop()


def test_cli_deploy_names_a_node_that_never_heartbeats(controller, capsys):
    from agent.cli import main
    node = controller.add_node(macs=None)
    code = main(["deploy", "--controller", controller.url, "--node", node.uuid,
                 "--image", "http://127.0.0.1:9/x.img", "--checksum", "sha256:" + "0" * 64,
                 "--wait", "0.5"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"node {node.uuid} sent no heartbeat to {controller.url}" in err
    assert f"ipa-api-url={controller.url}" in err
