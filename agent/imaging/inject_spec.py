"""The inject_files request: every entry checked, content in hand, before a disk is touched.

The list is ``node.properties.inject_files`` followed by the step's ``files``
argument, applied in that order, so for one path the argument wins (IPA).  An
entry is ``{path, partition, content, deleted, mode, dirmode, owner, group}``:
``content`` is base64, or a URL (it contains ``://``) that may name the node
and its ports as ``{node[uuid]}`` or ``{ports[0][address]}``; ``deleted: true``
removes the file, and so does an explicit ``content: null``.  Problems are
collected for the whole list and reported at once, naming entries by their
position; no message quotes a value, because content and URLs carry secrets.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import string
from collections.abc import Mapping, Sequence
from typing import Any

from agent.config import parse_bool
from agent.errors import InvalidCommandParamsError

# the step as listed; here, not in inject_files, so listing it loads no fetch or mount code
STEP_NAME = "inject_files"
ARGSINFO = {
    "files": {"description": "files to inject: a list of {path, partition, content (base64 "
                             "or URL), deleted, mode, dirmode, owner, group}; applied after "
                             "node.properties.inject_files", "required": False},
    "verify_ca": {"description": "verify TLS when fetching URL contents: a boolean or the "
                                 "path of a CA bundle", "required": False},
}
FIELDS = ("path", "partition", "content", "deleted", "mode", "dirmode", "owner", "group")
HINT_KEYS = ("number", "name", "uuid", "partuuid", "label", "partlabel", "fstype")
MAX_PATH = 4096
MAX_NAME = 255
MAX_ID = 255
MAX_MODE = 0o7777
MAX_ID_NUMBER = 2 ** 32 - 2         # (uid_t)-1 means "leave unchanged"
MISSING = object()


@dataclasses.dataclass
class FileEntry:
    source: str                           # "files[2]" or "node.properties.inject_files[0]"
    path: str                             # normalised: "/etc/sysctl.d/my.conf"
    parts: tuple[str, ...]                # ("etc", "sysctl.d", "my.conf")
    partition: int | str | dict[str, Any] | None
    delete: bool
    content: bytes | None = None          # decoded base64 (or fetched URL body later)
    url: str | None = None                # formatted URL still to fetch
    mode: int | None = None
    dirmode: int | None = None
    owner: int | None = None
    group: int | None = None

    @property
    def where(self) -> str:
        return f"{self.source} ({self.path})"


def _as_list(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        # `baremetal node set --property` stores what it cannot parse as a string
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidCommandParamsError(f"{name} must be a list of file objects; it is a "
                                            "string that is not JSON") from None
    if not isinstance(value, list):
        raise InvalidCommandParamsError(f"{name} must be a list of file objects, got "
                                        f"{type(value).__name__}")
    return value


def _path(raw: Any, where: str, problems: list[str]) -> tuple[str, tuple[str, ...]] | None:
    if not isinstance(raw, str) or not raw:
        problems.append(f"{where}: 'path' is required and must be a non-empty string")
        return None
    if len(raw) > MAX_PATH or "\0" in raw:
        problems.append(f"{where}: 'path' is longer than {MAX_PATH} characters or has a NUL")
        return None
    if not raw.startswith("/"):
        problems.append(f"{where}: 'path' must be absolute")
        return None
    if raw.endswith("/"):
        problems.append(f"{where}: 'path' names a directory; only files can be injected")
        return None
    parts = tuple(p for p in raw.split("/") if p not in ("", "."))
    if ".." in parts:
        problems.append(f"{where}: 'path' must not contain '..' components")
        return None
    if not parts:
        problems.append(f"{where}: 'path' names no file")
        return None
    if any(len(p.encode("utf-8", "surrogateescape")) > MAX_NAME for p in parts):
        problems.append(f"{where}: a component of 'path' is longer than {MAX_NAME} bytes")
        return None
    return "/" + "/".join(parts), parts


def _number(entry: Mapping[str, Any], key: str, low: int, high: int, where: str,
            problems: list[str]) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        shown = f"{high:#o}" if key.endswith("mode") else str(high)
        problems.append(f"{where}: '{key}' must be an integer from {low} to {shown}")
        return None
    return value


def _partition(raw: Any, where: str, problems: list[str]) -> int | str | dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    if type(raw) is int:
        if raw < 1:
            problems.append(f"{where}: partition numbers start at 1")
            return None
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        if text.isdigit():
            return _partition(int(text), where, problems)
        if not text or len(text) > MAX_ID or "\0" in text:
            problems.append(f"{where}: 'partition' must be a number, a device path, a UUID "
                            f"or a label of at most {MAX_ID} characters")
            return None
        return text
    if isinstance(raw, Mapping):
        unknown = sorted(str(k)[:40] for k in raw if k not in HINT_KEYS)
        if unknown or not raw:
            problems.append(f"{where}: 'partition' hints may use {', '.join(HINT_KEYS)}"
                            + (f"; unexpected: {', '.join(unknown)}" if unknown else ""))
            return None
        for key, value in raw.items():
            if key == "number" and type(value) is int:
                if value < 1:
                    problems.append(f"{where}: partition numbers start at 1")
                    return None
            elif not isinstance(value, str) or not value.strip():
                problems.append(f"{where}: partition hint '{key}' must be a non-empty string"
                                + (" or an integer" if key == "number" else ""))
                return None
        return dict(raw)
    problems.append(f"{where}: 'partition' must be a number, a string or a hints object")
    return None


class _NoAttributes(string.Formatter):
    """Python format fields limited to item lookups: {node[uuid]}, {ports[0][address]}."""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
                  ) -> tuple[Any, str]:
        if "." in field_name:
            raise ValueError("attribute access is not allowed")
        return super().get_field(field_name, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> Any:
        if format_spec:
            raise ValueError("format specifications are not allowed")
        return super().format_field(value, format_spec)


def _url(text: str, node: Mapping[str, Any], ports: Any, where: str,
         problems: list[str]) -> str | None:
    try:
        url = _NoAttributes().format(text, node=dict(node), ports=ports or [])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        problems.append(f"{where}: the 'content' URL has a placeholder that cannot be filled "
                        "from the node and its ports (use forms like {node[uuid]})")
        return None
    if url.split("://", 1)[0].lower() not in ("http", "https"):
        problems.append(f"{where}: a 'content' URL must use http or https")
        return None
    return url


def _content(entry: FileEntry, raw: Mapping[str, Any], node: Mapping[str, Any], ports: Any,
             problems: list[str]) -> None:
    deleted = raw.get("deleted", False)
    if not isinstance(deleted, bool):
        problems.append(f"{entry.source}: 'deleted' must be true or false")
        return
    content = raw.get("content", MISSING)
    if deleted:
        if content not in (MISSING, None, ""):
            problems.append(f"{entry.source}: 'content' cannot be used with 'deleted'")
        entry.delete = True
        return
    if content is None:
        entry.delete = True          # an explicit null removes the file
        return
    if content is MISSING:
        problems.append(f"{entry.source}: 'content' is required unless 'deleted' is true")
        return
    if not isinstance(content, str):
        problems.append(f"{entry.source}: 'content' must be a base64 string or a URL")
        return
    if "://" in content:
        entry.url = _url(content, node, ports, entry.source, problems)
        return
    try:
        entry.content = base64.b64decode("".join(content.split()), validate=True)
    except (binascii.Error, ValueError):
        problems.append(f"{entry.source}: 'content' is not valid base64")


def _entry(raw: Any, source: str, node: Mapping[str, Any], ports: Any,
           problems: list[str]) -> FileEntry | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{source}: must be an object, got {type(raw).__name__}")
        return None
    before = len(problems)
    unknown = sorted(str(k)[:40] for k in raw if k not in FIELDS)
    if unknown:
        problems.append(f"{source}: unexpected field(s) {', '.join(unknown)}; "
                        f"known: {', '.join(FIELDS)}")
    found = _path(raw.get("path"), source, problems)
    partition = _partition(raw.get("partition"), source, problems)
    if found and len(found[1]) < 2 and raw.get("partition") in (None, ""):
        # nothing to look for: the partition is found by the file's top directory
        problems.append(f"{source}: a file in the root directory needs 'partition'")
    entry = FileEntry(source=source, path=found[0] if found else "",
                      parts=found[1] if found else (), partition=partition, delete=False,
                      mode=_number(raw, "mode", 0, MAX_MODE, source, problems),
                      dirmode=_number(raw, "dirmode", 0, MAX_MODE, source, problems),
                      owner=_number(raw, "owner", -1, MAX_ID_NUMBER, source, problems),
                      group=_number(raw, "group", -1, MAX_ID_NUMBER, source, problems))
    _content(entry, raw, node, ports, problems)
    return entry if len(problems) == before else None


def validate(node: Mapping[str, Any], files: Any, ports: Any = None) -> list[FileEntry]:
    """Properties + ``files``, checked; one InvalidCommandParamsError lists every problem."""
    if not isinstance(node, Mapping):
        raise InvalidCommandParamsError("the node must be an object")
    properties = node.get("properties") or {}
    if not isinstance(properties, Mapping):
        raise InvalidCommandParamsError("node.properties must be an object")
    sources = [("node.properties.inject_files",
                _as_list(properties.get("inject_files"), "node.properties.inject_files")),
               ("files", _as_list(files, "'files'"))]
    problems: list[str] = []
    entries = []
    for name, items in sources:
        for index, raw in enumerate(items):
            entry = _entry(raw, f"{name}[{index}]", node, ports, problems)
            if entry is not None:
                entries.append(entry)
    if problems:
        raise InvalidCommandParamsError("inject_files: " + "; ".join(problems))
    return entries


def verify_setting(verify_ca: Any) -> bool | str:
    """``verify_ca`` as requests takes it: a boolean, or the path of a CA bundle."""
    if verify_ca is None:
        return True
    try:
        return parse_bool(verify_ca)
    except ValueError:
        pass
    if isinstance(verify_ca, str) and os.path.isfile(verify_ca):
        return verify_ca
    raise InvalidCommandParamsError("'verify_ca' must be a boolean or the path of a CA bundle "
                                    "file present in the ramdisk")
