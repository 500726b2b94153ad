"""Opt-in UEFI boot for partition images: fill the ESP the agent created.

A partition image is only a root filesystem; for UEFI the agent lays an
empty ESP next to it.  Like the BIOS path this runs the image's own grub as
root, so it is reachable only with ``enable_bios_bootloader_install``
(CVE-2026-43003); the caller checks that.  With the image's root mounted:

(a) the image's ``/boot/efi`` holds a loader for this architecture: its
    regular files are copied onto the ESP (grub.cfg regenerated first when the
    image has grub-mkconfig, and copied next to loaders that lack one);
(b) otherwise the image's ``grub-install --removable --no-nvram`` runs in a
    chroot with the ESP mounted on ``/boot/efi``, then grub-mkconfig.

Either way the ESP must end up with the removable-media loader
``EFI/BOOT/BOOT<ARCH>.EFI``, which firmware boots without NVRAM entries: in
(a) the image's best loader is copied there when the image has none (a shim
with the grub and MOK manager beside it, since shim loads its second stage
from its own directory).  What landed is read back from the ESP with mtools,
and when the ramdisk runs under UEFI with efibootmgr, the loaders found are
registered in NVRAM like the plain UEFI path does.  The image's /etc/fstab
gets a ``/boot/efi`` line when it has none, so the OS mounts the new ESP.

Files reach the ESP with mtools in (a), so no vfat mount is needed; (b) needs
one because grub-install checks that its EFI directory is a FAT mount.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

from agent import tools
from agent.disk import mounts
from agent.errors import CommandExecutionError, InvalidImage
from agent.imaging import inject_vfat
from agent.imaging.bootloader import (
    chroot,
    devices,
    efibootmgr,
    grub_bios,
    loaders,
    raid_uefi,
    uefi,
)

LOG = logging.getLogger(__name__)

# UEFI architecture suffix -> grub platform
GRUB_TARGETS = {"x64": "x86_64-efi", "ia32": "i386-efi", "aa64": "arm64-efi", "arm": "arm-efi",
                "riscv64": "riscv64-efi", "loongarch64": "loongarch64-efi", "ia64": "ia64-efi"}
IMAGE_ESP = "/boot/efi"
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}
COPY_TIMEOUT = 300.0
# The ramdisk's root is a tmpfs that its own unpacked files nearly fill (at the
# 1 GiB RAM budget a few hundred KiB are left), so /tmp there cannot hold an
# ESP's files; /run and /dev/shm are tmpfs mounts with room of their own
SCRATCH_DIRS = ("/run", "/dev/shm")

EspMounter = Callable[[str, str], contextlib.AbstractContextManager[object]]


@dataclasses.dataclass
class EspOutcome:
    esp: str
    partition: int
    method: str = ""                   # 'image-efi' (a) or 'grub-install' (b)
    files: list[str] = dataclasses.field(default_factory=list)   # ESP paths written in (a)
    removable_added: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)  # symlinks, special files
    config: str | None = None          # the grub.cfg grub-mkconfig wrote, in-image path
    fstab: str = ""                    # 'added', 'present', 'other-entry' or 'no-fstab'
    uefi: uefi.UefiOutcome | None = None


def mount_esp_rw(device: str, target: str) -> contextlib.AbstractContextManager[object]:
    """The production mounter for (b): the kernel's vfat, read-write, on ``target``."""
    return mounts.mounted(device, target, fstype="vfat", what="EFI system partition")


def grub_target(arch: str) -> str:
    suffix = loaders.suffix_for(arch)
    try:
        return GRUB_TARGETS[suffix]
    except KeyError:
        raise loaders.UnsupportedArch(f"grub has no UEFI platform for architecture "
                                      f"{arch!r}") from None


