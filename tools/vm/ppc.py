"""The ppc64le smoke run: the ppc64el ramdisk under ``qemu-system-ppc64 -M pseries``.

No firmware netboot here: SLOF's network boot is not what OpenPOWER
machines use (petitboot is), so QEMU loads the kernel and initramfs directly
and passes the parameters petitboot.cfg would.  The run proves that the
agent comes up on ppc64le, looks up and heartbeats to the stand-in controller,
and answers ``poll.get_hardware_info`` with this machine's inventory.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from vm import bootphases, procs, qemu, ramdisk, services
from vm.flow import AGENT_PORT, GUEST_API, GUEST_SERVER_IP, Options
from vm.report import banner, say
from vm.runbase import Failed, RunBase

DISK_MIB = 64


class SmokeRun(RunBase):
    """Boot the ramdisk straight from its kernel, reach the API, check the inventory.

    The pseries run; tools/vm/arm.py's changes the machine and adds checks.
    """
    arch = "ppc64el"
    title = "ppc64el smoke (pseries)"
    guest = "ppc64le"
    console = "hvc0"

    def __init__(self, opts: Options, sup: procs.Supervisor) -> None:
        super().__init__(opts, sup, self.arch)
        self.accel = "tcg"

    def machine(self, disk: str, append: str, net: qemu.UserNet) -> qemu.Machine:
        return qemu.Machine(
            arch="ppc64", firmware="slof", memory_mib=self.opts.memory_mib, smp=self.opts.smp,
            accel="tcg", disk=disk, serial_log=os.path.join(self.run_dir, "serial-ramdisk.log"),
            kernel=self.ramdisk.kernel, initrd=self.ramdisk.initramfs, append=append, net=net)

    def started_line(self, machine: qemu.Machine) -> str:
        return f"qemu-system-ppc64 -M pseries booting the ramdisk; console in {machine.serial_log}"

    def check_inventory(self, inventory: dict[str, Any]) -> str:
        """Raise Failed on what the guest's own inventory must show; return extra words."""
        macs = {str(i.get("mac_address", "")).lower() for i in inventory.get("interfaces", [])}
        if self.mac not in macs:
            raise Failed(f"the inventory lists interfaces {sorted(macs)}, not the VM's "
                         f"{self.mac}")
        if not inventory.get("disks"):
            raise Failed("the inventory lists no disks; the VM has a virtio disk")
        return ""

    def execute(self) -> None:
        banner(f"vm-deploy: {self.title}")
        started = time.monotonic()
        self.ramdisk = ramdisk.ensure(self.arch, prebuilt=self.opts.ramdisk_dir,
                                      cache_dir=self.opts.cache_dir, log=say)
        note = (f"ramdisk {'cached' if self.ramdisk.cached else 'built'} "
                f"({self.ramdisk.sizes()})")
        self.timings.add("build", time.monotonic() - started, note)
        say(note)

        self.make_run_dir()
        node = {"uuid": self.node_uuid, "properties": {}, "instance_info": {},
                "driver_internal_info": {}}
        self.controller = services.start_controller(self.sup, node, self.mac)
        agent_port = services.free_port()
        disk = os.path.join(self.run_dir, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(DISK_MIB << 20)
        controller_port = int(self.controller.url.rsplit(":", 1)[1])
        append = " ".join([f"console={self.console}", f"ipa-api-url={GUEST_API}",
                           f"BOOTIF={self.mac}", *bootphases.TRACE_ARGS,
                           *self.opts.kernel_args])
        machine = self.machine(disk, append, qemu.UserNet(
            mac=self.mac, hostfwd=[(agent_port, AGENT_PORT)],
            guestfwd=[(GUEST_SERVER_IP, 6385, controller_port)]))
        self.vm = qemu.VM(self.sup, machine, name=f"{self.guest} ramdisk VM",
                          log=os.path.join(self.run_dir, "qemu.log"))
        started = time.monotonic()
        self.vm.start()
        say(self.started_line(machine))

        found = self.wait_for_agent(self.controller.url, agent_port)
        self.timings.add("boot to API", time.monotonic() - started,
                         f"{self.stages()}; agent {found.url}")
        say(f"agent up on {self.guest}: heartbeat from {found.url}")
        self.report_boot_phases({})

        started = time.monotonic()
        result = self.client.run("poll.get_hardware_info", {}, timeout=300)
        inventory = result.get("command_result") or {}
        summary = summarize(inventory)
        self.timings.add("get_hardware_info", time.monotonic() - started, summary)
        with open(os.path.join(self.run_dir, "inventory.json"), "w", encoding="utf-8") as f:
            json.dump(inventory, f, indent=1)
        say(f"poll.get_hardware_info: {summary}{self.check_inventory(inventory)}")
        self.vm.stop()


def summarize(inventory: dict[str, Any]) -> str:
    cpu = inventory.get("cpu") or {}
    memory = inventory.get("memory") or {}
    disks = inventory.get("disks") or []
    nics = inventory.get("interfaces") or []
    total = memory.get("physical_mb") or round((memory.get("total") or 0) / 2**20)
    return (f"cpu {cpu.get('model_name', '?')} x{cpu.get('count', '?')} "
            f"({cpu.get('architecture', '?')}), {total} MiB RAM, "
            f"disks {[d.get('name') for d in disks]}, "
            f"interfaces {[(n.get('name'), n.get('mac_address')) for n in nics]}")
