"""A virtual BMC for the VM, as upstream Ironic CI builds them: OpenIPMI's ``ipmi_sim``.

    Ironic --ipmitool lanplus--> ipmi_sim 127.0.0.1:<udp>  --runs--> chassis_control.py
                                          127.0.0.1:<tcp> <--VM protocol-- QEMU ipmi-bmc-extern
                                                                            + isa-ipmi-bt

``ipmi_sim`` answers IPMI over LAN and runs tools/vm/chassis_control.py for
power and boot-device actions; that program starts QEMU detached
(``-daemonize``, pidfile) and steers it through its monitor socket.  QEMU
connects back to ``ipmi_sim``'s VM-protocol socket with its own
``ipmi-bmc-extern`` device, so the guest has a BMC of its own (KCS/BT), as a
real server does.  Everything binds 127.0.0.1; every file lives in the run's
``bmc/`` directory, and ``Bmc.close`` stops the daemonized QEMU through its
pidfile on every exit path.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from vm import procs, qemu

HERE = os.path.dirname(os.path.abspath(__file__))
CHASSIS_CONTROL = os.path.join(HERE, "chassis_control.py")
USER, PASSWORD = "admin", "password"
# ipmitool 1.8.19 spends ~10 s per call discovering cipher suites unless told; ipmi_sim
# offers 3 (SHA1/HMAC-SHA1-96/AES-CBC-128) and refuses 17
CIPHER_SUITE = "3"
BMC_ADDR = "0x20"
TOOLS = {"ipmi_sim": "openipmi", "ipmitool": "ipmitool"}


class BmcError(Exception):
    pass


class BmcMissing(BmcError):
    """ipmi_sim or ipmitool is not installed."""


def check_tools() -> None:
    missing = [f"{tool} ({package})" for tool, package in TOOLS.items() if not shutil.which(tool)]
    if missing:
        raise BmcMissing("not installed: " + ", ".join(missing)
                         + "; tools/dev-setup --ironic installs them")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lan_conf(name: str, lan_port: int, vm_port: int, chassis_control: str) -> str:
    """ipmi_sim's configuration (Debian ships no example): one BMC, one LAN channel."""
    auths = "none md2 md5 straight"
    return "\n".join([
        f'name "{name}"',
        f"set_working_mc {BMC_ADDR}",
        "  startlan 1",
        f"    addr 127.0.0.1 {lan_port}",
        "    priv_limit admin",
        *(f"    allowed_auths_{priv} {auths}" for priv in ("callback", "user", "operator",
                                                         "admin")),
        "    guid a123456789abcdefa123456789abcdef",
        "  endlan",
        # power and boot device through our program; startcmd knows power only
        f'  chassis_control "{chassis_control}"',
        # QEMU's ipmi-bmc-extern connects here
        f"  serial 15 127.0.0.1 {vm_port} codec VM",
        "  startnow false",
        f'  user 2 true "{USER}" "{PASSWORD}" admin 10 {auths}',
        ""])


# the command file: one BMC (IPMI 2.0, device id 0x23), a SEL, switched on
EMU = (f"mc_setbmc {BMC_ADDR}\n"
       f"mc_add {BMC_ADDR} 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
       f"sel_enable {BMC_ADDR} 1000 0x0a\n"
       f"mc_enable {BMC_ADDR}\n")


