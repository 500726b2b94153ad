"""Network burn-in with fio between two nodes (``burnin_network``).

As IPA: ``agent_burnin_fio_network_config`` gives this node's ``role``
(``writer`` or ``reader``) and its ``partner`` (host name or address).  The
writer listens and writes for ``agent_burnin_fio_network_runtime`` seconds
(default 6 h) over 16 TCP streams (fio's net engine, ports 9000-9015); the
reader connects to the partner and reads until the writer stops.  Then the
roles swap, so each direction is tested.  The reader retries while the
partner is not listening yet.

Beyond IPA: waiting for the partner is bounded by
``agent_burnin_fio_network_pairing_timeout`` (IPA's dynamic-pairing knob,
default 900 s) instead of only by Ironic's step timeout; the first port is
``agent_burnin_fio_network_port`` (this agent's knob, default 9000); an IPv6
partner address runs over tcpv6 on both nodes; a direction's throughput is
in the step result.

Not yet: pairing through a coordination backend
(``agent_burnin_fio_network_pairing_backend_url``, IPA's tooz pairing) is
refused with a message saying so; set a static config instead.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Mapping
from typing import Any

from agent import errors, tools
from agent.context import CommandContext
from agent.hardware import burnin_fio
from agent.hardware import burnin_run as run

DEFAULT_RUNTIME_S = 21600
DEFAULT_PAIRING_TIMEOUT_S = 900
DEFAULT_PORT = 9000
STREAMS = 16
RETRY_S = 5.0
SETTLE_S = 3.0
ROLES = ("writer", "reader")
CONFIG_KEY = "agent_burnin_fio_network_config"

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def _partner(raw: Any) -> tuple[str, bool]:
    """(partner, is IPv6) from the config's partner field."""
    if isinstance(raw, str):
        text = raw.strip()
        try:
            address = ipaddress.ip_address(text.strip("[]"))
        except ValueError:
            if _HOSTNAME.match(text):
                return text, False
        else:
            return str(address), address.version == 6
    raise run.bad_knob(CONFIG_KEY, "needs a partner: the other node's host name or IP address")


def _options(node: Any) -> dict[str, Any]:
    info = run.driver_info(node)
    config = run.json_knob(info, CONFIG_KEY)
    if config is None:
        if info.get("agent_burnin_fio_network_pairing_backend_url"):
            raise errors.InvalidCommandParamsError(
                "network burn-in pairing through a coordination backend "
                "(driver_info agent_burnin_fio_network_pairing_backend_url) is not supported "
                f"by this agent yet; set driver_info {CONFIG_KEY} to "
                '{"role": "writer" or "reader", "partner": "<the other node>"}')
        raise errors.InvalidCommandParamsError(
            f"network burn-in needs driver_info {CONFIG_KEY} with a role (writer or reader) "
            "and the partner node's host name or address")
    role = config.get("role")
    if role not in ROLES:
        raise run.bad_knob(CONFIG_KEY, "needs a role: writer or reader")
    partner, v6 = _partner(config.get("partner"))
    return {"role": role, "partner": partner, "v6": v6,
            "runtime": run.duration_knob(info, "agent_burnin_fio_network_runtime",
                                         DEFAULT_RUNTIME_S, 1),
            "pairing": run.duration_knob(info, "agent_burnin_fio_network_pairing_timeout",
                                         DEFAULT_PAIRING_TIMEOUT_S, 1),
            "port": run.int_knob(info, "agent_burnin_fio_network_port", DEFAULT_PORT, 1,
                                 65536 - STREAMS),
            "outputfile": run.outputfile_knob(info, "agent_burnin_fio_network_outputfile")}


def fio_args(role: str, opts: Mapping[str, Any]) -> list[str]:
    args = ["--ioengine=net", f"--port={opts['port']}",
            f"--protocol={'tcpv6' if opts['v6'] else 'tcp'}", "--fill_device=1",
            "--gtod_reduce=1", f"--numjobs={STREAMS}",
            "--output-format=json", f"--status-interval={burnin_fio.STATUS_INTERVAL_S}"]
    if role == "writer":
        return args + ["--name=writer", "--rw=write", f"--runtime={opts['runtime']}",
                       "--time_based", "--listen"]
    return args + ["--name=reader", "--rw=read", f"--hostname={opts['partner']}"]


