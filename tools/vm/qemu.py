"""QEMU command lines, the accelerator probe, and a running VM watched through its serial log.

Networking is always ``-netdev user,restrict=on``: the guest reaches the
host only through explicit ``guestfwd`` addresses (one ``socat`` per
connection, started by QEMU) and the host reaches the guest only through
``hostfwd`` ports bound to 127.0.0.1, so nothing listens beyond loopback and
the guest can reach nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from typing import Any

from vm import procs

IPXE_ROM = "/usr/lib/ipxe/qemu/efi-virtio.rom"
OVMF_CODE = ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = ("/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd")
# aarch64 UEFI for -M virt (Debian's qemu-efi-aarch64): both 64 MiB pflash images
AAVMF_CODE = "/usr/share/AAVMF/AAVMF_CODE.fd"
AAVMF_VARS = "/usr/share/AAVMF/AAVMF_VARS.fd"
# SeaBIOS copies its console (and so iPXE's) to the port named here: 0x3f8, little endian
SERCON_PORT = b"\xf8\x03"
BINARIES = {"x86_64": ("qemu-system-x86_64", "qemu-system-x86"),
            "ppc64": ("qemu-system-ppc64", "qemu-system-ppc"),
            "aarch64": ("qemu-system-aarch64", "qemu-system-arm")}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")
GUEST_HOST_IP = "10.0.2.15"     # what slirp's DHCP hands the first (only) client


class QemuError(Exception):
    pass


class QemuMissing(QemuError):
    """QEMU, a firmware or a helper is not installed."""


class VMExited(QemuError):
    """QEMU ended while something was still expected on its console."""


class ConsoleFailure(QemuError):
    """The console showed a line that means the boot went wrong."""


@dataclasses.dataclass
class UserNet:
    mac: str
    # (host port, guest port): 127.0.0.1 only
    hostfwd: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    # (guest ip, guest port, host port on 127.0.0.1)
    guestfwd: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)
    tftp_dir: str | None = None
    bootfile: str | None = None
    ipxe_rom: bool = False          # False: no option ROM at all (ppc64, disk boots)
    bootindex: int | None = None


@dataclasses.dataclass
class Disk:
    """One more virtio disk (``Machine.disks``), e.g. a member of a software RAID."""

    path: str
    # PCI slot, pinned so that leaving a disk out moves no other one: UEFI boot
    # entries name the device path, and a degraded boot must still match them
    slot: int | None = None
    serial: str | None = None
    bootindex: int | None = None
    snapshot: bool = False          # writes go to a temporary overlay, dropped at exit


@dataclasses.dataclass
class Machine:
    arch: str = "x86_64"
    firmware: str = "bios"          # bios | uefi (x86_64); slof (ppc64); uefi (aarch64)
    memory_mib: int = 1024
    smp: int = 1
    accel: str = "tcg"
    disk: str | None = None
    disk_bootindex: int | None = None
    disks: list[Disk] = dataclasses.field(default_factory=list)    # after ``disk``
    net: UserNet | None = None
    serial_log: str = "serial.log"
    ovmf_vars: str | None = None    # the run's own copy of the UEFI variable store
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    sercon_file: str | None = None


def _esc(value: str) -> str:
    """QEMU option values escape a comma by doubling it."""
    return value.replace(",", ",,")


def binary(arch: str) -> str:
    name, package = BINARIES[arch]
    path = shutil.which(name)
    if not path:
        raise QemuMissing(f"{name} is not installed (apt-get install {package})")
    return path


def ovmf_files() -> tuple[str, str]:
    for code, vars_ in zip(OVMF_CODE, OVMF_VARS, strict=True):
        if os.path.exists(code) and os.path.exists(vars_):
            return code, vars_
    raise QemuMissing("OVMF is not installed (apt-get install ovmf)")


def aavmf_files() -> tuple[str, str]:
    if os.path.exists(AAVMF_CODE) and os.path.exists(AAVMF_VARS):
        return AAVMF_CODE, AAVMF_VARS
    raise QemuMissing("AAVMF is not installed (apt-get install qemu-efi-aarch64)")


def guestfwd_helper(host_port: int) -> list[str]:
    """The command QEMU runs for each guest connection to a guestfwd address."""
    socat = shutil.which("socat")
    if not socat:
        raise QemuMissing("socat is not installed (apt-get install socat); QEMU's guestfwd "
                          "runs one socat per guest connection")
    return [socat, "-", f"TCP:127.0.0.1:{host_port}"]


def netdev(net: UserNet) -> str:
    parts = ["user", "id=n0", "restrict=on"]
    if net.tftp_dir:
        parts.append(f"tftp={_esc(net.tftp_dir)}")
    if net.bootfile:
        parts.append(f"bootfile={_esc(net.bootfile)}")
    for host_port, guest_port in net.hostfwd:
        parts.append(f"hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}")
    for ip, port, host_port in net.guestfwd:
        # the cmd: form serves every connection (the tcp: form only the first)
        helper = " ".join(guestfwd_helper(host_port))
        parts.append(f"guestfwd=tcp:{ip}:{port}-cmd:{_esc(helper)}")
    return ",".join(parts)


def argv(m: Machine) -> list[str]:
    cmd = [binary(m.arch), "-name", "vm-deploy", "-nodefaults", "-display", "none",
           "-m", str(m.memory_mib), "-smp", str(m.smp), "-no-user-config"]
    if m.accel == "kvm":
        cmd += ["-accel", "kvm", "-cpu", "host"]
    else:
        cmd += ["-accel", "tcg" + (",thread=multi" if m.smp > 1 else "")]
    if m.arch == "x86_64":
        cmd += ["-M", "q35" if m.firmware == "uefi" else "pc", "-vga", "none",
                "-serial", f"file:{m.serial_log}"]
        if m.firmware == "uefi":
            code, _ = ovmf_files()
            if not m.ovmf_vars:
                raise QemuError("UEFI needs a private copy of the OVMF variable store")
            cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={_esc(code)}",
                    "-drive", f"if=pflash,format=raw,file={_esc(m.ovmf_vars)}"]
        elif m.sercon_file:
            cmd += ["-fw_cfg", f"name=etc/sercon-port,file={_esc(m.sercon_file)}"]
    elif m.arch == "aarch64":
        # PL011 is the console (ttyAMA0).  cortex-a57, not max: TCG emulating max's
        # pointer authentication and SVE took the ramdisk 135 s to the API, against 55 s
        cmd += ["-M", "virt", "-serial", f"file:{m.serial_log}"]
        if m.accel != "kvm":
            cmd += ["-cpu", "cortex-a57"]
        code, _ = aavmf_files()
        if not m.ovmf_vars:
            raise QemuError("UEFI needs a private copy of the AAVMF variable store")
        cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={_esc(code)}",
                "-drive", f"if=pflash,format=raw,file={_esc(m.ovmf_vars)}"]
    else:
        cmd += ["-M", "pseries", "-chardev", f"file,id=con0,path={_esc(m.serial_log)}",
                "-device", "spapr-vty,chardev=con0"]
    drives = ([Disk(m.disk, bootindex=m.disk_bootindex)] if m.disk else []) + list(m.disks)
    for number, d in enumerate(drives):
        device = f"virtio-blk-pci,drive=d{number}"
        if d.slot is not None:
            device += f",addr=0x{d.slot:x}"
        if d.serial:
            device += f",serial={_esc(d.serial)}"
        if d.bootindex is not None:
            device += f",bootindex={d.bootindex}"
        drive = f"file={_esc(d.path)},if=none,id=d{number},format=raw,cache=unsafe"
        cmd += ["-drive", drive + (",snapshot=on" if d.snapshot else ""), "-device", device]
    if m.net:
        nic = f"virtio-net-pci,netdev=n0,mac={m.net.mac}"
        if m.net.ipxe_rom:
            # QEMU's default ROM for this NIC *is* Debian's ipxe-qemu file (found through
            # its firmware path); naming it in romfile= made SeaBIOS 1.16.2 skip the
            # ROM's boot entry on these machines, so it is checked here and left unnamed
            if not os.path.exists(IPXE_ROM):
                raise QemuMissing(f"{IPXE_ROM} is missing (apt-get install ipxe-qemu)")
        else:
            nic += ",romfile="
        if m.net.bootindex is not None:
            nic += f",bootindex={m.net.bootindex}"
        cmd += ["-netdev", netdev(m.net), "-device", nic]
    if m.kernel:
        cmd += ["-kernel", m.kernel]
        if m.initrd:
            cmd += ["-initrd", m.initrd]
        if m.append:
            cmd += ["-append", m.append]
    return cmd


# -- accelerator ---------------------------------------------------------------------

# A boot sector that leaves QEMU through isa-debug-exit (exit code (1 << 1) | 1 = 3):
# mov al, 1; out 0xf4, al; hlt; jmp $-1
PROBE_SECTOR = b"\xb0\x01\xe6\xf4\xf4\xeb\xfd".ljust(510, b"\0") + b"\x55\xaa"
PROBE_EXIT = 3


def probe_accel(accel: str, timeout: float = 10.0) -> tuple[bool, float, str]:
    """(ran, seconds, why): can QEMU run guest code with ``accel``, and how fast?"""
    with tempfile.TemporaryDirectory(prefix="vm-accel-") as tmp:
        disk = os.path.join(tmp, "probe.img")
        with open(disk, "wb") as f:
            f.write(PROBE_SECTOR)
        cmd = [binary("x86_64"), "-nodefaults", "-display", "none", "-no-user-config",
               "-M", "pc", "-m", "16", "-accel", accel,
               "-drive", f"file={_esc(disk)},format=raw,if=ide",
               "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            procs.stop_process(proc, grace=1)
            return False, timeout, f"{accel}: the probe guest did not finish in {timeout:.0f}s"
        elapsed = time.monotonic() - started
    if proc.returncode == PROBE_EXIT:
        return True, elapsed, f"{accel}: probe guest ran in {elapsed:.2f}s"
    text = out.decode(errors="replace").strip().splitlines()
    return False, elapsed, f"{accel}: exit {proc.returncode}: {text[-1] if text else 'no output'}"


def choose_accel(wanted: str, cache_dir: str) -> tuple[str, str]:
    """``kvm`` when /dev/kvm runs guests *fast*, else ``tcg``; the verdict is cached per boot.

    Nested KVM without hardware help can open, run, and still be far slower
    than TCG (on the machines this was written on, the probe takes 5 s under
    KVM and 0.2 s under TCG, and a kernel does not boot in minutes), so the
    probe is timed against TCG rather than trusted for merely working.
    """
    if wanted in ("kvm", "tcg"):
        return wanted, "requested"
    if platform.machine() != "x86_64" or not os.path.exists("/dev/kvm"):
        return "tcg", "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is not accessible"
    key = f"{_boot_id()} {os.path.getmtime(binary('x86_64'))}"
    path = os.path.join(cache_dir, "accel.json")
    try:
        with open(path, encoding="utf-8") as f:
            seen = json.load(f)
        if seen.get("key") == key:
            return seen["accel"], seen["why"] + " (cached probe)"
    except (OSError, ValueError, KeyError):
        pass
    _, tcg_s, _ = probe_accel("tcg")
    works, kvm_s, why = probe_accel("kvm", timeout=max(2.0, 5 * tcg_s))
    if works and kvm_s <= max(1.0, 3 * tcg_s):
        verdict = ("kvm", why)
    else:
        verdict = ("tcg", f"{why}; TCG ran it in {tcg_s:.2f}s" if works else why)
    os.makedirs(cache_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"key": key, "accel": verdict[0], "why": verdict[1]}, f)
    return verdict


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


# -- a running VM --------------------------------------------------------------------

def clean(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "")


class VM:
    def __init__(self, supervisor: procs.Supervisor, machine: Machine, *, name: str,
                 log: str) -> None:
        self.sup = supervisor
        self.machine = machine
        self.name = name
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def start(self) -> VM:
        cmd = argv(self.machine)
        with open(self.log, "a", encoding="utf-8") as f:
            f.write("$ " + " ".join(cmd) + "\n")
        open(self.machine.serial_log, "wb").close()
        # registered first so that it runs after QEMU is stopped (the undo stack is LIFO)
        self.sup.on_close(f"guestfwd helpers of {self.name}", self.reap_helpers)
        self.proc = self.sup.popen(cmd, name=f"qemu ({self.name})", log=self.log,
                                   die_with_us=True)
        self.started = time.monotonic()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def console(self) -> str:
        try:
            with open(self.machine.serial_log, "rb") as f:
                return clean(f.read().decode("utf-8", errors="replace"))
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> list[str]:
        return [line for line in self.console().splitlines() if line.strip()][-lines:]

    def qemu_errors(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-10:]).strip()
        except OSError:
            return ""

    def wait_for(self, pattern: str, timeout: float, *, fail: str | None = None,
                 interval: float = 0.5) -> re.Match:
        """The first match of ``pattern`` on the console; QemuError if ``fail`` matches first."""
        wanted = re.compile(pattern, re.MULTILINE)
        bad = re.compile(fail, re.MULTILINE) if fail else None
        deadline = time.monotonic() + timeout
        while True:
            text = self.console()
            if found := wanted.search(text):
                return found
            if bad and (oops := bad.search(text)):
                raise ConsoleFailure(f"{self.name}: the console shows {oops.group(0)!r}")
            if not self.running:
                code = self.proc.returncode if self.proc else None
                raise VMExited(f"{self.name}: QEMU exited ({code}) before {pattern!r} showed "
                               f"on the console; {self.qemu_errors()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {pattern!r} not on the console after "
                                   f"{timeout:.0f}s")
            time.sleep(interval)

    def wait_exit(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> Any:
        code = procs.stop_process(self.proc, grace=3) if self.proc is not None else None
        self.reap_helpers()
        return code

    def reap_helpers(self) -> list[int]:
        """Stop guestfwd socats still running for this VM (QEMU detaches them)."""
        if not self.machine.net or (self.proc and self.proc.poll() is None):
            return []
        stopped = []
        for _, _, host_port in self.machine.net.guestfwd:
            stopped += procs.stop_matching(guestfwd_helper(host_port))
        return stopped
