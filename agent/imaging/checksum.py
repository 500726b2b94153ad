"""Work out which digest to expect (reference §5.3), and a hashing stage."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import re
import urllib.parse
from collections.abc import Callable

from agent.errors import ImageChecksumError, ImageDownloadError
from agent.imaging.image_info import HEX_LENGTHS, ImageSpec

LOG = logging.getLogger(__name__)
BSD_LINE = re.compile(r"^(?P<algo>[A-Za-z0-9-]+) \((?P<name>.+)\) = (?P<hash>[0-9a-fA-F]+)$")


@dataclasses.dataclass(frozen=True)
class Expected:
    algo: str
    value: str
    source: str  # where it came from, for the operator

    def new(self) -> hashlib._Hash:
        return hashlib.new(self.algo)

    def check(self, digest: str) -> None:
        if not hmac.compare_digest(digest.lower(), self.value.lower()):
            raise ImageChecksumError(
                f"{self.algo} of the downloaded image is {digest}, expected {self.value} "
                f"({self.source})")


def _by_length(value: str, md5_allowed: bool, where: str) -> str:
    algo = HEX_LENGTHS.get(len(value))
    if algo is None or not re.fullmatch(r"[0-9a-fA-F]+", value):
        raise ImageDownloadError(f"{where} holds {value!r}, which is not a 32, 64 or 128 "
                                 "character hexadecimal digest")
    if algo == "md5" and not md5_allowed:
        raise ImageDownloadError(f"{where} holds an MD5 digest and MD5 is disabled")
    return algo


def parse_checksum_file(text: str, image_name: str) -> str:
    """Find the digest for ``image_name`` in a sha256sum/BSD-style checksums file."""
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ImageDownloadError("Checksum file is empty")
    if len(lines) == 1 and " " not in lines[0] and "\t" not in lines[0]:
        return lines[0]
    for line in lines:
        bsd = BSD_LINE.match(line)
        if bsd:
            if bsd.group("name") == image_name:
                return bsd.group("hash")
            continue
        parts = line.split()
        if len(parts) >= 2 and parts[-1].lstrip("*") == image_name:
            return parts[0]
    raise ImageDownloadError(f"Checksum file does not contain name {image_name}")


def resolve(spec: ImageSpec, md5_allowed: bool,
            fetch_text: Callable[[str], str]) -> Expected:
    """Return what to verify against; ``fetch_text`` downloads a checksums file."""
    if spec.os_hash_algo and spec.os_hash_value:
        if spec.checksum and not spec.checksum.startswith(("http://", "https://")):
            by_len = HEX_LENGTHS.get(len(spec.checksum))
            if by_len and by_len != spec.os_hash_algo:
                LOG.warning("legacy checksum looks like %s but os_hash_algo is %s; using %s",
                            by_len, spec.os_hash_algo, spec.os_hash_algo)
        return Expected(spec.os_hash_algo, spec.os_hash_value, "os_hash_value")
    assert spec.checksum is not None  # image_info.validate guarantees one of the two
    if spec.checksum.startswith(("http://", "https://")):
        name = os.path.basename(urllib.parse.urlparse(spec.urls[0]).path)
        value = parse_checksum_file(fetch_text(spec.checksum), name)
        algo = _by_length(value, md5_allowed, f"checksum file {spec.checksum}")
        return Expected(algo, value.lower(), f"checksum file {spec.checksum}")
    algo = _by_length(spec.checksum, md5_allowed, "image checksum")
    return Expected(algo, spec.checksum.lower(), "checksum")
