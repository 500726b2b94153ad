"""The ``boot`` inventory object."""

from __future__ import annotations

import os
from typing import Any

from agent.disk import sysfs


def collect(root: str = "/", bootif: str | None = None) -> dict[str, Any]:
    uefi = os.path.isdir(sysfs.path(root, "/sys/firmware/efi"))
    # Ironic compares BOOTIF verbatim (01-aa-bb-...), so it is not normalised here
    return {"current_boot_mode": "uefi" if uefi else "bios", "pxe_interface": bootif}
