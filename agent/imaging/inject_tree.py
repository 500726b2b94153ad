"""Files written into a mounted tenant filesystem without ever leaving it.

Paths are walked one component at a time from a descriptor of the mount
root (openat-style), so the kernel never resolves the image's symlinks for
us: a relative symlink in a directory component is followed only while it
stays inside the root (/lib -> usr/lib works), an absolute one is refused
(it means the image's root, which need not be this partition), and so is one
that climbs above the root.  The file itself is never followed: a symlink at
the path is replaced (write) or removed (delete), not its target.  Writes go
to a temporary file in the same directory, are synced, then renamed over the
path, so a crash leaves the old file or the new one.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator, Sequence

from agent.disk import mounts
from agent.errors import AgentError, DeploymentError

LOG = logging.getLogger(__name__)

MAX_SYMLINKS = 40
DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(DeploymentError):
    """The path cannot be written without leaving the partition or replacing a directory."""


class StillMounted(DeploymentError):
    """A partition could not be unmounted after the work on it."""


@dataclasses.dataclass
class Outcome:
    action: str                   # written | deleted | absent
    size: int = 0
    mode: int | None = None
    created_dirs: list[str] = dataclasses.field(default_factory=list)
    replaced_symlink: bool = False


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


def walk(root_fd: int, dirs: Sequence[str], *, create: bool, dirmode: int | None = None,
         created: list[str] | None = None) -> int | None:
    """A new descriptor of the directory ``dirs`` names below the root.

    None when ``create`` is false and a component does not exist yet (it
    would be created).  Refused when the walk would leave the root or meets a
    non-directory.
    """
    stack = [os.dup(root_fd)]
    names: list[str] = []                 # the walked path, for messages
    pending = collections.deque(dirs)
    hops = 0
    try:
        while pending:
            name = pending.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) == 1:
                    raise Refused("a symbolic link in the image leads above the partition's "
                                  f"root at /{'/'.join(names)}")
                os.close(stack.pop())
                names.pop()
                continue
            here = "/" + "/".join([*names, name])
            try:
                st = os.stat(name, dir_fd=stack[-1], follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    return None
                os.mkdir(name, 0o700, dir_fd=stack[-1])
                fd = os.open(name, _DIR_FLAGS, dir_fd=stack[-1])
                # explicit chmod: the umask must not decide what the tenant gets
                os.fchmod(fd, DEFAULT_DIR_MODE if dirmode is None else dirmode)
                stack.append(fd)
                names.append(name)
                if created is not None:
                    created.append(here)
                continue
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=stack[-1])
                if target.startswith("/"):
                    raise Refused(f"{here} in the image is a symbolic link to an absolute "
                                  "path; refusing to follow it out of the partition")
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise Refused(f"too many symbolic links resolving {here} in the image")
                pending.extendleft(reversed(target.split("/")))
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise Refused(f"{here} in the image is not a directory")
            stack.append(os.open(name, _DIR_FLAGS, dir_fd=stack[-1]))
            names.append(name)
        return stack.pop()
    finally:
        _close(stack)


def check(root: str, parts: Sequence[str], *, delete: bool) -> None:
    """Dry run: raise Refused now for what writing ``parts`` would refuse later."""
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        parent = walk(root_fd, parts[:-1], create=False)
        if parent is None:
            return
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        finally:
            os.close(parent)
        if stat.S_ISDIR(st.st_mode):
            raise Refused(f"/{'/'.join(parts)} is a directory in the image; "
                          f"only files can be {'deleted' if delete else 'written'}")
    finally:
        os.close(root_fd)


def holds_dir(root: str, name: str) -> bool:
    """True when top-level ``name`` is a directory inside the root (symlinks kept inside)."""
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        fd = walk(root_fd, [name], create=False)
    except (Refused, OSError):
        return False
    finally:
        os.close(root_fd)
    if fd is None:
        return False
    os.close(fd)
    return True


def _write_at(parent: int, name: str, data: bytes, mode: int | None, owner: int | None,
              group: int | None, outcome: Outcome) -> None:
    try:
        old: os.stat_result | None = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    if old is not None and stat.S_ISDIR(old.st_mode):
        raise Refused("the path is a directory in the image; only files can be written")
    regular = old is not None and stat.S_ISREG(old.st_mode)
    outcome.replaced_symlink = old is not None and stat.S_ISLNK(old.st_mode)
    tmp = f".inject-{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=parent)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            # an overwrite keeps the old file's owner and mode unless told otherwise
            uid = owner if owner not in (None, -1) else (old.st_uid if regular and old else -1)
            gid = group if group not in (None, -1) else (old.st_gid if regular and old else -1)
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            final = mode if mode is not None else (
                stat.S_IMODE(old.st_mode) if regular and old else DEFAULT_FILE_MODE)
            os.fchmod(fd, final)     # after chown, which clears set-id bits
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=parent)
        raise
    os.fsync(parent)
    outcome.size, outcome.mode = len(data), final


def apply(root: str, parts: Sequence[str], *, data: bytes | None, mode: int | None = None,
          dirmode: int | None = None, owner: int | None = None,
          group: int | None = None) -> Outcome:
    """Write ``data`` at ``parts`` below ``root`` (delete when ``data`` is None)."""
    root_fd = os.open(root, _DIR_FLAGS)
    outcome = Outcome(action="deleted" if data is None else "written")
    try:
        if data is None:
            parent = walk(root_fd, parts[:-1], create=False)
            if parent is None:
                outcome.action = "absent"
                return outcome
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise Refused("the path is a directory in the image; only files can "
                                  "be deleted")
                os.unlink(parts[-1], dir_fd=parent)
                os.fsync(parent)
            except FileNotFoundError:
                outcome.action = "absent"
            finally:
                os.close(parent)
            return outcome
        parent = walk(root_fd, parts[:-1], create=True, dirmode=dirmode,
                      created=outcome.created_dirs)
        assert parent is not None
        try:
            _write_at(parent, parts[-1], data, mode, owner, group, outcome)
        finally:
            os.close(parent)
        return outcome
    finally:
        os.close(root_fd)


@contextlib.contextmanager
def mounted(node: str, fstype: str, *, readonly: bool) -> Iterator[str]:
    """``node`` mounted on a fresh directory; unmounted on every way out, or an error saying not."""
    path = tempfile.mkdtemp(prefix="deploy-agent-inject-")
    options = ["ro" if readonly else "rw", "nodev", "nosuid", "noexec"]
    if fstype == "xfs":
        options.append("nouuid")      # a copy of the same image may be mounted elsewhere
    try:
        mounts.mount(node, path, fstype=fstype, options=options, what=f"{fstype} partition")
    except BaseException:
        _rmdir(path)
        raise
    failure: BaseException | None = None
    try:
        yield path
    except BaseException as exc:
        failure = exc
        raise
    finally:
        _unmount(node, path, failure)


def _unmount(node: str, path: str, failure: BaseException | None) -> None:
    problem = ""
    try:
        mounts.unmount_all(path)
    except AgentError as exc:
        problem = exc.details
    if not problem and mounts.mounted_under(path):
        problem = "it is still listed in /proc/self/mountinfo"
    if not problem:
        _rmdir(path)
        return
    earlier = ""
    if isinstance(failure, AgentError):
        earlier = f"; the step had already failed: {failure.details}"
    elif failure is not None:
        earlier = f"; the step had already failed: {type(failure).__name__}"
    raise StillMounted(f"{node} is still mounted at {path}: unmounting failed "
                          f"({problem}){earlier}") from failure


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            LOG.warning("could not remove the temporary mount point %s: %s", path, exc)
