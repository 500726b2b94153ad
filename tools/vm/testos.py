"""The small bootable OS that tools/vm-deploy deploys, built without loop devices.

From three Debian packages (the cloud kernel, busybox-static and mdadm),
fetched with ``apt-get download`` from the machine's own apt sources:

    GPT disk image (67 MiB, ~10 MiB zstd)
      1  BIOS boot  1 MiB   GRUB core.img (i386-pc); boot.img's code in the MBR
      2  ESP       16 MiB   FAT, EFI/debian/grubx64.efi + EFI/BOOT/BOOTX64.EFI
      3  root      48 MiB   ext4: kernel, initramfs, grub.cfg, busybox, /sbin/init

The initramfs loads the virtio, md and config-drive filesystem modules,
assembles any md arrays with mdadm (degraded ones too: tools/vm/testos_md.py,
so that the same image boots from a plain disk or from a software RAID), and
switches to the root filesystem, whose /sbin/init is the "first-boot unit":
it prints a marker line, finds the config drive by label ``config-2``,
prints the hostname from ``openstack/latest/meta_data.json`` and powers off.
Filesystems come from ``mkfs.ext4 -d`` and ``mkfs.vfat -C`` + mtools, the
table from ``sgdisk`` on the image file, and everything lands with
``dd conv=notrunc``-style writes: this needs neither loop devices nor root
privileges on the disk.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable

from vm import cache, grubimg, testos_md

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = os.path.join(HERE, "testos-files")
KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
MIB = 1 << 20
SECTOR = 512
# (name, GPT type, size in MiB); the layout is fixed so offsets need no probing
LAYOUT = (("bios-boot", "EF02", 1), ("esp", "EF00", 16), ("root", "8300", 48))
FIRST_LBA = 2048
# what the initramfs loads (their dependencies are worked out from the modules)
WANTED_MODULES = ("virtio_pci", "virtio_blk", "isofs", "vfat", "nls_cp437", "nls_ascii",
                  "nls_utf8", *testos_md.MD_MODULES)
MARKER = "DEPLOY-AGENT-TEST-OS:"
HOST_TOOLS = {"apt-get": "apt", "dpkg-deb": "dpkg", "sgdisk": "gdisk",
              "mkfs.ext4": "e2fsprogs", "mkfs.vfat": "dosfstools", "mcopy": "mtools",
              "mmd": "mtools", "cpio": "cpio", "zstd": "zstd", "modinfo": "kmod",
              "grub-mkimage": "grub-common", "readelf": "binutils"}


class BuildError(Exception):
    pass


@dataclasses.dataclass
class TestOS:
    directory: str
    image: str              # raw disk image
    served: str             # what the agent downloads (zstd of the image)
    sha256: str             # of ``served``: the checksum covers the bytes as served
    root_fs_uuid: str
    build_s: float = 0.0
    cached: bool = True

    @property
    def size(self) -> int:
        return os.path.getsize(self.image)


def _run(*argv: str, cwd: str | None = None) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise BuildError(f"{argv[0]} failed ({result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()[-800:]}")
    return result.stdout


def check_host() -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)})
    if missing:
        raise BuildError("the test OS build needs: apt-get install " + " ".join(missing))
    for platform in ("i386-pc", "x86_64-efi"):
        try:
            grubimg.platform_dir(platform)
        except grubimg.GrubError as exc:
            raise BuildError(str(exc)) from None


# -- packages ------------------------------------------------------------------------

def _candidate(package: str) -> str | None:
    """``name_version`` apt would download for ``package`` (a meta package is followed)."""
    result = subprocess.run(["apt-cache", "show", "--no-all-versions", package],
                            capture_output=True, text=True)
    fields = dict(line.split(": ", 1) for line in result.stdout.splitlines()
                  if ": " in line and not line.startswith(" "))
    if result.returncode or "Version" not in fields:
        return None
    depends = fields.get("Depends", "")
    if package == KERNEL_META:
        real = next((d.split()[0] for d in depends.split(",")
                     if d.strip().startswith("linux-image-")), None)
        return _candidate(real) if real else None
    return f"{fields['Package']}_{fields['Version'].split(':')[-1]}"


def package_files(deb_dir: str) -> dict[str, str]:
    """The .deb files for the kernel, busybox and mdadm: apt's candidates, downloaded once.

    Without apt lists (an offline machine) the newest cached files are used.
    """
    os.makedirs(deb_dir, exist_ok=True)
    found: dict[str, str] = {}
    for package, pattern in ((KERNEL_META, "linux-image-*-cloud-amd64_*.deb"),
                             (BUSYBOX, "busybox-static_*.deb"),
                             (testos_md.PACKAGE, testos_md.DEB_PATTERN)):
        wanted = _candidate(package)
        if wanted:
            name, version = wanted.split("_", 1)
            hits = glob.glob(os.path.join(deb_dir, f"{name}_*{version}_*.deb"))
            if not hits:
                _run("apt-get", "download", "-q", name, cwd=deb_dir)
                hits = glob.glob(os.path.join(deb_dir, f"{name}_*{version}_*.deb"))
        else:
            hits = sorted(glob.glob(os.path.join(deb_dir, pattern)), key=os.path.getmtime)
        if not hits:
            raise BuildError(f"cannot find {package}: apt knows no candidate (run apt-get "
                             f"update) and {deb_dir} holds no cached copy")
        found[package] = hits[-1]
    return found


def _tool_versions() -> str:
    result = subprocess.run(["dpkg-query", "-W", "grub-pc-bin", "grub-efi-amd64-bin",
                             "e2fsprogs", "dosfstools", "gdisk"], capture_output=True, text=True)
    return result.stdout


def cache_key(debs: dict[str, str]) -> str:
    sources = [os.path.relpath(p, cache.REPO) for p in
               (os.path.join(HERE, "testos.py"), os.path.join(HERE, "grubimg.py"),
                os.path.join(HERE, "testos_md.py"), FILES)]
    extra = [os.path.basename(d) for d in sorted(debs.values())] + [_tool_versions()]
    return cache.tree_digest(sources, extra=extra + testos_md.key_parts(debs[testos_md.PACKAGE]))


# -- the parts -----------------------------------------------------------------------

def _extract(deb: str, dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    _run("dpkg-deb", "-x", deb, dest)


def _module_order(moddir: str, wanted: tuple[str, ...]) -> list[tuple[str, str]]:
    """(name, path) for ``wanted`` and their dependencies, dependencies first."""
    paths: dict[str, str] = {}
    for path in glob.glob(os.path.join(moddir, "kernel", "**", "*.ko"), recursive=True):
        paths[os.path.basename(path)[:-3].replace("-", "_")] = path
    builtin = set()
    builtin_list = os.path.join(moddir, "modules.builtin")
    if os.path.exists(builtin_list):
        with open(builtin_list, encoding="utf-8") as f:
            builtin = {os.path.basename(line.strip())[:-3].replace("-", "_") for line in f}
    order: list[tuple[str, str]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in paths:
            raise BuildError(f"kernel module {name} is neither built in nor in {moddir}")
        deps = _run("modinfo", "-F", "depends", paths[name]).strip()
        for dep in filter(None, deps.split(",")):
            visit(dep)
        order.append((name, paths[name]))

    for name in wanted:
        visit(name)
    return order


def _busybox_tree(busybox: str, root: str) -> None:
    """busybox plus a symlink per applet (the amd64 binary runs on this amd64 host)."""
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    target = os.path.join(root, "bin", "busybox")
    shutil.copy2(busybox, target)
    for applet in _run(busybox, "--list").split():
        link = os.path.join(root, "bin", applet)
        if applet != "busybox" and not os.path.lexists(link):
            os.symlink("busybox", link)
    for name in ("dev", "proc", "sys", "mnt", "tmp", "newroot", "etc", "lib/modules"):
        os.makedirs(os.path.join(root, name), exist_ok=True)


def _cpio_gzip(tree: str, output: str) -> None:
    names = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            names.append(os.path.relpath(os.path.join(dirpath, name), tree))
    proc = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0"],
                          input="\n".join(names).encode(), cwd=tree, capture_output=True)
    if proc.returncode:
        raise BuildError(f"cpio failed: {proc.stderr.decode(errors='replace')}")
    with gzip.GzipFile(output, "wb", compresslevel=6, mtime=0) as f:
        f.write(proc.stdout)


def _initramfs(kernel_tree: str, busybox: str, mdadm_deb: str, output: str, work: str) -> None:
    moddirs = glob.glob(os.path.join(kernel_tree, "lib", "modules", "*"))
    if len(moddirs) != 1:
        raise BuildError(f"expected one kernel module tree, found {moddirs}")
    tree = os.path.join(work, "initramfs")
    _busybox_tree(busybox, tree)
    order = _module_order(moddirs[0], WANTED_MODULES)
    for name, path in order:
        shutil.copy2(path, os.path.join(tree, "lib", "modules", f"{name}.ko"))
    with open(os.path.join(tree, "etc", "modules-load"), "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\n" for name, _ in order))
    # arrays are assembled in the initramfs, as a distribution image with mdadm does
    testos_md.install(mdadm_deb, tree, work)
    shutil.copy2(os.path.join(FILES, "initramfs-init"), os.path.join(tree, "init"))
    _cpio_gzip(tree, output)


def _root_tree(kernel_tree: str, busybox: str, initrd: str, root_uuid: str, work: str) -> str:
    tree = os.path.join(work, "root")
    _busybox_tree(busybox, tree)
    os.rmdir(os.path.join(tree, "newroot"))
    for name in ("sbin", "boot/grub", "var/lib", "root"):
        os.makedirs(os.path.join(tree, name), exist_ok=True)
    kernels = glob.glob(os.path.join(kernel_tree, "boot", "vmlinuz-*"))
    if len(kernels) != 1:
        raise BuildError(f"expected one kernel in the package, found {kernels}")
    shutil.copy2(kernels[0], os.path.join(tree, "boot", "vmlinuz"))
    shutil.copy2(initrd, os.path.join(tree, "boot", "initrd.img"))
    shutil.copy2(os.path.join(FILES, "init"), os.path.join(tree, "sbin", "init"))
    with open(os.path.join(FILES, "grub.cfg"), encoding="utf-8") as f:
        text = f.read().replace("@ROOT_UUID@", root_uuid)
    with open(os.path.join(tree, "boot", "grub", "grub.cfg"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(tree, "etc", "os-release"), "w", encoding="utf-8") as f:
        f.write('NAME="deploy-agent test OS"\nID=deploy-agent-test-os\n')
    return tree


def _esp(efi_binary: str, output: str, size_mib: int, volume_id: str) -> None:
    _run("mkfs.vfat", "-C", "-n", "ESP", "-i", volume_id, output, str(size_mib * 1024))
    _run("mmd", "-i", output, "::/EFI", "::/EFI/BOOT", "::/EFI/debian")
    # the distribution path is what install_bootloader registers in NVRAM;
    # the removable-media path is the firmware's fallback when NVRAM is empty
    _run("mcopy", "-i", output, efi_binary, "::/EFI/debian/grubx64.efi")
    _run("mcopy", "-i", output, efi_binary, "::/EFI/BOOT/BOOTX64.EFI")


def _place(disk: str, part_image: str, first_lba: int) -> None:
    """``dd if=part_image of=disk bs=1M seek=... conv=notrunc``, sparse-friendly."""
    with open(part_image, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(first_lba * SECTOR)
        while block := src.read(MIB):
            if block.count(0) == len(block):
                dst.seek(len(block), os.SEEK_CUR)
            else:
                dst.write(block)


def assemble(debs: dict[str, str], out: str, key: str) -> TestOS:
    """Build the image into ``out``; identifiers derive from ``key`` (reproducible)."""
    ns = uuid.UUID(key[:32])
    ids = {n: str(uuid.uuid5(ns, n)) for n in ("disk", "root-fs", *[p[0] for p in LAYOUT])}
    with tempfile.TemporaryDirectory(prefix="testos-", dir=out) as work:
        kernel_tree = os.path.join(work, "kernel")
        _extract(debs[KERNEL_META], kernel_tree)
        bb_tree = os.path.join(work, "busybox")
        _extract(debs[BUSYBOX], bb_tree)
        busybox = os.path.join(bb_tree, "bin", "busybox")

        initrd = os.path.join(work, "initrd.img")
        _initramfs(kernel_tree, busybox, debs[testos_md.PACKAGE], initrd, work)
        root_tree = _root_tree(kernel_tree, busybox, initrd, ids["root-fs"], work)

        early = os.path.join(work, "early.cfg")
        with open(early, "w", encoding="utf-8") as f:
            f.write(grubimg.early_config(ids["root-fs"]))
        core = os.path.join(work, "core.img")
        grubimg.mkimage("i386-pc", core, early)
        efi = os.path.join(work, "grubx64.efi")
        grubimg.mkimage("x86_64-efi", efi, early)

        sizes = {name: mib for name, _, mib in LAYOUT}
        esp = os.path.join(work, "esp.img")
        _esp(efi, esp, sizes["esp"], ids["esp"].replace("-", "")[:8])
        root = os.path.join(work, "root.img")
        _run("mkfs.ext4", "-q", "-F", "-L", "testos-root", "-U", ids["root-fs"],
             "-E", "root_owner=0:0", "-d", root_tree, root, f"{sizes['root']}M")

        image = os.path.join(out, "testos.img")
        total = FIRST_LBA * SECTOR + sum(sizes.values()) * MIB + MIB
        with open(image, "wb") as f:
            f.truncate(total)
        argv = ["sgdisk", "-a", "2048", "-U", ids["disk"]]
        lba = FIRST_LBA
        starts = {}
        for number, (name, type_code, mib) in enumerate(LAYOUT, 1):
            end = lba + mib * MIB // SECTOR - 1
            argv += ["-n", f"{number}:{lba}:{end}", "-t", f"{number}:{type_code}",
                     "-c", f"{number}:{name}", "-u", f"{number}:{ids[name]}"]
            starts[name] = lba
            lba = end + 1
        _run(*argv, image)
        _place(image, esp, starts["esp"])
        _place(image, root, starts["root"])
        grubimg.install_bios(image, core, starts["bios-boot"], sizes["bios-boot"] * MIB // SECTOR)

    served = image + ".zst"
    _run("zstd", "-q", "-f", "-T0", "-10", image, "-o", served)
    with open(served, "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    result = TestOS(out, image, served, sha, ids["root-fs"])
    with open(os.path.join(out, "testos.json"), "w", encoding="utf-8") as f:
        json.dump({"sha256": sha, "root_fs_uuid": ids["root-fs"], "disk_guid": ids["disk"],
                   "debs": sorted(os.path.basename(d) for d in debs.values())}, f, indent=1)
    with open(served + ".sha256", "w", encoding="utf-8") as f:
        f.write(f"{sha}  {os.path.basename(served)}\n")
    return result


def load(directory: str) -> TestOS | None:
    try:
        with open(os.path.join(directory, "testos.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    image = os.path.join(directory, "testos.img")
    if not (os.path.isfile(image) and os.path.isfile(image + ".zst")):
        return None
    return TestOS(directory, image, image + ".zst", meta["sha256"], meta["root_fs_uuid"])


def ensure(cache_dir: str | None = None, log: Callable[[str], None] = print) -> TestOS:
    """The cached test OS for the current inputs, built when missing."""
    base = os.path.join(cache_dir or cache.cache_root(), "testos")
    check_host()
    debs = package_files(os.path.join(cache_dir or cache.cache_root(), "debs"))
    key = cache_key(debs)
    final = os.path.join(base, key[:16])
    found = load(final)
    if found:
        return found
    log(f"building the test OS image ({', '.join(os.path.basename(d) for d in debs.values())})")
    started = time.monotonic()
    with cache.building(final) as scratch:
        assemble(debs, scratch, key)
    built = load(final)
    if built is None:
        raise BuildError(f"the test OS build left no image in {final}")
    built.build_s = round(time.monotonic() - started, 1)
    built.cached = False
    cache.prune(base, "", keep=2, protect=final)
    return built
