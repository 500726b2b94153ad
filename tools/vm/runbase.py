"""What every kind of run shares: its directory, timings, and the failure report."""

from __future__ import annotations

import json
import os
import random
import re
import time
import uuid
from typing import Any

from agent.driver import conductor
from vm import agentlink, cache, procs, qemu
from vm.report import Timings, say

# console lines that mark the stages of a ramdisk boot, timed as they appear
MILESTONES = {"kernel": r"Linux version \d", "agent": r"deploy-agent [\w.+-]+ starting"}
# console lines after which the agent will never come up
RAMDISK_FAILURES = r"Kernel panic - not syncing.*|Initramfs unpacking failed.*"
HINTS = {"Initramfs unpacking failed": " (the initramfs did not fit in the guest's RAM? "
                                       "try a larger --memory)"}


class Failed(Exception):
    """The run did not prove what it set out to; the message says what happened."""


class RunBase:
    arch = "amd64"

    def __init__(self, opts: Any, sup: procs.Supervisor, label: str) -> None:
        self.opts = opts
        self.sup = sup
        self.cache_dir = opts.cache_dir or cache.cache_root()
        self.timings = Timings()
        self.vm: qemu.VM | None = None
        self.client: Any = None
        self.accel: str | None = None
        # locally administered, random: two runs never share a lease or a node
        self.mac = "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))
        self.node_uuid = str(uuid.uuid4())
        self.run_dir = os.path.join(self.cache_dir, "runs",
                                    f"{time.strftime('%Y%m%d-%H%M%S')}-{label}")

    def make_run_dir(self) -> None:
        os.makedirs(self.run_dir)
        cache.prune(os.path.dirname(self.run_dir), "", keep=6, protect=self.run_dir)

    def wait_for_agent(self, controller_url: str, agent_port: int,
                       fail: str = RAMDISK_FAILURES) -> conductor.AgentEndpoint:
        """The first heartbeat, as the conductor sees it; fail fast on a dead console.

        Fills ``self.milestones`` with the seconds since QEMU started at which
        the kernel and the agent first showed on the console (1 s resolution).
        """
        vm = self.vm
        assert vm is not None
        self.milestones: dict[str, float] = {}

        def sleep(seconds: float) -> None:
            text = vm.console()
            for name, pattern in MILESTONES.items():
                if name not in self.milestones and re.search(pattern, text):
                    self.milestones[name] = round(time.monotonic() - vm.started, 1)
            if oops := re.search(fail, text):
                hint = next((h for k, h in HINTS.items() if k in oops.group(0)), "")
                raise qemu.ConsoleFailure(f"{vm.name}: the console shows "
                                          f"{oops.group(0).strip()!r}{hint}")
            if not vm.running:
                raise qemu.VMExited(f"{vm.name}: QEMU exited ({vm.proc.returncode}) before "
                                    f"the agent's first heartbeat; {vm.qemu_errors()}")
            time.sleep(seconds)

        found = conductor.endpoint_from_controller(
            controller_url, self.node_uuid, timeout=self.opts.api_timeout, poll=1.0,
            sleep=sleep, ca_dir=self.run_dir)
        self.client = agentlink.local_client(found.url, found.token, found.verify, agent_port)
        self.milestones["heartbeat"] = round(time.monotonic() - vm.started, 1)
        self.check_loopback_only()
        return found

    def stages(self, first: dict[str, float] | None = None) -> str:
        """``kernel at 12s, agent at 41s, heartbeat at 44s`` from the milestones."""
        marks = sorted({**(first or {}), **self.milestones}.items(), key=lambda kv: kv[1])
        return ", ".join(f"{name} at {seconds:.0f}s" for name, seconds in marks)

    def report_boot_phases(self, wall: dict[str, float]) -> list[tuple[str, float]]:
        """Print where the boot's time went; keep it in boot-phases.json."""
        from vm import bootphases

        assert self.vm is not None
        items = bootphases.phases(self.vm.console(),
                                  {**wall, **{k: v for k, v in self.milestones.items()
                                              if k == "kernel"}})
        say("boot phases: " + bootphases.describe(items))
        with open(os.path.join(self.run_dir, "boot-phases.json"), "w", encoding="utf-8") as f:
            json.dump(dict(items), f, indent=1)
        return items

    def check_loopback_only(self) -> None:
        """Every server of this run (ours, QEMU's hostfwd) is up now; none may face the network."""
        from vm import services

        exposed = services.non_loopback_listeners([self.vm.proc.pid] if self.vm else [])
        if exposed:
            raise Failed("this run listens beyond 127.0.0.1: " + ", ".join(exposed))

    def show_agent_logs(self, label: str, lines: int = 40) -> None:
        """Fetch log.collect_system_logs while the agent is up; print its own log's tail."""
        if self.client is None or self.vm is None or not self.vm.running:
            return
        path, text = agentlink.fetch_logs(self.client, os.path.join(self.run_dir, "logs"),
                                          label)
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        if path:
            say(f"agent logs (log.collect_system_logs) saved to {path}; last {len(tail)} "
                "lines of deploy-agent.log:")
        else:
            say(text)
            tail = []
        for line in tail:
            print(f"    | {line}")

    def on_failure(self, exc: BaseException) -> None:
        say(f"FAILED: {type(exc).__name__}: {exc}")
        try:
            self.show_agent_logs("failure")
        except Exception as err:  # noqa: BLE001 - diagnostics must not hide the failure
            say(f"could not fetch the agent's logs: {err}")
        if self.vm is not None:
            say(f"last serial console lines of the {self.vm.name} "
                f"({self.vm.machine.serial_log}):")
            for line in self.vm.tail(40):
                print(f"    | {line}")

    def discard_disk(self) -> None:
        """After a passing run the VM disk is dead weight; a failed run keeps it to inspect."""
        path = os.path.join(self.run_dir, "disk.img")
        if os.path.exists(path):
            os.unlink(path)

    def result(self, ok: bool, error: str | None) -> dict[str, Any]:
        return {"ok": ok, "error": error, "arch": self.arch, "accel": self.accel,
                "run_dir": self.run_dir, "timings": self.timings.as_dict()}

    def write_json(self, ok: bool, error: str | None) -> None:
        data = self.result(ok, error)
        paths = [self.opts.json_path]
        if os.path.isdir(self.run_dir):
            paths.append(os.path.join(self.run_dir, "result.json"))
        for path in filter(None, paths):
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
