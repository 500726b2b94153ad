"""In-band inspection driven by a real Ironic (the ``agent`` inspect interface).

Expected to fail until the agent posts to the inspection callback (issue 18);
strict, so that the day it passes the marker has to go.
"""

from __future__ import annotations

import pytest

from tests.conftest import requires_loop
from tests.ironic import harness

pytestmark = requires_loop
MiB = harness.MiB
# a real agent posts within seconds of booting; IPA 13 took 4.1 s here
INSPECT_TIMEOUT_S = 45


@pytest.mark.xfail(strict=True, raises=Exception,
                   reason="issue 18: the agent does not run inspection or post to "
                          "/v1/continue_inspection yet")
def test_inspection_stores_the_inventory(api, ironic, agent, make_node, make_loop):
    disk = make_loop(64 * MiB)
    node = make_node(disk)
    api.provision(node["uuid"], "manage")
    api.wait_for(node["uuid"], "manageable", 60)
    agent.params["ipa-inspection-callback-url"] = f"{ironic.url}/v1/continue_inspection"
    agent.start()
    api.provision(node["uuid"], "inspect")
    done = api.wait_for(node["uuid"], "manageable", INSPECT_TIMEOUT_S)

    assert done["last_error"] is None, done["last_error"]
    inventory = api.inventory(node["uuid"])["inventory"]
    macs = {i.get("mac_address") for i in inventory["interfaces"]}
    assert harness.host_mac() in macs
    assert any(d["name"] == disk for d in inventory["disks"])
