"""``tools/vm-deploy --ironic``: an unmodified Ironic drives the VM through a whole lifecycle.

    host 127.0.0.1                               guest (QEMU user network, restrict=on)
    file server :H (Ironic's http_root) <- guestfwd -- 10.0.2.100:80    boot.ipxe, per-MAC
                                                                         configs, kernel,
                                                                         initramfs, image
    Ironic API :P                       <- guestfwd -- 10.0.2.100:6385  lookup, heartbeat
    127.0.0.1:A                         -- hostfwd ->  10.0.2.15:9999   the agent (HTTPS)
    image store :S  (Ironic downloads from here: the deploy kernel/ramdisk, the test OS)
    ipmi_sim 127.0.0.1:<udp> <- ipmitool (Ironic)    its BMC (isa-ipmi-bt <-> ipmi-bmc-extern)

QEMU's DHCP names ``http://10.0.2.100/boot.ipxe`` (Ironic's own script) as
the boot file; the VM is powered, and its boot device chosen, only by
Ironic through IPMI (tools/vm/bmc.py).  The harness only enrolls the node,
asks for state changes, and reads the serial consoles.

    enroll -> manage -> inspect -> provide (automated cleaning)
      -> deploy (config drive) -> the disk boots and prints the hostname
      -> undeploy (cleaning) -> available
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import re
import time
from typing import Any

from vm import bmc as bmcmod
from vm import flow, procs, qemu, ramdisk, services, testos
from vm.httproot import HttpRoot
from vm.ironicconf import GUEST_HTTP, GUEST_SERVER_IP, configdrive, ironic_options, node_fields
from vm.report import banner, say
from vm.runbase import RAMDISK_FAILURES, Failed, RunBase

AGENT_PORT = 9999
DISK_MIB = 5 * 1024
IMAGE_NAME = "testos.img"
MARKER = testos.MARKER
FAIL_ON_CONSOLE = r"Kernel panic - not syncing.*|DEPLOY-AGENT-TEST-OS: FAILED.*"
# console lines that mark the stages of a ramdisk boot, timed as the watcher first sees them
RAMDISK_LINES = {"kernel": r"Linux version \d", "agent": r"deploy-agent [\w.+-]+ starting",
                 "heartbeat": r"heartbeat accepted by"}


@dataclasses.dataclass
class IronicOptions(flow.Options):
    ironic_inspect: bool = True


class IronicRun(RunBase):
    """One node, one VM, one real Ironic; every step through Ironic's REST API."""

    def __init__(self, opts: Any, sup: procs.Supervisor) -> None:
        super().__init__(opts, sup, f"ironic-{opts.firmware}")
        self.hostname = f"vm-deploy-{random.randrange(16**6):06x}"
        self.ironic: Any = None
        self.api: Any = None
        self.bmc: bmcmod.Bmc | None = None
        self.node: dict[str, Any] = {}
        self.boot_seen: dict[int, float] = {}
        self.marks: dict[int, dict[str, float]] = {}
        self.loopback_checked = False

    # -- build and services ------------------------------------------------------------
    def build(self) -> None:
        from realironic import server

        started = time.monotonic()
        self.ironic_version = server.installed_version()      # IronicMissing: exit 2
        bmcmod.check_tools()
        self.ramdisk = ramdisk.ensure("amd64", prebuilt=self.opts.ramdisk_dir,
                                      cache_dir=self.opts.cache_dir, log=say)
        self.os = testos.ensure(self.opts.cache_dir, log=say)
        self.accel, why = qemu.choose_accel(self.opts.accel, self.cache_dir)
        with open(self.os.image, "rb") as f:
            # Ironic checks the image it downloads against this, and so does the agent
            self.image_sha256 = hashlib.file_digest(f, "sha256").hexdigest()
        note = (f"Ironic {self.ironic_version}; ramdisk "
                f"{'cached' if self.ramdisk.cached else 'built'} ({self.ramdisk.sizes()}); "
                f"test OS {'cached' if self.os.cached else 'built'} (raw, "
                f"{self.os.size / 2**20:.0f} MiB); accel {self.accel} ({why})")
        self.timings.add("build", time.monotonic() - started, note)
        say(note)

    def serve(self) -> None:
        from realironic import client, server

        started = time.monotonic()
        self.make_run_dir()
        work = os.path.join(self.run_dir, "ironic")
        store = os.path.join(self.run_dir, "image-store")
        os.makedirs(os.path.join(work, "httpboot"))
        os.makedirs(store)
        services.link(store, "deploy-agent.kernel", self.ramdisk.kernel)
        services.link(store, "deploy-agent.initramfs", self.ramdisk.initramfs)
        services.link(store, IMAGE_NAME, self.os.image)
        self.store = services.FileServer(store, os.path.join(self.run_dir, "image-store.log"))
        self.store.start(self.sup)
        self.http = HttpRoot(os.path.join(work, "httpboot"), os.path.join(self.run_dir, "http.log"),
                             GUEST_SERVER_IP)
        self.http.start(self.sup)
        self.agent_port = services.free_port()

        self.ironic = server.IronicServer(work, extra_options=ironic_options(work),
                                          extra_env=self.http.proxy_env())
        self.sup.on_close("Ironic", self.ironic.stop)
        self.ironic.start()
        self.api = client.Ironic(self.ironic.url)
        ironic_s = time.monotonic() - started

        for stale in bmcmod.stop_stale_vms(os.path.dirname(self.run_dir)):
            say(f"stopped a VM left behind by a killed run: {stale}")
        self.bmc = bmcmod.Bmc(self.run_dir, self.sup)
        self.make_disks()
        self.bmc.start(self.qemu_argv())
        checked = self.bmc.self_check()
        self.timings.add("services", time.monotonic() - started,
                         f"Ironic API up in {ironic_s:.1f}s; ipmi_sim self-check: {checked}")
        say(f"run directory {self.run_dir}")
        say(f"Ironic {self.ironic.url} (guest: http://{GUEST_SERVER_IP}:6385), http_root on "
            f"127.0.0.1:{self.http.port} (guest: {GUEST_HTTP}), image store 127.0.0.1:"
            f"{self.store.port}, ipmi_sim 127.0.0.1:{self.bmc.lan_port}/udp, agent API "
            f"127.0.0.1:{self.agent_port}; BMC self-check: {checked}")

    def make_disks(self) -> None:
        self.disk = os.path.join(self.run_dir, "disk.img")
        with open(self.disk, "wb") as f:
            f.truncate(DISK_MIB << 20)

    def attach_disks(self, m: qemu.Machine) -> None:
        m.disk = self.disk

    def qemu_argv(self) -> list[str]:
        """The VM as the BMC starts it; chassis_control adds -boot, -serial, the monitor."""
        assert self.bmc is not None
        m = qemu.Machine(firmware=self.opts.firmware, memory_mib=self.opts.memory_mib,
                         smp=self.opts.smp, accel=self.accel or "tcg", serial_log="@serial@")
        self.attach_disks(m)
        m.sercon_file = os.path.join(self.run_dir, "sercon-port")
        with open(m.sercon_file, "wb") as f:
            f.write(qemu.SERCON_PORT)
        # no bootindex anywhere: the BMC's boot device becomes QEMU's -boot order
        m.net = qemu.UserNet(mac=self.mac, hostfwd=[(self.agent_port, AGENT_PORT)],
                             guestfwd=[(GUEST_SERVER_IP, 80, self.http.port),
                                       (GUEST_SERVER_IP, 6385, self.ironic.api_port)],
                             bootfile=f"{GUEST_HTTP}/boot.ipxe", ipxe_rom=True)
        argv = qemu.argv(m)
        at = argv.index("-serial")
        del argv[at:at + 2]
        self.guestfwd_helpers = [qemu.guestfwd_helper(port) for _, _, port in m.net.guestfwd]
        self.sup.on_close("guestfwd helpers", self.reap_helpers)
        return [*argv, *self.bmc.qemu_args()]

    def reap_helpers(self) -> None:
        for helper in self.guestfwd_helpers:
            procs.stop_matching(helper)

    # -- watching ----------------------------------------------------------------------
    def watch(self, node: dict[str, Any]) -> None:
        """Called on every poll: print transitions, time boots, fail fast on a dead console."""
        assert self.bmc is not None
        now = time.monotonic()
        boots = self.bmc.boots()
        if boots and boots not in self.boot_seen:
            self.boot_seen[boots] = now
            how = [a for a in self.bmc.chassis_actions(8) if f"boot {boots} " in a]
            say(f"the BMC powered the VM on: {how[-1] if how else f'boot {boots}'}")
        state = (node.get("provision_state"), node.get("target_provision_state"),
                 node.get("power_state"))
        if state != getattr(self, "_last_state", None):
            self._last_state = state
            say(f"node: {state[0]} -> {state[1]}, power {state[2]}"
                + (f"; last_error: {node['last_error']}" if node.get("last_error") else ""))
        if boots and self.bmc.vm_pid() is not None:
            text = self.bmc.console(boots)
            marks = self.marks.setdefault(boots, {})
            for name, pattern in RAMDISK_LINES.items():
                if name not in marks and re.search(pattern, text):
                    marks[name] = round(now - self.boot_seen[boots], 1)
            if "heartbeat" in marks and not self.loopback_checked:
                # every server of the run is up now, QEMU's hostfwd included
                self.check_loopback_only()
                self.loopback_checked = True
            if oops := re.search(RAMDISK_FAILURES + "|" + FAIL_ON_CONSOLE, text):
                raise qemu.ConsoleFailure(f"boot {boots}: the console shows "
                                          f"{oops.group(0).strip()!r}")

    def wait(self, phase: str, states: str | tuple[str, ...], timeout: float) -> dict[str, Any]:
        from realironic.client import IronicError

        try:
            self.node = self.api.wait_for(self.node["uuid"], states, timeout,
                                          on_poll=self.watch, interval=1.0)
        except IronicError as exc:
            self.node = exc.node or self.node
            raise Failed(f"{phase}: {exc}") from None
        return self.node

    def ramdisk_stages(self, boot: int) -> str:
        """How far the given boot's console got, in seconds after the BMC powered it on."""
        start = self.boot_seen.get(boot)
        if start is None:
            return f"boot {boot}: never seen"
        marks = dict(self.marks.get(boot, {}))
        with self.http._lock:
            fetched = [t for t, line in self.http.requests if " /boot.ipxe " in line
                       and t >= start - 1]
        if fetched:
            marks["boot.ipxe"] = round(fetched[0] - start, 1)
        stages = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in
                           sorted(marks.items(), key=lambda kv: kv[1]))
        return f"boot {boot} after power on: {stages or 'no ramdisk stage seen'}"

    # -- the lifecycle -------------------------------------------------------------------
    def enroll(self) -> None:
        assert self.bmc is not None
        started = time.monotonic()
        fields = node_fields(self, self.bmc.driver_info())
        self.node = self.api.create_node(**fields)
        self.api.create_port(self.node["uuid"], self.mac)
        self.validate("power", "management", "boot")
        self.timings.add("enroll", time.monotonic() - started,
                         f"node {self.node['uuid']}, port {self.mac}; power, management "
                         "and boot validate")

    def validate(self, *interfaces: str) -> None:
        checks = self.api.validate(self.node["uuid"])
        bad = {k: v.get("reason") for k, v in checks.items()
               if k in interfaces and not v.get("result")}
        if bad:
            raise Failed(f"Ironic's validation of the node failed: {bad}")

    def manage(self) -> None:
        started = time.monotonic()
        self.api.provision(self.node["uuid"], "manage")
        self.wait("manage", "manageable", 120)
        self.timings.add("manage", time.monotonic() - started,
                         f"power state through IPMI: {self.node['power_state']}")

    def inspect(self) -> None:
        if not self.opts.ironic_inspect:
            self.timings.add("inspect", 0.0, "skipped (--no-inspect)")
            return
        started = time.monotonic()
        self.api.provision(self.node["uuid"], "inspect")
        self.wait("inspect", "manageable", self.opts.api_timeout + 300)
        seconds = time.monotonic() - started
        found = self.check_inventory()
        self.timings.add("inspect", seconds, found + "; " + self.ramdisk_stages(
            max(self.boot_seen or {0: 0})))

    def check_inventory(self) -> str:
        """What Ironic stored must describe this VM: its virtio disk, its NIC, its BMC."""
        inventory = self.api.inventory(self.node["uuid"])["inventory"]
        listed = inventory.get("disks", [])
        disks = [d for d in listed if d.get("size") == DISK_MIB << 20]
        nics = [i for i in inventory.get("interfaces", [])
                if (i.get("mac_address") or "").lower() == self.mac.lower()]
        problems = []
        if not disks:
            problems.append(f"no {DISK_MIB} MiB disk among "
                            f"{[(d.get('name'), d.get('size')) for d in listed]}")
        if not nics:
            problems.append(f"no interface with the VM's MAC {self.mac}")
        if not inventory.get("bmc_address") and not inventory.get("bmc_v6address"):
            problems.append("no BMC address (the guest has an IPMI BT interface to ipmi_sim)")
        if problems:
            raise Failed("inspection stored an inventory that does not describe the VM: "
                         + "; ".join(problems))
        return (f"inventory: disk {disks[0]['name']}, NIC {nics[0]['name']}, "
                f"BMC {inventory.get('bmc_address') or inventory.get('bmc_v6address')}, "
                f"cpu_arch {self.api.node(self.node['uuid'])['properties'].get('cpu_arch')}")

    def provide(self) -> None:
        started = time.monotonic()
        self.api.provision(self.node["uuid"], "provide")
        self.wait("clean (provide)", "available", self.opts.api_timeout + self.opts.deploy_timeout)
        self.timings.add("clean (provide)", time.monotonic() - started,
                         "automated cleaning: erase_devices_metadata; "
                         + self.ramdisk_stages(max(self.boot_seen or {0: 0})))

    def deploy(self) -> None:
        started = time.monotonic()
        image = f"http://127.0.0.1:{self.store.port}/{IMAGE_NAME}"
        self.api.patch_node(self.node["uuid"], **{
            "instance_info/image_source": image,
            "instance_info/image_checksum": self.image_sha256})
        self.validate("deploy", "boot", "power", "management")
        self.api.provision(self.node["uuid"], "active", configdrive=self.configdrive(),
                           **self.deploy_args())
        first_boot = self.bmc.boots() + 1 if self.bmc else 0
        self.wait("deploy", "active", self.opts.api_timeout + self.opts.deploy_timeout)
        served = self.http.served(f"agent_images/{self.node['uuid']}")
        self.timings.add("deploy", time.monotonic() - started,
                         f"{self.ramdisk_stages(first_boot)}; image served to the agent "
                         f"{len(served)}x from http_root ({served[-1] if served else 'never'})")

    def deploy_args(self) -> dict[str, Any]:
        return {}       # e.g. deploy_steps (tools/vm/ironicraid.py)

    def configdrive(self) -> dict[str, Any]:
        return configdrive(self.hostname, self.node["uuid"], self.mac)

    def boot_disk(self) -> None:
        """Ironic powered the VM on from its disk; the test OS prints the marker and hostname."""
        assert self.bmc is not None
        started = time.monotonic()
        boot = self.bmc.boots()
        order = [a for a in self.bmc.chassis_actions(6) if "power on" in a]
        deadline = time.monotonic() + self.opts.boot_timeout
        pattern = re.compile(re.escape(MARKER) + r" config drive (\S+) hostname=(\S+)")
        while not (found := pattern.search(self.bmc.console(boot))):
            text = self.bmc.console(boot)
            if oops := re.search(FAIL_ON_CONSOLE + "|No bootable device|Boot Failed", text):
                raise Failed(f"the deployed disk did not boot: {oops.group(0)!r}")
            if time.monotonic() > deadline:
                raise Failed(f"boot {boot} (after deploy) did not print {MARKER} config "
                             f"drive ... in {self.opts.boot_timeout:.0f}s")
            time.sleep(0.5)
        if found.group(2) != self.hostname:
            raise Failed(f"the deployed OS read hostname {found.group(2)!r} from the config "
                         f"drive; the deploy asked for {self.hostname!r}")
        how = re.search(r"order=\w+", order[-1]) if order else None
        self.timings.add("disk boot to marker", time.monotonic() - started,
                         f"boot {boot} ({how.group(0) if how else 'order ?'}, set by Ironic "
                         f"through IPMI); config drive {found.group(1)}, hostname "
                         f"{found.group(2)}")
        say(f"the deployed OS booted from disk and read hostname {self.hostname} from its "
            "config drive")

    def undeploy(self) -> None:
        started = time.monotonic()
        first_boot = self.bmc.boots() + 1 if self.bmc else 0
        self.api.provision(self.node["uuid"], "deleted")
        self.wait("undeploy", "available", self.opts.api_timeout + self.opts.deploy_timeout)
        self.timings.add("undeploy + clean", time.monotonic() - started,
                         f"{self.ramdisk_stages(first_boot)}; power {self.node['power_state']}")

    def execute(self) -> None:
        banner(f"vm-deploy --ironic: amd64, {self.opts.firmware}, real Ironic, IPMI power")
        self.build()
        self.serve()
        self.enroll()
        self.manage()
        self.inspect()
        self.provide()
        self.deploy()
        self.boot_disk()
        self.undeploy()
        self.check_loopback_only()
        say("lifecycle complete: enroll, manage, clean, deploy, disk boot, undeploy")

    # -- reporting -----------------------------------------------------------------------
    def check_loopback_only(self) -> None:
        pids = [p for p in (self.bmc.vm_pid() if self.bmc else None,
                            self.bmc.proc.pid if self.bmc and self.bmc.proc else None,
                            self.ironic.proc.pid if self.ironic and self.ironic.proc else None)
                if p]
        exposed = services.non_loopback_listeners(pids)
        if exposed:
            raise Failed("this run listens beyond 127.0.0.1: " + ", ".join(exposed))

    def on_failure(self, exc: BaseException) -> None:
        say(f"FAILED: {type(exc).__name__}: {exc}")
        node = self.node
        if node.get("last_error"):
            say(f"Ironic's last_error: {node['last_error']}")
        if self.api is not None and node.get("uuid"):
            try:
                for event in self.api.history(node["uuid"])[-6:]:
                    say(f"node history: {event.get('severity')} {event.get('event')}")
            except Exception as err:  # noqa: BLE001 - diagnostics must not hide the failure
                say(f"could not read the node's history: {err}")
        if self.ironic is not None:
            logs = os.path.join(self.run_dir, "ironic", "deploy-logs")
            collected = os.path.isdir(logs) and os.listdir(logs)
            say(f"Ironic's log: {self.ironic.log_path}"
                + (f"; agent logs Ironic collected: {logs}" if collected else ""))
            errors = [line for line in self.ironic.log_tail(400).splitlines()
                      if " ERROR " in line][-5:]
            for line in errors:
                print(f"    | {line[:300]}")
        if self.bmc is not None:
            say(f"BMC actions ({self.bmc.chassis_log}):")
            for line in self.bmc.chassis_actions(10):
                print(f"    | {line}")
            boot = self.bmc.boots()
            if boot:
                say(f"last serial console lines of boot {boot} ({self.bmc.serial_log(boot)}):")
                for line in self.bmc.tail(30, boot):
                    print(f"    | {line}")

    def result(self, ok: bool, error: str | None) -> dict[str, Any]:
        return super().result(ok, error) | {
            "mode": "ironic", "firmware": self.opts.firmware, "negative": None,
            "ironic_version": getattr(self, "ironic_version", None),
            "node": self.node.get("uuid"), "boots": self.bmc.boots() if self.bmc else 0}
