"""Where a ramdisk boot's time goes, read from one boot's serial console.

Before the kernel there is only the wall clock (the first HTTP request of
iPXE's script, the first console line of the kernel); from the kernel on,
every line that matters carries the kernel's own timestamp, which neither
console polling nor host load blurs.  PID 1 logs to the kernel ring
(``systemd.log_target=kmsg``, added by vm-deploy) so that the agent unit's
start has a timestamp too; without it that phase merges into the next.
"""

from __future__ import annotations

import re

# (the phase that ends at this console line, the line's pattern); in boot order
KERNEL_MARKS = (
    ("kernel start", r"Trying to unpack rootfs image as initramfs"),
    ("initramfs unpack", r"Freeing initrd memory"),
    ("kernel init", r"Run /init as init process"),
    ("systemd start (generators, unit files)", r"Queued start job for default target"),
    ("units before the agent", r"systemd\[1\]: Start(?:ing|ed) deploy-agent\.service"),
    ("agent start-up (Python)", r"deploy-agent [\w.+-]+ starting"),
    ("network and lookup", r"lookup found node"),
    ("TLS and API", r"API listening on"),
    ("first heartbeat", r"heartbeating to"),
)
STAMP = r"^[^\n]*?\[\s*(\d+\.\d+)\][^\n]*?"
# asked of the guest so that PID 1's unit messages carry kernel timestamps
TRACE_ARGS = ("systemd.log_target=kmsg", "printk.devkmsg=on")


def kernel_marks(console: str) -> list[tuple[str, float]]:
    """(phase, kernel seconds at its end) for every mark found, in boot order."""
    found = []
    for phase, pattern in KERNEL_MARKS:
        match = re.search(STAMP + pattern, console, re.MULTILINE)
        if match:
            found.append((phase, float(match.group(1))))
    return found


def phases(console: str, wall: dict[str, float]) -> list[tuple[str, float]]:
    """(phase, seconds) from QEMU's start to the first heartbeat's log line.

    ``wall``: seconds since QEMU started at which the iPXE script was fetched
    and the kernel's first line showed (either may be missing: direct kernel
    boots have no iPXE).
    """
    out: list[tuple[str, float]] = []
    last = 0.0
    for name, key in (("firmware and iPXE to its script", "iPXE script"),
                      ("kernel and initramfs download", "kernel")):
        if key in wall:
            out.append((name, round(wall[key] - last, 1)))
            last = wall[key]
    previous = 0.0
    for phase, stamp in kernel_marks(console):
        if stamp >= previous:
            out.append((phase, round(stamp - previous, 1)))
            previous = stamp
    return out


def describe(items: list[tuple[str, float]]) -> str:
    return ", ".join(f"{name} {seconds:.1f}s" for name, seconds in items)
