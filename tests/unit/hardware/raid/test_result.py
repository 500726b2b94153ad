"""The RAID step result: what Ironic stores as raid_config, checked with Ironic's own code."""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

import pytest

from agent.hardware.disks import GIB, Disk
from agent.hardware.raid import config, layout, result

IRONIC_PY = pathlib.Path(__file__).resolve().parents[4] / ".venv-ironic" / "bin" / "python"
DISKS = [Disk(name=f"/dev/vd{c}", size=20 * GIB, serial=f"S{c}") for c in "abc"]


def build(lds: list[dict[str, Any]]) -> dict[str, Any]:
    parsed = config.validate({"logical_disks": lds})
    plan = layout.make_plan(parsed, config.select_members(parsed, DISKS))
    return result.raid_config(parsed, plan)


def test_completed_config_in_request_order() -> None:
    out = build([
        {"controller": "software", "raid_level": "5", "size_gb": "MAX", "volume_name": "data",
         "disk_type": "ssd"},
        {"controller": "software", "raid_level": "1", "size_gb": 4, "is_root_volume": True,
         "physical_disks": [{"serial": "Sc"}, {"serial": "Sa"}]}])
    assert out == {"logical_disks": [
        {"controller": "software", "raid_level": "5", "size_gb": 31, "volume_name": "data",
         "physical_disks": ["/dev/vda", "/dev/vdb", "/dev/vdc"], "disk_type": "ssd"},
        {"controller": "software", "raid_level": "1", "size_gb": 4, "volume_name": "md1",
         "physical_disks": ["/dev/vdc", "/dev/vda"], "is_root_volume": True}]}
    json.dumps(out)     # stored by Ironic as JSON


def test_max_size_is_what_the_array_offers_in_whole_gib() -> None:
    (ld,) = build([{"controller": "software", "raid_level": "1", "size_gb": "MAX"}])[
        "logical_disks"]
    # 20 GiB less the first and last MiB, and the md data offset
    assert ld["size_gb"] == 19 and isinstance(ld["size_gb"], int)


def test_empty_is_refused() -> None:
    with pytest.raises(ValueError):
        result.raid_config([], layout.Plan("bios", "msdos", (), ()))


@pytest.mark.skipif(not IRONIC_PY.exists(), reason="no .venv-ironic")
def test_ironic_accepts_the_result_and_updates_the_node() -> None:
    out = build([
        {"controller": "software", "raid_level": "1", "size_gb": 6, "is_root_volume": True},
        {"controller": "software", "raid_level": "5", "size_gb": "MAX", "volume_name": "d"}])
    # Ironic's own code: the schema the API validates RAID configs against, and
    # update_raid_info, which the post-step hook calls with our clean_result
    script = r"""
import json, sys
from unittest import mock
from ironic.common import raid
from ironic.drivers import base
cfg = json.loads(sys.argv[1])
with open(base.RAID_CONFIG_SCHEMA) as f:
    raid.validate_configuration(cfg, json.load(f))
node = mock.Mock(properties={}, raid_config={})
raid.update_raid_info(node, cfg)
print(json.dumps({"local_gb": node.properties["local_gb"],
                  "caps": node.properties["capabilities"],
                  "stored": len(node.raid_config["logical_disks"])}))
"""
    proc = subprocess.run([str(IRONIC_PY), "-c", script, json.dumps(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {
        "local_gb": 6, "caps": "raid_level:1", "stored": 2}

