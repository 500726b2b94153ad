"""The BMC's hands: what OpenIPMI's ``ipmi_sim`` runs for every chassis command.

``ipmi_sim`` (configured by tools/vm/bmc.py) runs this program through a
small wrapper with the run's settings file first:

    chassis_control.py SETTINGS get power [boot]   prints power:0|1, boot:DEV
    chassis_control.py SETTINGS set power 1|0      start QEMU / pull the plug
    chassis_control.py SETTINGS set reset 1        warm reset (QEMU monitor)
    chassis_control.py SETTINGS set boot DEV       pxe, default (disk), cdrom, bios, none
    chassis_control.py SETTINGS set shutdown 1     ACPI power button

``ipmi_sim`` waits for it, and ipmitool retransmits a request that takes
too long (so the action would run twice): every call returns in well under a
second.  QEMU therefore starts fully detached (``-daemonize``, its own
session, no pipe of ours), found again through its pidfile; a zombie QEMU
(exited, not yet reaped by whoever adopted it) counts as off.  ``ipmi_sim``
keeps no boot device of its own beyond this process, so it lives in a file
and becomes QEMU's ``-boot order`` at power on and ``boot_set`` before a
reset.  Standard library only: it runs under the system python3.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

# ipmi_sim's boot device names -> QEMU's -boot order (network falls back to disk,
# as a real machine's boot list does)
ORDER = {"pxe": "nc", "default": "c", "cdrom": "dc", "bios": "c", "none": "c"}
STOP_WAIT_S = 0.5
START_WAIT_S = 0.8


def load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return dict(json.load(f))


def note(cfg: dict[str, Any], message: str) -> None:
    """One line per action in the run's chassis log: the harness reads it after a failure."""
    with open(cfg["log"], "a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} "
                f"{message}\n")


def alive(pid: int) -> bool:
    """Running and not a zombie (an exited QEMU its adopter has not reaped yet is off)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            is_qemu = b"qemu-system" in f.read()
    except (OSError, IndexError):
        return False
    return state != b"Z" and is_qemu


def qemu_pid(cfg: dict[str, Any]) -> int | None:
    """The running QEMU of this run (pidfile), else a starter that has not daemonized yet."""
    for path in (cfg["pidfile"], cfg["pidfile"] + ".starting"):
        try:
            with open(path, encoding="ascii") as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if alive(pid):
            return pid
    return None


def boot_device(cfg: dict[str, Any]) -> str:
    try:
        with open(cfg["bootdev"], encoding="ascii") as f:
            dev = f.read().strip()
    except OSError:
        dev = ""
    return dev if dev in ORDER else "default"


def monitor(cfg: dict[str, Any], *commands: str) -> str:
    """Send human-monitor commands to the running QEMU; return what it answered."""
    out = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        s.connect(cfg["monitor"])
        for command in ("", *commands):
            if command:
                s.sendall(command.encode() + b"\n")
            # every answer ends with the next prompt
            while not out.endswith(b"(qemu) "):
                chunk = s.recv(4096)
                if not chunk:
                    return out.decode(errors="replace")
                out += chunk
            out += b"\n"
    return out.decode(errors="replace")


def power_on(cfg: dict[str, Any]) -> None:
    if qemu_pid(cfg) is not None:
        note(cfg, "power on: already on")
        return
    boots = 0
    with contextlib.suppress(OSError, ValueError), open(cfg["boots"], encoding="ascii") as f:
        boots = int(f.read().strip() or 0)
    boots += 1
    with open(cfg["boots"], "w", encoding="ascii") as f:
        f.write(f"{boots}\n")
    serial = cfg["serial_pattern"] % boots
    order = ORDER[boot_device(cfg)]
    for stale in (cfg["pidfile"], cfg["monitor"]):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    argv = [*cfg["argv"], "-boot", f"order={order}", "-serial", f"file:{serial}",
            "-monitor", f"unix:{cfg['monitor']},server=on,wait=off",
            "-pidfile", cfg["pidfile"], "-daemonize"]
    with open(cfg["qemu_log"], "ab") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        # no pipe of ipmi_sim's may reach QEMU, or ipmi_sim would wait for it to close
        starter = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   close_fds=True, start_new_session=True)
    with open(cfg["pidfile"] + ".starting", "w", encoding="ascii") as f:
        f.write(f"{starter.pid}\n")
    try:
        # the starter exits once the daemon is set up; usually a fraction of a second
        code = starter.wait(START_WAIT_S)
    except subprocess.TimeoutExpired:
        note(cfg, f"power on: boot {boots} order={order}, QEMU still starting (pid "
                  f"{starter.pid})")
        return
    note(cfg, f"power on: boot {boots} order={order} serial {os.path.basename(serial)} "
              f"(starter exit {code})")


def power_off(cfg: dict[str, Any]) -> None:
    pid = qemu_pid(cfg)
    if pid is None:
        note(cfg, "power off: already off")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
    note(cfg, f"power off: QEMU pid {pid} stopped")


def reset(cfg: dict[str, Any]) -> None:
    if qemu_pid(cfg) is None:
        note(cfg, "reset while off: powering on")
        power_on(cfg)
        return
    order = ORDER[boot_device(cfg)]
    monitor(cfg, f"boot_set {order}", "system_reset")
    note(cfg, f"reset: order={order}")


def set_boot(cfg: dict[str, Any], device: str) -> None:
    with open(cfg["bootdev"], "w", encoding="ascii") as f:
        f.write(device + "\n")
    if qemu_pid(cfg) is not None and device in ORDER:
        # the next warm reset (a reboot from inside the guest too) follows the new device
        with contextlib.suppress(OSError):
            monitor(cfg, f"boot_set {ORDER[device]}")
    note(cfg, f"boot device: {device}")


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: chassis_control.py SETTINGS get PARM... | set PARM VALUE",
              file=sys.stderr)
        return 2
    cfg = load(argv[0])
    op, rest = argv[1], argv[2:]
    lock = open(cfg["pidfile"] + ".lock", "w")  # noqa: SIM115 - held until exit
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        if op == "get":
            for parm in rest:
                if parm == "power":
                    print(f"power:{1 if qemu_pid(cfg) is not None else 0}")
                elif parm == "boot":
                    print(f"boot:{boot_device(cfg)}")
            return 0
        if op != "set":
            return 2
        for parm, value in zip(rest[::2], rest[1::2], strict=False):
            if parm == "power":
                (power_on if value == "1" else power_off)(cfg)
            elif parm == "reset" and value == "1":
                reset(cfg)
            elif parm == "boot":
                set_boot(cfg, value)
            elif parm == "shutdown" and value == "1":
                if qemu_pid(cfg) is not None:
                    monitor(cfg, "system_powerdown")
                note(cfg, "shutdown: ACPI power button")
        return 0
    except Exception as exc:  # noqa: BLE001 - ipmi_sim only sees the exit code
        note(cfg, f"{op} {' '.join(rest)} FAILED: {type(exc).__name__}: {exc}")
        return 1
    finally:
        lock.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
