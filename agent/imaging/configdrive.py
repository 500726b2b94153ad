"""The config drive: decode what Ironic sends, then place it where cloud-init finds it.

Input forms (reference §6) are told apart by content, not by trial and error:
gzip magic, the ISO9660 ``CD001`` marker, a JSON object, else base64 once.
Placement reuses a partition named ``config-v2`` or labelled ``config-2``,
or creates one at the end of the disk; after writing, the partition is read
back and checked.  ISO9660 cannot be used on disks with logical sectors
larger than its 2048-byte blocks, so there the files go into vfat instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from typing import Any

import requests

from agent import tools
from agent.disk import partition_edit, reread
from agent.disk import partition_table as pt
from agent.errors import AgentError, DeploymentError, InvalidCommandParamsError
from agent.imaging.configdrive_build import build_iso, iso_files, iso_label
from agent.imaging.httpget import GetFailed, capped_get

LOG = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_SIZE = 64 * MiB
SIZE_ERROR = "Config drive size exceeds maximum limit of 64MiB"
PARTITION_NAME = "config-v2"
LABEL = "config-2"
VFAT_LABEL = "CONFIG-2"
_MAX_DOWNLOAD = 2 * MAX_SIZE      # base64 of a 64 MiB ISO plus slack
_ISO_MAGIC_AT = 32769
_PROBE_BYTES = 65536 + 4096
_MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}

HttpGet = Callable[[str, float], bytes]


# --- decoding ----------------------------------------------------------------------------

def decode_configdrive(value: Any, *, http_get: HttpGet | None = None,
                       timeout: float = 60.0) -> bytes | None:
    """Return the config drive ISO image for any accepted input form, None for none.

    Raises InvalidCommandParamsError for undecodable inline input, DeploymentError
    for download failures, undecodable downloads and oversized drives.
    """
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return None
    if isinstance(value, dict):
        return _checked(build_iso(value), InvalidCommandParamsError)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("http://", "https://")):
            body = (http_get or _http_get)(text, timeout)
            return _checked(_from_bytes(body, DeploymentError, f"downloaded from {text}"),
                            DeploymentError)
        value = text.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return _checked(_from_bytes(bytes(value), InvalidCommandParamsError, "given"),
                        InvalidCommandParamsError)
    raise InvalidCommandParamsError(f"config drive must be a string, bytes or an object, "
                                    f"not {type(value).__name__}")


def _from_bytes(data: bytes, error: type, origin: str, depth: int = 0) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return _gunzip(data, error, origin)
    if data[_ISO_MAGIC_AT:_ISO_MAGIC_AT + 5] == b"CD001":
        if len(data) > MAX_SIZE:
            raise DeploymentError(SIZE_ERROR)
        return data
    if data.lstrip()[:1] == b"{":
        try:
            content = json.loads(data)
        except ValueError as exc:
            raise error(f"config drive {origin} looks like JSON but is not: {exc}") from None
        return build_iso(content)
    if depth == 0:
        try:
            decoded = base64.b64decode(b"".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            decoded = None
        if decoded:
            return _from_bytes(decoded, error, origin, depth + 1)
    raise error(f"config drive {origin} is neither gzip+base64, base64, JSON nor an "
                f"ISO9660 image")


def _gunzip(data: bytes, error: type, origin: str) -> bytes:
    inflater = zlib.decompressobj(wbits=47)    # gzip header, bounded output below
    try:
        out = inflater.decompress(data, MAX_SIZE + 1)
    except zlib.error as exc:
        raise error(f"config drive {origin} is not valid gzip: {exc}") from None
    if len(out) > MAX_SIZE:
        raise DeploymentError(SIZE_ERROR)
    if not inflater.eof:
        raise error(f"config drive {origin} is a truncated gzip stream")
    return out


def _checked(image: bytes, error: type) -> bytes:
    if len(image) > MAX_SIZE:
        raise DeploymentError(SIZE_ERROR)
    if image[_ISO_MAGIC_AT:_ISO_MAGIC_AT + 5] != b"CD001":
        raise error("decoded config drive is not an ISO9660 image")
    try:
        label = iso_label(image)
    except DeploymentError as exc:
        raise error(exc.details) from None
    if label.lower() != LABEL:
        LOG.warning("config drive volume label is %r, cloud-init looks for %r", label, LABEL)
    return image


def _http_get(url: str, timeout: float) -> bytes:
    session = requests.Session()
    session.trust_env = False      # like IPA: no proxies for the config drive
    try:
        return capped_get(url, limit=_MAX_DOWNLOAD, timeout=timeout, session=session)
    except GetFailed as exc:
        if exc.too_large:
            raise DeploymentError(SIZE_ERROR) from None
        raise DeploymentError(f"cannot download the config drive: {exc.reason}") from None
    finally:
        session.close()


# --- finding the partition ---------------------------------------------------------------

def probe_filesystem(source: str | int, offset: int = 0) -> tuple[str | None, str | None]:
    """(filesystem type, label) of the filesystem starting at ``offset``, from its bytes."""
    if isinstance(source, str):
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return probe_filesystem(fd, offset)
        finally:
            os.close(fd)
    buf = os.pread(source, _PROBE_BYTES, offset).ljust(_PROBE_BYTES, b"\0")
    if buf[_ISO_MAGIC_AT:_ISO_MAGIC_AT + 5] == b"CD001":
        return "iso9660", _text(buf[32808:32840])
    if buf[510:512] == b"\x55\xaa" and buf[82:87] == b"FAT32":
        return "vfat", _fat_label(buf[71:82])
    if buf[510:512] == b"\x55\xaa" and buf[54:59] in (b"FAT12", b"FAT16"):
        return "vfat", _fat_label(buf[43:54])
    if struct.unpack_from("<H", buf, 1024 + 56)[0] == 0xEF53:
        return "ext", _text(buf[1024 + 120:1024 + 136])
    if buf[:4] == b"XFSB":
        return "xfs", _text(buf[108:120])
    if buf[65536 + 64:65536 + 72] == b"_BHRfS_M":
        return "btrfs", _text(buf[65536 + 299:65536 + 555])
    return None, None


def _text(raw: bytes) -> str | None:
    return raw.split(b"\0")[0].decode("utf-8", "replace").strip() or None


def _fat_label(raw: bytes) -> str | None:
    label = _text(raw)
    return None if label == "NO NAME" else label


def find_config_partitions(device: str, table: pt.PartitionTable | None = None
                           ) -> list[pt.Partition]:
    """Partitions named ``config-v2`` or whose filesystem is labelled ``config-2``."""
    table = table or pt.read_table(device)
    found = []
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for part in table.partitions:
            if part.mbr_role == "extended":
                continue
            _fstype, label = probe_filesystem(fd, part.start_bytes)
            if part.name.lower() == PARTITION_NAME or (label or "").lower() == LABEL:
                found.append(part)
    finally:
        os.close(fd)
    return found


# --- writing -----------------------------------------------------------------------------

def write_configdrive(device: str, data: bytes, *, partition: str | None = None,
                      rebuild: bool = False, timeout: float = 30.0) -> dict[str, Any]:
    """Put the config drive ISO ``data`` on ``device`` and verify it.

    ``partition`` names the partition to use (partition images create it in
    their layout); otherwise one is found or created.  Returns
    ``{"partition", "created", "filesystem", "size", "partition_size", "verified_by",
    "reread"}``.
    """
    _checked(data, InvalidCommandParamsError)
    table = pt.read_table(device)
    part, created = _choose_partition(device, table, partition, len(data))
    if created:
        table = pt.read_table(device)
    result = reread.reread(device, table=table, timeout=timeout)
    node = result.partitions.get(part.number) or reread.partition_device(device, part.number)
    use_vfat = rebuild or table.sector_size > 2048
    # Leftover signatures (RAID superblocks at the end, an old filesystem) would
    # make blkid ambivalent, and cloud-init would then not see the label.
    tools.run("wipefs", "--all", "--quiet", node)
    verified = ""
    if not use_vfat:
        verified = _write_iso(node, data)
        use_vfat = verified == "mount-failed"
    if use_vfat:
        verified = _write_vfat(node, data, part.size_bytes)
    LOG.info("config drive written to %s (%s, %d bytes, verified by %s)", node,
             "vfat" if use_vfat else "iso9660", len(data), verified)
    return {"partition": node, "created": created,
            "filesystem": "vfat" if use_vfat else "iso9660", "size": len(data),
            "partition_size": part.size_bytes, "verified_by": verified,
            "reread": {"method": result.method, "seconds": round(result.timings["total"], 4)}}


def _choose_partition(device: str, table: pt.PartitionTable, partition: str | None,
                      size: int) -> tuple[pt.Partition, bool]:
    if partition is not None:
        parent, number = reread.partition_parent(partition)
        part = table.get(number)
        if os.path.realpath(parent) != os.path.realpath(device) or part is None:
            raise DeploymentError(f"{partition} is not a partition of {device}")
        return _fits(part, size, partition), False
    if table.kind is None:
        why = f": {'; '.join(table.problems)}" if table.problems else ""
        raise DeploymentError(f"{device} has no partition table, so no config drive partition "
                              f"can be found or created{why}")
    found = find_config_partitions(device, table)
    if len(found) > 1:
        names = ", ".join(reread.partition_device(device, p.number) for p in found)
        raise DeploymentError(f"More than one partition with label {LABEL} or GPT name "
                              f"{PARTITION_NAME} on {device}: {names}")
    if found:
        return _fits(found[0], size, reread.partition_device(device, found[0].number)), False
    part = partition_edit.add_partition_at_end(device, MAX_SIZE, name=PARTITION_NAME)
    return _fits(part, size, reread.partition_device(device, part.number)), True


def _fits(part: pt.Partition, size: int, node: str) -> pt.Partition:
    if size > part.size_bytes:
        raise DeploymentError(f"the config drive ({size} bytes) does not fit into {node} "
                              f"({part.size_bytes} bytes)")
    return part


def _write_iso(node: str, data: bytes) -> str:
    fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        back = os.pread(fd, len(data), 0)
    finally:
        os.close(fd)
    if hashlib.sha256(back).digest() != hashlib.sha256(data).digest():
        raise DeploymentError(f"config drive read back from {node} differs from what was "
                              f"written")
    iso_label(back)   # parses the volume descriptors; raises on a damaged image
    return _kernel_mount_check(node, "iso9660") or "pycdlib"


def _write_vfat(node: str, data: bytes, part_size: int) -> str:
    files = iso_files(data)
    # Clear the ISO volume descriptors so no probe finds two filesystems here.
    fd = os.open(node, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.pwrite(fd, b"\0" * min(part_size, MiB), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    with tempfile.TemporaryDirectory(prefix="configdrive-") as tmp:
        src, back = os.path.join(tmp, "in"), os.path.join(tmp, "out")
        for rel, content in files.items():
            path = os.path.join(src, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(content)
        try:
            tools.run("mkfs.vfat", "-n", VFAT_LABEL, node)
            tops = sorted(os.listdir(src)) if files else []
            if tops:
                tools.run("mcopy", "-i", node, "-s", "-Q", "-o",
                          *[os.path.join(src, t) for t in tops], "::/", env=_MTOOLS_ENV)
            os.makedirs(back)
            if tops:
                tools.run("mcopy", "-i", node, "-s", "-n",
                          *[f"::/{t}" for t in tops], back, env=_MTOOLS_ENV)
        except (AgentError, OSError) as exc:
            raise DeploymentError(f"rebuilding the config drive as vfat on {node} failed: "
                                  f"{exc}") from None
        copied = _read_tree(back)
    if copied != files:
        raise DeploymentError(f"the vfat config drive on {node} does not read back the files "
                              f"that were copied in")
    _fstype, label = probe_filesystem(node)
    if (label or "").lower() != LABEL:
        raise DeploymentError(f"the vfat config drive on {node} has label {label!r}")
    return _kernel_mount_check(node, "vfat") or "mtools"


def _read_tree(top: str) -> dict[str, bytes]:
    files = {}
    for root, _dirs, names in os.walk(top):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, top).replace(os.sep, "/")] = f.read()
    return files


def _kernel_mount_check(node: str, fstype: str) -> str | None:
    """'mount' if the kernel mounts it read-only, None if it has no driver for it.

    Returns 'mount-failed' when a driver exists but refuses the filesystem,
    which is what happens with ISO9660 on 4096-byte-sector disks.
    """
    with tempfile.TemporaryDirectory(prefix="configdrive-mnt-") as mnt:
        proc = tools.run("mount", "-t", fstype, "-o", "ro", node, mnt, check=False)
        if proc.returncode == 0:
            try:
                ok = os.path.isdir(os.path.join(mnt, "openstack"))
            finally:
                tools.run("umount", mnt, check=False)
            if not ok:
                raise DeploymentError(f"config drive on {node} mounts but has no openstack/ "
                                      f"directory")
            return "mount"
    if not _kernel_has(fstype):
        LOG.info("kernel has no %s driver; config drive on %s checked without mounting",
                 fstype, node)
        return None
    LOG.warning("mounting the config drive on %s as %s failed: %s", node, fstype,
                tools.tail(proc.stderr))
    if fstype == "vfat":
        raise DeploymentError(f"the vfat config drive on {node} cannot be mounted: "
                              f"{tools.tail(proc.stderr)}")
    return "mount-failed"


def _kernel_has(fstype: str) -> bool:
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1] == fstype for line in f if line.strip())
    except OSError:
        return False
