"""Test disks for the bootloader paths: real loop disks, real filesystems, real grub.

The "tenant image" root filesystem is built from this host's own grub tools
(Debian grub2-common + grub-pc-bin) and the few shell utilities grub-mkconfig
needs, copied with their shared libraries, so the agent's chroot really runs
grub-install and grub-mkconfig against the loop disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess

MIB = 1024 * 1024
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
PREP_TYPE = "9E1A2D38-C612-4316-AA26-8B49521E5A8B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"

# grub-install/grub-mkconfig and what the /etc/grub.d scripts call
GRUB_PROGRAMS = ["grub-install", "grub-probe", "grub-mkconfig", "grub-mkrelpath",
                 "grub-editenv", "grub-script-check", "grub-file", "udevadm"]
SHELL_PROGRAMS = ["sh", "dash", "cat", "sed", "grep", "rm", "mv", "cp", "mkdir", "basename",
                  "dirname", "sort", "uname", "readlink", "tr", "head", "tail", "cut", "wc",
                  "id", "stat", "sleep", "chmod", "ls", "find", "gettext", "gettext.sh",
                  "awk", "mawk", "fgrep", "egrep", "true", "false", "test", "[", "printf",
                  "echo", "env", "touch", "ln", "realpath", "expr", "uniq", "tee", "mktemp", "sync"]
DATA_DIRS = ["/usr/lib/grub/i386-pc", "/usr/share/grub", "/etc/grub.d"]

# Every real image with grub has udevadm (systemd or eudev).  grub-install runs
# ``udevadm info --query path --name PART`` to read where a partition starts
# from sysfs, the only source for loop devices (they answer no HDIO_GETGEO).
# A host without the udev package has no udevadm to copy, so the test image
# gets this stand-in, which answers that one query the way udevadm does: from
# the node's device number, with no udev daemon or database involved.
UDEVADM_STANDIN = """\
if [ "$1 $2 $3 $4" != "info --query path --name" ] || [ $# -ne 5 ]; then
    echo "udevadm stand-in: only 'info --query path --name DEV' is supported" >&2
    exit 2
fi
numbers=$(stat -L -c '%t %T' "$5") || exit 1
set -- $numbers
path=$(readlink -f "/sys/dev/block/$((0x$1)):$((0x$2))") || exit 1
[ -e "$path" ] || { echo "udevadm stand-in: no sysfs entry for $5" >&2; exit 1; }
echo "${path#/sys}"
"""


def sh(*argv: str, input: str | bytes | None = None, check: bool = True,
       env: dict | None = None) -> subprocess.CompletedProcess:
    text = not isinstance(input, bytes)
    return subprocess.run(list(argv), input=input, capture_output=True, check=check,
                          text=text, env=env)


def expose(dev: str) -> None:
    """Partition nodes through BLKPG: this kernel parses no partition tables itself."""
    from agent.disk import reread
    reread.reread(dev)


def part(dev: str, number: int) -> str:
    from agent.disk import reread
    return reread.partition_device(dev, number)


def _host_path(name: str) -> str | None:
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        path = os.path.join(d, name)
        if os.path.exists(path):
            return path
    return None


def _libraries(binary: str) -> list[str]:
    proc = sh("ldd", binary, check=False)
    libs = []
    for line in proc.stdout.splitlines():
        for token in line.split():
            if token.startswith("/") and os.path.exists(token):
                libs.append(token)
    return libs


def _copy(src: str, root: str) -> None:
    """Copy ``src`` (following symlinks) to the same path under ``root``."""
    dest = os.path.join(root, src.lstrip("/"))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if not os.path.exists(dest):
        shutil.copy2(os.path.realpath(src), dest)


def populate_root(root: str, *, grub_dir: str = "grub", programs: list[str] | None = None,
                  kernel: bool = True) -> None:
    """Lay out a merged-/usr Debian-like root with the host's grub tools at ``root``."""
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc/default", "boot",
              "dev", "proc", "sys", "run", "tmp", "var/tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                         ("lib64", "usr/lib64")):
        if not os.path.lexists(os.path.join(root, link)):
            os.symlink(target, os.path.join(root, link))
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    for name in (GRUB_PROGRAMS if programs is None else programs) + SHELL_PROGRAMS:
        src = _host_path(name)
        if src is None:
            if name == "udevadm":
                write_script(os.path.join(root, "usr/bin/udevadm"), UDEVADM_STANDIN)
            continue
        _copy(src, root)
        for lib in _libraries(src):
            _copy(lib, root)
    for d in DATA_DIRS:
        shutil.copytree(d, os.path.join(root, d.lstrip("/")), symlinks=True,
                        dirs_exist_ok=True)
    with open(os.path.join(root, "etc/default/grub"), "w") as f:
        f.write('GRUB_DEFAULT=0\nGRUB_TIMEOUT=1\nGRUB_DISTRIBUTOR="Testix"\n'
                'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    os.makedirs(os.path.join(root, "boot", grub_dir), exist_ok=True)
    if kernel:
        # grub-mkconfig's 10_linux turns this pair into a menu entry
        for name in ("vmlinuz-6.1.0-test-amd64", "initrd.img-6.1.0-test-amd64"):
            with open(os.path.join(root, "boot", name), "wb") as f:
                f.write(b"\0" * 4096)


def write_script(path: str, body: str) -> None:
    """A small POSIX shell program inside a test root (e.g. a recording grub-install)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)


def fs_uuid(node: str) -> str:
    return sh("blkid", "-p", "-o", "value", "-s", "UUID", node).stdout.strip()


def fill_ext4(node: str, populate, label: str = "root") -> str:
    """mkfs.ext4 on ``node``, populate it through a temporary mount, return its UUID."""
    sh("mkfs.ext4", "-q", "-F", "-L", label, node)
    mnt = os.path.join("/tmp", f"bl-fill-{os.getpid()}-{os.path.basename(node)}")
    os.makedirs(mnt, exist_ok=True)
    sh("mount", node, mnt)
    try:
        populate(mnt)
    finally:
        sh("umount", mnt)
        os.rmdir(mnt)
    return fs_uuid(node)


def make_esp(node: str, files: dict[str, bytes]) -> str:
    """vfat on ``node`` holding ``files`` (ESP-relative paths), written with mtools."""
    sh("mkfs.vfat", "-F", "32", "-n", "EFI-PART", node)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    made = set()
    for rel in sorted(files):
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in made:
                sh("mmd", "-i", node, f"::/{d}", env=env)
                made.add(d)
        sh("mcopy", "-i", node, "-", f"::/{rel}", input=files[rel], env=env)
    return fs_uuid(node)


def shim_csv(loader: str, label: str, bom: bool = True, encoding: str = "utf-16-le") -> bytes:
    data = f"{loader},{label},,This is the boot entry for {label}\n".encode(encoding)
    return (b"\xff\xfe" + data) if bom and encoding == "utf-16-le" else data


def mounts_of(*needles: str) -> list[str]:
    """Lines of /proc/self/mountinfo that mention any of ``needles``."""
    with open("/proc/self/mountinfo") as f:
        return [line.strip() for line in f if any(n in line for n in needles)]


def gpt(dev: str, parts: list[tuple[int, str]]) -> list[str]:
    """GPT with (size MiB or 0 for the rest, type GUID) partitions; return their nodes."""
    argv = ["sgdisk", "-o"]
    for i, (size, type_guid) in enumerate(parts, 1):
        argv += ["-n", f"{i}:0:{f'+{size}M' if size else '0'}", "-t", f"{i}:{type_guid}"]
    sh(*argv, dev)
    expose(dev)
    return [part(dev, i) for i in range(1, len(parts) + 1)]


def msdos(dev: str, lines: list[str]) -> list[str]:
    """MBR table from sfdisk lines (e.g. 'start=2048, size=16MiB, type=41'); return nodes."""
    sh("sfdisk", "-q", dev, input="label: dos\n" + "\n".join(lines) + "\n")
    expose(dev)
    return [part(dev, i) for i in range(1, len(lines) + 1)]


def read_head(dev: str, length: int = 512, offset: int = 0) -> bytes:
    with open(dev, "rb") as f:
        f.seek(offset)
        return f.read(length)


def root_files(node: str, *paths: str) -> dict[str, str | None]:
    """Contents of files in the filesystem on ``node`` (None when absent), read afterwards."""
    found: dict[str, str | None] = {}

    def read(mnt: str) -> None:
        for path in paths:
            full = os.path.join(mnt, path.lstrip("/"))
            found[path] = open(full, errors="replace").read() if os.path.isfile(full) else None
    mnt = f"/tmp/bl-check-{os.getpid()}"
    os.makedirs(mnt, exist_ok=True)
    sh("mount", "-o", "ro", node, mnt)
    try:
        read(mnt)
    finally:
        sh("umount", mnt)
        os.rmdir(mnt)
    return found


def root_exists(node: str, *paths: str) -> dict[str, bool]:
    """Whether each path (file, directory or symlink) exists in the filesystem on ``node``."""
    found: dict[str, bool] = {}
    mnt = f"/tmp/bl-exists-{os.getpid()}"
    os.makedirs(mnt, exist_ok=True)
    sh("mount", "-o", "ro", node, mnt)
    try:
        for path in paths:
            found[path] = os.path.lexists(os.path.join(mnt, path.lstrip("/")))
    finally:
        sh("umount", mnt)
        os.rmdir(mnt)
    return found


def assert_clean(dev: str) -> None:
    assert mounts_of(dev, "deploy-agent-mnt-") == []
