"""The one place that names and runs external programs.

``TOOLS`` is the single list of system tools the agent may call.  The ramdisk
elements install exactly these packages, the startup check reports what is
missing, and ``run`` is the only helper that executes them: it gives every
call a timeout, captures output, and turns a failure into a ``ToolError`` that
names the tool, its exit code and the tail of its stderr.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from agent.errors import ToolError, ToolMissing

LOG = logging.getLogger(__name__)

STDERR_TAIL = 2000
DEFAULT_TIMEOUT = 300.0


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    package: str                       # Debian package that ships it
    purpose: str
    required: bool = True              # a deploy cannot work without it
    arches: tuple[str, ...] = ("amd64", "ppc64el", "arm64")


TOOLS: dict[str, Tool] = {t.name: t for t in [
    Tool("sgdisk", "gdisk", "software RAID partitions: members, BIOS boot, teardown"),
    Tool("sfdisk", "fdisk", "MBR edits and partition-image layouts"),
    Tool("qemu-img", "qemu-utils", "convert qcow2/vmdk/vhd(x)/vdi images"),
    Tool("blkid", "util-linux", "filesystem labels and UUIDs"),
    Tool("wipefs", "util-linux", "erase filesystem and RAID signatures"),
    Tool("blkdiscard", "util-linux", "discard-based erase and zeroing", required=False),
    Tool("lsblk", "util-linux", "block device listing for logs"),
    Tool("mount", "mount", "mount ESP and config drive for checks"),
    Tool("umount", "mount", "unmount after checks"),
    Tool("mkfs.vfat", "dosfstools", "ESP and vfat config drive"),
    Tool("mkfs.ext4", "e2fsprogs", "ephemeral partitions"),
    Tool("mkswap", "util-linux", "swap partitions"),
    Tool("mkfs.ext3", "e2fsprogs", "ephemeral partitions formatted ext3", required=False),
    Tool("mkfs.ext2", "e2fsprogs", "ephemeral partitions formatted ext2", required=False),
    Tool("mkfs.xfs", "xfsprogs", "ephemeral partitions formatted xfs", required=False),
    Tool("mcopy", "mtools", "fill vfat config drives without mounting"),
    # UEFI machines: amd64 and arm64 (POWER boots through PReP and Open Firmware)
    Tool("efibootmgr", "efibootmgr", "UEFI NVRAM boot entries", required=False,
         arches=("amd64", "arm64")),
    Tool("hdparm", "hdparm", "ATA secure erase", required=False, arches=("amd64", "arm64")),
    Tool("nvme", "nvme-cli", "NVMe format erase", required=False),
    Tool("ipmitool", "ipmitool", "BMC address in the inventory", required=False),
    Tool("modprobe", "kmod", "load the IPMI drivers so the BMC can be found", required=False),
    # POWER has no SMBIOS (Debian builds no dmidecode there); the device tree serves.
    # arm64 servers' UEFI publishes SMBIOS like amd64's firmware
    Tool("dmidecode", "dmidecode", "DMI tables for the dmi-decode and extra-hardware "
         "inspection collectors", required=False, arches=("amd64", "arm64")),
    Tool("dmesg", "util-linux", "kernel log for log collection", required=False),
    Tool("ip", "iproute2", "static addressing from virtual media, VLAN sub-interfaces, "
         "addresses and routes for logs", required=False),
    Tool("journalctl", "systemd", "journal for log collection", required=False),
    Tool("df", "coreutils", "filesystem usage for log collection", required=False),
    Tool("ps", "procps", "process list for log collection", required=False),
    Tool("xz", "xz-utils", "multi-threaded xz image decompression", required=False),
    Tool("systemctl", "systemd", "orderly power off and reboot", required=False),
    Tool("hwclock", "util-linux-extra", "save the clock before power off", required=False),
    Tool("grub-install", "grub2-common", "ppc64le PReP grub", required=False,
         arches=("ppc64el",)),
    Tool("chroot", "coreutils", "run the image's own grub (opt-in BIOS/PReP boot loader)",
         required=False),
    # only machines given a software RAID config use these; the agent runs without them
    Tool("mdadm", "mdadm", "software RAID: create, stop and assemble md arrays",
         required=False),
    Tool("grub-mkimage", "grub-common", "BIOS boot code on every member of a software RAID",
         required=False, arches=("amd64",)),
    # burn-in steps only (burnin_cpu/memory, burnin_disk/network).  Never Debian's packages
    # in the ramdisk (fio links ceph, glusterfs, RDMA and ICU; stress-ng drags EGL/mesa and
    # IPSec_MB): tools/build-burnin-tools builds a slim fio (1.6 MiB, +0.37 MB compressed)
    # and bundles stress-ng (10.6 MiB, +3 MB) for the arches listed here
    Tool("stress-ng", "stress-ng", "CPU and memory burn-in", required=False),
    Tool("fio", "fio", "disk and network burn-in", required=False),
    Tool("useradd", "passwd", "create the rescue user (rescue.finalize_rescue)", required=False),
    Tool("usermod", "passwd", "set the rescue user's password hash", required=False),
]}


def which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


DEBIAN_ARCH = {"x86_64": "amd64", "ppc64le": "ppc64el", "aarch64": "arm64"}


def tools_for_this_machine(machine: str | None = None) -> list[str]:
    """The tools that make sense here: efibootmgr on ppc64le is not 'missing'."""
    import platform
    arch = DEBIAN_ARCH.get(machine or platform.machine())
    return [n for n, t in TOOLS.items() if arch is None or arch in t.arches]


def check_tools(names: Sequence[str] | None = None) -> dict[str, str | None]:
    """Map every tool (for this architecture) to its path, or None when missing."""
    return {n: which(n) for n in (names or tools_for_this_machine())}


def missing_report(found: Mapping[str, str | None]) -> list[str]:
    """Operator-facing lines for missing tools, required ones first."""
    lines = []
    for name, path in sorted(found.items(), key=lambda kv: not TOOLS[kv[0]].required
                             if kv[0] in TOOLS else True):
        if path:
            continue
        tool = TOOLS.get(name)
        if tool is None:
            lines.append(f"{name}: missing")
            continue
        level = "REQUIRED" if tool.required else "optional"
        lines.append(f"{name} ({level}, Debian package {tool.package}): missing; "
                     f"needed for {tool.purpose}")
    return lines


def _resolve(tool: str) -> str:
    path = which(tool)
    if path is None:
        info = TOOLS.get(tool)
        pkg = f" (install Debian package {info.package})" if info else ""
        raise ToolMissing(f"{tool} is not installed{pkg}; it is needed for "
                          f"{info.purpose if info else 'this operation'}")
    return path


def tail(text: str | bytes, limit: int = STDERR_TAIL) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.strip()
    return text[-limit:]


def run(tool: str, *args: Any, timeout: float | None = DEFAULT_TIMEOUT,
        input: bytes | str | None = None, check: bool = True,
        env: Mapping[str, str] | None = None, ok_codes: Sequence[int] = (0,),
        text: bool = True, preexec_fn: Any = None) -> subprocess.CompletedProcess:
    """Run ``tool args...``; raise ToolError on failure or timeout."""
    argv = [_resolve(tool), *[str(a) for a in args]]
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    if isinstance(input, str) and not text:
        input = input.encode()
    LOG.debug("running %s", " ".join(argv))
    try:
        proc = subprocess.run(argv, input=input, capture_output=True, timeout=timeout,
                              env=full_env, text=text, errors="replace" if text else None,
                              preexec_fn=preexec_fn)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{tool} timed out after {timeout:g}s: {tail(exc.stderr or '')}",
                        tool=tool, stderr=tail(exc.stderr or "")) from exc
    except OSError as exc:
        raise ToolError(f"{tool} could not be started: {exc}", tool=tool) from exc
    if check and proc.returncode not in ok_codes:
        err = tail(proc.stderr) or tail(proc.stdout)
        raise ToolError(f"{tool} {' '.join(argv[1:])[:200]} failed with exit code "
                        f"{proc.returncode}: {err}", tool=tool,
                        returncode=proc.returncode, stderr=err)
    return proc


def popen(tool: str, *args: Any, env: Mapping[str, str] | None = None,
          preexec_fn: Any = None, **kwargs: Any) -> subprocess.Popen:
    """Start ``tool`` for streaming use; the caller owns waiting and errors."""
    argv = [_resolve(tool), *[str(a) for a in args]]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    LOG.debug("starting %s", " ".join(argv))
    return subprocess.Popen(argv, env=full_env, preexec_fn=preexec_fn, **kwargs)
