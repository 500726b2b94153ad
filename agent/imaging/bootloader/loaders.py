"""Which UEFI loaders an ESP offers, read from a directory tree.

This module only walks a directory: the caller decides how the ESP became a
tree (a real vfat mount in the ramdisk, an mtools copy or a FUSE mount in
tests).  FAT is case-insensitive, so every name is compared case-insensitively
and reported with the case found on disk.

A shim ``BOOT<ARCH>.CSV`` wins: it names the loader shim's fallback would
register and the label the distribution wants.  Without one, each directory
contributes its best known loader, vendor directories before the removable
media fallback ``EFI/BOOT``.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from agent.errors import CommandExecutionError

LOG = logging.getLogger(__name__)

# machine name (platform.machine / uname -m) -> UEFI architecture suffix
ARCH_SUFFIX = {
    "x86_64": "x64", "amd64": "x64", "i386": "ia32", "i686": "ia32",
    "aarch64": "aa64", "arm64": "aa64", "armv7l": "arm", "armv8l": "arm",
    "riscv64": "riscv64", "loongarch64": "loongarch64", "ia64": "ia64",
}
ALL_SUFFIXES = frozenset(ARCH_SUFFIX.values()) | {"riscv32", "riscv128"}
FALLBACK_DIR = "efi/boot"
MAX_CSV_BYTES = 64 * 1024
FILE_LABEL = "ironic{}"          # IPA's labels for loaders found without a CSV


class UnsupportedArch(CommandExecutionError):
    pass


@dataclasses.dataclass(frozen=True)
class Loader:
    path: str            # ESP-relative, '/'-separated, case as on disk
    label: str
    origin: str          # the CSV that named it, or "file"

    @property
    def efi_path(self) -> str:
        """The path as firmware and efibootmgr -l want it: ``\\EFI\\debian\\shimx64.efi``."""
        return "\\" + self.path.replace("/", "\\")


@dataclasses.dataclass
class EspScan:
    loaders: list[Loader]
    fallback: str | None           # EFI/BOOT/BOOT<ARCH>.EFI as found, None when missing
    expected_fallback: str
    problems: list[str] = dataclasses.field(default_factory=list)


def suffix_for(arch: str) -> str:
    try:
        return ARCH_SUFFIX[arch.lower()]
    except KeyError:
        raise UnsupportedArch(f"UEFI boot is not supported on architecture {arch!r}") from None


def csv_names(suffix: str) -> tuple[str, ...]:
    # shim's fallback looks for the architecture's CSV first, then the generic one
    return (f"boot{suffix}.csv", "boot.csv")


def loader_names(suffix: str) -> tuple[str, ...]:
    """Known loaders, best first: shim (Secure Boot), grub, the fallback name, Windows."""
    return (f"shim{suffix}.efi", f"grub{suffix}.efi", f"boot{suffix}.efi", "winload.efi")


def scan(tree: str, arch: str) -> EspScan:
    """Loaders to register for the ESP whose root directory is ``tree``."""
    suffix = suffix_for(arch)
    files = regular_files(tree)
    expected = f"EFI/BOOT/BOOT{suffix.upper()}.EFI"
    result = EspScan(loaders=[], fallback=files.get(expected.lower()),
                     expected_fallback=expected)
    for key in sorted(files, key=_csv_order(suffix)):
        if os.path.basename(key) not in csv_names(suffix):
            continue
        loader = _loader_from_csv(tree, files[key], files, result.problems)
        if loader is not None:
            result.loaders = [loader]
            return result
    _note_foreign(files, suffix)
    by_dir: dict[str, list[str]] = {}
    for key in files:
        if os.path.basename(key) in loader_names(suffix):
            by_dir.setdefault(os.path.dirname(key), []).append(key)
    rank = {name: i for i, name in enumerate(loader_names(suffix))}
    for i, directory in enumerate(sorted(by_dir, key=lambda d: (d == FALLBACK_DIR, d))):
        best = min(by_dir[directory], key=lambda k: rank[os.path.basename(k)])
        result.loaders.append(Loader(files[best], FILE_LABEL.format(i + 1), "file"))
    return result


def parse_csv(data: bytes) -> tuple[str, str, str]:
    """(loader file, label, options) from the first entry of a shim boot CSV.

    shim writes UCS-2/UTF-16 little endian, usually with a byte order mark;
    without one the byte layout tells the endianness.  Plain UTF-8 is accepted
    because some build tools produce it.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16")
    elif len(data) >= 2 and data[1] == 0 and data[0] != 0:
        text = data.decode("utf-16-le")
    elif len(data) >= 2 and data[0] == 0 and data[1] != 0:
        text = data.decode("utf-16-be")
    else:
        text = data.decode("utf-8")
    for line in text.lstrip("\ufeff").splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        fields += [""] * (3 - len(fields))
        return fields[0], fields[1], fields[2]
    raise ValueError("it has no entry")


def _loader_from_csv(tree: str, csv_path: str, files: dict[str, str],
                     problems: list[str]) -> Loader | None:
    try:
        with open(os.path.join(tree, csv_path), "rb") as f:
            data = f.read(MAX_CSV_BYTES)
        name, label, _options = parse_csv(data)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problems.append(f"{csv_path} is unreadable: {exc}")
        LOG.warning("ignoring shim CSV %s: %s", csv_path, exc)
        return None
    directory = os.path.dirname(csv_path)
    if not name or "/" in name or "\\" in name or not label:
        problems.append(f"{csv_path} names loader {name!r} with label {label!r}; expected "
                        "a file in its own directory and a non-empty label")
        LOG.warning("ignoring shim CSV %s: %s", csv_path, problems[-1])
        return None
    found = files.get(f"{directory}/{name}".lower())
    if found is None:
        problems.append(f"{csv_path} names {name}, which is not in {directory}")
        LOG.warning("ignoring shim CSV %s: %s", csv_path, problems[-1])
        return None
    return Loader(found, label, csv_path)


def _csv_order(suffix: str):
    def key(path: str) -> tuple[int, str]:
        name = os.path.basename(path)
        return (0 if name == f"boot{suffix}.csv" else 1, path)
    return key


def _note_foreign(files: dict[str, str], suffix: str) -> None:
    for key, path in files.items():
        base = os.path.basename(key)
        for other in ALL_SUFFIXES - {suffix}:
            if base in (f"boot{other}.efi", f"grub{other}.efi", f"shim{other}.efi"):
                LOG.info("skipping %s: it is a loader for another architecture", path)


def regular_files(tree: str) -> dict[str, str]:
    """Lower-cased relative path -> relative path as on disk, regular files only."""
    files: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(tree, followlinks=False):
        dirnames.sort()
        rel = os.path.relpath(dirpath, tree)
        for name in sorted(filenames):
            path = name if rel == "." else f"{rel}/{name}"
            if os.path.isfile(os.path.join(tree, path)) and \
                    not os.path.islink(os.path.join(tree, path)):
                files.setdefault(path.lower(), path)
    return files
