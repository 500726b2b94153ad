"""``tools/vm-deploy --ironic --raid 1``: a real Ironic builds the software RAID while deploying.

The lifecycle of tools/vm/ironicflow.py with RAID member disks, and:

    enroll with raid_interface=agent -> manage -> inspect -> provide
      (automated cleaning: erase_devices_metadata, which would destroy an
      array, so the array is made after it)
    -> PUT /v1/nodes/{id}/states/raid: target_raid_config (software, MAX root)
    -> deploy with deploy_steps=[raid.apply_configuration (priority 90)], between
       deploy.deploy (100) and write_image (80); instance_info.image_rootfs_uuid
       for the install_bootloader call Ironic makes for software RAID
    -> the disks boot (Ironic powers them on): marker, hostname, array whole
    -> outside Ironic, plain QEMU on the member images: one boot without each
       member (tools/vm/degraded.py), in snapshot mode
    -> undeploy: cleaning must wipe the arrays; no md superblock may remain
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from vm import degraded, qemu, raidflow
from vm.ironicflow import MARKER, IronicRun
from vm.report import banner, say
from vm.runbase import Failed

MD_MAGIC = (0xA92B4EFC).to_bytes(4, "little")
MD_SB_OFFSET = 4096              # metadata 1.2: 4 KiB into the member partition


def md_superblocks(path: str, size_mib: int) -> list[int]:
    """MiB offsets in a disk image where a 1.2 md superblock starts a (MiB-aligned) partition."""
    found = []
    with open(path, "rb") as f:
        for mib in range(size_mib):
            f.seek(mib * 2**20 + MD_SB_OFFSET)
            if f.read(4) == MD_MAGIC:
                found.append(mib)
    return found


class IronicRaidRun(raidflow.MemberDisks, IronicRun):
    def __init__(self, opts: Any, sup: Any) -> None:
        super().__init__(opts, sup)
        self.run_dir += f"-raid{opts.raid}"
        self.level: str = opts.raid
        self.members: list[str] = []
        self.absent: int | None = None
        self.snapshot = False
        self.config = raidflow.target_raid_config(self.level)

    # -- disks -------------------------------------------------------------------------
    def make_disks(self) -> None:
        self.members = [os.path.join(self.run_dir, f"member-{i}.img")
                        for i in range(raidflow.MEMBERS[self.level])]
        for path in self.members:
            with open(path, "wb") as f:
                f.truncate(raidflow.MEMBER_MIB << 20)

    def attach_disks(self, m: qemu.Machine) -> None:
        # no bootindex: the boot device Ironic sets through IPMI orders the boot
        m.disks = [qemu.Disk(path, slot=raidflow.FIRST_SLOT + i, serial=f"raid-member-{i}",
                             snapshot=self.snapshot)
                   for i, path in enumerate(self.members) if i != self.absent]

    def _machine(self, netboot: bool, serial: str) -> qemu.Machine:
        """The VM without Ironic (degraded boots): the member disks, no network."""
        assert not netboot
        m = qemu.Machine(firmware=self.opts.firmware, memory_mib=self.opts.memory_mib,
                         smp=self.opts.smp, accel=self.accel or "tcg",
                         serial_log=os.path.join(self.run_dir, serial))
        m.sercon_file = os.path.join(self.run_dir, "sercon-port")   # written by qemu_argv
        self.attach_disks(m)
        for d in m.disks:
            d.bootindex = 1 + self.members.index(d.path)
        return m

    # -- the lifecycle, where RAID changes it --------------------------------------------
    def enroll(self) -> None:
        super().enroll()
        self.node = self.api.patch_node(self.node["uuid"], raid_interface="agent")
        self.validate("raid")

    def check_inventory(self) -> str:
        inventory = self.api.inventory(self.node["uuid"])["inventory"]
        sizes = [d.get("size") for d in inventory.get("disks", [])]
        members = sizes.count(raidflow.MEMBER_MIB << 20)
        if members != len(self.members):
            raise Failed(f"inspection found {members} of the {len(self.members)} member "
                         f"disks (disk sizes {sizes})")
        return f"inventory: {members} member disks of {raidflow.MEMBER_MIB} MiB"

    def deploy_args(self) -> dict[str, Any]:
        return {"deploy_steps": [{"interface": "raid", "step": "apply_configuration",
                                  "args": {"raid_config": self.config}, "priority": 90}]}

    def deploy(self) -> None:
        uuid = self.node["uuid"]
        # install_bootloader's software-RAID path is chosen from target_raid_config
        self.api.request("PUT", f"/v1/nodes/{uuid}/states/raid", json=self.config)
        self.api.patch_node(uuid, **{"instance_info/image_rootfs_uuid": self.os.root_fs_uuid})
        super().deploy()
        stored = self.api.node(uuid).get("raid_config") or {}
        summary = raidflow.check_clean_result(stored, self.level)
        say(f"Ironic stored the RAID configuration the agent reported: {summary}")

    def boot_disk(self) -> None:
        assert self.bmc is not None
        super().boot_disk()
        boot = self.bmc.boots()
        started = time.monotonic()
        deadline = started + degraded.SYNC_TIMEOUT_S
        while not re.search(degraded.POWER_OFF, self.bmc.console(boot)):
            if time.monotonic() > deadline:
                raise Failed(f"boot {boot}: the test OS did not power off after its first sync")
            time.sleep(1)
        note = degraded.verify(self.bmc.console(boot), len(self.members), whole=True)
        while self.bmc.vm_pid() is not None:
            if time.monotonic() > deadline + 60:
                raise Failed("the test OS powered off but QEMU is still running")
            time.sleep(1)
        self.timings.add("first sync + power off", time.monotonic() - started, note)

    def degraded_boots(self) -> None:
        # Ironic leaves the node off (the test OS powered itself off); these
        # boots never write the member images, so Ironic's view stays true
        self.snapshot = True
        try:
            for index in range(len(self.members)):
                degraded.boot_without(self, index)
        finally:
            self.snapshot = False
        say(f"the OS booted with each of the {len(self.members)} members missing in turn")

    def undeploy(self) -> None:
        before = {os.path.basename(p): md_superblocks(p, raidflow.MEMBER_MIB)
                  for p in self.members}
        if not all(before.values()):
            raise Failed(f"md superblocks on the members before undeploy: {before}")
        super().undeploy()
        after = {os.path.basename(p): md_superblocks(p, raidflow.MEMBER_MIB)
                 for p in self.members}
        if any(after.values()):
            raise Failed(f"cleaning left md superblocks (MiB offsets per member): "
                         f"{json.dumps(after)}")
        phase, seconds, note = self.timings.phases[-1]
        self.timings.phases[-1] = (phase, seconds, f"{note}; md superblocks wiped from "
                                   f"{', '.join(sorted(before))}")

    def execute(self) -> None:
        banner(f"vm-deploy --ironic --raid {self.level}: amd64, {self.opts.firmware}, real "
               f"Ironic, {raidflow.MEMBERS[self.level]} member disks")
        self.build()
        self.serve()
        self.enroll()
        self.manage()
        self.inspect()
        self.provide()
        self.deploy()
        self.boot_disk()
        self.degraded_boots()
        self.undeploy()
        self.check_loopback_only()
        say(f"lifecycle complete: RAID-{self.level} applied in the deploy, booted whole and "
            f"without each member, wiped by cleaning ({MARKER} seen on every boot)")