def _refused(jobs: list[Mapping[str, Any]]) -> int:
    """How many streams found no listener (each fio job is one stream)."""
    return sum(1 for j in jobs if int(j.get("error") or 0) in burnin_fio.NOT_LISTENING
               and not any(burnin_fio.moved([j])))


def _attempt(node: Any, role: str, opts: Mapping[str, Any], ctx: CommandContext,
             label: str, deadline: float) -> tuple[run.ToolRun, burnin_fio.ReportStream]:
    way = 0 if role == "reader" else 1
    stream = burnin_fio.ReportStream(on_report=lambda _r: ctx.progress.update(
        done=burnin_fio.moved(stream.jobs())[way]))
    left = max(1.0, deadline - time.monotonic())
    try:
        outcome = run.run_tool("fio", fio_args(role, opts), ctx, label=label,
                               on_line=stream.feed, limit=run.bound(opts["runtime"]) + left)
    except errors.ToolError as exc:
        raise run.step_error(node, exc.details or str(exc)) from None
    return outcome, stream


def _direction(node: Any, role: str, opts: Mapping[str, Any], ctx: CommandContext,
               number: int) -> dict[str, Any]:
    label = f"burnin_network ({role}, direction {number} of 2)"
    way = "write" if role == "writer" else "read"
    deadline = time.monotonic() + opts["pairing"]
    if role == "reader" and number == 2:
        # the partner turns from reader to writer now: connecting while its listeners
        # start could catch only some of them, and the rest would wait for us forever
        ctx.sleep(SETTLE_S)
    attempts = 0
    while True:
        attempts += 1
        ctx.progress.update(phase=label, done=0, total=None, unit="bytes", attempt=attempts)
        outcome, stream = _attempt(node, role, opts, ctx, label, deadline)
        jobs = stream.jobs()
        # nobody listening yet: wait for the partner, within the pairing timeout
        if (role == "reader" and jobs and _refused(jobs) == len(jobs)
                and time.monotonic() < deadline):
            ctx.progress.update(waiting_for_partner=True)
            ctx.sleep(min(RETRY_S, max(0.0, deadline - time.monotonic())))
            ctx.progress.update(waiting_for_partner=False)
            continue
        break
    why = tools.tail(outcome.stderr or "\n".join(stream.notices), 1500)
    failed = [j for j in jobs if int(j.get("error") or 0)]
    if outcome.returncode != 0 or failed or len(jobs) != STREAMS:
        refused = _refused(jobs)
        if refused == len(jobs) and jobs:
            cause = f"the partner was not listening within {opts['pairing']}s"
        elif refused:
            cause = (f"only {len(jobs) - refused} of {STREAMS} streams connected (the "
                     "partner's listeners were still starting); run the step again on both")
        elif failed:
            cause = f"{len(failed)} of {STREAMS} streams failed, first with errno " \
                    f"{int(failed[0].get('error') or 0)}"
        else:
            cause = f"exit code {outcome.returncode}"
        raise run.step_error(node, f"fio (network, {role}) failed: {cause}: {why}")
    if opts["outputfile"]:
        burnin_fio.save_report(stream, f"{opts['outputfile']}.{role}")
    summaries = [burnin_fio.job_summary(j)[way] for j in jobs]
    return {"role": role, "bytes": sum(s["bytes"] for s in summaries),
            "bw_bytes": sum(s["bw_bytes"] for s in summaries),
            "runtime_ms": max(s["runtime_ms"] for s in summaries), "attempts": attempts}


def burnin_network(node: Any, ports: Any = None,
                   ctx: CommandContext | None = None) -> dict[str, Any]:
    """Test both directions between this node and its partner; raise if fio fails."""
    opts = _options(node)
    ctx = ctx or CommandContext("local", "burnin_network")
    first = opts["role"]
    second = "reader" if first == "writer" else "writer"
    directions = [_direction(node, first, opts, ctx, 1), _direction(node, second, opts, ctx, 2)]
    return {"tool": "fio", "role": first, "partner": opts["partner"],
            "runtime_s": opts["runtime"], "streams": STREAMS, "port": opts["port"],
            "directions": directions}