def install(disk: str, root_device: str, efi_system_part_uuid: str | None, *,
            arch: str) -> EspOutcome:
    """Put a boot loader from the image on the install disk's (empty) ESP; register it."""
    platform = grub_target(arch)   # unsupported architectures fail before any mount
    view = devices.DiskView(disk)
    esp = uefi.find_esp(view, efi_system_part_uuid)
    esp_uuid = view.fs_uuid(esp)
    if not esp_uuid:
        raise CommandExecutionError(f"the EFI system partition {esp.node} on {disk} holds no "
                                    "filesystem; it should have been formatted when the "
                                    "partition image was written")
    LOG.info("filling the EFI system partition %s (partition %d) from the image on %s",
             esp.node, esp.number, root_device)
    result = EspOutcome(esp=esp.node, partition=esp.number)
    with chroot.image_root(root_device) as root, \
            tempfile.TemporaryDirectory(prefix="deploy-agent-esp-", dir=scratch_dir()) as stage:
        grub = grub_bios.image_grub(root)
        result.skipped = stage_image_esp(root, stage, limit=_device_size(esp.node))
        if loaders.scan(stage, arch).loaders:
            result.method = "image-efi"
            if grub.mkconfig:
                result.config = grub_bios.make_config(root, grub)
            else:
                LOG.info("the image has no grub-mkconfig; its grub configuration stays as is")
            add_grub_files(root, grub, stage)
            result.removable_added = add_removable(stage, arch)
            result.files = write_tree(esp.node, stage)
        else:
            result.method = "grub-install"
            _require_grub(grub, arch)
            assert grub.install is not None
            target = _esp_mount_point(root)
            # looked up at call time so tests can mount through FUSE (no vfat here)
            with mount_esp_rw(esp.node, target):
                chroot.run(root, grub.install, f"--target={platform}",
                           f"--efi-directory={IMAGE_ESP}", "--removable", "--no-nvram")
                result.config = grub_bios.make_config(root, grub)
            if result.config and not chroot.exists(root, result.config):
                raise InvalidImage(f"the image's {grub.mkconfig} succeeded but wrote no "
                                   f"{result.config}; the node would stop at a grub prompt")
        result.fstab = add_fstab_entry(root, esp_uuid)
    result.uefi = _register(disk, esp, arch, result.files)
    return result


def stage_image_esp(root: str, stage: str, *, limit: int) -> list[str]:
    """Copy the regular files under the image's /boot/efi into ``stage``; return the skipped.

    Symbolic links are never followed (FAT cannot hold them, and one could
    point at the ramdisk's own files); names FAT cannot hold are skipped too.
    More than ``limit`` bytes (the ESP's size) is refused before it fills RAM.
    """
    source = chroot.resolve(root, IMAGE_ESP)
    skipped: list[str] = []
    if not os.path.isdir(source) or os.path.islink(source):
        return skipped
    room = free_bytes(stage)
    total = 0
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        rel_dir = os.path.relpath(dirpath, source)
        parts = [] if rel_dir == "." else rel_dir.split(os.sep)
        for name in sorted(dirnames):
            if os.path.islink(os.path.join(dirpath, name)) or \
                    inject_vfat.bad_name(parts + [name]):
                skipped.append("/".join(parts + [name]))
                dirnames.remove(name)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = "/".join(parts + [name])
            if os.path.islink(path) or not os.path.isfile(path) or \
                    inject_vfat.bad_name(parts + [name]):
                skipped.append(rel)
                continue
            total += os.path.getsize(path)
            if limit and total > limit:
                raise InvalidImage(f"the image's {IMAGE_ESP} holds more than the "
                                   f"{limit // (1 << 20)} MiB EFI system partition can take")
            if room is not None and total > room:
                raise CommandExecutionError(
                    f"the image's {IMAGE_ESP} holds more than the {room // (1 << 20)} MiB "
                    f"free in {os.path.dirname(stage)} to stage it in; give the node more "
                    "RAM or carry the EFI files in a whole-disk image")
            os.makedirs(os.path.join(stage, *parts), exist_ok=True)
            shutil.copyfile(path, os.path.join(stage, *parts, name))
    for rel in skipped:
        LOG.warning("not copying %s/%s to the EFI system partition: a symbolic link, special "
                    "file or a name FAT cannot hold", IMAGE_ESP, rel)
    return skipped


