"""The deploy ramdisk (issue 9's tools/build-ramdisk), rebuilt only when its inputs change.

The cache key covers everything that ends up in the ramdisk: the agent's
source, the elements, the build script and the packaging metadata.  A build
goes to ``.cache/vm/ramdisk/<arch>-<key>/`` through a scratch directory, so
a failed or interrupted build is never reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable

from vm import cache

KERNEL = "deploy-agent.kernel"
INITRAMFS = "deploy-agent.initramfs"
SUMS = "deploy-agent.sha256"
INPUTS = ("agent", "elements", "tools/build-ramdisk", "tools/assemble-foreign",
          "tools/build-burnin-tools", "setup.cfg", "setup.py", "pyproject.toml",
          "requirements.txt")
# builders, tried in order; the second one needs no foreign-architecture chroot (and
# is not tried again when build-ramdisk already handed over to it)
ASSEMBLER = "tools/assemble-foreign"
BUILDERS = {"amd64": ("tools/build-ramdisk",),
            "ppc64el": ("tools/build-ramdisk", ASSEMBLER),
            "arm64": ("tools/build-ramdisk", ASSEMBLER)}
HANDED_OVER = "without a chroot (tools/assemble-foreign)"


class RamdiskError(Exception):
    pass


@dataclasses.dataclass
class Ramdisk:
    directory: str
    arch: str
    build_s: float = 0.0
    cached: bool = True

    @property
    def kernel(self) -> str:
        return os.path.join(self.directory, KERNEL)

    @property
    def initramfs(self) -> str:
        return os.path.join(self.directory, INITRAMFS)

    def sizes(self) -> str:
        return ", ".join(f"{os.path.basename(p)} {os.path.getsize(p) / 2**20:.1f} MiB"
                         for p in (self.kernel, self.initramfs))


def problems(directory: str, verify: bool = True) -> list[str]:
    """What is wrong with the artifacts in ``directory`` (empty: usable)."""
    found = []
    for name in (KERNEL, INITRAMFS):
        if not os.path.isfile(os.path.join(directory, name)):
            found.append(f"{name} is missing")
    if found or not verify:
        return found
    try:
        with open(os.path.join(directory, SUMS), encoding="utf-8") as f:
            sums = dict(reversed(line.split()) for line in f if line.strip())
    except (OSError, ValueError):
        return found           # hand-made artifacts without a checksum file are allowed
    for name in (KERNEL, INITRAMFS):
        with open(os.path.join(directory, name), "rb") as f:
            if sums.get(name) and hashlib.file_digest(f, "sha256").hexdigest() != sums[name]:
                found.append(f"{name} does not match {SUMS}")
    return found


def cache_key(arch: str, release: str) -> str:
    return cache.tree_digest(INPUTS, extra=[arch, release])


def _build(arch: str, release: str, out: str, log: Callable[[str], None]) -> None:
    errors = []
    handed_over = False
    for builder in BUILDERS[arch]:
        script = os.path.join(cache.REPO, builder)
        if not os.path.isfile(script):
            errors.append(f"{builder} does not exist")
            continue
        if builder == ASSEMBLER and handed_over:
            continue            # it has just failed under build-ramdisk
        argv = [sys.executable, script, "--output", out, "--release", release,
                "--arch", arch]
        if builder.endswith("build-ramdisk"):
            argv.append("--quiet")
        log(f"building the {arch} ramdisk: {' '.join(argv[1:])}")
        result = subprocess.run(argv, cwd=cache.REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        if result.returncode == 0 and not problems(out):
            return
        handed_over = HANDED_OVER in result.stdout
        errors.append(f"{builder} exited {result.returncode}: "
                      + "\n    ".join(result.stdout.strip().splitlines()[-15:]))
    raise RamdiskError(f"no {arch} ramdisk could be built:\n  " + "\n  ".join(errors))


def ensure(arch: str, *, release: str = "bookworm", prebuilt: str | None = None,
           cache_dir: str | None = None, log: Callable[[str], None] = print) -> Ramdisk:
    """A usable ramdisk: ``prebuilt`` if given, else the cached build for the current inputs."""
    if prebuilt:
        wrong = problems(prebuilt)
        if wrong:
            raise RamdiskError(f"--ramdisk-dir {prebuilt}: " + "; ".join(wrong))
        return Ramdisk(os.path.abspath(prebuilt), arch)
    base = os.path.join(cache_dir or cache.cache_root(), "ramdisk")
    final = os.path.join(base, f"{arch}-{cache_key(arch, release)[:16]}")
    if os.path.isdir(final) and not problems(final):
        return Ramdisk(final, arch)
    started = time.monotonic()
    with cache.building(final) as scratch:
        _build(arch, release, scratch, log)
    cache.prune(base, f"{arch}-", keep=2, protect=final)
    return Ramdisk(final, arch, round(time.monotonic() - started, 1), cached=False)
