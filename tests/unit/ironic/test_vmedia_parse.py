"""The pure parts of boot_method=vmedia: parameters.txt lines, netmasks, labels from bytes."""

from __future__ import annotations

import subprocess

import pytest

from agent import config
from agent.disk import vmedia as media
from agent.ironic import netconfig, vmedia


def test_parameters_txt_lines() -> None:
    found = vmedia.VmediaConfig()
    text = "# Ironic writes none, people might\na=1\r\nb=x=y\nno equals\nc=two words\n=v\n\n"
    assert vmedia._params(text, found) == "a=1 b=x=y"
    assert [m.split(" is ")[0] for m in found.errors] == [
        "parameters.txt line 4", "parameters.txt line 5", "parameters.txt line 6"]


def test_appended_parameters_win_and_name_their_source() -> None:
    cfg = config.load(cmdline="ipa-debug=0 ipa-insecure=1", extra_cmdline="ipa-debug=1",
                      env={}, read_proc=False)
    assert cfg.debug is True and cfg.insecure is True
    with pytest.raises(config.ConfigError, match="vmedia parameters.txt ipa-debug"):
        config.load(cmdline="", extra_cmdline="ipa-debug=maybe", env={}, read_proc=False)


def test_keyfile_needs_a_certfile(tmp_path) -> None:
    toml = tmp_path / "a.toml"
    toml.write_text('keyfile = "/k.pem"\n')
    with pytest.raises(config.ConfigError, match="keyfile needs certfile"):
        config.load(cmdline="", config_file=str(toml), env={}, read_proc=False)


@pytest.mark.parametrize("text, wanted", [
    ("boot_method=vmedia", True), ("BOOT_METHOD=vmedia", False), ("boot_method=VMEDIA", True),
    ("ipa-debug=1", False), ("", False)])
def test_wanted(text: str, wanted: bool) -> None:
    assert vmedia.wanted(cmdline=text) is wanted


def test_paths_ironic_wrote_for_etc_move_to_the_runtime_dir() -> None:
    assert vmedia._local_path("/etc/ironic-python-agent/ironic.crt", "/run/x") == \
        "/run/x/etc/ironic-python-agent/ironic.crt"
    assert vmedia._local_path("/etc/ssl/ca.pem", "/run/x") == "/etc/ssl/ca.pem"


@pytest.mark.parametrize("mask, version, prefix", [
    ("255.255.255.0", 4, 24), ("0.0.0.0", 4, 0), ("24", 4, 24), (64, 6, 64),
    ("ffff:ffff:ffff:ffff::", 6, 64), ("::", 6, 0)])
def test_prefix(mask, version: int, prefix: int) -> None:
    assert netconfig._prefix(mask, version) == prefix


@pytest.mark.parametrize("mask, version", [
    ("255.0.255.0", 4), ("33", 4), ("255.255.255.0", 6), ("nonsense", 4)])
def test_bad_prefix(mask: str, version: int) -> None:
    with pytest.raises(ValueError):
        netconfig._prefix(mask, version)


def test_an_address_of_the_wrong_family_is_refused() -> None:
    with pytest.raises(ValueError, match="does not match"):
        netconfig._interface_address({"type": "ipv6", "ip_address": "192.0.2.1/24"})
    assert netconfig._interface_address(
        {"type": "ipv4", "ip_address": "192.0.2.1", "netmask": "255.255.255.128"}) == \
        "192.0.2.1/25"


def test_labels_from_bytes(tmp_path) -> None:
    img = tmp_path / "f.img"
    img.write_bytes(b"\0" * 1440 * 1024)
    subprocess.run(["mkfs.vfat", "-n", "ir-vfd-dev", str(img)], check=True,
                   capture_output=True)
    assert media.probe(str(img)) == ("vfat", "ir-vfd-dev")
    # a file is never read-only or sr*, but the vfd label alone is enough
    assert media.classify(str(img), read_only=False).kind == "vfd"
    assert media.probe(str(tmp_path / "missing")) == (None, None)
    blank = tmp_path / "blank"
    blank.write_bytes(b"\0" * 4096)
    assert media.classify(str(blank), read_only=True) is None
