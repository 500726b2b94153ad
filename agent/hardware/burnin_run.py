"""What every burn-in step shares: reading its driver_info knobs and running its tool.

Knobs come from ``node["driver_info"]`` under IPA's ``agent_burnin_*`` names.
Operators set them with ``baremetal node set --driver-info key=value``, so a
number may arrive as a string; both are accepted.  A bad knob fails before
anything runs, with an error that names the knob but not its value.

``run_tool`` starts the tool in its own session so that cancelling the
command, or the step's bound running out, stops the tool and every process
it forked (stress-ng workers, fio jobs), not just the one we started.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent import errors, tools
from agent.context import CommandContext
from agent.hardware.raid.steps import error_class

LOG = logging.getLogger(__name__)

# slack over the tool's own time limit: workers must be reaped, fio flushes and reports
MARGIN_MIN_S = 60.0
MARGIN_FRACTION = 0.05
POLL_S = 0.5
TERM_GRACE_S = 10.0
STDERR_LINES = 40
MAX_SECONDS = 30 * 86400

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def driver_info(node: Any) -> Mapping[str, Any]:
    info = node.get("driver_info") if isinstance(node, Mapping) else None
    return info if isinstance(info, Mapping) else {}


def bad_knob(key: str, what: str) -> errors.InvalidCommandParamsError:
    return errors.InvalidCommandParamsError(f"driver_info {key} {what}")


def int_knob(info: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    raw = info.get(key, default)
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and raw.strip().isdigit():
        value = int(raw.strip())
    if value is None or not lo <= value <= hi:
        raise bad_knob(key, f"must be a whole number from {lo} to {hi}")
    return value


def duration_knob(info: Mapping[str, Any], key: str, default: int, lo: int,
                  hi: int = MAX_SECONDS) -> int:
    """Seconds: a number, or digits with an s/m/h/d suffix as stress-ng and fio take them."""
    raw = info.get(key, default)
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str):
        match = _DURATION.match(raw.strip().lower())
        if match:
            value = int(match.group(1)) * _UNIT_S[match.group(2)]
    if value is None or not lo <= value <= hi:
        raise bad_knob(key, f"must be a duration in seconds (optionally with an s, m, h or d "
                            f"suffix) from {lo} to {hi} seconds")
    return value


def bool_knob(info: Mapping[str, Any], key: str, default: bool) -> bool:
    raw = info.get(key, default)
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return raw.strip().lower() in ("true", "1", "yes")
    raise bad_knob(key, "must be true or false")


def outputfile_knob(info: Mapping[str, Any], key: str) -> str | None:
    """An absolute path in an existing directory of the ramdisk, or None."""
    raw = info.get(key)
    if raw is None or raw == "":
        return None
    if (not isinstance(raw, str) or not raw.startswith("/") or len(raw) > 4096
            or any(c in raw for c in "\0\n\r") or raw.endswith("/")):
        raise bad_knob(key, "must be an absolute file path")
    if not os.path.isdir(os.path.dirname(raw)):
        raise bad_knob(key, "names a file in a directory that does not exist in the ramdisk")
    return raw


def json_knob(info: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """A JSON object, given as one or as its text (the CLI may pass either)."""
    raw = info.get(key)
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise bad_knob(key, "must be a JSON object") from None
    if not isinstance(raw, Mapping):
        raise bad_knob(key, "must be a JSON object")
    return raw


def bound(seconds: float) -> float:
    """The wall-clock bound for a tool told to stop after ``seconds``."""
    return seconds + max(MARGIN_MIN_S, seconds * MARGIN_FRACTION)


def step_error(node: Any, message: str) -> errors.AgentError:
    return error_class(node, errors.CleaningError)(message)


@dataclasses.dataclass
class ToolRun:
    returncode: int
    stderr: str                 # the last lines only
    elapsed: float


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) for every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # fields after the parenthesised command: state ppid pgrp session ...
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 3 and fields[0] != "Z":
            table[int(entry)] = (int(fields[1]), int(fields[3]))
    return table


def tool_processes(root: int) -> set[int]:
    """``root``, every process in its session, and every descendant of either.

    Both are needed: fio starts each job in a session of its own, and a
    stress-ng worker whose parent died is no longer anyone's child.
    """
    table = _proc_table()
    found = {root} & set(table) | {pid for pid, (_, sid) in table.items() if sid == root}
    while True:
        more = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        if not more:
            return found
        found |= more


def stop_session(proc: subprocess.Popen) -> None:
    """SIGTERM the tool and everything it started, then SIGKILL what is left."""
    # gathered while the tool lives: once it dies its children belong to init
    targets = tool_processes(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        targets |= tool_processes(proc.pid)
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + TERM_GRACE_S
        while time.monotonic() < deadline:
            live = set(_proc_table())
            targets &= live
            if not targets:
                return
            time.sleep(0.1)
    LOG.warning("processes %s of a burn-in tool survived SIGKILL", sorted(targets))


def _pump(stream: Any, sink: Callable[[str], None]) -> None:
    try:
        for line in stream:
            sink(line)
    except (OSError, ValueError):
        pass


def run_tool(tool: str, args: Sequence[Any], ctx: CommandContext, *, limit: float | None,
             label: str, on_line: Callable[[str], None] | None = None,
             tick: Callable[[float], None] | None = None,
             cwd: str | None = None) -> ToolRun:
    """Run ``tool``, feeding stdout lines to ``on_line`` and calling ``tick`` while it runs.

    Raises Cancelled (tool stopped) on a cancel request, and ToolError when the
    tool outlives ``limit`` seconds (tool stopped).  A non-zero exit is returned,
    not raised: the caller knows what the tool's report says about it.
    """
    ctx.check_cancelled()
    stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
    try:
        proc = tools.popen(tool, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, text=True, errors="replace",
                           start_new_session=True, cwd=cwd)
    except OSError as exc:
        raise errors.ToolError(f"{tool} could not be started: {exc}", tool=tool) from exc
    started = time.monotonic()
    readers = [threading.Thread(target=_pump, args=(proc.stdout, on_line or (lambda _l: None)),
                                daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, stderr_tail.append),
                                daemon=True)]
    for reader in readers:
        reader.start()
    ctx.progress.update(tool_pid=proc.pid)
    try:
        while proc.poll() is None:
            elapsed = time.monotonic() - started
            if ctx.cancelled:
                stop_session(proc)
                raise errors.Cancelled(f"{label} was cancelled by request; {tool} was "
                                       f"stopped after {elapsed:.0f}s")
            if limit is not None and elapsed > limit:
                stop_session(proc)
                raise errors.ToolError(f"{label}: {tool} did not finish within {limit:.0f}s "
                                       "and was stopped", tool=tool)
            if tick is not None:
                tick(elapsed)
            ctx.cancel_event.wait(POLL_S)
    except BaseException:
        if proc.poll() is None:
            stop_session(proc)
        raise
    finally:
        for reader in readers:
            reader.join(timeout=TERM_GRACE_S)
    return ToolRun(proc.returncode, "".join(stderr_tail).strip(), time.monotonic() - started)
