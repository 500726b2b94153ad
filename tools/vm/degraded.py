"""Boots of a deployed software RAID, whole and with one member missing.

The test OS prints one line per md array after its marker (testos-files/init),
the last one after the first sync when it had to wait for it:

    DEPLOY-AGENT-TEST-OS: booted kernel 6.1.0-57-cloud-amd64 from the deployed disk
        (root /dev/md127p3)
    DEPLOY-AGENT-TEST-OS: md md127 raid1 [2/1] [_U] vdb2[1]

A boot without member i leaves that disk out of QEMU.  The others keep their
PCI slots, so the UEFI boot entries install_bootloader wrote still name them,
and they are opened in snapshot mode: every such boot starts from the disks as
the deploy and the first boot left them, and none changes what the next sees.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any

from vm import qemu
from vm.flow import FAIL_ON_CONSOLE, MARKER, NOT_BOOTABLE
from vm.report import say
from vm.runbase import Failed

ROOT_LINE = re.compile(re.escape(MARKER) + r" booted kernel \S+ from the deployed disk "
                       r"\(root (\S*)\)")
MD_LINE = re.compile(re.escape(MARKER) + r" md (md\w+) (\S*) \[(\d+)/(\d+)\] \[([U_]+)\]"
                     r"(.*)$", re.MULTILINE)
POWER_OFF = re.escape(MARKER) + r" powering off"
# the test OS waits for a first sync before it powers off (testos-files/init)
SYNC_TIMEOUT_S = 900


@dataclasses.dataclass
class Array:
    name: str
    level: str
    slots: int              # members the array is made of
    active: int             # members present and in sync
    state: str              # mdstat's [UU_]
    members: str

    def describe(self) -> str:
        return f"{self.name} {self.level} [{self.slots}/{self.active}] [{self.state}]" + (
            f" on{self.members}" if self.members.strip() else "")


def arrays(console: str) -> dict[str, Array]:
    """The arrays the test OS reported, the last report of each."""
    found = {}
    for m in MD_LINE.finditer(console):
        found[m.group(1)] = Array(m.group(1), m.group(2), int(m.group(3)), int(m.group(4)),
                                  m.group(5), m.group(6).rstrip())
    return found


def root_array(console: str) -> tuple[str, str | None]:
    """(root device, the md array it is on or None) from the test OS's marker line."""
    m = ROOT_LINE.search(console)
    if m is None:
        return "?", None
    device = m.group(1)
    name = re.fullmatch(r"/dev/(md\d+)(p\d+)?", device)
    return device, name.group(1) if name else None


def verify(text: str, members: int, *, whole: bool) -> str:
    """What the test OS said: its root must be on an array, whole / short one member."""
    device, name = root_array(text)
    listed = arrays(text)
    if name is None or name not in listed:
        raise Failed(f"the test OS's root {device} is not on an md array it lists "
                     f"({', '.join(a.describe() for a in listed.values()) or 'no arrays'})")
    array = listed[name]
    if array.slots != members:
        raise Failed(f"{array.describe()}: the array should have {members} members")
    if whole and array.active != members:
        raise Failed(f"{array.describe()}: with every disk present the array is not whole")
    if not whole and array.active != members - 1:
        raise Failed(f"{array.describe()}: with one disk removed the array should run "
                     f"with {members - 1} members")
    others = [a.describe() for n, a in listed.items() if n != name]
    return f"root {device} on {array.describe()}" + (
        f"; also {', '.join(others)}" if others else "")


def check_arrays(run: Any, *, whole: bool) -> str:
    """Wait for the test OS to power off, then ``verify`` what it printed."""
    vm: qemu.VM = run.vm
    started = time.monotonic()
    vm.wait_for(POWER_OFF, SYNC_TIMEOUT_S if whole else 60, fail=FAIL_ON_CONSOLE)
    waited = time.monotonic() - started
    note = verify(vm.console(), len(run.members), whole=whole)
    if vm.wait_exit(30) is None:
        vm.stop()
    if whole:
        run.timings.add("first sync + power off", waited, note)
    return note


def uefi_entry(console: str) -> str:
    """Which NVRAM entry OVMF started; it must name a partition (an entry
    install_bootloader wrote for a member's ESP), not a whole device, which is
    the firmware's removable-media fallback."""
    entries = re.findall(r'BdsDxe: starting (Boot\w+) "([^"]*)" from (\S+)', console)
    if not entries:
        raise Failed("OVMF started no boot entry that the console shows")
    number, label, path = entries[-1]
    if not path.startswith("HD("):
        raise Failed(f"OVMF fell back to {number} {label!r} ({path}): no NVRAM entry for a "
                     "member that is left started the OS")
    return f", firmware started {number} {label!r}"


def boot_without(run: Any, index: int) -> None:
    """Boot the disks with member ``index`` removed; the OS must reach its marker."""
    run.absent = index
    try:
        run.vm = qemu.VM(run.sup, run._machine(False, f"serial-without-{index}.log"),
                         name=f"disk VM without member {index}",
                         log=os.path.join(run.run_dir, "qemu.log"))
        started = time.monotonic()
        run.vm.start()
        say(f"QEMU booting the disks without member {index} "
            f"({os.path.basename(run.members[index])}); serial console in "
            f"{run.vm.machine.serial_log}")
        run.vm.wait_for(re.escape(MARKER) + r" booted", run.opts.boot_timeout,
                        fail=FAIL_ON_CONSOLE + "|" + NOT_BOOTABLE)
        seconds = time.monotonic() - started
        note = check_arrays(run, whole=False)
        how = uefi_entry(run.vm.console()) if run.opts.firmware == "uefi" else ""
        run.timings.add(f"boot without member {index}", seconds, note + how)
        say(f"without member {index}: {note}")
    finally:
        run.absent = None
