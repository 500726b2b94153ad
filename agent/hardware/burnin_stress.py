"""CPU and memory burn-in with stress-ng (``burnin_cpu``, ``burnin_memory``).

Knobs, as IPA reads them: ``agent_burnin_<stressor>_timeout`` (default 24 h),
the worker count ``agent_burnin_cpu_cpu`` / ``agent_burnin_vm_vm`` (0: one
per CPU), ``agent_burnin_vm_vm-bytes`` (default 98%) and
``agent_burnin_<stressor>_outputfile`` (stress-ng's own log file).

Beyond IPA: the vm stressor runs with ``--verify`` so a memory bit error
fails the step instead of only slowing it down, and the step result carries
stress-ng's metrics (bogo ops and rates) read from its YAML report.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

from agent import errors, tools
from agent.context import CommandContext
from agent.hardware import burnin_run as run

LOG = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 86400
MAX_WORKERS = 4096
DEFAULT_VM_BYTES = "98%"

# stress-ng's documented exit statuses
EXIT_MEANING = {1: "an error in its arguments or setup", 2: "a stressor failed",
                3: "a stressor could not get the resources it needs",
                4: "a stressor is not implemented here", 5: "a stressor was killed by a signal",
                6: "a stressor was killed by the OOM killer",
                7: "a stressor was killed by a signal or the OOM killer"}

_VM_BYTES_PERCENT = re.compile(r"^(\d{1,3}(?:\.\d+)?)%$")
_VM_BYTES_SIZE = re.compile(r"^\d+[bkmgt]?$")

# stress-ng's YAML metric keys -> the step result's names
METRIC_KEYS = {"bogo-ops": "bogo_ops",
               "bogo-ops-per-second-real-time": "bogo_ops_per_s_real_time",
               "bogo-ops-per-second-usr-sys-time": "bogo_ops_per_s_usr_sys_time",
               "wall-clock-time": "wall_clock_s", "user-time": "user_s",
               "system-time": "system_s", "cpu-usage-per-instance": "cpu_usage_per_instance",
               "max-rss": "max_rss_kib"}


def _vm_bytes(info: Mapping[str, Any]) -> str:
    key = "agent_burnin_vm_vm-bytes"
    raw = info.get(key, DEFAULT_VM_BYTES)
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return str(raw)
    if isinstance(raw, str):
        text = raw.strip().lower()
        percent = _VM_BYTES_PERCENT.match(text)
        if percent and 0 < float(percent.group(1)) <= 100:
            return text
        if not percent and _VM_BYTES_SIZE.match(text) and int(text.rstrip("bkmgt")) > 0:
            return text
    raise run.bad_knob(key, "must be a percentage of the memory (1% to 100%) or a size in "
                            "bytes with an optional b, k, m, g or t suffix")


def parse_yaml_metrics(text: str) -> dict[str, dict[str, float]]:
    """Stressor -> metrics from stress-ng's ``--yaml`` report (its flat 'metrics' list only)."""
    metrics: dict[str, dict[str, float]] = {}
    current: dict[str, float] | None = None
    in_metrics = False
    for line in text.splitlines():
        stripped = line.strip()
        if not line.startswith(" "):
            in_metrics = stripped == "metrics:"
            current = None
            continue
        if not in_metrics or ":" not in stripped:
            continue
        key, _, value = stripped.removeprefix("- ").partition(":")
        key, value = key.strip(), value.strip().strip("'\"")
        if stripped.startswith("- ") and key == "stressor":
            current = metrics.setdefault(value, {})
            continue
        if current is not None and key in METRIC_KEYS:
            try:
                number = float(value)
            except ValueError:
                continue
            current[METRIC_KEYS[key]] = int(number) if number.is_integer() else number
    return metrics


def _stress(node: Any, ctx: CommandContext | None, stressor: str) -> dict[str, Any]:
    info = run.driver_info(node)
    count_key = "agent_burnin_cpu_cpu" if stressor == "cpu" else "agent_burnin_vm_vm"
    timeout = run.duration_knob(info, f"agent_burnin_{stressor}_timeout", DEFAULT_TIMEOUT_S, 1)
    workers = run.int_knob(info, count_key, 0, 0, MAX_WORKERS)
    outputfile = run.outputfile_knob(info, f"agent_burnin_{stressor}_outputfile")
    vm_bytes = _vm_bytes(info) if stressor == "vm" else None

    ctx = ctx or CommandContext("local", f"burnin_{'cpu' if stressor == 'cpu' else 'memory'}")
    label = f"stress-ng ({stressor})"
    workdir = tempfile.mkdtemp(prefix="burnin-")
    report = os.path.join(workdir, "metrics.yaml")
    args: list[Any] = [f"--{stressor}", workers, "--timeout", f"{timeout}s",
                       "--metrics-brief", "--yaml", report]
    if vm_bytes is not None:
        args += ["--vm-bytes", vm_bytes, "--verify"]
    if outputfile:
        args += ["--log-file", outputfile]
    ctx.progress.update(phase=label, done=0, total=timeout, unit="seconds")
    try:
        try:
            outcome = run.run_tool(
                "stress-ng", args, ctx, limit=run.bound(timeout), label=label, cwd=workdir,
                tick=lambda elapsed: ctx.progress.update(done=min(int(elapsed), timeout)))
        except errors.ToolError as exc:
            raise run.step_error(node, exc.details or str(exc)) from None
        try:
            with open(report, encoding="utf-8", errors="replace") as f:
                metrics = parse_yaml_metrics(f.read())
        except OSError:
            metrics = {}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if outcome.returncode != 0:
        meaning = EXIT_MEANING.get(outcome.returncode, "an unknown failure")
        raise run.step_error(node, f"{label} failed with exit code {outcome.returncode} "
                                   f"({meaning}): {tools.tail(outcome.stderr, 1500)}")
    ctx.progress.update(done=timeout)
    result: dict[str, Any] = {"tool": "stress-ng", "stressor": stressor,
                              "workers": workers or os.cpu_count(), "timeout_s": timeout,
                              "elapsed_s": round(outcome.elapsed, 1),
                              "metrics": metrics.get(stressor, {})}
    if vm_bytes is not None:
        result["vm_bytes"] = vm_bytes
    if outputfile:
        result["outputfile"] = outputfile
    LOG.info("%s finished: %s", label, result["metrics"])
    return result


def burnin_cpu(node: Any, ports: Any = None, ctx: CommandContext | None = None) -> dict[str, Any]:
    """Load every (or ``agent_burnin_cpu_cpu``) CPU for ``agent_burnin_cpu_timeout`` seconds."""
    return _stress(node, ctx, "cpu")


def burnin_memory(node: Any, ports: Any = None,
                  ctx: CommandContext | None = None) -> dict[str, Any]:
    """Exercise ``agent_burnin_vm_vm-bytes`` of the memory, verified, for the vm timeout."""
    return _stress(node, ctx, "vm")