def add_grub_files(root: str, grub: grub_bios.ImageGrub, stage: str) -> None:
    """Put the image's grub.cfg (and grubenv) beside grub loaders whose directory lacks one.

    Some distributions' grub reads its configuration from its own ESP
    directory; the image's copy, regenerated just before, then boots the same.
    """
    files = loaders.regular_files(stage)
    for name in ("grub.cfg", "grubenv"):
        source = chroot.resolve(root, f"{grub.directory}/{name}")
        if not os.path.isfile(source) or os.path.islink(source):
            continue
        for directory in _grub_loader_dirs(files):
            if f"{directory}/{name}".lower() not in files:
                shutil.copyfile(source, os.path.join(stage, *directory.split("/"), name))
                LOG.info("copied the image's %s/%s to %s/%s on the ESP", grub.directory, name,
                         directory, name)


def add_removable(stage: str, arch: str) -> list[str]:
    """Make EFI/BOOT/BOOT<ARCH>.EFI from the best loader when the image has none.

    Returns the ESP-relative paths created.
    """
    scan = loaders.scan(stage, arch)
    if scan.fallback is not None or not scan.loaders:
        return []
    suffix = loaders.suffix_for(arch)
    files = loaders.regular_files(stage)
    best = scan.loaders[0].path
    directory = os.path.dirname(best)
    fallback_dir = next((files[k].rsplit("/", 1)[0] for k in files
                         if k.startswith(loaders.FALLBACK_DIR + "/")), "EFI/BOOT")
    copies = [(best, f"{fallback_dir}/BOOT{suffix.upper()}.EFI")]
    if os.path.basename(best).lower() == f"shim{suffix}.efi":
        # shim starts grub (and the MOK manager) from the directory it was loaded from
        for name in (f"grub{suffix}.efi", f"mm{suffix}.efi", "grub.cfg"):
            found = files.get(f"{directory}/{name}".lower())
            if found:
                copies.append((found, f"{fallback_dir}/{os.path.basename(found)}"))
    elif f"{directory}/grub.cfg".lower() in files:
        copies.append((files[f"{directory}/grub.cfg".lower()], f"{fallback_dir}/grub.cfg"))
    made = []
    for source, dest in copies:
        if dest.lower() in files:
            continue
        os.makedirs(os.path.join(stage, *dest.split("/")[:-1]), exist_ok=True)
        shutil.copyfile(os.path.join(stage, *source.split("/")),
                        os.path.join(stage, *dest.split("/")))
        made.append(dest)
    LOG.info("the image has no removable-media loader; copied %s from %s", ", ".join(made),
             directory)
    return made


def write_tree(node: str, stage: str) -> list[str]:
    """Copy ``stage`` onto the FAT filesystem on ``node`` (overwriting); return the files."""
    entries = sorted(os.listdir(stage))
    if entries:
        tools.run("mcopy", "-s", "-p", "-m", "-D", "o", "-i", node,
                  *[os.path.join(stage, e) for e in entries], "::/", env=MTOOLS_ENV,
                  timeout=COPY_TIMEOUT)
    return sorted(loaders.regular_files(stage).values())


def add_fstab_entry(root: str, esp_uuid: str) -> str:
    """Append a /boot/efi line for the new ESP to the image's fstab unless it has one."""
    path = chroot.resolve(root, "/etc/fstab")
    if not os.path.isfile(path):
        return "no-fstab"
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and \
                fields[1].rstrip("/") == IMAGE_ESP:
            if esp_uuid.lower() in fields[0].lower():
                return "present"
            LOG.warning("the image's /etc/fstab mounts %s from %s, not from the new EFI "
                        "system partition (UUID=%s); leaving it as it is", IMAGE_ESP,
                        fields[0], esp_uuid)
            return "other-entry"
    with open(path, "a", encoding="utf-8", errors="surrogateescape") as f:
        f.write(("" if not text or text.endswith("\n") else "\n")
                + f"UUID={esp_uuid}\t{IMAGE_ESP}\tvfat\tumask=0077\t0\t1\n")
    return "added"


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem; None if unknown."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def scratch_dir() -> str:
    """The writable temporary directory with the most free space, for ESP files."""
    found = [(free_bytes(d) or 0, d) for d in (tempfile.gettempdir(), *SCRATCH_DIRS)
             if os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK)]
    return max(found)[1] if found else tempfile.gettempdir()


