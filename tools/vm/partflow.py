"""``tools/vm-deploy --partition-image --firmware uefi``: a partition image deployed and booted.

The partition image is the test OS's root filesystem alone, made from the
cached whole-disk image without loop devices:

    testos.img partition 3 (ext4, 48 MiB)   copied out byte for byte: same UUID
      + /boot/efi/EFI/debian/grubx64.efi    the test OS's UEFI grub, as a Debian
                                            image's /boot/efi holds it (no
                                            removable EFI/BOOT copy: grub-install
                                            without --removable)
      + /etc/fstab                          a root line, so the agent must append
                                            its /boot/efi line

That grub embeds a config that finds the root filesystem by its UUID, which
a partition image keeps, so nothing on the ESP has to name the new layout.

    boot the ramdisk under OVMF; the stand-in controller's lookup answer sets
      enable_bios_bootloader_install (Ironic's [conductor] option; the agent
      has no kernel parameter for it)
    -> write_image with image_type partition (root_mb, deploy_boot_mode uefi,
       kernel/ramdisk URLs, as Ironic 39's write_image sends them): the agent
       lays out an empty ESP, the config drive and root
    -> install_bootloader: the ESP holds no loader, so the opt-in path
       (uefi_partition) fills it from the image's /boot/efi, adds
       EFI/BOOT/BOOTX64.EFI and the fstab line, and writes NVRAM entries
    -> power off; boot the disk: marker, config drive hostname, and OVMF
       started an NVRAM entry (flow.DeployRun.boot_disk)
    -> read the deployed disk back on the host: the ESP's loaders (mtools) and
       the root filesystem's fstab (debugfs) are what the agent should have
       written
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from agent.driver import request as deploy_request
from vm import cache, flow, testos
from vm.report import banner, say
from vm.runbase import Failed

IMAGE_NAME = "testos-root.img.zst"
KERNEL_NAME = "testos-vmlinuz"
RAMDISK_NAME = "testos-initrd.img"
# Ironic's root_gb is whole GiB; write_image sends root_mb = root_gb * 1024
ROOT_GB = 1
IMAGE_LOADER = "EFI/debian/grubx64.efi"
REMOVABLE = "EFI/BOOT/BOOTX64.EFI"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}
SECTOR = 512


@dataclasses.dataclass
class PartitionImage:
    directory: str
    image: str              # raw ext4
    served: str             # zstd of ``image``: what the agent downloads
    sha256: str             # of ``served``
    root_fs_uuid: str
    loader_sha256: str      # of the grubx64.efi put under /boot/efi
    cached: bool = True

    @property
    def kernel(self) -> str:
        return os.path.join(self.directory, KERNEL_NAME)

    @property
    def ramdisk(self) -> str:
        return os.path.join(self.directory, RAMDISK_NAME)


def _run(*argv: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True,
                            env=None if env is None else os.environ | env)
    # debugfs reports a failed request on stderr and still exits 0
    if result.returncode or (argv[0] == "debugfs" and _debugfs_error(result.stderr)):
        raise testos.BuildError(f"{argv[0]} failed ({result.returncode}): "
                                f"{(result.stderr or result.stdout).strip()[-800:]}")
    return result.stdout


def _debugfs_error(stderr: str) -> bool:
    return any(line.strip() and not line.startswith(("debugfs ", "Allocated inode"))
               for line in stderr.splitlines())


def partitions(image: str) -> list[dict[str, Any]]:
    """The image file's partition table as ``sfdisk --json`` reads it (no loop device)."""
    table = json.loads(_run("sfdisk", "--json", image))["partitiontable"]
    if table.get("sectorsize", SECTOR) != SECTOR:
        raise testos.BuildError(f"{image} has {table.get('sectorsize')}-byte sectors")
    return list(table.get("partitions", []))


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _copy_range(src_path: str, dst_path: str, offset: int, length: int) -> None:
    """``dd skip=... count=... conv=sparse`` in Python."""
    with open(src_path, "rb") as src, open(dst_path, "wb") as dst:
        src.seek(offset)
        left = length
        while left:
            block = src.read(min(left, 1 << 20))
            if not block:
                raise testos.BuildError(f"{src_path} ends inside the root partition")
            if block.count(0) == len(block):
                dst.seek(len(block), os.SEEK_CUR)
            else:
                dst.write(block)
            left -= len(block)
        dst.truncate(length)


