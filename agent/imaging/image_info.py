"""Validate ``image_info`` (reference §5.1–5.2) before any disk is touched.

Everything a request can get wrong is judged here, so a request that could
never succeed is refused with a 400 before the network or a disk is used.
Messages name the field and what it must be, never the value that was sent:
that value may be megabytes long, or a secret.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import math
import re
from typing import Any

from agent.config import parse_bool
from agent.errors import InvalidCommandParamsError

NO_CHECKSUM = ("Image checksum is not available, either the 'checksum' field or the "
               "'os_hash_algo' and 'os_hash_value' fields pair must be set for image "
               "verification.")
HEX_LENGTHS = {32: "md5", 64: "sha256", 128: "sha512"}
IMAGE_TYPES = ("whole-disk", "partition")
SIZE_FIELDS = ("root_mb", "swap_mb", "ephemeral_mb")
# a partition size in MiB beyond this (8 EiB) cannot be a real disk's
MAX_MB = 1 << 43
HEX = re.compile(r"[0-9a-fA-F]+")
# what may follow "Authorization:" on the wire: visible ASCII and spaces
HEADER_VALUE = re.compile(r"[\x20-\x7e]+")


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    id: str
    urls: tuple[str, ...]
    disk_format: str | None
    os_hash_algo: str | None
    os_hash_value: str | None
    checksum: str | None
    headers: dict[str, str]
    auth: tuple[str, str] | None
    proxies: dict[str, str] | None
    no_proxy: str | None
    image_type: str
    raw: dict[str, Any]
    sizes_mb: dict[str, int] = dataclasses.field(default_factory=dict)
    preserve_ephemeral: bool = False

    @property
    def is_partition_image(self) -> bool:
        return self.image_type == "partition"


def _bad(message: str) -> InvalidCommandParamsError:
    return InvalidCommandParamsError(message)


def _str_field(info: dict[str, Any], name: str) -> str | None:
    value = info.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"Image '{name}' must be a non-empty string.")
    return value.strip()


def digest_length(algo: str) -> int:
    """Hex digits of ``algo``'s digest; 0 when it has no fixed length (shake_*)."""
    try:
        return hashlib.new(algo).digest_size * 2
    except (ValueError, TypeError):
        return 0


def is_hex(value: str, length: int) -> bool:
    return len(value) == length and HEX.fullmatch(value) is not None


def _os_hash(algo: str, value: str, md5_allowed: bool) -> tuple[str, str]:
    algo = algo.lower()
    supported = "sha256, sha512, sha384, sha1" + (", md5" if md5_allowed else "")
    if algo not in hashlib.algorithms_available:
        raise _bad(f"Image 'os_hash_algo' is not supported; use one of {supported}.")
    length = digest_length(algo)
    if not length:
        # an extendable-output hash has no digest length to compare against
        raise _bad("Image 'os_hash_algo' has no fixed digest length and cannot verify an "
                   f"image; use one of {supported}.")
    if algo == "md5" and not md5_allowed:
        raise _bad("MD5 image checksums are disabled on this agent.")
    if not is_hex(value, length):
        raise _bad(f"Image 'os_hash_value' must be a {length} character hexadecimal "
                   f"{algo} digest.")
    return algo, value.lower()


def _legacy_checksum(checksum: str, md5_allowed: bool) -> None:
    if checksum.startswith(("http://", "https://")):
        return
    kind = HEX_LENGTHS.get(len(checksum))
    if kind is None or not is_hex(checksum, len(checksum)):
        raise _bad("Image 'checksum' is neither a URL nor a 32, 64 or 128 character "
                   "hexadecimal digest.")
    if kind == "md5" and not md5_allowed:
        raise _bad(NO_CHECKSUM + " MD5 checksums are disabled on this agent.")


