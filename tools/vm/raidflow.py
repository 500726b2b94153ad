"""``tools/vm-deploy --raid 1|5``: a software RAID made by the agent, deployed onto, booted.

    N virtio disks (2 for RAID-1, 3 for RAID-5), 2 GiB sparse files each
      boot the ramdisk
      -> clean step raid.create_configuration from the node's target_raid_config
         (one MAX root volume, controller software); clean_result must list it
      -> power cycle: the agent must assemble the array at start (its
         inventory's raid_arrays names it)
      -> deploy the test OS (whole-disk image) with no root device hints: the
         agent picks the root volume's md device
      -> image.install_bootloader as Ironic 39 calls it for software RAID
         (root_uuid = instance_info.image_rootfs_uuid, no ESP UUID)
      -> power off; boot the disks: marker, config drive hostname, the array
         whole; the test OS lets the first sync finish before it powers off
      -> for each member: boot without it (tools/vm/degraded.py)

The stand-in controller's lookup answer carries the RAID config in
``driver_internal_info`` (Ironic's filtered copy); the steps carry the node
with ``target_raid_config`` at the top, as Ironic sends it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from vm import degraded, flow, qemu
from vm.report import banner, say
from vm.runbase import Failed

# members per level; RAID-5 gets three so that it is not the two-disk special case
MEMBERS = {"1": 2, "5": 3}
MEMBER_MIB = 2 * 1024
# PCI slots of the members, fixed whatever else the machine has (degraded.py)
FIRST_SLOT = 0x10
VOLUME = "root"
STEP = {"step": "create_configuration", "interface": "raid", "args": {}}


def target_raid_config(level: str) -> dict[str, Any]:
    return {"logical_disks": [{"size_gb": "MAX", "raid_level": level, "controller": "software",
                               "volume_name": VOLUME, "is_root_volume": True}]}


def check_clean_result(result: Any, level: str) -> str:
    """What Ironic would store from create_configuration's clean_result; raises if unusable."""
    # Ironic's agent RAID interface fails the step on an empty result, and keeps
    # logical_disks as the node's raid_config
    logical = result.get("logical_disks") if isinstance(result, dict) else None
    if not isinstance(logical, list) or not logical:
        raise Failed("raid.create_configuration returned no logical_disks in clean_result "
                     f"(Ironic would fail the step): {json.dumps(result)[:400]}")
    root = [ld for ld in logical if isinstance(ld, dict) and ld.get("is_root_volume")]
    if len(root) != 1 or str(root[0].get("raid_level")) != level:
        raise Failed(f"clean_result does not describe one RAID-{level} root volume: "
                     f"{json.dumps(logical)[:400]}")
    return "; ".join(f"{ld.get('volume_name')}: RAID-{ld.get('raid_level')} "
                     f"{ld.get('size_gb')} GiB, {ld.get('controller')}" for ld in logical)


class MemberDisks:
    """What every RAID run does with its member images: report them, then discard them."""

    members: list[str]
    level: str

    def discard_disk(self) -> None:
        for path in self.members:
            if os.path.exists(path):
                os.unlink(path)

    def result(self, ok: bool, error: str | None) -> dict[str, Any]:
        base: dict[str, Any] = super().result(ok, error)  # type: ignore[misc]
        return base | {"raid": self.level, "members": len(self.members)}


