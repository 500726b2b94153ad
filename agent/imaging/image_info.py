"""Validate ``image_info`` (reference §5.1–5.2) before any disk is touched."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
from typing import Any

from agent.errors import InvalidCommandParamsError

NO_CHECKSUM = ("Image checksum is not available, either the 'checksum' field or the "
               "'os_hash_algo' and 'os_hash_value' fields pair must be set for image "
               "verification.")
HEX_LENGTHS = {32: "md5", 64: "sha256", 128: "sha512"}


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

    @property
    def is_partition_image(self) -> bool:
        return self.image_type == "partition"


def _str_field(info: dict[str, Any], name: str) -> str | None:
    value = info.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidCommandParamsError(f"Image '{name}' must be a non-empty string.")
    return value.strip()


def validate(info: Any, *, md5_allowed: bool) -> ImageSpec:
    if not isinstance(info, dict):
        raise InvalidCommandParamsError("image_info must be an object.")
    for field in ("id", "urls"):
        if field not in info or info[field] in (None, ""):
            raise InvalidCommandParamsError(f"Image is missing '{field}' field.")
    if not isinstance(info["id"], str):
        raise InvalidCommandParamsError("Image 'id' must be a string.")
    urls = info["urls"]
    if not isinstance(urls, list) or not urls:
        raise InvalidCommandParamsError("Image 'urls' must be a list with at least one element.")
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidCommandParamsError(f"Image URL {url!r} is not an http(s) URL.")

    checksum = _str_field(info, "checksum")
    algo = _str_field(info, "os_hash_algo")
    value = _str_field(info, "os_hash_value")
    if bool(algo) != bool(value):
        raise InvalidCommandParamsError(
            "Image 'os_hash_algo' and 'os_hash_value' must be given together.")
    if algo:
        algo = algo.lower()
        if algo not in hashlib.algorithms_available:
            raise InvalidCommandParamsError(f"Image 'os_hash_algo' {algo!r} is not supported; "
                                            f"use one of sha256, sha512, sha384, sha1"
                                            f"{', md5' if md5_allowed else ''}.")
        if algo == "md5" and not md5_allowed:
            raise InvalidCommandParamsError("MD5 image checksums are disabled on this agent.")
    elif checksum is None:
        raise InvalidCommandParamsError(NO_CHECKSUM)
    elif not checksum.startswith(("http://", "https://")):
        kind = HEX_LENGTHS.get(len(checksum))
        if kind is None or not all(c in "0123456789abcdefABCDEF" for c in checksum):
            raise InvalidCommandParamsError(
                f"Image checksum {checksum!r} is neither a URL nor a 32, 64 or 128 "
                "character hexadecimal digest.")
        if kind == "md5" and not md5_allowed:
            raise InvalidCommandParamsError(
                NO_CHECKSUM + " MD5 checksums are disabled on this agent.")

    headers: dict[str, str] = {}
    auth = None
    authorization = info.get("image_request_authorization")
    if authorization:
        try:
            headers["Authorization"] = base64.b64decode(authorization, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            raise InvalidCommandParamsError(
                "Image 'image_request_authorization' is not valid base64.") from None
    elif info.get("image_server_auth_strategy") == "http_basic":
        user, password = info.get("image_server_user"), info.get("image_server_password")
        if not user or not password:
            raise InvalidCommandParamsError("http_basic image auth needs image_server_user "
                                            "and image_server_password.")
        auth = (str(user), str(password))
    proxies = info.get("proxies")
    if proxies is not None and not isinstance(proxies, dict):
        raise InvalidCommandParamsError("Image 'proxies' must be an object.")
    disk_format = info.get("disk_format")
    return ImageSpec(
        id=info["id"], urls=tuple(urls),
        disk_format=str(disk_format).lower() if disk_format else None,
        os_hash_algo=algo, os_hash_value=value.lower() if value else None, checksum=checksum,
        headers=headers, auth=auth, proxies=proxies or None,
        no_proxy=info.get("no_proxy"), image_type=str(info.get("image_type") or "whole-disk"),
        raw=info)
