"""Mounts that always go away again.

Bootloader work mounts tenant filesystems: the ESP read-only, or the root with
/dev, /proc, /sys and /run bound in for a chroot.  Whatever happens in between,
every mount is undone: unmounting is retried while the target is busy, then
detached lazily as a last resort so nothing stays visible to later steps, and
the result is checked against /proc/self/mountinfo rather than assumed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence

from agent import tools
from agent.errors import AgentError, CommandExecutionError, ToolError

LOG = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
UNMOUNT_ATTEMPTS = 5
UNMOUNT_DELAY = 0.1          # doubled after every busy attempt
MAX_STACKED = 16             # extra rounds for mounts that appear while unmounting
_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # the kernel escapes space, tab, newline and backslash as \ooo
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def mount_points(mountinfo: str = MOUNTINFO) -> list[str]:
    """Every mount point of this process, in the kernel's (mount) order."""
    points = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4:
                points.append(_unescape(fields[4]))
    return points


def mounted_under(path: str, mountinfo: str = MOUNTINFO) -> list[str]:
    """Mounts at or below ``path``, newest first: the order they must be unmounted in.

    A path mounted over itself appears once per mount.  Only a later mount can
    cover an earlier one, so newest-first also handles a mount stacked on top
    of a parent that has children of its own.
    """
    base = os.path.realpath(path)
    prefix = base.rstrip("/") + "/"
    found = [p for p in mount_points(mountinfo) if p == base or p.startswith(prefix)]
    return found[::-1]


def is_mounted(path: str) -> bool:
    return os.path.realpath(path) in mount_points()


def mount(source: str, target: str, *, fstype: str | None = None,
          options: Sequence[str] = (), bind: bool = False, what: str = "filesystem",
          timeout: float = 60.0) -> None:
    """Mount or raise CommandExecutionError naming what was being mounted."""
    args: list[str] = ["--bind"] if bind else []
    if fstype:
        args += ["-t", fstype]
    if options:
        args += ["-o", ",".join(options)]
    try:
        tools.run("mount", *args, source, target, timeout=timeout)
    except ToolError as exc:
        if is_mounted(target):
            # mount can fail after attaching (e.g. a timeout); do not leave it behind
            unmount(target)
        raise CommandExecutionError(f"could not mount the {what} {source} on {target}: "
                                    f"{exc.stderr or exc.details}") from exc
    LOG.debug("mounted %s %s on %s", what, source, target)


def unmount(target: str, *, attempts: int = UNMOUNT_ATTEMPTS,
            delay: float = UNMOUNT_DELAY) -> None:
    """Remove the newest mount on ``target``, retrying while it is busy, then lazily."""
    target = os.path.realpath(target)
    last_error = ""
    for attempt in range(1, attempts + 1):
        proc = tools.run("umount", target, check=False, timeout=60.0)
        if proc.returncode == 0:
            return
        last_error = tools.tail(proc.stderr or proc.stdout, 300)
        if not is_mounted(target):
            return   # someone else unmounted it meanwhile
        LOG.info("unmounting %s failed (attempt %d of %d): %s", target, attempt, attempts,
                 last_error)
        if attempt < attempts:
            time.sleep(delay * 2 ** (attempt - 1))   # a process may still be closing files
    proc = tools.run("umount", "--lazy", target, check=False, timeout=60.0)
    if proc.returncode != 0:
        raise CommandExecutionError(
            f"could not unmount {target} after {attempts} attempts ({last_error}); "
            f"lazy unmount failed too: {tools.tail(proc.stderr, 300)}")
    LOG.warning("%s stayed busy through %d unmount attempts (%s); detached it lazily",
                target, attempts, last_error)


def unmount_all(path: str) -> None:
    """Unmount everything at or below ``path``, newest first, until nothing is left."""
    budget = len(mounted_under(path)) + MAX_STACKED
    while budget > 0:
        points = mounted_under(path)
        if not points:
            return
        unmount(points[0])
        budget -= 1
    raise CommandExecutionError(f"mounts keep appearing below {path}: "
                                f"{', '.join(mounted_under(path))}")


@contextlib.contextmanager
def mounted(source: str, target: str | None = None, *, fstype: str | None = None,
            options: Sequence[str] = (), bind: bool = False,
            what: str = "filesystem") -> Iterator[str]:
    """Mount ``source`` (on a fresh temporary directory by default) and always unmount it.

    Everything mounted below the mount point in the meantime is unmounted too.
    When the body failed, an unmount failure is attached to that error as a
    note instead of replacing it.
    """
    made = tempfile.mkdtemp(prefix="deploy-agent-mnt-") if target is None else None
    path = made or target
    assert path is not None
    try:
        mount(source, path, fstype=fstype, options=options, bind=bind, what=what)
        try:
            yield path
        except BaseException as exc:
            try:
                unmount_all(path)
            except AgentError as cleanup:
                LOG.error("cleanup after a failure: %s", cleanup.details)
                exc.add_note(f"cleanup: {cleanup.details}")
            raise
        unmount_all(path)
    finally:
        if made is not None:
            _remove_dir(made)


def _remove_dir(path: str) -> None:
    if is_mounted(path):
        LOG.error("not removing %s: something is still mounted there", path)
        return
    try:
        os.rmdir(path)
    except OSError as exc:
        LOG.warning("could not remove temporary mount point %s: %s", path, exc)