class RaidRun(MemberDisks, flow.DeployRun):
    def __init__(self, opts: flow.Options, sup: Any) -> None:
        super().__init__(opts, sup)
        assert opts.raid in MEMBERS
        self.level: str = opts.raid
        self.members: list[str] = []
        self.absent: int | None = None        # the member left out of the next boot
        self.snapshot = False                 # degraded boots keep the images as deployed
        self.config = target_raid_config(self.level)

    # -- the machine -----------------------------------------------------------------
    def node_record(self) -> dict[str, Any]:
        node = super().node_record()
        node["driver_internal_info"]["target_raid_config"] = self.config
        return node

    def make_disks(self) -> None:
        self.members = [os.path.join(self.run_dir, f"member-{i}.img")
                        for i in range(MEMBERS[self.level])]
        for path in self.members:
            with open(path, "wb") as f:
                f.truncate(MEMBER_MIB << 20)

    def attach_disks(self, m: qemu.Machine, netboot: bool) -> None:
        # OVMF puts the entries for QEMU's bootindex devices first, its own
        # removable-media entries included: a disk boot under UEFI names none, so
        # that the NVRAM BootOrder install_bootloader wrote decides, as on hardware
        first = 2 if netboot else 1
        ordered = netboot or self.opts.firmware == "bios"
        m.disks = [qemu.Disk(path, slot=FIRST_SLOT + i, serial=f"raid-member-{i}",
                             bootindex=first + i if ordered else None, snapshot=self.snapshot)
                   for i, path in enumerate(self.members) if i != self.absent]

    def deploy_node(self) -> dict[str, Any]:
        node = super().deploy_node()
        node["target_raid_config"] = self.config
        # Ironic passes this to install_bootloader for software RAID
        node["instance_info"]["image_rootfs_uuid"] = self.os.root_fs_uuid
        return node

    # -- phases ----------------------------------------------------------------------
    def create_configuration(self) -> None:
        driver = self.driver(self.opts.deploy_timeout, "create_configuration")
        started = time.monotonic()
        result = driver.clean_step(self.deploy_node(), STEP)
        summary = check_clean_result(result, self.level)
        self.timings.add("create_configuration", time.monotonic() - started,
                         f"clean_result: {summary}")
        say(f"raid.create_configuration: {summary}")

    def reboot(self) -> None:
        """Power cycle as a BMC would; the agent must find the array when it starts again."""
        assert self.vm is not None
        self.client.run("standby.sync", {}, timeout=120)
        self.vm.stop()
        # Ironic forgets the agent's URL and token when it powers the node off
        self.controller.reset_agent(self.node_uuid)
        self.boot_ramdisk("reboot to API", "serial-ramdisk-2.log")
        started = time.monotonic()
        inventory = self.client.run("poll.get_hardware_info", {}, timeout=300)
        arrays = (inventory.get("command_result") or {}).get("raid_arrays")
        found = [a for a in arrays or [] if isinstance(a, dict)
                 and str(a.get("volume_name") or "").split(":")[-1] == VOLUME]
        if not found:
            raise Failed(f"after the reboot the agent's inventory lists no md array named "
                         f"{VOLUME!r} (raid_arrays: {json.dumps(arrays)[:300]}): the array "
                         "made in cleaning was not assembled at start")
        array = found[0]
        members = array.get("member_disks") or array.get("members") or []
        if len(members) != len(self.members):
            raise Failed(f"after the reboot {array.get('name')} has members {members}; the "
                         f"VM has {len(self.members)} disks")
        self.timings.add("arrays after reboot", time.monotonic() - started,
                         f"{array.get('name')} ({array.get('raid_level')}, {array.get('state')}) "
                         f"on {', '.join(map(str, members))}, from poll.get_hardware_info")

    def deploy(self) -> Any:
        report = super().deploy()
        if not report.bootloader.startswith("installed (software RAID)"):
            raise Failed(f"install_bootloader was not called for software RAID: "
                         f"{report.bootloader}")
        return report

    def after_disk_boot(self) -> None:
        degraded.check_arrays(self, whole=True)

    # -- the whole run ---------------------------------------------------------------
    def execute(self) -> None:
        banner(f"vm-deploy --raid {self.level}: amd64, {self.opts.firmware}, "
               f"{MEMBERS[self.level]} disks")
        self.build()
        self.serve()
        self.boot_ramdisk()
        self.create_configuration()
        self.reboot()
        self.deploy()
        self.boot_disk()
        say(f"the deployed OS booted from the RAID-{self.level} array and read hostname "
            f"{self.hostname} from its config drive")
        self.snapshot = True
        for index in range(len(self.members)):
            degraded.boot_without(self, index)
        say(f"the OS booted with each of the {len(self.members)} members missing in turn")
