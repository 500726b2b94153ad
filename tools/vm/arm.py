"""The arm64 smoke run: the arm64 ramdisk under ``qemu-system-aarch64 -M virt`` with UEFI.

The firmware is AAVMF (EDK2 for QEMU's virt machine, Debian's
qemu-efi-aarch64) on two pflash devices, the code read-only and a private
copy of the variable store.  QEMU hands the kernel, initramfs and command
line to it through fw_cfg, and the firmware starts the kernel's EFI stub, so
the boot goes through UEFI as on an arm64 server, without a network boot
(iPXE's arm64 EFI build is not packaged for QEMU).  The run proves that the
agent comes up on arm64, heartbeats to the stand-in controller and answers
``poll.get_hardware_info`` with this machine's NIC and disk.
"""

from __future__ import annotations

import os
from typing import Any

from vm import ppc, qemu
from vm.runbase import Failed


class SmokeRun(ppc.SmokeRun):
    arch = "arm64"
    title = "arm64 smoke (virt, UEFI)"
    guest = "arm64"
    console = "ttyAMA0"

    def machine(self, disk: str, append: str, net: qemu.UserNet) -> qemu.Machine:
        return qemu.Machine(
            arch="aarch64", firmware="uefi", memory_mib=self.opts.memory_mib,
            smp=self.opts.smp, accel="tcg", disk=disk, ovmf_vars=variable_store(self.run_dir),
            serial_log=os.path.join(self.run_dir, "serial-ramdisk.log"),
            kernel=self.ramdisk.kernel, initrd=self.ramdisk.initramfs, append=append, net=net)

    def started_line(self, machine: qemu.Machine) -> str:
        return (f"qemu-system-aarch64 -M virt (AAVMF) booting the ramdisk; console in "
                f"{machine.serial_log}")

    def check_inventory(self, inventory: dict[str, Any]) -> str:
        super().check_inventory(inventory)
        architecture = (inventory.get("cpu") or {}).get("architecture")
        if architecture != "aarch64":
            raise Failed(f"the inventory's CPU architecture is {architecture!r}, not aarch64")
        model = (inventory.get("cpu") or {}).get("model_name")
        if model != "ARM Cortex-A57":
            raise Failed(f"the inventory's CPU model is {model!r}; QEMU emulates a Cortex-A57")
        boot_mode = (inventory.get("boot") or {}).get("current_boot_mode")
        if boot_mode != "uefi":
            raise Failed(f"the inventory's boot mode is {boot_mode!r}; AAVMF boots UEFI")
        return f", boot mode {boot_mode}"


def variable_store(run_dir: str) -> str:
    """The run's own UEFI variable store: the firmware writes its boot entries there."""
    _, template = qemu.aavmf_files()
    path = os.path.join(run_dir, "AAVMF_VARS.fd")
    # sparse: Debian's 64 MiB template is zeros (the firmware formats it on first boot)
    with open(template, "rb") as src, open(path, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            if block.count(0) == len(block):
                dst.seek(len(block), os.SEEK_CUR)
            else:
                dst.write(block)
        dst.truncate()
    return path