def assemble(os_image: testos.TestOS, out: str) -> None:
    """The partition image from the whole-disk test OS image, into ``out``."""
    parts = {p.get("name"): p for p in partitions(os_image.image)}
    if "root" not in parts or "esp" not in parts:
        raise testos.BuildError(f"{os_image.image} has no partitions named root and esp")
    root, esp = parts["root"], parts["esp"]
    image = os.path.join(out, "root.img")
    _copy_range(os_image.image, image, root["start"] * SECTOR, root["size"] * SECTOR)
    with tempfile.TemporaryDirectory(prefix="partimage-", dir=out) as work:
        loader = os.path.join(work, "grubx64.efi")
        _run("mcopy", "-i", f"{os_image.image}@@{esp['start'] * SECTOR}",
             "::/" + IMAGE_LOADER, loader, env=MTOOLS_ENV)
        fstab = os.path.join(work, "fstab")
        with open(fstab, "w", encoding="utf-8") as f:
            f.write(f"UUID={os_image.root_fs_uuid}\t/\text4\tdefaults\t0\t1\n")
        commands = os.path.join(work, "debugfs.cmd")
        with open(commands, "w", encoding="utf-8") as f:
            for directory in ("/boot/efi", "/boot/efi/EFI", "/boot/efi/EFI/debian"):
                f.write(f"mkdir {directory}\n")
            f.write(f"write {loader} /boot/efi/{IMAGE_LOADER}\n")
            f.write(f"write {fstab} /etc/fstab\n")
            # the kernel and initramfs Ironic's instance_info names for a partition image
            f.write(f"dump /boot/vmlinuz {os.path.join(out, KERNEL_NAME)}\n")
            f.write(f"dump /boot/initrd.img {os.path.join(out, RAMDISK_NAME)}\n")
        _run("debugfs", "-w", "-f", commands, image)
        _run("e2fsck", "-f", "-n", image)
        loader_sha = _sha256(loader)
    served = image + ".zst"
    _run("zstd", "-q", "-f", "-T0", "-10", image, "-o", served)
    with open(os.path.join(out, "partimage.json"), "w", encoding="utf-8") as f:
        json.dump({"sha256": _sha256(served), "root_fs_uuid": os_image.root_fs_uuid,
                   "loader_sha256": loader_sha, "from": os_image.sha256}, f, indent=1)


