"""image_info, config drive and bootloader rules as the conductor builds them."""

from __future__ import annotations

import base64
import gzip

import pytest

from agent.driver.request import bootloader_needed, build_image_info, load_configdrive
from agent.errors import DeployFailed
from agent.imaging.configdrive_build import build_iso


def test_image_info_checksum_forms():
    info = build_image_info("http://h/images/cirros.raw?sig=1", "SHA512:AbC")
    assert info["id"] == "cirros.raw" and info["urls"] == ["http://h/images/cirros.raw?sig=1"]
    assert (info["os_hash_algo"], info["os_hash_value"]) == ("sha512", "AbC")
    assert "checksum" not in info and info["disk_format"] == "raw"
    legacy = build_image_info("http://h/x.img", "a" * 64, image_id="x", node_uuid="n-1",
                              configdrive="H4sI")
    assert legacy["checksum"] == "a" * 64 and "os_hash_algo" not in legacy
    assert legacy["node_uuid"] == "n-1" and legacy["configdrive"] == "H4sI"
    url = build_image_info("http://h/x.img", "https://h/SHA256SUMS")
    assert url["checksum"] == "https://h/SHA256SUMS"


def test_configdrive_argument_forms(tmp_path):
    assert load_configdrive(None) is None
    assert load_configdrive('{"meta_data": {"a": 1}}') == {"meta_data": {"a": 1}}
    assert load_configdrive("https://h/cd.iso.gz") == "https://h/cd.iso.gz"
    iso = build_iso({"meta_data": {"uuid": "u"}})
    (tmp_path / "cd.iso").write_bytes(iso)
    encoded = load_configdrive(str(tmp_path / "cd.iso"))
    assert gzip.decompress(base64.b64decode(encoded)) == iso
    (tmp_path / "cd.gz").write_bytes(gzip.compress(iso))
    assert gzip.decompress(base64.b64decode(load_configdrive(str(tmp_path / "cd.gz")))) == iso
    (tmp_path / "cd.b64").write_text(encoded + "\n")
    assert load_configdrive(str(tmp_path / "cd.b64")) == encoded
    (tmp_path / "cd.json").write_text('{"user_data": "#cloud-config"}')
    assert load_configdrive(str(tmp_path / "cd.json")) == {"user_data": "#cloud-config"}


def test_configdrive_argument_errors(tmp_path):
    with pytest.raises(DeployFailed, match="cannot read config drive"):
        load_configdrive(str(tmp_path / "missing.iso"))
    with pytest.raises(DeployFailed, match="not valid JSON"):
        load_configdrive("{not json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(DeployFailed, match="is not valid JSON"):
        load_configdrive(str(tmp_path / "bad.json"))


@pytest.mark.parametrize("info,mode,root,expected", [
    ({}, "bios", "0x12345678", None),                        # whole-disk BIOS: skipped
    ({}, "uefi", "0x00000000", "whole-disk image in UEFI mode"),
    ({"image_type": "partition"}, "bios", "uuid-1", "partition image"),
    ({"image_type": "partition"}, "uefi", None, None),
])
def test_bootloader_rules(info, mode, root, expected):
    assert bootloader_needed(info, mode, root) == expected
