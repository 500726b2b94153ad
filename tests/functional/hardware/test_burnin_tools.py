"""Burn-in with the real stress-ng and fio: tiny durations, real failures, real cancels.

The network burn-in runs two agents' worth of fio on 127.0.0.1, one pair of
threads playing the two nodes.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from agent import tools
from agent.context import CommandContext
from agent.errors import Cancelled, CleaningError, ServicingError, ToolError
from agent.hardware import burnin, burnin_net
from agent.hardware import burnin_run as run

needs_stress = pytest.mark.skipif(tools.which("stress-ng") is None, reason="no stress-ng")
needs_fio = pytest.mark.skipif(tools.which("fio") is None, reason="no fio")
WAIT = 60                                  # hang guard only, never an assertion on time


def wait_for(predicate, what: str) -> None:
    event = threading.Event()
    for _ in range(WAIT * 20):
        if predicate():
            return
        event.wait(0.05)
    raise AssertionError(f"never saw {what}")


def in_background(fn, *args):
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:               # noqa: BLE001 - handed to the test
            box["error"] = exc
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@needs_stress
def test_cpu_burnin_reports_stress_ng_metrics(tmp_path):
    log = tmp_path / "burnin.cpu"
    ctx = CommandContext("c1", "burnin_cpu")
    result = burnin.burnin_cpu({"driver_info": {"agent_burnin_cpu_timeout": "1",
                                                "agent_burnin_cpu_cpu": 1,
                                                "agent_burnin_cpu_outputfile": str(log)}},
                               None, ctx)
    assert result["stressor"] == "cpu" and result["workers"] == 1
    assert result["metrics"]["bogo_ops"] > 0
    assert result["metrics"]["bogo_ops_per_s_real_time"] > 0
    assert "successful run completed" in log.read_text()
    snap = ctx.progress.snapshot()
    assert (snap["phase"], snap["unit"], snap["done"], snap["total"]) == (
        "stress-ng (cpu)", "seconds", 1, 1)


@needs_stress
def test_memory_burnin_reports_stress_ng_metrics():
    result = burnin.burnin_memory({"driver_info": {"agent_burnin_vm_timeout": 1,
                                                   "agent_burnin_vm_vm": 1,
                                                   "agent_burnin_vm_vm-bytes": "32m"}}, None)
    assert result["stressor"] == "vm" and result["vm_bytes"] == "32m"
    assert result["metrics"]["max_rss_kib"] > 32 * 1024


@needs_stress
def test_a_failing_stressor_fails_the_step_with_stress_ng_reason():
    ctx = CommandContext("c2", "burnin_cpu")
    node = {"provision_state": "servicing",
            "driver_info": {"agent_burnin_cpu_timeout": 60, "agent_burnin_cpu_cpu": 1}}
    thread, box = in_background(burnin.burnin_cpu, node, None, ctx)
    wait_for(lambda: "tool_pid" in ctx.progress.snapshot(), "stress-ng start")
    parent = ctx.progress.snapshot()["tool_pid"]
    wait_for(lambda: run.tool_processes(parent) - {parent}, "a worker")
    for pid in run.tool_processes(parent):
        if pid != parent:
            os.kill(pid, signal.SIGKILL)           # a worker dies as on failing hardware
    thread.join(WAIT)
    error = box.get("error")
    assert isinstance(error, ServicingError), box
    assert "stress-ng (cpu) failed with exit code 2 (a stressor failed)" in error.details


@needs_stress
def test_cancel_stops_stress_ng_and_all_its_workers():
    ctx = CommandContext("c3", "burnin_memory")
    node = {"driver_info": {"agent_burnin_vm_timeout": "1h", "agent_burnin_vm_vm": 2,
                            "agent_burnin_vm_vm-bytes": "16m"}}
    thread, box = in_background(burnin.burnin_memory, node, None, ctx)
    wait_for(lambda: "tool_pid" in ctx.progress.snapshot(), "stress-ng start")
    parent = ctx.progress.snapshot()["tool_pid"]
    wait_for(lambda: len(run.tool_processes(parent)) >= 3, "the workers")
    started = run.tool_processes(parent)
    ctx.cancel_event.set()
    thread.join(WAIT)
    assert isinstance(box.get("error"), Cancelled), box
    assert not [pid for pid in started if alive(pid)]


@needs_stress
def test_a_tool_outliving_its_bound_is_stopped():
    ctx = CommandContext("c4", "burnin_cpu")
    with pytest.raises(ToolError) as exc:
        run.run_tool("stress-ng", ["--cpu", 1, "--timeout", "60s"], ctx, limit=0.5,
                     label="burnin_cpu")
    assert "did not finish within" in exc.value.details
    parent = ctx.progress.snapshot()["tool_pid"]
    assert not alive(parent)


def network_node(role: str, port: int, **knobs) -> dict:
    info = {"agent_burnin_fio_network_config": {"role": role, "partner": "127.0.0.1"},
            "agent_burnin_fio_network_runtime": 1, "agent_burnin_fio_network_port": port,
            "agent_burnin_fio_network_pairing_timeout": 30}
    info.update(knobs)
    return {"provision_state": "cleaning", "driver_info": info}


@needs_fio
def test_network_burnin_between_two_nodes_both_directions(monkeypatch, tmp_path):
    # long enough for the writer's 16 listeners to come up between two reader attempts
    monkeypatch.setattr(burnin_net, "RETRY_S", 1.0)
    port = 19310
    out = tmp_path / "net"
    reader_ctx = CommandContext("r", "burnin_network")
    # the reader starts first: it must wait for its partner's listener, not fail
    reader, rbox = in_background(burnin.burnin_network,
                                 network_node("reader", port), None, reader_ctx)
    wait_for(lambda: reader_ctx.progress.snapshot().get("waiting_for_partner"), "a retry")
    writer, wbox = in_background(
        burnin.burnin_network,
        network_node("writer", port, agent_burnin_fio_network_outputfile=str(out)), None)
    writer.join(WAIT)
    reader.join(WAIT)
    assert "error" not in wbox and "error" not in rbox, (wbox, rbox)
    for result, roles in ((wbox["result"], ["writer", "reader"]),
                          (rbox["result"], ["reader", "writer"])):
        assert [d["role"] for d in result["directions"]] == roles
        assert all(d["bytes"] > 0 and d["bw_bytes"] > 0 for d in result["directions"])
    assert rbox["result"]["directions"][0]["attempts"] >= 2
    assert (tmp_path / "net.writer").exists() and (tmp_path / "net.reader").exists()


@needs_fio
def test_network_reader_without_a_partner_fails_after_the_pairing_timeout(monkeypatch):
    monkeypatch.setattr(burnin_net, "RETRY_S", 0.2)
    node = network_node("reader", 19350, agent_burnin_fio_network_pairing_timeout=1)
    with pytest.raises(CleaningError) as exc:
        burnin.burnin_network(node, None)
    assert "the partner was not listening within 1s" in exc.value.details


@needs_fio
def test_cancel_stops_a_writer_waiting_for_its_partner():
    ctx = CommandContext("w", "burnin_network")
    thread, box = in_background(burnin.burnin_network, network_node("writer", 19370), None, ctx)
    wait_for(lambda: "tool_pid" in ctx.progress.snapshot(), "fio start")
    parent = ctx.progress.snapshot()["tool_pid"]
    # fio starts one process per stream, each in a session of its own
    wait_for(lambda: len(run.tool_processes(parent)) > burnin_net.STREAMS, "the streams")
    started = run.tool_processes(parent)
    ctx.cancel_event.set()
    thread.join(WAIT)
    assert isinstance(box.get("error"), Cancelled), box
    assert not [pid for pid in started if alive(pid)]