@contextlib.contextmanager
def read_back(node: str) -> Iterator[str]:
    """The ESP's files, copied out with mtools (no mount, works without a vfat driver)."""
    with tempfile.TemporaryDirectory(prefix="deploy-agent-esp-", dir=scratch_dir()) as tree:
        raid_uefi.extract(node, tree)
        yield tree


def _register(disk: str, esp: devices.DiskPartition, arch: str,
              written: list[str]) -> uefi.UefiOutcome:
    with read_back(esp.node) as tree:
        have = {k.lower() for k in loaders.regular_files(tree)}
        missing = [p for p in written if p.lower() not in have]
        if missing:
            raise CommandExecutionError(f"the EFI system partition {esp.node} lacks "
                                        f"{', '.join(missing[:5])} after copying")
        scan = loaders.scan(tree, arch)
    if not scan.loaders:
        raise CommandExecutionError(
            f"the EFI system partition {esp.node} holds no boot loader for {arch} after it "
            "was filled from the image"
            + (f" ({'; '.join(scan.problems)})" if scan.problems else ""))
    if scan.fallback is None:
        LOG.warning("the removable-media loader %s is missing on %s: the node boots only "
                    "through NVRAM entries", scan.expected_fallback, esp.node)
    entries: list[efibootmgr.BootEntry] = []
    if uefi.nvram_available():
        entries = efibootmgr.register(disk, esp.number, scan.loaders)
    else:
        LOG.warning("no NVRAM boot entries can be created (%s); the firmware must find %s "
                    "by itself", "no efibootmgr" if uefi.efi_booted()
                    else "the ramdisk booted in BIOS mode",
                    scan.fallback or scan.expected_fallback)
    return uefi.UefiOutcome(esp=esp.node, partition=esp.number, loaders=scan.loaders,
                            entries=entries,
                            fallback_missing=None if scan.fallback else scan.expected_fallback,
                            problems=scan.problems)


def _require_grub(grub: grub_bios.ImageGrub, arch: str) -> None:
    missing = [name for name, have in (("grub-install", grub.install),
                                       ("grub-mkconfig", grub.mkconfig)) if not have]
    if missing:
        raise CommandExecutionError(
            f"the image's {IMAGE_ESP} holds no UEFI boot loader for {arch}, and the image has "
            f"no {' or '.join(missing)} (looked for grub2-* and grub-* in "
            f"/{', /'.join(chroot.PROGRAM_DIRS)}) to install one; use an image that carries "
            "its EFI files in /boot/efi or has grub for UEFI")


def _esp_mount_point(root: str) -> str:
    target = chroot.resolve(root, IMAGE_ESP)
    if os.path.lexists(target) and not os.path.isdir(target):
        raise InvalidImage(f"the image's {IMAGE_ESP} is not a directory; cannot mount the EFI "
                           "system partition on it")
    os.makedirs(target, mode=0o755, exist_ok=True)
    return target


def _device_size(node: str) -> int:
    try:
        with open(node, "rb") as f:
            return f.seek(0, os.SEEK_END)
    except OSError:
        return 0


def _grub_loader_dirs(files: dict[str, str]) -> list[str]:
    """ESP directories (as on disk) holding a grub or shim loader, the removable one aside."""
    dirs = []
    for key, path in files.items():
        base = os.path.basename(key)
        directory = os.path.dirname(key)
        if directory != loaders.FALLBACK_DIR and base.endswith(".efi") and \
                base.startswith(("grub", "shim")):
            on_disk = os.path.dirname(path)
            if on_disk not in dirs:
                dirs.append(on_disk)
    return dirs
