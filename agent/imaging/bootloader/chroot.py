"""The tenant image's root filesystem, prepared for running its own programs.

Only the opt-in GRUB path uses this (CVE-2026-43003): what runs here is the
image's code, executed as root.  The root is mounted by device, /dev, /proc,
/sys and /run are bound in, and on the way out everything at or below the
root is unmounted, including anything the image's programs mounted.

Paths inside the image are resolved the way the image sees them: an absolute
symlink in the image points into the image, never at the ramdisk's files, and
no bind mount is ever placed through a symlink.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

from agent import tools
from agent.disk import mounts
from agent.errors import CommandExecutionError, InvalidImage, ToolError

LOG = logging.getLogger(__name__)

BIND_DIRS = ("dev", "proc", "sys", "run")
PROGRAM_DIRS = ("usr/sbin", "usr/bin", "sbin", "bin")
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
              "GRUB_DISABLE_OS_PROBER": "true"}
MAX_SYMLINKS = 40
RUN_TIMEOUT = 600.0


def resolve(root: str, path: str) -> str:
    """Host path of ``path`` as seen from inside ``root`` (symlinks stay inside the root)."""
    pending = collections.deque(path.split("/"))
    parts: list[str] = []
    hops = 0
    while pending:
        name = pending.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            if parts:
                parts.pop()
            continue
        candidate = os.path.join(root, *parts, name)
        if os.path.islink(candidate):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise InvalidImage(f"too many levels of symbolic links resolving {path} in "
                                   "the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                parts = []
            pending.extendleft(reversed(target.split("/")))
            continue
        parts.append(name)
    return os.path.join(root, *parts)


def find_program(root: str, names: Sequence[str]) -> str | None:
    """In-image path of the first of ``names`` found in the usual program directories."""
    for name in names:
        for directory in PROGRAM_DIRS:
            image_path = f"/{directory}/{name}"
            host = resolve(root, image_path)
            if os.path.isfile(host) and os.access(host, os.X_OK):
                return image_path
    return None


def exists(root: str, path: str) -> bool:
    """A non-empty regular file at ``path`` inside the image."""
    host = resolve(root, path)
    return os.path.isfile(host) and os.path.getsize(host) > 0


def run(root: str, program: str, *args: str, timeout: float = RUN_TIMEOUT) -> str:
    """Run the image's ``program`` inside ``root``; return its output for the log."""
    LOG.info("running the image's %s %s", program, " ".join(args))
    try:
        proc = tools.run("chroot", root, program, *args, env=CHROOT_ENV, timeout=timeout)
    except ToolError as exc:
        raise CommandExecutionError(
            f"the image's {program} {' '.join(args)} failed"
            + (f" with exit code {exc.returncode}" if exc.returncode is not None else "")
            + f": {exc.stderr or exc.details}") from exc
    output = tools.tail((proc.stdout or "") + (proc.stderr or ""), 2000)
    if output:
        LOG.info("%s: %s", program, output)
    return output


@contextlib.contextmanager
def image_root(device: str) -> Iterator[str]:
    """Mount the root filesystem on ``device`` with /dev, /proc, /sys and /run bound in."""
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(mounts.mounted(device, what="root filesystem"))
        for name in BIND_DIRS:
            stack.enter_context(mounts.mounted(f"/{name}", _bind_target(root, name),
                                               bind=True, what=f"/{name} bind mount"))
        yield root


def _bind_target(root: str, name: str) -> str:
    path = os.path.join(root, name)
    if os.path.islink(path):
        raise InvalidImage(f"the image's /{name} is a symbolic link to {os.readlink(path)!r}; "
                           f"refusing to mount the ramdisk's /{name} through it")
    if not os.path.exists(path):
        os.mkdir(path, 0o755)
    elif not os.path.isdir(path):
        raise InvalidImage(f"the image's /{name} is not a directory; cannot mount /{name} "
                           "on it for the chroot")
    return path
