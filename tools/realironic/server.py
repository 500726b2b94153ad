"""One all-in-one Ironic process (API and conductor) on 127.0.0.1, everything under one directory.

Ironic runs from its own virtualenv (``tools/dev-setup --ironic`` builds
``.venv-ironic``), so that its dependencies never meet the agent's.  The
options written here are the whole difference from a stock Ironic; each one
says why it is set.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from typing import Any

import requests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.environ.get("IRONIC_VENV", os.path.join(REPO, ".venv-ironic"))
# the major version this project is tested against; dev-setup installs the newest 39.x
MAJOR = 39
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 120.0


class IronicMissing(RuntimeError):
    """Ironic's virtualenv is absent or holds the wrong version."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def installed_version(venv: str = VENV) -> str:
    """The ``ironic`` version in ``venv``; IronicMissing when absent or not MAJOR.x."""
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(os.path.join(venv, "bin", "ironic")):
        raise IronicMissing(f"no Ironic in {venv}; run tools/dev-setup --ironic")
    out = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('ironic'))"],
        capture_output=True, text=True, check=True).stdout.strip()
    if out.split(".")[0] != str(MAJOR):
        raise IronicMissing(f"{venv} holds Ironic {out}; this project is tested with {MAJOR}.x")
    return out


def base_options(work_dir: str, api_port: int) -> dict[str, dict[str, Any]]:
    """The configuration of the tier: fake hardware, no auth, no message bus."""
    url = f"http://{LOOPBACK}:{api_port}"
    return {
        "DEFAULT": {
            # no Keystone, no RabbitMQ: API and conductor in one process
            "auth_strategy": "noauth",
            "rpc_transport": "none",
            "host": "deploy-agent-tests",
            "debug": "true",
            "log_file": os.path.join(work_dir, "ironic.log"),
            "state_path": work_dir,
            "tempdir": os.path.join(work_dir, "tmp"),
            # tools/vm-deploy --ironic adds ipmi and ipxe through extra_options
            "enabled_hardware_types": "fake-hardware",
            "enabled_boot_interfaces": "fake",
            "enabled_deploy_interfaces": "direct,fake",
            "enabled_power_interfaces": "fake",
            # the fake management interface refuses "boot device disk", which every
            # direct deploy asks for in prepare_instance_boot
            "enabled_management_interfaces": "noop,fake",
            "enabled_inspect_interfaces": "agent,no-inspect",
            "enabled_rescue_interfaces": "agent,no-rescue",
            "enabled_raid_interfaces": "agent,no-raid",
            "enabled_network_interfaces": "noop",
            "enabled_console_interfaces": "no-console",
            "enabled_vendor_interfaces": "no-vendor",
            "enabled_bios_interfaces": "no-bios",
            "enabled_firmware_interfaces": "no-firmware",
            # no Neutron: the only network interface that needs none
            "default_network_interface": "noop",
        },
        "api": {"host_ip": LOOPBACK, "port": str(api_port)},
        "database": {"connection": f"sqlite:///{os.path.join(work_dir, 'ironic.sqlite')}"},
        "dhcp": {"dhcp_provider": "none"},
        # the conductor builds the agent's inspection callback URL from the catalog
        "service_catalog": {"endpoint_override": url},
        # the fake boot interface cannot boot a ramdisk, so inspection must accept
        # an agent that was booted by somebody else
        "inspector": {"require_managed_boot": "false",
                      # beyond the defaults, the hooks that turn the inventory into node
                      # properties, so the tier sees what a real deployment records
                      "hooks": "$default_hooks,memory,cpu-capabilities,boot-mode,root-device"},
        "conductor": {
            # on per node where a test wants it; a fresh loop disk needs no cleaning
            "automated_clean": "false",
            # no BMC behind fake power: nothing to poll
            "sync_power_state_interval": "-1",
            # a stuck flow fails within a test's timeout instead of Ironic's 30 min
            "deploy_callback_timeout": "600",
            "clean_callback_timeout": "600",
            "inspect_wait_timeout": "300",
        },
        # cleaning stays the metadata wipe unless a test asks for more
        # paths: everything under work_dir; http_url: nothing serves it in the tier
        # (images come from their own URLs), but the direct deploy validates it
        "deploy": {"erase_devices_priority": "0",
                   "http_root": os.path.join(work_dir, "httpboot"),
                   "http_url": f"http://{LOOPBACK}:1"},
        "agent": {"deploy_logs_local_path": os.path.join(work_dir, "deploy-logs"),
                  "certificates_path": os.path.join(work_dir, "certificates"),
                  # Ironic polls the power state after an out-of-band power off
                  # (fake power: at once); the default waits up to 2 minutes
                  "post_deploy_get_power_state_retry_interval": "1",
                  "post_deploy_get_power_state_retries": "2"},
        "oslo_concurrency": {"lock_path": os.path.join(work_dir, "locks")},
        "pxe": {"tftp_root": os.path.join(work_dir, "tftpboot"),
                "images_path": os.path.join(work_dir, "images"),
                "instance_master_path": os.path.join(work_dir, "master_images"),
                "tftp_master_path": os.path.join(work_dir, "tftp_master")},
    }


