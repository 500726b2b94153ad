"""The ``inject_files`` deploy and service step: files put on the install disk's partitions.

Order of work, so a bad request touches nothing:

1. every entry of ``node.properties.inject_files`` + ``files`` is checked
   (shape, base64, modes, absolute paths without ``..``) and ``verify_ca``;
2. every explicit partition is resolved on the install disk from sysfs and
   ``blkid`` (no mount), and must hold a filesystem the agent can write;
3. URL contents are fetched (capped) into memory;
4. each partition involved is mounted read-only once (vfat: listed with
   mtools): entries without a partition find theirs (the first partition, by
   number, whose root holds the path's top directory, as IPA), and every path
   is walked as it will be written, so a symlink leading out of the partition
   or a directory in the way refuses the whole step before any write;
5. then, per partition, one read-write mount (vfat: mtools), the files in
   request order (so for one path the ``files`` argument wins over the node
   property), and an unmount on every way out.

Progress counts files; a cancel is honoured between files.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import requests

from agent.context import CommandContext
from agent.errors import Cancelled, DeploymentError, DeviceNotFound, ImageDownloadError
from agent.hardware.disks import Disk
from agent.imaging import httpget, inject_spec, inject_tree
from agent.imaging.inject_spec import ARGSINFO, STEP_NAME, FileEntry
from agent.imaging.inject_targets import MOUNTED_FS, WRITABLE_FS, Target, disk_targets, resolve
from agent.imaging.inject_vfat import VfatTree

LOG = logging.getLogger(__name__)

__all__ = ["ARGSINFO", "STEP_NAME", "run"]
STEP_PRIORITY_SETTING = "inject_files_priority"      # ipa-inject-files-priority, default 0
MAX_URL_BYTES = 64 << 20        # one fetched file, held in memory until written
URL_TIMEOUT = 60.0


def _note(ctx: CommandContext | None, phase: str, done: int, total: int, **extra: Any) -> None:
    if ctx is not None:
        ctx.progress.update(phase=phase, done=done, total=total, unit="files", **extra)


def _fetch(entries: Sequence[FileEntry], verify: bool | str,
           ctx: CommandContext | None) -> None:
    wanted = [e for e in entries if e.url is not None]
    if not wanted:
        return
    with requests.Session() as session:
        session.verify = verify
        for done, entry in enumerate(wanted):
            if ctx is not None:
                ctx.check_cancelled()
            _note(ctx, "fetching file contents", done, len(wanted))
            assert entry.url is not None
            try:
                entry.content = httpget.capped_get(entry.url, limit=MAX_URL_BYTES,
                                                   timeout=URL_TIMEOUT, session=session)
            except httpget.GetFailed as exc:
                raise ImageDownloadError(f"{entry.source}: {exc.reason}") from None


def _explicit(entries: Sequence[FileEntry], targets: Sequence[Target],
              disk: Disk) -> dict[int, Target]:
    """Target of every entry naming its partition, by id(entry)."""
    found: dict[int, Target] = {}
    problems = []
    for entry in entries:
        if entry.partition is None:
            continue
        try:
            target = resolve(entry.partition, targets, disk.name)
        except DeviceNotFound as exc:
            problems.append(f"{entry.source}: {exc.details}")
            continue
        if target.fstype not in WRITABLE_FS:
            problems.append(f"{entry.source}: {target.node} holds "
                            f"{target.fstype or 'no recognised filesystem'}; the agent writes "
                            f"{', '.join(WRITABLE_FS)}")
            continue
        found[id(entry)] = target
    if problems:
        raise DeviceNotFound("inject_files: " + "; ".join(problems))
    return found


def _probe(entries: Sequence[FileEntry], chosen: dict[int, Target],
           targets: Sequence[Target], ctx: CommandContext | None) -> None:
    """Find partitions for entries without one, and dry-run every path (read-only)."""
    wanted = {e.parts[0] for e in entries if e.partition is None}
    found: dict[str, Target] = {}
    extra = [t for t in chosen.values() if t not in targets]
    for target in [*targets, *dict.fromkeys(extra)]:
        explicit = target in chosen.values()
        if not explicit and (not wanted - set(found) or target.fstype not in WRITABLE_FS):
            continue
        if ctx is not None:
            ctx.check_cancelled()
        try:
            view = _open_view(target)
            with view as tree:
                for name in sorted(wanted - set(found)):
                    if tree.holds_dir(name):
                        LOG.info("inject_files: /%s found on %s", name, target.node)
                        found[name] = target
                for entry in entries:
                    if entry.partition is None and entry.parts[0] in found:
                        chosen.setdefault(id(entry), found[entry.parts[0]])
                    if chosen.get(id(entry)) == target:
                        tree.check(entry.parts, delete=entry.delete)
        except (inject_tree.Refused, inject_tree.StillMounted, Cancelled):
            raise
        except Exception as exc:   # an unmountable candidate is skipped, as IPA does
            if explicit:
                raise
            LOG.warning("inject_files: skipping %s while looking for directories: %s",
                        target.node, exc)
    missing = sorted(wanted - set(found))
    if missing:
        seen = "; ".join(t.describe() for t in targets) or "no partitions"
        raise DeviceNotFound("inject_files: no partition of the install disk holds the "
                             f"director{'y' if len(missing) == 1 else 'ies'} "
                             f"{', '.join('/' + m for m in missing)}; name the partition "
                             f"with 'partition'; seen: {seen}")


class _MountedView:
    """A mounted filesystem seen through inject_tree (read-only probe or writes)."""

    def __init__(self, target: Target, readonly: bool) -> None:
        self.target = target
        self.readonly = readonly
        self.root = ""
        self._cm = inject_tree.mounted(target.node, target.fstype or "", readonly=readonly)

    def __enter__(self) -> _MountedView:
        self.root = self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc)

    def holds_dir(self, name: str) -> bool:
        return inject_tree.holds_dir(self.root, name)

    def check(self, parts: Sequence[str], *, delete: bool) -> None:
        inject_tree.check(self.root, parts, delete=delete)

    def apply(self, entry: FileEntry) -> inject_tree.Outcome:
        return inject_tree.apply(self.root, entry.parts,
                                 data=None if entry.delete else entry.content or b"",
                                 mode=entry.mode, dirmode=entry.dirmode, owner=entry.owner,
                                 group=entry.group)


class _VfatView:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.tree: VfatTree | None = None

    def __enter__(self) -> VfatTree:
        self.tree = VfatTree.read(self.target.node)
        return self.tree

    def __exit__(self, *exc: Any) -> None:
        return None


def _open_view(target: Target, readonly: bool = True) -> Any:
    if target.mtools:
        return _VfatView(target)
    if target.fstype not in MOUNTED_FS:
        raise DeploymentError(f"{target.node} holds {target.fstype}, which the agent "
                              "cannot write")
    return _MountedView(target, readonly)


def _record(entry: FileEntry, outcome: inject_tree.Outcome, vfat: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"path": entry.path, "source": entry.source,
                            "action": outcome.action}
    if outcome.action == "written":
        item["bytes"] = outcome.size
        if outcome.mode is not None:
            item["mode"] = f"{outcome.mode:04o}"
        if outcome.created_dirs:
            item["created_dirs"] = outcome.created_dirs
        if outcome.replaced_symlink:
            item["replaced_symlink"] = True
        ignored = [k for k in ("owner", "group", "dirmode") if getattr(entry, k) is not None]
        if vfat and entry.mode is not None and outcome.mode is None:
            ignored.append("mode")
        if vfat and ignored:
            item["ignored_on_vfat"] = ignored
    return item


def _write(target: Target, group: Sequence[FileEntry], ctx: CommandContext | None,
           done: int, total: int) -> dict[str, Any]:
    files: list[dict[str, Any]] = []
    try:
        with _open_view(target, readonly=False) as tree:
            _note(ctx, "injecting files", done, total, partition=target.node)
            for entry in group:
                if ctx is not None:
                    ctx.check_cancelled()
                if target.mtools:
                    outcome = tree.apply(entry.parts, data=None if entry.delete
                                         else entry.content or b"", mode=entry.mode)
                else:
                    outcome = tree.apply(entry)
                files.append(_record(entry, outcome, target.mtools))
                _note(ctx, "injecting files", done + len(files), total, partition=target.node)
    except OSError as exc:
        raise DeploymentError(f"inject_files: writing {group[len(files)].where} on "
                              f"{target.node} failed: {exc.strerror or exc}; "
                              f"{done + len(files)} earlier file(s) were done") from exc
    return {"partition": target.node, "number": target.number, "fstype": target.fstype,
            "method": "mtools" if target.mtools else "mount", "files": files}


def run(disk: Disk, node: Mapping[str, Any], ports: Any = None, *,
        files: Any = None, verify_ca: Any = True,
        ctx: CommandContext | None = None) -> dict[str, Any]:
    """Inject ``node.properties.inject_files`` + ``files`` onto ``disk`` (the install disk)."""
    entries = inject_spec.validate(node, files, ports)
    verify = inject_spec.verify_setting(verify_ca)
    if not entries:
        return {"result": "inject_files: no files to inject", "partitions": []}
    targets = disk_targets(disk)
    chosen = _explicit(entries, targets, disk)
    _fetch(entries, verify, ctx)
    _note(ctx, "checking partitions", 0, len(entries))
    _probe(entries, chosen, targets, ctx)
    groups: dict[str, list[FileEntry]] = collections.OrderedDict()
    by_node: dict[str, Target] = {}
    for entry in entries:
        target = chosen[id(entry)]
        groups.setdefault(target.node, []).append(entry)
        by_node[target.node] = target
    results = []
    done = 0
    for name, group in groups.items():
        results.append(_write(by_node[name], group, ctx, done, len(entries)))
        done += len(group)
    _note(ctx, "injecting files", done, len(entries))
    counts = collections.Counter(f["action"] for r in results for f in r["files"])
    summary = (f"wrote {counts['written']} file(s), deleted {counts['deleted']}"
               + (f" ({counts['absent']} already absent)" if counts["absent"] else "")
               + f" on {len(results)} partition(s)")
    LOG.info("inject_files: %s", summary)
    return {"result": f"inject_files: {summary}", "partitions": results}


inject_files = run