class Bmc:
    """ipmi_sim for one VM; ``qemu_args()`` are the devices that give the guest its BMC."""

    def __init__(self, run_dir: str, sup: procs.Supervisor) -> None:
        check_tools()
        self.dir = os.path.join(run_dir, "bmc")
        self.sup = sup
        self.lan_port = free_udp_port()
        from vm.services import free_port
        self.vm_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.settings = os.path.join(self.dir, "chassis.json")
        self.pidfile = os.path.join(self.dir, "qemu.pid")
        self.chassis_log = os.path.join(self.dir, "chassis.log")
        self.qemu_log = os.path.join(self.dir, "qemu.log")
        self.boots_file = os.path.join(self.dir, "boots")

    def qemu_args(self) -> list[str]:
        return ["-chardev", f"socket,id=ipmi0,host=127.0.0.1,port={self.vm_port},reconnect=2",
                "-device", "ipmi-bmc-extern,id=bmc0,chardev=ipmi0",
                "-device", "isa-ipmi-bt,bmc=bmc0"]

    def driver_info(self) -> dict[str, str]:
        """The ipmi hardware type's credentials for this BMC."""
        return {"ipmi_address": "127.0.0.1", "ipmi_port": str(self.lan_port),
                "ipmi_username": USER, "ipmi_password": PASSWORD,
                "ipmi_cipher_suite": CIPHER_SUITE}

    def serial_log(self, boot: int) -> str:
        return os.path.join(self.dir, f"serial-{boot}.log")

    def start(self, qemu_argv: list[str]) -> Bmc:
        """Write the configuration, start ipmi_sim, and check it answers ipmitool."""
        state = os.path.join(self.dir, "state")
        os.makedirs(state)          # ipmi_sim -s needs an existing directory
        wrapper = os.path.join(self.dir, "chassis-control")
        with open(wrapper, "w", encoding="utf-8") as f:
            # the system python3: chassis_control.py needs only the standard library,
            # and the venv's interpreter would add start-up time to every IPMI call
            f.write(f'#!/bin/sh\nexec /usr/bin/python3 "{CHASSIS_CONTROL}" "{self.settings}" '
                    '"$@"\n')
        os.chmod(wrapper, 0o755)
        with open(self.settings, "w", encoding="utf-8") as f:
            json.dump({"argv": qemu_argv, "serial_pattern": os.path.join(self.dir,
                                                                        "serial-%d.log"),
                       "pidfile": self.pidfile, "monitor": os.path.join(self.dir, "monitor.sock"),
                       "bootdev": os.path.join(self.dir, "bootdev"), "log": self.chassis_log,
                       "qemu_log": self.qemu_log, "boots": self.boots_file}, f, indent=1)
        conf = os.path.join(self.dir, "lan.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(lan_conf("vm-deploy", self.lan_port, self.vm_port, wrapper))
        emu = os.path.join(self.dir, "bmc.emu")
        with open(emu, "w", encoding="utf-8") as f:
            f.write(EMU)
        with open(os.path.join(self.dir, "owner"), "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
        # registered before ipmi_sim: the LIFO undo stops ipmi_sim first, then the VM
        self.sup.on_close("the BMC's QEMU (pidfile)", self.stop_vm)
        self.proc = self.sup.popen(["ipmi_sim", "-c", conf, "-f", emu, "-s", state, "-n"],
                                   name="ipmi_sim", log=os.path.join(self.dir, "ipmi_sim.log"),
                                   die_with_us=True)
        procs.wait_until(self._answers, 15, 0.2, "ipmi_sim answering ipmitool")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise BmcError(f"ipmi_sim exited ({self.proc.returncode}); see {self.dir}/"
                           "ipmi_sim.log")
        try:
            self.ipmitool("power", "status", timeout=3)
        except BmcError:
            return False
        return True

    def ipmitool(self, *args: str, timeout: float = 15) -> str:
        info = self.driver_info()
        argv = ["ipmitool", "-I", "lanplus", "-H", info["ipmi_address"], "-p",
                info["ipmi_port"], "-U", USER, "-P", PASSWORD, "-C", CIPHER_SUITE,
                "-R", "1", "-N", "1", *args]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BmcError(f"ipmitool {' '.join(args)}: no answer in {timeout:.0f}s") from None
        if done.returncode:
            raise BmcError(f"ipmitool {' '.join(args)}: exit {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()}")
        return done.stdout

    def self_check(self) -> str:
        """Before Ironic: every call Ironic will make answers, quickly, and means what it says."""
        seen = []
        for args, expect in ((("power", "status"), r"Chassis Power is off"),
                             (("chassis", "bootdev", "pxe"), r"Set Boot Device to pxe"),
                             (("chassis", "bootparam", "get", "5"), r"Force PXE"),
                             (("chassis", "bootdev", "disk"), r"Set Boot Device to disk"),
                             (("chassis", "bootparam", "get", "5"), r"Force Boot from default "
                                                                    r"Hard-Drive")):
            started = time.monotonic()
            out = self.ipmitool(*args)
            took = time.monotonic() - started
            if not re.search(expect, out):
                raise BmcError(f"ipmitool {' '.join(args)} answered {out.strip()!r}; expected "
                               f"{expect!r}")
            seen.append(took)
        return f"{len(seen)} ipmitool calls, slowest {max(seen):.2f}s"

    # -- the VM behind it ----------------------------------------------------------
    def boots(self) -> int:
        try:
            with open(self.boots_file, encoding="ascii") as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def vm_pid(self) -> int | None:
        return vm_pid(self.pidfile)

    def console(self, boot: int | None = None) -> str:
        boot = self.boots() if boot is None else boot
        try:
            with open(self.serial_log(boot), "rb") as f:
                return qemu.clean(f.read().decode("utf-8", errors="replace"))
        except (FileNotFoundError, IsADirectoryError):
            return ""

    def tail(self, lines: int = 40, boot: int | None = None) -> list[str]:
        return [line for line in self.console(boot).splitlines() if line.strip()][-lines:]

    def chassis_actions(self, lines: int = 20) -> list[str]:
        try:
            with open(self.chassis_log, encoding="utf-8") as f:
                return f.read().splitlines()[-lines:]
        except OSError:
            return []

    def stop_vm(self) -> None:
        stop_vm(self.pidfile)


def vm_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile, encoding="ascii") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_qemu(pid) else None


def _is_qemu(pid: int) -> bool:
    """Alive, not a zombie, and QEMU: a pidfile may outlive its process and the pid be reused."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return procs._alive(pid) and b"qemu-system" in f.read()
    except OSError:
        return False


def stop_vm(pidfile: str) -> None:
    """Power off for good: the daemonized QEMU is nobody's child, only the pidfile knows it."""
    pid = vm_pid(pidfile)
    if pid is not None:
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while procs._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not procs._alive(pid):
                break
    # a QEMU still starting when the run ended (its starter not yet daemonized)
    try:
        with open(pidfile + ".starting", encoding="ascii") as f:
            starter = int(f.read().strip())
        if _is_qemu(starter):
            os.kill(starter, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def stop_stale_vms(runs_dir: str) -> list[str]:
    """Stop daemonized VMs of earlier runs whose vm-deploy died without cleaning up (SIGKILL).

    A daemonized QEMU is nobody's child, so no parent-death signal reaches it;
    its run's ``bmc/owner`` file names the vm-deploy process that started it,
    and only VMs whose owner is gone are stopped (a concurrent run keeps its own).
    """
    stopped = []
    for pidfile in glob.glob(os.path.join(runs_dir, "*", "bmc", "qemu.pid")):
        bmc_dir = os.path.dirname(pidfile)
        try:
            with open(os.path.join(bmc_dir, "owner"), encoding="ascii") as f:
                owner = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if procs._alive(owner):
            continue
        pid = vm_pid(pidfile)
        if pid is not None:
            stop_vm(pidfile)
            stopped.append(f"QEMU pid {pid} of {os.path.dirname(bmc_dir)}")
    return stopped


def main() -> int:
    """``python -m vm.bmc``: start a BMC without a VM image and run the self-check."""
    with procs.Supervisor() as sup:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vm-bmc-") as tmp:
            bmc = Bmc(tmp, sup)
            bmc.start([qemu.binary("x86_64"), "-nodefaults", "-display", "none", "-M", "pc",
                       "-m", "64", *bmc.qemu_args()])
            print(bmc.self_check())
            sup.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
