"""``deploy-agent erase-plan``: the erase steps' own decision, printed, with nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from tests.conftest import requires_loop

pytestmark = requires_loop
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
MiB = 1 << 20


def erase_plan(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOY_AGENT_")}
    env["PYTHONPATH"] = ROOT
    return subprocess.run([sys.executable, "-m", "agent.cli", "erase-plan", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def digest(dev: str) -> str:
    with open(dev, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_names_exactly_the_disks_left_after_the_skip_list(make_loop, tmp_path):
    keep, erase = make_loop(16 * MiB), make_loop(16 * MiB)
    with open(erase, "r+b") as f:
        f.write(b"\x5a" * MiB)
    before = {d: digest(d) for d in (keep, erase)}
    first = json.loads(erase_plan("--include-loop-devices").stdout)
    assert {keep, erase} <= set(first["disks"])

    others = [d for d in first["disks"] if d != erase]
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"properties": {
        "skip_block_devices": [{"name": d} for d in others]}}))
    out = erase_plan("--include-loop-devices", "--node", str(node))
    answer = json.loads(out.stdout)

    assert out.returncode == 0, out.stderr
    assert answer["erase"] == [erase] and answer["refused"] is None
    assert answer["skipped"][keep] == "listed in properties.skip_block_devices"
    # a plan, not an erase
    assert {d: digest(d) for d in (keep, erase)} == before


def test_a_refused_disk_fails_the_plan_with_the_reason(make_loop, tmp_path):
    disk = make_loop(16 * MiB)
    first = json.loads(erase_plan("--include-loop-devices").stdout)
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"properties": {"skip_block_devices": [
        {"name": d} for d in first["disks"] if d != disk]}}))
    # another process holding the disk open is one of the erase guards
    with open(disk, "rb"):
        out = erase_plan("--include-loop-devices", "--node", str(node))
    answer = json.loads(out.stdout)
    assert out.returncode == 1
    assert answer["erase"] == [] and disk in answer["refused"]


def test_a_bad_node_file_is_a_usage_error(tmp_path):
    bad = tmp_path / "node.json"
    bad.write_text("{not json")
    out = erase_plan("--node", str(bad))
    assert out.returncode == 2 and "cannot read the node file" in out.stderr
    out = erase_plan("--node", str(tmp_path / "missing.json"))
    assert out.returncode == 2 and "cannot read the node file" in out.stderr


def test_a_malformed_skip_list_is_reported_not_raised(tmp_path):
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"properties": {"skip_block_devices": "sda"}}))
    out = erase_plan("--node", str(node))
    answer = json.loads(out.stdout)
    assert out.returncode == 1 and "skip_block_devices" in answer["refused"]
