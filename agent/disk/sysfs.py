"""Tiny readers for sysfs, procfs and device-tree files.

Every hardware module reads through these so a test can point ``root`` at a
fixture tree instead of the live ``/``.  Readers never raise for a missing or
unreadable attribute: hardware is allowed to lack any one of them, and the
callers decide what an absent value means.
"""

from __future__ import annotations

import os
import re

_NATURAL = re.compile(r"(\d+)")


def path(root: str, *parts: str) -> str:
    """Join ``parts`` (absolute or not) under ``root``."""
    rel = os.path.join(*parts).lstrip("/")
    return os.path.join(root, rel)


def read_bytes(file: str) -> bytes | None:
    try:
        with open(file, "rb") as f:
            return f.read()
    except OSError:
        return None


def read_str(file: str) -> str | None:
    """The stripped text of ``file``; None when missing, unreadable or empty."""
    data = read_bytes(file)
    if data is None:
        return None
    # device-tree strings are NUL-terminated; sysfs pads some with spaces
    text = data.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return text or None


def read_int(file: str, base: int = 10) -> int | None:
    text = read_str(file)
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def listdir(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory), key=natural_key)
    except OSError:
        return []


def realpath(file: str) -> str | None:
    if not os.path.lexists(file):
        return None
    return os.path.realpath(file)


def link_name(file: str) -> str | None:
    """Basename of a symlink's target (e.g. a driver name), or None."""
    try:
        return os.path.basename(os.readlink(file))
    except OSError:
        return None


def natural_key(name: str) -> list[object]:
    """Sort ``sda, sdb, sdaa`` and ``nvme2n1, nvme10n1`` the way people expect."""
    return [int(p) if p.isdigit() else p for p in _NATURAL.split(name)]
