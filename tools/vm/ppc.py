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

from vm import procs, qemu, ramdisk, services
from vm.flow import AGENT_PORT, GUEST_API, GUEST_SERVER_IP, Options
from vm.report import banner, say
from vm.runbase import Failed, RunBase

DISK_MIB = 64


class SmokeRun(RunBase):
    arch = "ppc64el"

    def __init__(self, opts: Options, sup: procs.Supervisor) -> None:
        super().__init__(opts, sup, "ppc64el")
        self.accel = "tcg"

    def execute(self) -> None:
        banner("vm-deploy: ppc64el smoke (pseries)")
        started = time.monotonic()
        self.ramdisk = ramdisk.ensure("ppc64el", prebuilt=self.opts.ramdisk_dir,
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
        append = " ".join(["console=hvc0", f"ipa-api-url={GUEST_API}", f"BOOTIF={self.mac}",
                           *self.opts.kernel_args])
        machine = qemu.Machine(
            arch="ppc64", firmware="slof", memory_mib=self.opts.memory_mib, smp=self.opts.smp,
            accel="tcg", disk=disk, serial_log=os.path.join(self.run_dir, "serial-ramdisk.log"),
            kernel=self.ramdisk.kernel, initrd=self.ramdisk.initramfs, append=append,
            net=qemu.UserNet(mac=self.mac, hostfwd=[(agent_port, AGENT_PORT)],
                             guestfwd=[(GUEST_SERVER_IP, 6385, controller_port)]))
        self.vm = qemu.VM(self.sup, machine, name="ppc64le ramdisk VM",
                          log=os.path.join(self.run_dir, "qemu.log"))
        started = time.monotonic()
        self.vm.start()
        say(f"qemu-system-ppc64 -M pseries booting the ramdisk; console in {machine.serial_log}")

        found = self.wait_for_agent(self.controller.url, agent_port)
        self.timings.add("boot to API", time.monotonic() - started,
                         f"{self.stages()}; agent {found.url}")
        say(f"agent up on ppc64le: heartbeat from {found.url}")

        started = time.monotonic()
        result = self.client.run("poll.get_hardware_info", {}, timeout=300)
        inventory = result.get("command_result") or {}
        summary = summarize(inventory)
        self.timings.add("get_hardware_info", time.monotonic() - started, summary)
        with open(os.path.join(self.run_dir, "inventory.json"), "w", encoding="utf-8") as f:
            json.dump(inventory, f, indent=1)
        macs = {str(i.get("mac_address", "")).lower() for i in inventory.get("interfaces", [])}
        if self.mac not in macs:
            raise Failed(f"the inventory lists interfaces {sorted(macs)}, not the VM's "
                         f"{self.mac}")
        if not inventory.get("disks"):
            raise Failed("the inventory lists no disks; the VM has a virtio disk")
        say(f"poll.get_hardware_info: {summary}")
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
