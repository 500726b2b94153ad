"""system_vendor from SMBIOS sysfs and from the ppc64le device tree."""

from __future__ import annotations

import os

from agent.hardware import dmi
from tests.unit.hardware.fake_sysfs import write

PPC = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "hardware", "ppc64le")


def test_smbios_sysfs(tmp_path):
    base = tmp_path / "sys/class/dmi/id"
    for name, value in {"product_name": "PowerEdge R640", "product_serial": "ABC1234",
                        "sys_vendor": "Dell Inc.", "bios_vendor": "Dell Inc.",
                        "bios_version": "2.12.2", "bios_date": "07/09/2021"}.items():
        write(base / name, value + "\n")
    assert dmi.collect(str(tmp_path)) == {
        "product_name": "PowerEdge R640", "serial_number": "ABC1234",
        "manufacturer": "Dell Inc.",
        "firmware": {"vendor": "Dell Inc.", "version": "2.12.2", "build_date": "07/09/2021"}}


def test_unreadable_smbios_serial_is_null(tmp_path):
    write(tmp_path / "sys/class/dmi/id/product_name", "KVM\n")
    info = dmi.collect(str(tmp_path))
    assert info["product_name"] == "KVM" and info["serial_number"] is None


def test_ppc64le_device_tree():
    assert dmi.collect(PPC) == {
        "product_name": "IBM,8335-GTH", "serial_number": "IBM,0278A1B2C",
        "manufacturer": "IBM",
        "firmware": {"vendor": "IBM", "version": "skiboot-v6.5.4-ibm", "build_date": None}}


def test_vendor_derived_from_model_prefix(tmp_path):
    write(tmp_path / "proc/device-tree/model", b"IBM,9009-22A\0")
    assert dmi.collect(str(tmp_path))["manufacturer"] == "IBM"


def test_no_source_keeps_the_object_with_null_fields(tmp_path, caplog):
    caplog.set_level("INFO")
    info = dmi.collect(str(tmp_path))
    assert info["manufacturer"] is None and info["firmware"]["version"] is None
    assert "no SMBIOS" in caplog.text