def load(directory: str) -> PartitionImage | None:
    try:
        with open(os.path.join(directory, "partimage.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    image = os.path.join(directory, "root.img")
    found = PartitionImage(directory, image, image + ".zst", meta["sha256"],
                           meta["root_fs_uuid"], meta["loader_sha256"])
    if not all(os.path.isfile(p) for p in (image, found.served, found.kernel, found.ramdisk)):
        return None
    return found


def ensure(os_image: testos.TestOS, cache_dir: str | None = None,
           log: Callable[[str], None] = print) -> PartitionImage:
    """The cached partition image for this test OS build, made when missing (seconds)."""
    base = os.path.join(cache_dir or cache.cache_root(), "partimage")
    key = cache.digest(os_image.sha256, _sha256(__file__))
    final = os.path.join(base, key[:16])
    found = load(final)
    if found:
        return found
    log("building the partition image from the test OS's root filesystem")
    with cache.building(final) as scratch:
        assemble(os_image, scratch)
    built = load(final)
    if built is None:
        raise testos.BuildError(f"the partition image build left nothing usable in {final}")
    built.cached = False
    cache.prune(base, "", keep=2, protect=final)
    return built


def check_disk(disk: str, esp_uuid: str | None, loader_sha256: str) -> str:
    """What the agent left on the deployed disk, read back without loop devices."""
    parts = partitions(disk)
    numbered = list(enumerate(parts, 1))
    esps = [(n, p) for n, p in numbered if p.get("type", "").upper() == ESP_TYPE]
    roots = [(n, p) for n, p in numbered if p.get("name") == "root"]
    if len(esps) != 1 or len(roots) != 1:
        raise Failed(f"the deployed disk has {len(esps)} ESP(s) and {len(roots)} root "
                     f"partition(s); expected one each: {json.dumps(parts)[:400]}")
    (number, esp), (_, root) = esps[0], roots[0]
    with tempfile.TemporaryDirectory(prefix="partflow-esp-") as tree:
        try:
            _run("mcopy", "-s", "-n", "-i", f"{disk}@@{esp['start'] * SECTOR}", "::/*", tree,
                 env=MTOOLS_ENV)
        except testos.BuildError as exc:
            raise Failed(f"cannot read the deployed ESP: {exc}") from None
        files = {os.path.relpath(os.path.join(d, n), tree).upper(): os.path.join(d, n)
                 for d, _, names in os.walk(tree) for n in names}
        for wanted in (IMAGE_LOADER, REMOVABLE):
            path = files.get(wanted.upper())
            if path is None:
                raise Failed(f"the deployed ESP lacks {wanted}; it holds {sorted(files)}")
            if _sha256(path) != loader_sha256:
                raise Failed(f"{wanted} on the deployed ESP is not the image's grubx64.efi")
    try:
        fstab = _run("debugfs", "-R", "cat /etc/fstab", f"{disk}?offset={root['start'] * SECTOR}")
    except testos.BuildError as exc:
        raise Failed(f"cannot read /etc/fstab from the deployed root: {exc}") from None
    lines = [line.split() for line in fstab.splitlines() if line.strip()]
    efi = [f for f in lines if len(f) >= 3 and f[1] == "/boot/efi"]
    if len(efi) != 1 or efi[0][2] != "vfat" or not esp_uuid \
            or efi[0][0].upper() != f"UUID={esp_uuid}".upper():
        raise Failed(f"the deployed /etc/fstab does not mount the new ESP (UUID={esp_uuid}) "
                     f"on /boot/efi: {fstab.strip()!r}")
    return (f"ESP (partition {number}) holds {IMAGE_LOADER} and {REMOVABLE} (the "
            f"image's grub); fstab: {' '.join(efi[0][:3])}")


class PartitionRun(flow.DeployRun):
    def __init__(self, opts: flow.Options, sup: Any) -> None:
        super().__init__(opts, sup)
        self.run_dir += "-partition"
        self.esp_uuid: str | None = None

    def build(self) -> None:
        super().build()
        started = time.monotonic()
        self.part = ensure(self.os, self.opts.cache_dir, log=say)
        note = (f"{'cached' if self.part.cached else 'built'}: root filesystem "
                f"{os.path.getsize(self.part.image) / 2**20:.0f} MiB (UUID "
                f"{self.part.root_fs_uuid}), served as zstd "
                f"{os.path.getsize(self.part.served) / 2**20:.1f} MiB")
        self.timings.add("partition image", time.monotonic() - started, note)
        say(f"partition image {note}")

    def serve(self) -> None:
        super().serve()
        from vm import services

        for name, path in ((IMAGE_NAME, self.part.served), (KERNEL_NAME, self.part.kernel),
                           (RAMDISK_NAME, self.part.ramdisk)):
            services.link(self.http_dir, name, path)
        # Ironic's [conductor]enable_bios_bootloader_install reaches the agent in the
        # lookup answer; the agent reads it at its lookup, after this
        self.controller.config["enable_bios_bootloader_install"] = True

    def image_info(self) -> tuple[dict[str, Any], dict[str, Any]]:
        whole, configdrive = super().image_info()
        # the fields Ironic 39's write_image adds for a partition image
        # (PARTITION_IMAGE_LABELS, deploy_boot_mode, boot_option, disk_label)
        extra = {"kernel": f"{flow.GUEST_HTTP}/{KERNEL_NAME}",
                 "ramdisk": f"{flow.GUEST_HTTP}/{RAMDISK_NAME}",
                 "root_gb": ROOT_GB, "root_mb": ROOT_GB * 1024, "swap_mb": 0,
                 "ephemeral_mb": 0, "ephemeral_format": None, "preserve_ephemeral": False,
                 "image_type": "partition", "deploy_boot_mode": self.opts.firmware,
                 "boot_option": "local", "disk_label": "gpt"}
        info = deploy_request.build_image_info(
            f"{flow.GUEST_HTTP}/{IMAGE_NAME}", f"sha256:{self.part.sha256}",
            disk_format="raw", node_uuid=self.node_uuid, configdrive=configdrive, extra=extra)
        return info, configdrive

    def deploy(self) -> Any:
        report = super().deploy()
        uuids = report.partition_uuids or {}
        if not report.bootloader.startswith("installed (partition image)"):
            raise Failed(f"install_bootloader was not called for the partition image: "
                         f"{report.bootloader}")
        if uuids.get("root uuid") != self.part.root_fs_uuid:
            raise Failed(f"get_partition_uuids reports root {uuids.get('root uuid')!r}; the "
                         f"image's root filesystem is {self.part.root_fs_uuid}")
        self.esp_uuid = uuids.get("efi system partition uuid")
        if not self.esp_uuid:
            raise Failed("get_partition_uuids reports no EFI system partition for a UEFI "
                         f"partition image: {json.dumps(uuids)[:300]}")
        return report

    def check_disk(self) -> None:
        started = time.monotonic()
        summary = check_disk(self.disk, self.esp_uuid, self.part.loader_sha256)
        self.timings.add("deployed disk read back", time.monotonic() - started, summary)
        say(summary)

    def execute(self) -> None:
        banner(f"vm-deploy --partition-image: amd64, {self.opts.firmware}")
        self.build()
        self.serve()
        self.boot_ramdisk()
        self.deploy()
        self.boot_disk()
        say(f"the partition image booted from disk through the ESP the agent filled, and "
            f"read hostname {self.hostname} from its config drive")
        self.check_disk()

    def result(self, ok: bool, error: str | None) -> dict[str, Any]:
        return super().result(ok, error) | {"partition_image": True}
