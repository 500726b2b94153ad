"""A conductor-like driver: one whole-disk or partition deploy, by Ironic 39's rules.

It calls the agent exactly as the conductor does (reference §3, §4.4, §7):
``deploy.get_deploy_steps``; ``deploy.execute_deploy_step`` with the
``write_image`` step, watched through ``GET /v1/commands/`` looking only at
the last entry; ``standby.get_partition_uuids``; ``image.install_bootloader``
when the image and boot mode need it, polled; then ``standby.sync`` and
``standby.power_off``.  A node whose ``target_raid_config`` asks for
software RAID gets install_bootloader whatever the image, as Ironic does,
and ``clean_step`` runs one manual clean step (``raid.create_configuration``)
the same way.  It finds the agent through the stand-in controller's
record of the first heartbeat (URL, token and pinned certificate) or is
pointed at it directly.  Progress and milestones go to ``on_event``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import requests

from agent.driver.client import AgentAPIError, AgentClient
from agent.driver.request import bootloader_params
from agent.errors import DeployFailed

Event = Callable[[str, Any], None]
CONNECTION_ERRORS = (requests.ConnectionError, requests.Timeout)
MAX_ATTEMPTS = 3
FIRST_POLL_S = 0.05


def _noop(kind: str, data: Any) -> None:
    pass


# -- finding the agent --------------------------------------------------------------------

def agent_client(url: str, token: str | None, verify: bool | str) -> AgentClient:
    """The client the driver talks through; ``verify`` is a pinned PEM path, True or False."""
    return AgentClient(url, token=token, verify=verify)


@dataclasses.dataclass
class AgentEndpoint:
    url: str
    token: str | None
    verify: bool | str
    node: dict[str, Any] | None = None


def endpoint_from_controller(controller_url: str, node_uuid: str, *, timeout: float = 600.0,
                             poll: float = 1.0, on_event: Event = _noop,
                             session: requests.Session | None = None,
                             ca_dir: str | None = None,
                             sleep: Callable[[float], None] = time.sleep) -> AgentEndpoint:
    """Wait for the node's first accepted heartbeat at the stand-in controller.

    The pinned certificate becomes the only trust anchor, as the conductor
    does with ``agent_verify_ca`` (§3.1, §8.6).
    """
    http = session or requests.Session()
    url = f"{controller_url.rstrip('/')}/standin/nodes/{node_uuid}"
    deadline = time.monotonic() + timeout
    on_event("message", f"waiting for node {node_uuid} to heartbeat to {controller_url}")
    while True:
        try:
            resp = http.get(url, timeout=30)
            info = resp.json() if resp.status_code == 200 else None
        except (requests.RequestException, ValueError):
            info = None
        if info and info.get("heartbeats") and info.get("agent_url"):
            break
        if time.monotonic() > deadline:
            raise DeployFailed(f"node {node_uuid} sent no heartbeat to {controller_url} in "
                               f"{timeout:.0f}s; is the agent booted with "
                               f"ipa-api-url={controller_url}?")
        sleep(poll)
    verify: bool | str = True
    if info.get("agent_verify_ca"):
        fd, path = tempfile.mkstemp(prefix=f"{node_uuid}-", suffix=".crt", dir=ca_dir)
        with os.fdopen(fd, "w") as f:
            f.write(info["agent_verify_ca"])
        verify = path
    on_event("message", f"agent heartbeat from {info['agent_url']}"
                        + (" (certificate pinned)" if verify is not True else ""))
    return AgentEndpoint(info["agent_url"], info.get("agent_token"), verify, info.get("node"))


def wait_for_agent(client: AgentClient, *, timeout: float = 600.0, poll: float = 1.0,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll ``/v1/status`` until the agent answers (driving an agent directly)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.status()
        except (requests.RequestException, AgentAPIError) as exc:
            if time.monotonic() > deadline:
                raise DeployFailed(f"agent at {client.url} did not answer in {timeout:.0f}s: "
                                   f"{exc}") from None
        sleep(poll)


# -- the deploy ---------------------------------------------------------------------------

@dataclasses.dataclass
class DeployPlan:
    image_info: dict[str, Any]
    configdrive: Any = None
    node: dict[str, Any] = dataclasses.field(default_factory=dict)
    ports: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    boot_mode: str = "bios"
    power_off: bool = True


@dataclasses.dataclass
class DeployReport:
    deploy_result: Any = None
    partition_uuids: dict[str, Any] = dataclasses.field(default_factory=dict)
    bootloader: str = "skipped"
    power: str = "left running"
    elapsed_s: float = 0.0


class Conductor:
    def __init__(self, client: AgentClient, *, on_event: Event = _noop,
                 poll_interval: float = 2.0, bootloader_interval: float = 6.0,
                 bootloader_attempts: int = 100, callback_timeout: float = 1800.0,
                 logs_dir: str | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.logs_dir = logs_dir
        self.emit = on_event
        self.poll_interval = poll_interval
        self.bootloader_interval = bootloader_interval
        self.bootloader_attempts = bootloader_attempts
        self.callback_timeout = callback_timeout
        self.sleep = sleep
        self.clock = clock

    # -- HTTP with the conductor's retry rules ------------------------------------
    def post(self, name: str, params: dict[str, Any], wait: bool) -> dict[str, Any]:
        """POST a command; adopt a lost async response, wait out a busy agent (§3.3, §3.4)."""
        short = name.split(".", 1)[1]
        deadline = self.clock() + self.callback_timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.client.post(name, params, wait=wait)
            except CONNECTION_ERRORS as exc:
                last = self._last_entry(quiet=True)
                if last and last.get("command_name") == short \
                        and last.get("command_status") == "RUNNING":
                    return last
                if attempt >= MAX_ATTEMPTS:
                    raise DeployFailed(f"{name}: agent unreachable after {attempt} attempts: "
                                       f"{exc}") from None
            except AgentAPIError as exc:
                busy = exc.status == 409 or "agent is busy" in exc.faultstring_text.lower()
                if not busy:
                    raise
                if self.clock() > deadline:
                    raise DeployFailed(f"{name}: agent still busy after "
                                       f"{self.callback_timeout:.0f}s: {exc.details}") from None
                self.emit("message", f"agent busy ({exc.faultstring_text}); retrying {name}")
                self.sleep(self.poll_interval)

    def _last_entry(self, quiet: bool = False) -> dict[str, Any] | None:
        try:
            commands = self.client.list()
        except CONNECTION_ERRORS:
            if quiet:
                return None
            raise
        return commands[-1] if commands else None

    def _sync_result(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        result = self.post(name, params, wait=True)
        if result.get("command_status") != "SUCCEEDED":
            raise DeployFailed(f"{name} {result.get('command_status')}: "
                               f"{_details(result.get('command_error'))}")
        return result.get("command_result") or {}

    # -- step flow --------------------------------------------------------------
    def await_step(self, step_type: str, step: dict[str, Any]) -> dict[str, Any] | None:
        """Watch the last command until the step ends; None on a version mismatch."""
        name = f"execute_{step_type}_step"
        unreachable_since: float | None = None
        # short steps end in tens of milliseconds: poll soon, then back off to the
        # configured interval, so a short step does not wait out a whole interval
        interval = min(FIRST_POLL_S, self.poll_interval)
        while True:
            try:
                last = self._last_entry()
                unreachable_since = None
            except CONNECTION_ERRORS as exc:
                now = self.clock()
                unreachable_since = unreachable_since or now
                if now - unreachable_since > self.callback_timeout:
                    raise DeployFailed(f"agent unreachable for {self.callback_timeout:.0f}s "
                                       f"during {step['step']}: {exc}") from None
                last = None
            status = last.get("command_status") if last else None
            if last and last.get("command_name") == name and status != "RUNNING":
                if status == "FAILED":
                    self.collect_logs(f"{step_type}-{step['step']}")
                    raise DeployFailed(f"{step_type} step {step['step']} failed: "
                                       f"{_details(last.get('command_error'))}")
                if status in ("CLEAN_VERSION_MISMATCH", "VERSION_MISMATCH"):
                    return None
                if status != "SUCCEEDED":
                    raise DeployFailed(f"{step_type} step {step['step']}: unknown status "
                                       f"{status}")
                echoed = (last.get("command_result") or {}).get(f"{step_type}_step") or {}
                if (echoed.get("interface"), echoed.get("step")) == (step["interface"],
                                                                     step["step"]):
                    return last
            elif last and status == "RUNNING" and last.get("progress"):
                self.emit("progress", last["progress"])
            self.sleep(interval)
            interval = min(interval * 2, self.poll_interval)

    def collect_logs(self, label: str) -> str | None:
        """Save the agent's logs after a failure, as the conductor does; never raises."""
        if not self.logs_dir:
            return None
        try:
            result = self.post("log.collect_system_logs", {}, wait=True)
            blob = base64.b64decode((result.get("command_result") or {})["system_logs"])
        except Exception as exc:  # noqa: BLE001 - the step failure is what matters
            self.emit("message", f"could not collect the agent's logs: {exc}")
            return None
        os.makedirs(self.logs_dir, exist_ok=True)
        path = os.path.join(self.logs_dir,
                            f"deploy-agent-{label}-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz")
        with open(path, "wb") as f:
            f.write(blob)
        self.emit("message", f"agent logs saved to {path}")
        return path

    def run_step(self, plan: DeployPlan, step: dict[str, Any],
                 step_type: str = "deploy") -> dict[str, Any]:
        """Run one ``step_type`` step as the conductor does; the last command entry."""
        for _ in range(2):
            body = self._sync_result(f"{step_type}.get_{step_type}_steps",
                                     {"node": plan.node, "ports": plan.ports})
            if f"{step_type}_steps" not in body or "hardware_manager_version" not in body:
                raise DeployFailed(f"{step_type}.get_{step_type}_steps answered without "
                                   f"{step_type}_steps and hardware_manager_version: "
                                   f"{sorted(body)}")
            version = body["hardware_manager_version"]
            steps = [s for group in (body[f"{step_type}_steps"] or {}).values() for s in group]
            if step["step"] not in {s.get("step") for s in steps}:
                raise DeployFailed(f"the agent does not offer {step_type} step {step['step']}; "
                                   f"offered: {sorted(str(s.get('step')) for s in steps)}")
            self.post(f"{step_type}.execute_{step_type}_step",
                      {"step": step, "node": plan.node, "ports": plan.ports,
                       f"{step_type}_version": version}, wait=False)
            self.emit("message", f"{step_type} step {step['step']} started")
            done = self.await_step(step_type, step)
            if done is not None:
                return done
            self.emit("message", "hardware manager version changed; fetching steps again")
        raise DeployFailed(f"{step_type} step {step['step']} kept failing with a version "
                           "mismatch")

    def clean_step(self, node: dict[str, Any], step: dict[str, Any],
                   ports: list[dict[str, Any]] | None = None) -> Any:
        """One manual clean step (e.g. raid.create_configuration); its ``clean_result``."""
        done = self.run_step(DeployPlan(image_info={}, node=node, ports=ports or []), step,
                             step_type="clean")
        return (done.get("command_result") or {}).get("clean_result")

    def install_bootloader(self, params: dict[str, Any]) -> None:
        try:
            self.post("image.install_bootloader", params, wait=False)
        except AgentAPIError as exc:
            # the conductor's one retry, for agents that predate target_boot_mode
            self.emit("message", f"install_bootloader refused ({exc.details}); retrying "
                                 "without target_boot_mode")
            self.post("image.install_bootloader",
                      {k: v for k, v in params.items() if k != "target_boot_mode"}, wait=False)
        for _ in range(self.bootloader_attempts):
            last = self._last_entry(quiet=True)
            if last and last.get("command_name") == "install_bootloader" \
                    and last.get("command_status") != "RUNNING":
                if last["command_status"] != "SUCCEEDED":
                    self.collect_logs("install_bootloader")
                    raise DeployFailed("image.install_bootloader failed: "
                                       f"{_details(last.get('command_error'))}")
                return
            self.sleep(self.bootloader_interval)
        raise DeployFailed(f"image.install_bootloader did not finish after "
                           f"{self.bootloader_attempts} checks")

    def power_off(self) -> str:
        result = self.post("standby.power_off", {}, wait=False)
        while result.get("command_status") == "RUNNING":
            self.sleep(self.poll_interval)
            try:
                result = self.client.get(result["id"])
            except (requests.RequestException, AgentAPIError):
                # a powered-off agent stops answering; that is the success case
                return "off (the agent stopped answering)"
        if result.get("command_status") == "FAILED":
            raise DeployFailed("the image is written, but standby.power_off failed: "
                               f"{_details(result.get('command_error'))}; power the node off "
                               "out of band")
        return "off"

    def deploy(self, plan: DeployPlan) -> DeployReport:
        start = self.clock()
        report = DeployReport()
        commands = self.client.list()
        last = commands[-1] if commands else None
        if last and last.get("command_status") == "RUNNING":
            raise DeployFailed(f"the agent is busy with {last.get('command_name')}; try again "
                               "when it has finished")
        if any(c.get("command_name") != "get_deploy_steps" for c in commands):
            self.emit("message", f"the agent already ran {len(commands)} command(s) since it "
                                 "started; deploying again")
        step = {"interface": "deploy", "step": "write_image",
                "args": {"image_info": plan.image_info, "configdrive": plan.configdrive}}
        done = self.run_step(plan, step)
        report.deploy_result = (done.get("command_result") or {}).get("deploy_result")
        self.emit("message", f"write_image: {_result_text(report.deploy_result)}")

        uuids = self.post("standby.get_partition_uuids", {}, wait=True)
        report.partition_uuids = (uuids.get("command_result") or {}) \
            if uuids.get("command_status") == "SUCCEEDED" else {}
        why, params = bootloader_params(plan.node, plan.image_info, plan.boot_mode,
                                        report.partition_uuids)
        if why:
            self.emit("message", f"installing the bootloader ({why})")
            self.install_bootloader(params)
            report.bootloader = f"installed ({why})"
        else:
            report.bootloader = f"skipped (whole-disk image, {plan.boot_mode} boot)"
        self._sync_result("standby.sync", {})
        report.power = "synced, left running"
        if plan.power_off:
            report.power = self.power_off()
        report.elapsed_s = round(self.clock() - start, 1)
        self.emit("message", f"deploy finished in {report.elapsed_s}s; bootloader "
                             f"{report.bootloader}; node {report.power}")
        return report


def _details(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("details") or error.get("message") or error)
    return str(error)


def _result_text(result: Any) -> str:
    if isinstance(result, dict) and "result" in result:
        return str(result["result"])
    return json.dumps(result)
