"""UEFI NVRAM boot entries through efibootmgr.

Output formats handled (efibootmgr 17 and 18): ``Boot0004* label`` for active
entries and ``Boot0004  label`` for inactive ones; with ``-v`` (and in 18 even
without it) a tab separates the label from the device path.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
from collections.abc import Sequence

from agent import tools
from agent.errors import CommandExecutionError
from agent.imaging.bootloader.loaders import Loader

LOG = logging.getLogger(__name__)

_ENTRY = re.compile(r"^Boot([0-9A-Fa-f]{4})([* ]) (.*)$")
_LENIENT = re.compile(r"^Boot([0-9A-Fa-f]{4})(\*?)\s+(.*)$")
TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class BootEntry:
    number: str          # four upper-case hex digits, as -b wants them
    label: str
    active: bool
    device_path: str | None = None


def parse(output: str) -> list[BootEntry]:
    """Boot entries listed by ``efibootmgr`` or ``efibootmgr -v``."""
    entries = []
    for line in output.splitlines():
        match = _ENTRY.match(line) or _LENIENT.match(line)
        if not match:
            continue
        rest = match.group(3)
        label, _, path = rest.partition("\t")
        entries.append(BootEntry(match.group(1).upper(), label.rstrip(),
                                 match.group(2) == "*", path.strip() or None))
    return entries


def list_entries() -> list[BootEntry]:
    return parse(_run("-v").stdout)


def register(disk: str, partition: int, loaders: Sequence[Loader]) -> list[BootEntry]:
    """Create one entry per loader, replacing entries that carry the same labels.

    efibootmgr puts every new entry at the front of BootOrder, so the loaders
    are created least preferred first and the best one ends up booting first.
    """
    labels = {loader.label for loader in loaders}
    for entry in list_entries():
        if entry.label in labels:
            LOG.info("removing stale boot entry Boot%s %r (%s)", entry.number, entry.label,
                     entry.device_path or "no device path shown")
            _run("-b", entry.number, "-B")
    created = []
    for loader in reversed(loaders):
        out = _run("-c", "-d", disk, "-p", str(partition), "-w", "-L", loader.label,
                   "-l", loader.efi_path)
        matches = [e for e in parse(out.stdout) if e.label == loader.label]
        if not matches:
            raise CommandExecutionError(
                f"efibootmgr reported success but lists no boot entry labelled "
                f"{loader.label!r} for {loader.efi_path} on {disk} partition {partition}")
        LOG.info("created boot entry Boot%s %r -> %s on %s partition %d", matches[-1].number,
                 loader.label, loader.efi_path, disk, partition)
        created.append(matches[-1])
    return created


def _run(*args: str) -> subprocess.CompletedProcess:
    return tools.run("efibootmgr", *args, timeout=TIMEOUT)