def _authorization(value: Any) -> dict[str, str]:
    error = ("Image 'image_request_authorization' is not valid base64 of an HTTP "
             "Authorization header value (printable ASCII).")
    if not isinstance(value, str) or not value.isascii():
        raise _bad(error)
    try:
        header = base64.b64decode(value, validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        raise _bad(error) from None
    if not HEADER_VALUE.fullmatch(header):
        raise _bad(error)
    return {"Authorization": header}


def whole_number(value: Any, name: str, *, upper: int = MAX_MB) -> int:
    """A non-negative integer: an int, an integral float or decimal digits; never a bool."""
    error = f"Image '{name}' must be a non-negative integer."
    if value is None:
        return 0
    if isinstance(value, bool):
        raise _bad(error)
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.isascii() and value.strip().isdigit() \
            and len(value.strip()) <= 20:
        number = int(value.strip())
    else:
        raise _bad(error)
    if not 0 <= number <= upper:
        raise _bad(error)
    return number


def _flag(info: dict[str, Any], name: str) -> bool:
    value = info.get(name)
    if value is None:
        return False
    try:
        return parse_bool(value)
    except (ValueError, TypeError, AttributeError):
        raise _bad(f"Image '{name}' must be a boolean.") from None


def _choice(info: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = info.get(name)
    if value in (None, ""):
        return None
    if not isinstance(value, str) or value.lower() not in allowed:
        raise _bad(f"Image '{name}' must be one of {', '.join(allowed)}.")
    return value.lower()


def _partition_fields(info: dict[str, Any]) -> tuple[dict[str, int], bool]:
    sizes = {name: whole_number(info.get(name), name) for name in SIZE_FIELDS}
    _choice(info, "deploy_boot_mode", ("bios", "uefi"))
    _choice(info, "disk_label", ("gpt", "msdos"))
    if info.get("ephemeral_format") is not None:
        from agent.imaging.partition_image import EPHEMERAL_FORMATS
        _choice(info, "ephemeral_format", EPHEMERAL_FORMATS)
    return sizes, _flag(info, "preserve_ephemeral")


def _urls(info: dict[str, Any]) -> tuple[str, ...]:
    urls = info["urls"]
    if not isinstance(urls, list) or not urls:
        raise _bad("Image 'urls' must be a list with at least one element.")
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) \
                or not url.isascii() or any(c.isspace() for c in url):
            raise _bad("An image URL is not an http(s) URL (ASCII, no spaces).")
    return tuple(urls)


def _transport(info: dict[str, Any]) -> tuple[dict[str, str], tuple[str, str] | None,
                                               dict[str, str] | None, str | None]:
    headers: dict[str, str] = {}
    auth = None
    authorization = info.get("image_request_authorization")
    if authorization not in (None, ""):
        headers = _authorization(authorization)
    elif info.get("image_server_auth_strategy") == "http_basic":
        user, password = info.get("image_server_user"), info.get("image_server_password")
        if not user or not password or not isinstance(user, str) \
                or not isinstance(password, str):
            raise _bad("http_basic image auth needs image_server_user and "
                       "image_server_password as strings.")
        auth = (user, password)
    proxies = info.get("proxies")
    if proxies is not None and (not isinstance(proxies, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in proxies.items())):
        raise _bad("Image 'proxies' must be an object of strings.")
    no_proxy = info.get("no_proxy")
    if no_proxy is not None and not isinstance(no_proxy, str):
        raise _bad("Image 'no_proxy' must be a string.")
    return headers, auth, proxies or None, no_proxy


def validate(info: Any, *, md5_allowed: bool) -> ImageSpec:
    if not isinstance(info, dict):
        raise _bad("image_info must be an object.")
    for field in ("id", "urls"):
        if field not in info or info[field] in (None, ""):
            raise _bad(f"Image is missing '{field}' field.")
    if not isinstance(info["id"], str):
        raise _bad("Image 'id' must be a string.")
    urls = _urls(info)

    checksum = _str_field(info, "checksum")
    algo = _str_field(info, "os_hash_algo")
    value = _str_field(info, "os_hash_value")
    if bool(algo) != bool(value):
        raise _bad("Image 'os_hash_algo' and 'os_hash_value' must be given together.")
    if algo and value:
        algo, value = _os_hash(algo, value, md5_allowed)
    elif checksum is None:
        raise _bad(NO_CHECKSUM)
    else:
        _legacy_checksum(checksum, md5_allowed)

    headers, auth, proxies, no_proxy = _transport(info)
    image_type = _choice(info, "image_type", IMAGE_TYPES) or "whole-disk"
    sizes, preserve = _partition_fields(info) if image_type == "partition" else ({}, False)
    disk_format = info.get("disk_format")
    if disk_format is not None and not isinstance(disk_format, str):
        raise _bad("Image 'disk_format' must be a string.")
    return ImageSpec(
        id=info["id"], urls=urls, disk_format=disk_format.lower() if disk_format else None,
        os_hash_algo=algo, os_hash_value=value, checksum=checksum,
        headers=headers, auth=auth, proxies=proxies, no_proxy=no_proxy,
        image_type=image_type, raw=info, sizes_mb=sizes, preserve_ephemeral=preserve)
