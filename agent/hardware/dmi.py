"""The ``system_vendor`` inventory object.

x86 and arm64 servers publish SMBIOS through /sys/class/dmi/id.  POWER
machines have no SMBIOS; the same facts live in the device tree: ``model``
(type-model), ``system-id`` (serial), ``vendor`` and the firmware version
under ``ibm,opal`` (OPAL/OpenPOWER) or ``openprom`` (PowerVM).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from agent.disk import sysfs

LOG = logging.getLogger(__name__)
_DT_FIRMWARE = ("ibm,opal/firmware/version", "ibm,firmware-versions/version",
                "openprom/ibm,fw-vernum_encoded", "openprom/model")


def _dmi(root: str) -> dict[str, Any] | None:
    base = sysfs.path(root, "/sys/class/dmi/id")
    if not os.path.isdir(base):
        return None

    def read(name: str) -> str | None:
        return sysfs.read_str(os.path.join(base, name))
    return {
        "product_name": read("product_name"),
        "serial_number": read("product_serial"),
        "manufacturer": read("sys_vendor"),
        "firmware": {"vendor": read("bios_vendor"), "version": read("bios_version"),
                     "build_date": read("bios_date")},
    }


def _device_tree(root: str) -> dict[str, Any] | None:
    base = sysfs.path(root, "/proc/device-tree")
    model = sysfs.read_str(os.path.join(base, "model"))
    if model is None:
        return None
    vendor = sysfs.read_str(os.path.join(base, "vendor"))
    if vendor is None and "," in model:
        vendor = model.split(",", 1)[0]           # "IBM,9009-22A" names its maker
    firmware = None
    for rel in _DT_FIRMWARE:
        firmware = sysfs.read_str(os.path.join(base, rel))
        if firmware:
            break
    return {
        "product_name": model,
        "serial_number": sysfs.read_str(os.path.join(base, "system-id")),
        "manufacturer": vendor,
        "firmware": {"vendor": vendor, "version": firmware, "build_date": None},
    }


def collect(root: str = "/") -> dict[str, Any]:
    found = _dmi(root) or _device_tree(root)
    if found is None:
        # some VMs (Firecracker, some arm64 boards) publish neither; consumers
        # index into system_vendor, so keep the object and null its fields
        LOG.info("no SMBIOS (/sys/class/dmi/id) and no device-tree model: "
                 "system_vendor fields are null")
        found = {"product_name": None, "serial_number": None, "manufacturer": None,
                 "firmware": {"vendor": None, "version": None, "build_date": None}}
    return found
