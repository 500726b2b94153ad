"""Burn-in steps without running a tool: knobs, step lists, report parsing, disk choice."""

from __future__ import annotations

import json

import pytest

from agent.errors import InvalidCommandParamsError, UnsafeDevice
from agent.hardware import burnin, burnin_disk, burnin_fio, burnin_net, burnin_stress, erase_guards
from agent.hardware import burnin_run as run
from agent.hardware.disks import Disk

SECRET = "s3cr3t-value"


def info(**knobs) -> dict:
    return {"driver_info": {k.replace("__", "-"): v for k, v in knobs.items()}}


def test_step_lists_match_ipa():
    names = lambda steps: sorted(s["step"] for s in steps)  # noqa: E731
    assert names(burnin.CLEAN_STEPS) == names(burnin.DEPLOY_STEPS) == [
        "burnin_cpu", "burnin_disk", "burnin_memory", "burnin_network"]
    assert names(burnin.SERVICE_STEPS) == ["burnin_cpu", "burnin_memory", "burnin_network"]
    for step in (*burnin.CLEAN_STEPS, *burnin.DEPLOY_STEPS, *burnin.SERVICE_STEPS):
        assert step["priority"] == 0 and step["interface"] == "deploy"
        assert step["abortable"] is True and step["reboot_requested"] is False


@pytest.mark.parametrize("step, knobs, key", [
    (burnin.burnin_cpu, {"agent_burnin_cpu_timeout": SECRET}, "agent_burnin_cpu_timeout"),
    (burnin.burnin_cpu, {"agent_burnin_cpu_timeout": 0}, "agent_burnin_cpu_timeout"),
    (burnin.burnin_cpu, {"agent_burnin_cpu_timeout": True}, "agent_burnin_cpu_timeout"),
    (burnin.burnin_cpu, {"agent_burnin_cpu_cpu": -1}, "agent_burnin_cpu_cpu"),
    (burnin.burnin_cpu, {"agent_burnin_cpu_cpu": SECRET}, "agent_burnin_cpu_cpu"),
    (burnin.burnin_cpu, {"agent_burnin_cpu_outputfile": "relative/" + SECRET},
     "agent_burnin_cpu_outputfile"),
    (burnin.burnin_cpu, {"agent_burnin_cpu_outputfile": "/nonexistent-dir/" + SECRET},
     "agent_burnin_cpu_outputfile"),
    (burnin.burnin_memory, {"agent_burnin_vm_vm-bytes": SECRET}, "agent_burnin_vm_vm-bytes"),
    (burnin.burnin_memory, {"agent_burnin_vm_vm-bytes": "101%"}, "agent_burnin_vm_vm-bytes"),
    (burnin.burnin_memory, {"agent_burnin_vm_vm-bytes": "0"}, "agent_burnin_vm_vm-bytes"),
    (burnin.burnin_memory, {"agent_burnin_vm_vm": 100000}, "agent_burnin_vm_vm"),
    (burnin.burnin_memory, {"agent_burnin_vm_timeout": "1w"}, "agent_burnin_vm_timeout"),
    (burnin.burnin_disk, {"agent_burnin_fio_disk_loops": 0}, "agent_burnin_fio_disk_loops"),
    (burnin.burnin_disk, {"agent_burnin_fio_disk_runtime": SECRET},
     "agent_burnin_fio_disk_runtime"),
    (burnin.burnin_disk, {"agent_burnin_fio_disk_smart_test": SECRET},
     "agent_burnin_fio_disk_smart_test"),
    (burnin.burnin_disk, {"agent_burnin_fio_disk_smart_test": True},
     "agent_burnin_fio_disk_smart_test"),
    (burnin.burnin_network, {}, "agent_burnin_fio_network_config"),
    (burnin.burnin_network, {"agent_burnin_fio_network_config": SECRET},
     "agent_burnin_fio_network_config"),
    (burnin.burnin_network, {"agent_burnin_fio_network_config": {"role": SECRET,
                                                                 "partner": "h1"}},
     "agent_burnin_fio_network_config"),
    (burnin.burnin_network, {"agent_burnin_fio_network_config": {"role": "reader",
                                                                 "partner": "-" + SECRET}},
     "agent_burnin_fio_network_config"),
    (burnin.burnin_network, {"agent_burnin_fio_network_config": {"role": "reader"}},
     "agent_burnin_fio_network_config"),
    (burnin.burnin_network, {"agent_burnin_fio_network_config": {"role": "reader",
                                                                 "partner": "h1"},
                             "agent_burnin_fio_network_runtime": SECRET},
     "agent_burnin_fio_network_runtime"),
    (burnin.burnin_network, {"agent_burnin_fio_network_pairing_backend_url":
                             "zookeeper://" + SECRET},
     "agent_burnin_fio_network_pairing_backend_url"),
])
def test_bad_knob_is_refused_by_name_without_its_value(step, knobs, key):
    # nothing runs: no tool is needed, no disk is listed
    with pytest.raises(InvalidCommandParamsError) as exc:
        step({"driver_info": knobs}, None, disks=[]) if step is burnin.burnin_disk else \
            step({"driver_info": knobs}, None)
    assert key in exc.value.details
    assert SECRET not in exc.value.details


