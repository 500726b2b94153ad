"""The x86_64 end-to-end run: netboot the ramdisk, deploy the test OS, boot it from disk.

    host 127.0.0.1                            guest (QEMU user network, restrict=on)
    HTTP server :H          <- guestfwd --    10.0.2.100:80    kernel, initramfs, boot.ipxe, image
    stand-in controller :C  <- guestfwd --    10.0.2.100:6385  lookup, heartbeat
    127.0.0.1:A             -- hostfwd ->     10.0.2.15:9999   the agent's API (HTTPS)
    QEMU TFTP (in-process)                    10.0.2.2         first.ipxe

Before the deploy, the disk burn-in clean step runs fio on the virtio disk
for a few seconds with verification.  A negative run (``bad-checksum``,
``unreachable-image``) expects the deploy to fail with a clear error and then
proves that the disk does not boot.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import time
from typing import Any

from agent.driver import conductor
from agent.driver import request as deploy_request
from vm import bootphases, ipxe, procs, qemu, ramdisk, services, testos
from vm.report import banner, say
from vm.runbase import RAMDISK_FAILURES, Failed, RunBase

GUEST_SERVER_IP = "10.0.2.100"
GUEST_HTTP = f"http://{GUEST_SERVER_IP}"
GUEST_API = f"http://{GUEST_SERVER_IP}:6385"
AGENT_PORT = 9999
IMAGE_NAME = "testos.img.zst"
# sparse; the agent, like IPA, picks no disk under 4 GiB without root device hints
DISK_MIB = 5 * 1024
# a short time-based fio run: proof that fio in the ramdisk verifies the
# virtio disk, not a burn-in worth the name
BURNIN_KNOBS = {"agent_burnin_fio_disk_loops": 1, "agent_burnin_fio_disk_runtime": 8}
MARKER = testos.MARKER
FAIL_ON_CONSOLE = r"Kernel panic - not syncing.*|DEPLOY-AGENT-TEST-OS: FAILED.*"
NOT_BOOTABLE = (r"No bootable device|No bootable option|Boot Failed|startup\.nsh|"
                r"Shell> |Press ESC in \d+ seconds")
NEGATIVE = {
    # what the deploy error must mention, and the image_info change that causes it
    "bad-checksum": r"checksum|(sha256|md5|sha512) of the downloaded image",
    "unreachable-image": r"download|connect|unreachable|refused|timed out|" + re.escape(
        "10.0.2.100:81"),
}
# fail fast on an unreachable image instead of the agent's ~10 minutes of retries
UNREACHABLE_ARGS = ["ipa-image-download-connection-timeout=10",
                    "ipa-image-download-connection-retries=1",
                    "ipa-image-download-connection-retry-interval=2"]


@dataclasses.dataclass
class Options:
    firmware: str = "bios"
    negative: str | None = None
    accel: str = "auto"
    ramdisk_dir: str | None = None
    cache_dir: str | None = None
    memory_mib: int = 1024
    smp: int = 1
    kernel_args: list[str] = dataclasses.field(default_factory=list)
    api_timeout: float = 300.0
    deploy_timeout: float = 300.0
    boot_timeout: float = 180.0
    raid: str | None = None             # "1" or "5": tools/vm/raidflow.py
    json_path: str | None = None


class DeployRun(RunBase):
    def __init__(self, opts: Options, sup: procs.Supervisor) -> None:
        super().__init__(opts, sup, opts.firmware
                         + (f"-{opts.negative}" if opts.negative else "")
                         + (f"-raid{opts.raid}" if opts.raid else ""))
        self.hostname = f"vm-deploy-{random.randrange(16**6):06x}"
        self.ovmf_vars: str | None = None       # one private NVRAM per run, kept across boots

    # -- phases ----------------------------------------------------------------------
    def build(self) -> None:
        started = time.monotonic()
        self.ramdisk = ramdisk.ensure("amd64", prebuilt=self.opts.ramdisk_dir,
                                      cache_dir=self.opts.cache_dir, log=say)
        self.os = testos.ensure(self.opts.cache_dir, log=say)
        self.accel, why = qemu.choose_accel(self.opts.accel, self.cache_dir)
        note = (f"ramdisk {'cached' if self.ramdisk.cached else 'built'} "
                f"({self.ramdisk.sizes()}), test OS "
                f"{'cached' if self.os.cached else 'built'} "
                f"({self.os.size / 2**20:.0f} MiB, served as zstd "
                f"{os.path.getsize(self.os.served) / 2**20:.1f} MiB); accel {self.accel} ({why})")
        self.timings.add("build", time.monotonic() - started, note)
        say(note)

    def serve(self) -> None:
        self.make_run_dir()
        self.http_dir = os.path.join(self.run_dir, "http")
        self.tftp_dir = os.path.join(self.run_dir, "tftp")
        os.makedirs(self.http_dir)
        os.makedirs(self.tftp_dir)
        services.link(self.http_dir, "deploy-agent.kernel", self.ramdisk.kernel)
        services.link(self.http_dir, "deploy-agent.initramfs", self.ramdisk.initramfs)
        services.link(self.http_dir, IMAGE_NAME, self.os.served)
        extra = [*bootphases.TRACE_ARGS, *self.opts.kernel_args]
        if self.opts.negative == "unreachable-image":
            extra += UNREACHABLE_ARGS
        ipxe.write(self.tftp_dir, self.http_dir, GUEST_HTTP, GUEST_API, extra,
                   self.ramdisk.directory)
        self.http = services.FileServer(self.http_dir, os.path.join(self.run_dir, "http.log"))
        self.http.start(self.sup)
        self.controller = services.start_controller(self.sup, self.node_record(), self.mac)
        self.agent_port = services.free_port()
        say(f"run directory {self.run_dir}; HTTP 127.0.0.1:{self.http.port}, stand-in controller "
            f"{self.controller.url}, agent API on 127.0.0.1:{self.agent_port}")

    def node_record(self) -> dict[str, Any]:
        """The node as the stand-in controller knows it (its lookup answer)."""
        return {"uuid": self.node_uuid, "properties": {},
                "instance_info": {"deploy_boot_mode": self.opts.firmware},
                "driver_internal_info": {}}

    def _machine(self, netboot: bool, serial: str) -> qemu.Machine:
        m = qemu.Machine(firmware=self.opts.firmware, memory_mib=self.opts.memory_mib,
                         smp=self.opts.smp, accel=self.accel, serial_log=os.path.join(
                             self.run_dir, serial), ovmf_vars=self.ovmf_vars)
        self.attach_disks(m, netboot)
        if self.opts.firmware == "bios":
            m.sercon_file = os.path.join(self.run_dir, "sercon-port")
            with open(m.sercon_file, "wb") as f:
                f.write(qemu.SERCON_PORT)
        if netboot:
            controller_port = int(self.controller.url.rsplit(":", 1)[1])
            m.net = qemu.UserNet(mac=self.mac, hostfwd=[(self.agent_port, AGENT_PORT)],
                                 guestfwd=[(GUEST_SERVER_IP, 80, self.http.port),
                                           (GUEST_SERVER_IP, 6385, controller_port)],
                                 tftp_dir=self.tftp_dir, bootfile=ipxe.FIRST,
                                 ipxe_rom=True, bootindex=1)
        return m

    def make_disks(self) -> None:
        self.disk = os.path.join(self.run_dir, "disk.img")
        with open(self.disk, "wb") as f:
            f.truncate(DISK_MIB << 20)

    def attach_disks(self, m: qemu.Machine, netboot: bool) -> None:
        m.disk = self.disk
        m.disk_bootindex = 2 if netboot else 1

    def boot_ramdisk(self, phase: str = "boot to API", serial: str = "serial-ramdisk.log"
                     ) -> None:
        """Power on and wait for the agent; the first boot also makes the disks."""
        if self.vm is None:
            self.make_disks()
            if self.opts.firmware == "uefi":
                self.ovmf_vars = os.path.join(self.run_dir, "OVMF_VARS.fd")
                shutil.copyfile(qemu.ovmf_files()[1], self.ovmf_vars)
        self.vm = qemu.VM(self.sup, self._machine(True, serial),
                          name="ramdisk VM", log=os.path.join(self.run_dir, "qemu.log"))
        started = time.monotonic()
        self.vm.start()
        say(f"QEMU ({self.opts.firmware}, {self.accel}) network-booting the ramdisk; serial "
            f"console in {self.vm.machine.serial_log}")

        found = self.wait_for_agent(self.controller.url, self.agent_port,
                                    fail=RAMDISK_FAILURES + "|" + NOT_BOOTABLE)
        self.endpoint = found
        status = self.client.status()
        fetched = {name: round(t - started, 1) for name, t in (
            ("iPXE script", self.http.first_request(ipxe.SECOND, started)),
            ("kernel fetch", self.http.first_request("deploy-agent.kernel", started))) if t}
        self.timings.add(phase, time.monotonic() - started,
                         f"{self.stages(fetched)}; agent {found.url} via 127.0.0.1:"
                         f"{self.agent_port}, version {status.get('version', '?')}")
        say(f"agent up: heartbeat from {found.url}, certificate pinned, token issued")
        self.report_boot_phases(fetched)

    def image_info(self) -> tuple[dict[str, Any], dict[str, Any]]:
        url, checksum = f"{GUEST_HTTP}/{IMAGE_NAME}", f"sha256:{self.os.sha256}"
        if self.opts.negative == "bad-checksum":
            checksum = "sha256:" + "0" * 64
        elif self.opts.negative == "unreachable-image":
            url = f"http://{GUEST_SERVER_IP}:81/{IMAGE_NAME}"   # no guestfwd: nobody answers
        configdrive = {
            "meta_data": {"uuid": self.node_uuid, "hostname": self.hostname,
                          "name": self.hostname, "launch_index": 0, "files": [],
                          "availability_zone": "", "public_keys": {}},
            "user_data": "#!/bin/sh\necho deploy-agent vm-deploy\n",
            "network_data": {"links": [], "networks": [], "services": []}}
        info = deploy_request.build_image_info(url, checksum, disk_format="raw",
                                               node_uuid=self.node_uuid,
                                               configdrive=configdrive)
        return info, configdrive

    def deploy_node(self) -> dict[str, Any]:
        """The node the deploy steps carry, from the lookup answer, as the conductor sends it."""
        node = json.loads(json.dumps(self.endpoint.node or {}))
        node.setdefault("instance_info", {})["deploy_boot_mode"] = self.opts.firmware
        return node

    def driver(self, limit: float, what: str) -> conductor.Conductor:
        """The conductor-like driver, with ``limit`` seconds for the whole of ``what``."""
        progress: dict[str, Any] = {}

        def on_event(kind: str, data: Any) -> None:
            if kind == "progress":
                progress.update(data)
            else:
                say(f"{what}: {data}")

        deadline = time.monotonic() + limit

        def sleep(seconds: float) -> None:
            # the conductor waits as long as the agent says RUNNING; a stalled
            # step would hold the run forever, so the whole of it has a deadline
            if time.monotonic() > deadline:
                last = {k: progress.get(k) for k in ("phase", "done", "total", "bytes_received",
                                                     "bytes_written", "rate") if k in progress}
                raise Failed(f"the {what} did not finish in {limit:.0f}s; the agent's last "
                             f"progress report: {last or 'none'}")
            time.sleep(seconds)

        return conductor.Conductor(self.client, on_event=on_event, poll_interval=1.0,
                                   bootloader_interval=1.0, callback_timeout=limit,
                                   logs_dir=os.path.join(self.run_dir, "logs"), sleep=sleep)

    def burnin_disk(self) -> None:
        """The disk burn-in clean step, fio on the virtio disk, as a manual clean runs it."""
        node = self.deploy_node()
        node.setdefault("driver_info", {}).update(BURNIN_KNOBS)
        driver = self.driver(self.opts.deploy_timeout, "burnin_disk")
        started = time.monotonic()
        result = driver.clean_step(node, {"step": "burnin_disk", "interface": "deploy",
                                          "args": {}})
        disks = (result or {}).get("disks") if isinstance(result, dict) else None
        if not disks or not all(isinstance(d, dict) and d for d in disks.values()):
            raise Failed(f"burnin_disk reported no fio figures for the disk: "
                         f"{json.dumps(result)[:300]}")
        figures = "; ".join(f"{name}: {json.dumps(summary, sort_keys=True)[:160]}"
                            for name, summary in disks.items())
        self.timings.add("burnin_disk", time.monotonic() - started, figures)

    def deploy(self) -> conductor.DeployReport:
        info, configdrive = self.image_info()
        plan = conductor.DeployPlan(image_info=info, configdrive=configdrive,
                                    node=self.deploy_node(),
                                    boot_mode=self.opts.firmware, power_off=True)
        driver = self.driver(self.opts.deploy_timeout, "deploy")
        started = time.monotonic()
        report = driver.deploy(plan)
        code = self.vm.wait_exit(90)
        if code is None:
            raise Failed("standby.power_off succeeded but the VM is still running after 90 s")
        self.timings.add("deploy", time.monotonic() - started,
                         f"bootloader {report.bootloader}; {report.power}; partition UUIDs "
                         f"{report.partition_uuids}")
        return report

    def boot_disk(self, expect_boot: bool = True) -> None:
        self.vm = qemu.VM(self.sup, self._machine(False, "serial-disk.log"),
                          name="deployed-disk VM", log=os.path.join(self.run_dir, "qemu.log"))
        started = time.monotonic()
        self.vm.start()
        say(f"QEMU booting the disk (no network); serial console in "
            f"{self.vm.machine.serial_log}")
        if not expect_boot:
            try:
                seen = self.vm.wait_for(NOT_BOOTABLE, 120, fail=re.escape(MARKER))
            except qemu.ConsoleFailure as exc:
                raise Failed(f"the deploy failed but the disk booted anyway: {exc}") from None
            except TimeoutError:
                if MARKER in self.vm.console():
                    raise Failed("the deploy failed but the disk booted anyway") from None
                seen = None
            self.timings.add("disk boot refused", time.monotonic() - started,
                             f"firmware says {seen.group(0)!r}" if seen
                             else "no OS after 120 s")
            return
        self.vm.wait_for(re.escape(MARKER) + r" booted", self.opts.boot_timeout,
                         fail=FAIL_ON_CONSOLE + "|" + NOT_BOOTABLE)
        line = self.vm.wait_for(re.escape(MARKER) + r" config drive (\S+) hostname=(\S+)",
                                60, fail=FAIL_ON_CONSOLE)
        if line.group(2) != self.hostname:
            raise Failed(f"the deployed OS read hostname {line.group(2)!r} from the config "
                         f"drive; the deploy wrote {self.hostname!r}")
        how = ""
        if self.opts.firmware == "uefi":
            # proof that install_bootloader's NVRAM entry, not the removable-media
            # fallback path, started the OS
            entry = re.search(r'BdsDxe: starting (Boot\w+) "([^"]*)" from \S+', self.vm.console())
            if entry is None or "BOOTX64.EFI" in entry.group(0).upper():
                raise Failed("OVMF did not start the OS through an NVRAM entry from "
                             f"install_bootloader: {entry.group(0) if entry else 'no entry'}")
            how = f", firmware started {entry.group(1)} {entry.group(2)!r}"
        self.timings.add("reboot to marker", time.monotonic() - started,
                         f"config drive {line.group(1)}, hostname {line.group(2)}{how}")
        self.after_disk_boot()

    def after_disk_boot(self) -> None:
        """The test OS powers off right after its marker; never leave a VM on the disk."""
        assert self.vm is not None
        if self.vm.wait_exit(30) is None:
            self.vm.stop()

    # -- the whole run ---------------------------------------------------------------
    def execute(self) -> None:
        banner(f"vm-deploy: amd64, {self.opts.firmware}"
               + (f", negative case {self.opts.negative}" if self.opts.negative else ""))
        self.build()
        self.serve()
        self.boot_ramdisk()
        if not self.opts.negative:
            self.burnin_disk()
            self.deploy()
            self.boot_disk()
            say(f"the deployed OS booted from disk and read hostname {self.hostname} from "
                "its config drive")
            return
        self.expect_failure()

    def expect_failure(self) -> None:
        from agent.errors import AgentError

        started = time.monotonic()
        try:
            self.deploy()
        except AgentError as exc:
            message = str(getattr(exc, "details", exc))
        else:
            raise Failed(f"negative case {self.opts.negative}: the deploy succeeded")
        if not re.search(NEGATIVE[self.opts.negative], message, re.IGNORECASE):
            raise Failed(f"negative case {self.opts.negative}: the deploy failed, but not "
                         f"clearly: {message}")
        self.timings.add("deploy (expected to fail)", time.monotonic() - started, message[:160])
        say(f"deploy failed as expected: {message}")
        self.show_agent_logs("expected-failure", lines=8)
        self.vm.stop()       # what the conductor's BMC does to a failed deploy
        self.boot_disk(expect_boot=False)
        say("the disk did not boot, as it must not")

    def result(self, ok: bool, error: str | None) -> dict[str, Any]:
        return super().result(ok, error) | {"firmware": self.opts.firmware,
                                            "negative": self.opts.negative}
