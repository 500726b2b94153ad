"""What lets the test OS assemble its root array at boot, as an image with mdadm installed does.

The md kernel modules come from the same cloud kernel package as the rest
(``testos.WANTED_MODULES`` names them); mdadm comes from Debian's package,
fetched with ``apt-get download`` like the kernel.  Its shared libraries and
the dynamic loader are this host's (same architecture, same release): readelf
names them, NEEDED entries followed recursively plus the program interpreter,
so nothing from the package runs on the host while the image is built.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

PACKAGE = "mdadm"
DEB_PATTERN = "mdadm_*.deb"
# what testos loads in its initramfs for arrays (their dependencies follow)
MD_MODULES = ("md_mod", "raid0", "raid1", "raid10", "raid456")
# multiarch first: where Debian's loader looks without an ld.so.cache
LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64",
            "/lib", "/usr/lib")
IN_IMAGE = "sbin/mdadm"


class MdadmError(Exception):
    pass


def _readelf(*argv: str) -> str:
    result = subprocess.run(["readelf", *argv], capture_output=True, text=True)
    if result.returncode:
        raise MdadmError(f"readelf {' '.join(argv)} failed: {result.stderr.strip()[-300:]}")
    return result.stdout


def needed(path: str) -> list[str]:
    """The sonames ``path`` asks the loader for (its NEEDED entries)."""
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _readelf("-d", path))


def interpreter(path: str) -> str | None:
    found = re.search(r"Requesting program interpreter: ([^\]]+)\]", _readelf("-l", path))
    return found.group(1) if found else None


def _find(soname: str) -> str:
    for directory in LIB_DIRS:
        candidate = os.path.join(directory, soname)
        if os.path.exists(candidate):
            return candidate
    raise MdadmError(f"mdadm needs {soname}, which is not in {', '.join(LIB_DIRS)} on this "
                     "host")


def closure(binary: str) -> list[str]:
    """Host paths of the loader and every library ``binary`` loads, directly or not."""
    found: list[str] = []
    loader = interpreter(binary)
    if loader:
        if not os.path.exists(loader):
            raise MdadmError(f"mdadm's program interpreter {loader} is not on this host")
        found.append(loader)
    queue = list(needed(binary))
    seen: set[str] = set()
    while queue:
        soname = queue.pop(0)
        if soname in seen:
            continue
        seen.add(soname)
        path = _find(soname)
        found.append(path)
        queue.extend(needed(path))
    return found


def extract_binary(deb: str, dest: str) -> str:
    """Unpack ``deb`` into ``dest``; the path of its mdadm program."""
    os.makedirs(dest, exist_ok=True)
    result = subprocess.run(["dpkg-deb", "-x", deb, dest], capture_output=True, text=True)
    if result.returncode:
        raise MdadmError(f"dpkg-deb -x {os.path.basename(deb)} failed: "
                         f"{result.stderr.strip()[-300:]}")
    for relative in ("sbin/mdadm", "usr/sbin/mdadm"):
        path = os.path.join(dest, relative)
        if os.path.isfile(path):
            return path
    raise MdadmError(f"{os.path.basename(deb)} holds no sbin/mdadm")


def key_parts(deb: str) -> list[str]:
    """What the image's mdadm depends on besides the package: the host's library files."""
    with tempfile.TemporaryDirectory(prefix="testos-mdadm-") as tmp:
        binary = extract_binary(deb, tmp)
        return [f"{path} -> {os.path.realpath(path)} {os.path.getsize(path)}"
                for path in closure(binary)]


def install(deb: str, tree: str, work: str) -> list[str]:
    """Put mdadm, its libraries and the loader into ``tree``; the paths placed there."""
    binary = extract_binary(deb, os.path.join(work, "mdadm"))
    placed = [IN_IMAGE]
    target = os.path.join(tree, IN_IMAGE)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy2(binary, target)
    for path in closure(binary):
        # the library under the name the loader asks for, as a file: the tree
        # holds none of the host's symlink targets
        relative = path.lstrip("/")
        dest = os.path.join(tree, relative)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.realpath(path), dest)
        os.chmod(dest, 0o755)
        placed.append(relative)
    # mdadm keeps its map of assembled arrays here and reads its (absent) config
    for name in ("run", "etc/mdadm"):
        os.makedirs(os.path.join(tree, name), exist_ok=True)
    return placed
