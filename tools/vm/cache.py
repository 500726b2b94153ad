"""Build artifacts cached under ``.cache/vm``, keyed by a digest of their inputs.

A build goes into a temporary sibling directory and is renamed into place
only when it finished, so an interrupted build never looks like a cached one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKIP_DIRS = {"__pycache__", ".git", ".cache", ".tox", "build"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".swp")


def cache_root() -> str:
    return os.environ.get("VM_DEPLOY_CACHE") or os.path.join(REPO, ".cache", "vm")


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        # length-prefixed so ("ab", "c") and ("a", "bc") differ
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def files_under(paths: Iterable[str], root: str = REPO) -> list[str]:
    """Every file below ``paths`` (relative to ``root``), sorted, minus caches."""
    found: list[str] = []
    for rel in paths:
        top = os.path.join(root, rel)
        if os.path.isfile(top):
            found.append(rel)
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames
                                 if d not in SKIP_DIRS and not d.endswith(".egg-info"))
            for name in filenames:
                if not name.endswith(SKIP_SUFFIXES):
                    found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def tree_digest(paths: Iterable[str], root: str = REPO, extra: Iterable[str] = ()) -> str:
    """Digest of the names, modes and contents of the files below ``paths``."""
    parts: list[str | bytes] = list(extra)
    for rel in files_under(paths, root):
        full = os.path.join(root, rel)
        parts.append(rel)
        parts.append(oct(os.stat(full).st_mode & 0o111))
        with open(full, "rb") as f:
            parts.append(hashlib.sha256(f.read()).hexdigest())
    return digest(*parts)


@contextlib.contextmanager
def building(final: str) -> Iterator[str]:
    """Yield a scratch directory that becomes ``final`` if the block succeeds."""
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", dir=parent)
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if os.path.isdir(final):          # a concurrent build won the race; theirs is as good
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        os.rename(scratch, final)


def prune(parent: str, prefix: str, keep: int, protect: str | None = None) -> None:
    """Drop all but the ``keep`` newest ``prefix*`` entries of ``parent``."""
    try:
        # dot entries are builds in progress (see ``building``)
        names = [n for n in os.listdir(parent)
                 if n.startswith(prefix) and not n.startswith(".")]
    except FileNotFoundError:
        return
    paths = sorted((os.path.join(parent, n) for n in names), key=os.path.getmtime,
                   reverse=True)
    for path in paths[keep:]:
        if path != protect:
            shutil.rmtree(path, ignore_errors=True)