def test_knobs_accept_the_strings_the_cli_sets():
    knobs = {"t": "600", "m": "10m", "h": "2h", "n": "4", "b": "yes"}
    assert run.duration_knob(knobs, "t", 1, 1) == 600
    assert run.duration_knob(knobs, "m", 1, 1) == 600
    assert run.duration_knob(knobs, "h", 1, 1) == 7200
    assert run.duration_knob({}, "t", 86400, 1) == 86400
    assert run.int_knob(knobs, "n", 0, 0, 10) == 4
    assert run.bool_knob(knobs, "b", False) is True
    assert burnin_stress._vm_bytes({"agent_burnin_vm_vm-bytes": "75%"}) == "75%"
    assert burnin_stress._vm_bytes({"agent_burnin_vm_vm-bytes": "512M"}) == "512m"
    assert burnin_stress._vm_bytes({}) == "98%"


def test_network_config_may_be_json_text_and_ipv6_uses_tcpv6():
    opts = burnin_net._options(info(agent_burnin_fio_network_config=json.dumps(
        {"role": "writer", "partner": "fd00::2"})))
    assert (opts["role"], opts["partner"], opts["runtime"], opts["port"]) == (
        "writer", "fd00::2", 21600, 9000)
    assert "--protocol=tcpv6" in burnin_net.fio_args("reader", opts)
    assert "--hostname=fd00::2" in burnin_net.fio_args("reader", opts)
    writer = burnin_net.fio_args("writer", opts)
    assert "--listen" in writer and "--runtime=21600" in writer


def test_bound_adds_a_margin():
    assert run.bound(10) == 10 + run.MARGIN_MIN_S
    assert run.bound(86400) == pytest.approx(86400 * (1 + run.MARGIN_FRACTION))


YAML = """---
system-info:
      stress-ng-version: 0.15.06
      cpus: 2

metrics:
    - stressor: cpu
      bogo-ops: 1616
      bogo-ops-per-second-usr-sys-time: 1581.287575
      bogo-ops-per-second-real-time: 1614.201570
      wall-clock-time: 1.001114
      max-rss: 6544

...
"""


def test_stress_ng_yaml_metrics():
    assert burnin_stress.parse_yaml_metrics(YAML) == {"cpu": {
        "bogo_ops": 1616, "bogo_ops_per_s_usr_sys_time": 1581.287575,
        "bogo_ops_per_s_real_time": 1614.20157, "wall_clock_s": 1.001114,
        "max_rss_kib": 6544}}
    assert burnin_stress.parse_yaml_metrics("") == {}


def _report(written: int, errors: int = 0) -> str:
    job = {"jobname": "/dev/sdx", "error": 0, "total_err": errors, "first_error": 84 if errors
           else 0, "read": {"io_bytes": 2 * written, "bw_bytes": 10, "iops": 2.5, "runtime": 7},
           "write": {"io_bytes": written, "bw_bytes": 5, "iops": 1.25, "runtime": 7}}
    return json.dumps({"fio version": "fio-3.33", "jobs": [job]}, indent=2) + "\n"


def test_fio_stream_keeps_the_newest_report_and_the_notices():
    seen = []
    stream = burnin_fio.ReportStream(on_report=seen.append)
    text = "fio: waiting for connection\n" + _report(100) + _report(200, errors=3)
    for line in text.splitlines(keepends=True):
        stream.feed(line)
    assert len(seen) == 2
    assert list(stream.notices) == ["fio: waiting for connection"]
    assert burnin_fio.moved(stream.jobs()) == (400, 200)
    assert burnin_fio.job_summary(stream.jobs()[0]) == {
        "read": {"bytes": 400, "bw_bytes": 10, "iops": 2.5, "runtime_ms": 7},
        "write": {"bytes": 200, "bw_bytes": 5, "iops": 1.2, "runtime_ms": 7},
        "error": 0, "verify_errors": 3, "first_error": 84}


def test_disk_args_one_job_per_disk_after_the_global_options():
    disks = [Disk(name="/dev/sda", size=1), Disk(name="/dev/sdb", size=1)]
    args = burnin_disk.fio_args(disks, 4, 0)
    first_job = args.index("--name=/dev/sda")
    for option in ("--rw=readwrite", "--bs=4k", "--direct=1", "--ioengine=libaio",
                   "--iodepth=32", "--verify=crc32c", "--continue_on_error=verify",
                   "--loops=4", "--output-format=json"):
        assert args.index(option) < first_job
    assert "--time_based" not in args
    assert args[first_job:] == ["--name=/dev/sda", "--filename=/dev/sda",
                                "--name=/dev/sdb", "--filename=/dev/sdb"]
    assert "--runtime=30" in burnin_disk.fio_args(disks, 4, 30)


def test_md_array_is_refused_skipped_and_read_only_disks_are_not_touched():
    md = Disk(name="/dev/md0", size=1, kind="md")
    ro = Disk(name="/dev/sr9", size=1, read_only=True)
    skip = Disk(name="/dev/sdz", size=1, serial="keep-me")
    node = {"properties": {"skip_block_devices": [{"serial": "keep-me"}]}}
    with pytest.raises(UnsafeDevice) as exc:
        burnin_disk.plan([md, ro, skip], node)
    assert "/dev/md0 is an md array" in exc.value.details
    assert burnin_disk.plan([ro, skip], node) == ([], {
        "/dev/sr9": "read-only: it cannot be written",
        "/dev/sdz": erase_guards.SKIP_LISTED})


def test_no_disk_to_burn_in_runs_nothing():
    result = burnin.burnin_disk({}, None, disks=[])
    assert result["disks"] == {} and result["skipped"] == {}
