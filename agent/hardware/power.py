"""Flush, then power off or reboot the machine (only inside a deploy ramdisk)."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time

from agent import tools
from agent.config import Config, is_ramdisk
from agent.errors import AgentError, PowerActionRefused
from agent.hardware import clock

LOG = logging.getLogger(__name__)
BLKFLSBUF = 0x1261
FALLBACK_AFTER_S = 30.0


def refuse_unless_ramdisk(config: Config, action: str, mounts_path: str = "/proc/mounts"
                          ) -> None:
    """Power actions act only inside a deploy ramdisk, never on a laptop or CI host."""
    if is_ramdisk(config, mounts_path):
        return
    if config.ramdisk == "false":
        where = {"flag": "--ramdisk false", "env": "DEPLOY_AGENT_RAMDISK=false",
                 "file": "the config file"}.get(config.sources.get("ramdisk", ""),
                                                "configuration")
        why = f"ramdisk is set to false by {where}"
    else:
        why = "the root filesystem is not an initramfs and the ramdisk setting is not true"
    raise PowerActionRefused(
        f"{action} refused: deploy-agent is not running from a deploy ramdisk ({why}); "
        "this machine was left running and nothing was touched")


def block_devices(sys_block: str = "/sys/block") -> list[str]:
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return []
    return [f"/dev/{n}" for n in names if not n.startswith(("ram", "zram"))]


def flush_all(sys_block: str = "/sys/block") -> list[str]:
    """sync, drop the page cache and BLKFLSBUF every disk; return the flushed ones."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        LOG.debug("cannot drop caches: %s", exc)
    flushed = []
    for dev in block_devices(sys_block):
        try:
            fd = os.open(dev, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue  # absent node or no permission: nothing cached by us there
        try:
            fcntl.ioctl(fd, BLKFLSBUF, 0)
            flushed.append(dev)
        except OSError as exc:
            LOG.debug("BLKFLSBUF %s: %s", dev, exc)
        finally:
            os.close(fd)
    return flushed


def _sysrq(letter: str) -> None:
    try:
        with open("/proc/sys/kernel/sysrq", "w") as f:
            f.write("1\n")
        with open("/proc/sysrq-trigger", "w") as f:
            f.write(letter)
    except OSError as exc:
        LOG.error("sysrq %s failed: %s", letter, exc)


def shutdown(reboot: bool, config: Config) -> None:
    """Sync the clock, flush everything, ask the init system, and fall back to sysrq if ignored."""
    # NTP (ipa-ntp-server) and the RTC first: bounded, and never stops the power-off
    clock.before_power_off(config)
    flush_all()
    action = "reboot" if reboot else "poweroff"
    letter = "b" if reboot else "o"

    def fallback() -> None:
        time.sleep(FALLBACK_AFTER_S)
        LOG.warning("%s was ignored for %.0fs; forcing it through sysrq", action,
                    FALLBACK_AFTER_S)
        os.sync()
        _sysrq(letter)

    threading.Thread(target=fallback, daemon=True).start()
    try:
        tools.run("systemctl", action, "--no-block", timeout=20)
    except AgentError as exc:
        LOG.error("systemctl %s failed (%s); using sysrq", action, exc.details)
        _sysrq(letter)
