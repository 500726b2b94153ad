"""In-band inspection driven by a real Ironic (the ``agent`` inspect interface).

The agent boots with ``ipa-inspection-callback-url`` (and ``ipa-api-url``,
as a fast-track inspection boot has), inspects, posts to
``/v1/continue_inspection``, and Ironic's hooks turn the inventory into
node properties.
"""

from __future__ import annotations

import time

from tests.conftest import requires_loop
from tests.ironic import harness

pytestmark = requires_loop
GiB = 1 << 30
# IPA 13 reached manageable 4.1 s after the request in the same kind of run
INSPECT_TIMEOUT_S = 120


def test_inspection_stores_the_inventory(api, ironic, agent, make_node, make_loop):
    # at least 4 GiB, so the agent's root disk choice without hints can be this one
    disk = make_loop(5 * GiB)
    node = make_node(disk)
    api.provision(node["uuid"], "manage")
    api.wait_for(node["uuid"], "manageable", 60)
    agent.params["ipa-inspection-callback-url"] = f"{ironic.url}/v1/continue_inspection"
    agent.params["ipa-inspection-collectors"] = "default,logs"
    started = time.monotonic()
    api.provision(node["uuid"], "inspect")
    agent.start()
    done = api.wait_for(node["uuid"], "manageable", INSPECT_TIMEOUT_S)
    seconds = time.monotonic() - started

    assert done["last_error"] is None, done["last_error"]
    stored = api.inventory(node["uuid"])
    inventory, plugin_data = stored["inventory"], stored["plugin_data"]
    assert harness.host_mac() in {i.get("mac_address") for i in inventory["interfaces"]}
    assert any(d["name"] == disk for d in inventory["disks"])
    # what the hooks made of it
    props = done["properties"]
    assert props["cpu_arch"] == inventory["cpu"]["architecture"]
    assert props["memory_mb"] > 0
    assert props["local_gb"] == 4          # the 5 GiB root disk, less Ironic's 1 GiB
    assert plugin_data["root_disk"]["name"] == disk
    # Ironic keeps the logs collector's tarball only with deploy_logs_collect=always
    # and drops it from plugin_data; the configuration says it ran
    assert plugin_data["configuration"]["collectors"] == ["default", "logs"]
    ports = api.request("GET", f"/v1/ports?node_uuid={node['uuid']}")["ports"]
    assert [p["address"] for p in ports] == [harness.host_mac()]
    assert "inspection data accepted" in agent.log()
    print(f"inspection: {seconds:.1f}s from 'inspect' requested to manageable")


def test_managed_inspection_boot_posts_and_stays_up(api, ironic, agent, make_node, make_loop):
    """A managed inspection boot has the callback and no ipa-api-url: post, then idle."""
    node = make_node(make_loop(64 << 20))
    api.provision(node["uuid"], "manage")
    api.wait_for(node["uuid"], "manageable", 60)
    agent.api_url = ""
    agent.params["ipa-inspection-callback-url"] = f"{ironic.url}/v1/continue_inspection"
    api.provision(node["uuid"], "inspect")
    agent.start()
    done = api.wait_for(node["uuid"], "manageable", INSPECT_TIMEOUT_S)

    assert done["last_error"] is None, done["last_error"]
    assert done["properties"]["cpu_arch"]
    harness.wait_until(lambda: "API listening" in agent.log(), 30, "the agent's API")
    assert agent.alive()
    assert "lookup" not in agent.log().lower()


def test_a_failed_collector_fails_inspection_with_the_agents_reason(api, ironic, agent,
                                                                   make_node, make_loop):
    node = make_node(make_loop(64 << 20))
    api.provision(node["uuid"], "manage")
    api.wait_for(node["uuid"], "manageable", 60)
    agent.params["ipa-inspection-callback-url"] = f"{ironic.url}/v1/continue_inspection"
    agent.params["ipa-inspection-collectors"] = "default,no-such-collector"
    api.provision(node["uuid"], "inspect")
    agent.start()
    failed = api.wait_for(node["uuid"], "inspect failed", INSPECT_TIMEOUT_S)
    # Ironic's ramdisk-error hook turns the agent's error key into last_error
    assert "no-such-collector" in (failed["last_error"] or ""), failed["last_error"]


def test_auto_discovery_enrolls_an_unknown_machine(tmp_path_factory, tmp_path, images, request):
    """No node has this MAC: with [auto_discovery] on, the same POST enrolls a new node."""
    from realironic.client import Ironic
    from realironic.server import IronicServer

    from tests.ironic.conftest import keep_logs_of

    server = IronicServer(str(tmp_path_factory.mktemp("ironic-discovery")), extra_options={
        "auto_discovery": {"enabled": "true", "driver": "fake-hardware"}})
    booted = harness.Agent(str(tmp_path), "", name="discovery-agent")
    keep_logs_of(request, server, booted)
    server.start()
    try:
        api = Ironic(server.url)
        booted.params["ipa-inspection-callback-url"] = f"{server.url}/v1/continue_inspection"
        booted.start()
        nodes = harness.wait_until(lambda: api.request("GET", "/v1/nodes")["nodes"], 60,
                                   "Ironic to enroll the discovered machine")
        # the hooks set properties first and store the inventory last: wait for that
        stored = harness.wait_until(lambda: _stored_inventory(api, nodes[0]["uuid"]), 60,
                                    "Ironic to store the discovered machine's inventory")
        node = api.node(nodes[0]["uuid"])
        assert len(nodes) == 1 and node["driver"] == "fake-hardware"
        assert node["properties"].get("cpu_arch")
        inventory = stored["inventory"]
        assert stored["plugin_data"].get("auto_discovered") is True
        assert harness.host_mac() in {i.get("mac_address") for i in inventory["interfaces"]}
    finally:
        booted.stop()
        server.stop()


def _stored_inventory(api, uuid: str) -> dict | None:
    from realironic.client import IronicError

    try:
        return api.inventory(uuid)
    except IronicError:         # 404 until the inspection data is stored
        return None