def render(options: Mapping[str, Mapping[str, Any]]) -> str:
    lines = []
    for section, values in options.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def merge(base: dict[str, dict[str, Any]],
          extra: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in (extra or {}).items():
        merged.setdefault(section, {}).update(values)
    return merged


class IronicServer:
    """``ironic`` (all-in-one) started in ``work_dir``, stopped by ``stop()``."""

    def __init__(self, work_dir: str, extra_options: Mapping[str, Mapping[str, Any]] | None = None,
                 venv: str = VENV, api_port: int | None = None,
                 extra_env: Mapping[str, str] | None = None) -> None:
        self.work_dir = os.path.abspath(work_dir)
        self.venv = venv
        self.version = installed_version(venv)
        self.api_port = api_port or free_port()
        self.url = f"http://{LOOPBACK}:{self.api_port}"
        self.options = merge(base_options(self.work_dir, self.api_port), extra_options)
        self.config_path = os.path.join(self.work_dir, "ironic.conf")
        self.log_path = self.options["DEFAULT"]["log_file"]
        self.console_path = os.path.join(self.work_dir, "ironic-console.log")
        self.proc: subprocess.Popen | None = None
        # added to Ironic's environment (e.g. an HTTP proxy for the addresses only a guest
        # sees); the defaults leave the environment as it is
        self.extra_env = dict(extra_env or {})

    def _bin(self, name: str) -> str:
        return os.path.join(self.venv, "bin", name)

    def start(self) -> IronicServer:
        for sub in ("tmp", "locks", "httpboot", "tftpboot", "deploy-logs", "certificates",
                    "images", "master_images", "tftp_master"):
            os.makedirs(os.path.join(self.work_dir, sub), exist_ok=True)
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(render(self.options))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "DEPLOY_AGENT_"))}
        env["PYTHONWARNINGS"] = "ignore"
        env.update(self.extra_env)
        subprocess.run([self._bin("ironic-dbsync"), "--config-file", self.config_path,
                        "create_schema"], check=True, capture_output=True, env=env,
                       cwd=self.work_dir)
        console = open(self.console_path, "ab")
        self.proc = subprocess.Popen([self._bin("ironic"), "--config-file", self.config_path],
                                     stdout=console, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=self.work_dir,
                                     start_new_session=True)
        console.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ironic exited with {self.proc.returncode}; "
                                   f"see {self.console_path} and {self.log_path}")
            try:
                # the conductor has registered once the API lists its hardware types
                r = requests.get(f"{self.url}/v1/drivers", timeout=5,
                                 headers={"X-OpenStack-Ironic-API-Version": "latest"})
                if r.ok and any(d["name"] == "fake-hardware" for d in r.json()["drivers"]):
                    return
                last = f"HTTP {r.status_code}"
            except (requests.RequestException, ValueError, KeyError) as exc:
                last = type(exc).__name__
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Ironic's API did not list fake-hardware in {START_TIMEOUT_S:.0f}s "
                           f"({last}); see {self.log_path}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def log_tail(self, lines: int = 80) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""
