"""The ``erase_pstore`` clean step: delete the kernel's persistent crash records.

pstore keeps kernel oops/panic logs in firmware-backed storage (UEFI
variables, ACPI ERST, a reserved RAM region) so they survive a reboot; the
next owner of the machine should not inherit them, and efi-pstore records use
NVRAM space the firmware needs.  Unlinking a file in the pstore filesystem
erases that record from its backend.

Where pstore is mounted is read from /proc/self/mounts.  IPA does nothing
when it is not mounted; here, when the kernel has pstore but nothing mounted
it, the step mounts it (on /sys/fs/pstore, the kernel's own mount point),
clears it and unmounts it again, because an operator running this step means
"the records are gone", not "the records are gone if someone mounted them".
A kernel without pstore has no records to show: the step succeeds and says so.

Step list (IPA's): a manual clean step only (priority 0, abortable).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import stat
from collections.abc import Iterator
from typing import Any

from agent.context import CommandContext
from agent.disk import mounts
from agent.errors import CleaningError

LOG = logging.getLogger(__name__)

MOUNTS = "/proc/self/mounts"
FILESYSTEMS = "/proc/filesystems"
MOUNT_POINT = "/sys/fs/pstore"
MAX_NAMES = 256          # names listed in the result; the count and bytes cover all
_ESCAPE = re.compile(r"\\([0-7]{3})")

ERASE_PSTORE_STEP: dict[str, Any] = {
    "step": "erase_pstore", "priority": 0, "interface": "deploy",
    "reboot_requested": False, "abortable": True}
CLEAN_STEPS: tuple[dict[str, Any], ...] = (ERASE_PSTORE_STEP,)


def _unescape(field: str) -> str:
    # the kernel writes space, tab, newline and backslash in mount points as \ooo
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def find_mount(mounts_path: str = MOUNTS) -> str | None:
    """Where pstore is mounted, or None; every mount of it shows the same records."""
    try:
        with open(mounts_path, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "pstore":
                    return _unescape(fields[1])
    except FileNotFoundError:
        return None
    return None


def kernel_has_pstore(filesystems_path: str = FILESYSTEMS) -> bool:
    try:
        with open(filesystems_path, encoding="utf-8") as f:
            return any(line.split()[-1:] == ["pstore"] for line in f)
    except FileNotFoundError:
        return False


def _mount_pstore(target: str | None) -> contextlib.AbstractContextManager[str]:
    """Mount the pstore filesystem for the duration; always unmounted again."""
    return mounts.mounted("pstore", target, fstype="pstore", what="pstore filesystem")


@dataclasses.dataclass
class _Removal:
    names: list[str] = dataclasses.field(default_factory=list)
    count: int = 0
    size: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)


def _entries(top: str) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``top`` (deepest first), staying on top's filesystem."""
    device = os.lstat(top).st_dev
    with os.scandir(top) as listing:
        children = sorted(listing, key=lambda e: e.name)
    for entry in children:
        info = entry.stat(follow_symlinks=False)
        if info.st_dev != device:
            continue   # something mounted below the pstore mount is not pstore's
        if stat.S_ISDIR(info.st_mode):
            yield from _entries(entry.path)
        yield entry.path, info


def _clear(path: str, ctx: CommandContext) -> _Removal:
    found = list(_entries(path))
    files = sum(1 for _, info in found if not stat.S_ISDIR(info.st_mode))
    ctx.progress.update(phase="erase_pstore", done=0, total=files, unit="files")
    done = _Removal()
    for full, info in found:
        ctx.check_cancelled()
        name = os.path.relpath(full, path)
        try:
            if stat.S_ISDIR(info.st_mode):
                os.rmdir(full)
                continue
            os.unlink(full)
        except OSError as exc:
            done.failures.append(f"{name}: {exc.strerror or exc}")
            continue
        done.count += 1
        done.size += info.st_size
        if len(done.names) < MAX_NAMES:
            done.names.append(name)
        ctx.progress.update(done=done.count, current=name)
    return done


def erase_pstore(node: Any, ports: Any, ctx: CommandContext | None = None, *,
                 mounts_path: str = MOUNTS, filesystems_path: str = FILESYSTEMS,
                 mount_point: str = MOUNT_POINT) -> dict[str, Any]:
    """Delete every pstore record; the result names what was removed."""
    ctx = ctx or CommandContext("local", "erase_pstore")
    where = find_mount(mounts_path)
    if where is None and not kernel_has_pstore(filesystems_path):
        LOG.info("erase_pstore: this kernel has no pstore filesystem; nothing to erase")
        return {"pstore": {"mount_point": None, "mounted_by_agent": False, "count": 0,
                           "bytes": 0, "removed": [],
                           "note": "this kernel has no pstore filesystem: no records "
                                   "are visible to erase"}}
    mounted_here = where is None
    with contextlib.ExitStack() as stack:
        if where is None:
            # the kernel's own mount point when it exists, else a fresh directory
            target = mount_point if os.path.isdir(mount_point) else None
            where = stack.enter_context(_mount_pstore(target))
            LOG.info("erase_pstore: pstore was not mounted; mounted it on %s", where)
        if not os.path.isdir(where):
            raise CleaningError(f"pstore is listed as mounted on {where}, which is not a "
                                "directory this agent can see")
        done = _clear(where, ctx)
    summary = {"mount_point": where, "mounted_by_agent": mounted_here, "count": done.count,
               "bytes": done.size, "removed": done.names}
    if done.count > len(done.names):
        summary["names_omitted"] = done.count - len(done.names)
    if done.failures:
        raise CleaningError(
            f"erase_pstore removed {done.count} record(s) ({done.size} bytes) from {where} "
            f"but could not remove {len(done.failures)}: {'; '.join(done.failures[:5])}"
            + (" ..." if len(done.failures) > 5 else ""))
    LOG.info("erase_pstore: removed %d record(s), %d bytes, from %s", done.count, done.size,
             where)
    return {"pstore": summary}
