"""Build an OpenStack config drive ISO from JSON, and list the files of one.

The ISO carries Rock Ridge and Joliet names so that ``meta_data.json`` and
``2018-08-27`` survive intact whichever extension the reader uses; the plain
ISO9660 names are only a fallback.  cloud-init finds the volume by its label
``config-2`` and reads ``openstack/<version>/`` (preferring the newest version
it knows) or ``openstack/latest/``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from agent.errors import DeploymentError, InvalidCommandParamsError

VOLUME_LABEL = "config-2"
OPENSTACK_VERSION = "2018-08-27"
KEYS = {"meta_data": "meta_data.json", "user_data": "user_data",
        "network_data": "network_data.json", "vendor_data": "vendor_data.json"}


def build_iso(content: dict[str, Any]) -> bytes:
    """ISO9660 image for ``{meta_data, user_data, network_data, vendor_data}``."""
    if not isinstance(content, dict):
        raise InvalidCommandParamsError("a JSON config drive must be an object")
    unknown = sorted(set(content) - set(KEYS))
    if unknown:
        raise InvalidCommandParamsError(
            f"unknown config drive keys {unknown}; accepted: {sorted(KEYS)}")
    files = {}
    for key, filename in KEYS.items():
        value = content.get(key)
        if value is None and key != "meta_data":
            continue
        files[filename] = _encode(key, value if value is not None else {})
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", joliet=3, vol_ident=VOLUME_LABEL)
    _mkdir(iso, "openstack")
    for version in ("latest", OPENSTACK_VERSION):
        _mkdir(iso, f"openstack/{version}")
        for filename, data in files.items():
            path = f"openstack/{version}/{filename}"
            iso.add_fp(io.BytesIO(data), len(data), _iso_name(path) + ";1",
                       rr_name=filename, joliet_path="/" + path)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def name_kind(iso: Any) -> str:
    """pycdlib's path keyword for an ISO's long names: Rock Ridge, else Joliet, else ISO9660."""
    if iso.has_rock_ridge():
        return "rr_path"
    if iso.has_joliet():
        return "joliet_path"
    return "iso_path"


def iso_files(data: bytes) -> dict[str, bytes]:
    """Every file of an ISO image by its long name (Rock Ridge, else Joliet, else ISO9660)."""
    iso = _open(data)
    try:
        kind = name_kind(iso)
        files = {}
        for root, _dirs, names in iso.walk(**{kind: "/"}):
            for name in names:
                path = f"{root.rstrip('/')}/{name}"
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, **{kind: path})
                clean = path.split(";")[0].lower() if kind == "iso_path" else path
                files[clean.lstrip("/")] = buf.getvalue()
        return files
    finally:
        iso.close()


def iso_label(data: bytes) -> str:
    """Volume identifier of an ISO image (parsed, not sniffed)."""
    iso = _open(data)
    try:
        return iso.pvd.volume_identifier.decode("ascii", "replace").strip()
    finally:
        iso.close()


def _open(data: bytes) -> pycdlib.PyCdlib:
    iso = pycdlib.PyCdlib()
    try:
        iso.open_fp(io.BytesIO(data))
    except PyCdlibException as exc:
        raise DeploymentError(f"the config drive ISO9660 image is damaged: {exc}") from None
    return iso


def _encode(key: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and key == "user_data":
        # user data is opaque to us: a script or cloud-config, written verbatim
        return value.encode("utf-8")
    try:
        return json.dumps(value, indent=2, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidCommandParamsError(f"config drive {key} is not JSON-serialisable: "
                                        f"{exc}") from None


def _iso_name(path: str) -> str:
    # ISO9660 names allow only upper case, digits and underscore (plus the dot of a file name)
    return "/" + "/".join("".join(c if c.isalnum() or c == "." else "_" for c in part.upper())
                          for part in path.split("/"))


def _mkdir(iso: pycdlib.PyCdlib, path: str) -> None:
    iso.add_directory(_iso_name(path), rr_name=path.rsplit("/", 1)[-1],
                      joliet_path="/" + path)
