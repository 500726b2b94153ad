"""inject_files request checks and partition matching, without any disk."""

from __future__ import annotations

import base64

import pytest

from agent.errors import DeviceNotFound, InvalidCommandParamsError
from agent.imaging import inject_files, inject_spec
from agent.imaging.inject_targets import Target, resolve

SECRET = "c2VjcmV0LXBhc3N3b3JkLWRvLW5vdC1lY2hv"   # base64 of a secret-looking payload
NODE = {"uuid": "n-1", "properties": {}}


def validate(files, node=NODE, ports=None):
    return inject_spec.validate(node, files, ports)


def problem(files, node=NODE) -> str:
    with pytest.raises(InvalidCommandParamsError) as info:
        validate(files, node)
    return info.value.details


def test_valid_entry_is_decoded() -> None:
    [entry] = validate([{"path": "/etc//./x.conf", "partition": "2", "content": SECRET,
                         "mode": 0o600, "dirmode": 0o700, "owner": 0, "group": -1}])
    assert entry.path == "/etc/x.conf" and entry.parts == ("etc", "x.conf")
    assert entry.partition == 2 and entry.content == base64.b64decode(SECRET)
    assert (entry.mode, entry.dirmode, entry.owner, entry.group) == (0o600, 0o700, 0, -1)
    assert not entry.delete


@pytest.mark.parametrize("entry, expected", [
    ({"path": "etc/x", "content": ""}, "must be absolute"),
    ({"path": "/etc/../x", "content": ""}, "'..'"),
    ({"path": "/etc/x/", "content": ""}, "names a directory"),
    ({"path": "/x", "content": ""}, "root directory needs 'partition'"),
    ({"path": "/", "partition": 1, "content": ""}, "names a directory"),
    ({"path": "/etc/x", "content": "not base64!"}, "not valid base64"),
    ({"path": "/etc/x"}, "'content' is required"),
    ({"path": "/etc/x", "content": SECRET, "deleted": True}, "cannot be used with"),
    ({"path": "/etc/x", "deleted": "yes"}, "'deleted' must be true or false"),
    ({"path": "/etc/x", "content": "", "mode": 0o10000}, "'mode' must be an integer"),
    ({"path": "/etc/x", "content": "", "mode": True}, "'mode' must be an integer"),
    ({"path": "/etc/x", "content": "", "dirmode": "0755"}, "'dirmode' must be an integer"),
    ({"path": "/etc/x", "content": "", "owner": -2}, "'owner' must be an integer"),
    ({"path": "/etc/x", "content": "", "colour": "red"}, "unexpected field(s) colour"),
    ({"path": "/etc/x", "content": "", "partition": 0}, "start at 1"),
    ({"path": "/etc/x", "content": "", "partition": 1.5}, "'partition' must be"),
    ({"path": "/etc/x", "content": "", "partition": {"size": 1}}, "unexpected: size"),
    ({"path": "/etc/x", "content": "", "partition": {"label": ""}}, "non-empty string"),
    ({"path": "/etc/x", "content": "ftp://host/x"}, "http or https"),
    ({"path": "/etc/x", "content": "http://h/{node.__class__}"}, "placeholder"),
    ({"path": "/etc/x", "content": "http://h/{node[missing]}"}, "placeholder"),
    ({"path": "/etc/x", "content": "http://h/{node[uuid]:>99}"}, "placeholder"),
    ({"path": "/" + "a" * 256 + "/x", "content": ""}, "longer than 255"),
    ("not an object", "must be an object"),
])
def test_each_problem_is_named(entry, expected) -> None:
    assert expected in problem([entry])


def test_all_problems_reported_at_once_by_position_without_echoing_content() -> None:
    node = {"properties": {"inject_files": [{"path": "rel", "content": SECRET}]}}
    text = problem([{"path": "/etc/a", "content": SECRET, "deleted": True},
                    {"path": "/etc/b", "content": SECRET + "!"}], node)
    assert "node.properties.inject_files[0]" in text
    assert "files[0]" in text and "files[1]" in text
    assert SECRET not in text


def test_properties_first_then_arguments() -> None:
    node = {"properties": {"inject_files": [{"path": "/etc/p", "content": ""}]}}
    entries = validate([{"path": "/etc/a", "content": ""}], node)
    assert [(e.source, e.path) for e in entries] == [
        ("node.properties.inject_files[0]", "/etc/p"), ("files[0]", "/etc/a")]


def test_property_given_as_json_text() -> None:
    node = {"properties": {"inject_files": '[{"path": "/etc/p", "deleted": true}]'}}
    [entry] = validate(None, node)
    assert entry.delete


@pytest.mark.parametrize("files", ["nope", {"path": "/etc/x"}, 3])
def test_files_must_be_a_list(files) -> None:
    with pytest.raises(InvalidCommandParamsError, match="must be a list"):
        validate(files)


def test_delete_by_flag_or_explicit_null() -> None:
    a, b = validate([{"path": "/etc/a", "deleted": True},
                     {"path": "/etc/b", "content": None}])
    assert a.delete and b.delete and a.content is None


def test_url_filled_from_node_and_ports_by_item_only() -> None:
    url = "https://h/{node[uuid]}/{ports[0][address]}"
    [entry] = validate([{"path": "/etc/a", "content": url}],
                       ports=[{"address": "52:54:00:aa:bb:cc"}])
    assert entry.url == "https://h/n-1/52:54:00:aa:bb:cc" and entry.content is None


@pytest.mark.parametrize("raw, expected", [
    (True, True), (False, False), ("false", False), (None, True), ("no", False)])
def test_verify_ca_booleans(raw, expected) -> None:
    assert inject_spec.verify_setting(raw) is expected


def test_verify_ca_bundle_path(tmp_path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    assert inject_spec.verify_setting(str(bundle)) == str(bundle)
    with pytest.raises(InvalidCommandParamsError):
        inject_spec.verify_setting(str(tmp_path / "missing.pem"))


def test_nothing_to_do_touches_no_disk() -> None:
    assert inject_files.run(None, NODE, files=[]) == {  # type: ignore[arg-type]
        "result": "inject_files: no files to inject", "partitions": []}


TARGETS = [
    Target("/dev/sda1", 1, "vfat", uuid="18D5-D1B4", label="ESP", partlabel="EFI",
           partuuid="0b0c6a2e-0000-4000-8000-000000000001"),
    Target("/dev/sda2", 2, "ext4", uuid="7d1f7a5c-5e0a-4c2e-9a57-3b8e6b1c0a11", label="root",
           partlabel="rootpart", partuuid="0b0c6a2e-0000-4000-8000-000000000002"),
    Target("/dev/sda3", 3, "xfs", uuid="0e7b6f2a-2f7c-4d4e-8d3b-5a6c7b8d9e0f", label="data",
           partlabel="datapart", partuuid="0b0c6a2e-0000-4000-8000-000000000003"),
]


@pytest.mark.parametrize("spec, node", [
    (2, "/dev/sda2"),
    ("18d5-d1b4", "/dev/sda1"),
    ("7D1F7A5C-5E0A-4C2E-9A57-3B8E6B1C0A11", "/dev/sda2"),
    ("0b0c6a2e-0000-4000-8000-000000000003", "/dev/sda3"),
    ("root", "/dev/sda2"),
    ("datapart", "/dev/sda3"),
    ({"fstype": "vfat"}, "/dev/sda1"),
    ({"label": "<in> oo"}, "/dev/sda2"),
    ({"partlabel": "<or> nothing <or> datapart"}, "/dev/sda3"),
    ({"number": 3}, "/dev/sda3"),
    ({"number": "<or> 1 <or> 9", "fstype": "vfat"}, "/dev/sda1"),
    ({"name": "/dev/sda2"}, "/dev/sda2"),
])
def test_resolve(spec, node) -> None:
    assert resolve(spec, TARGETS, "/dev/sda").node == node


@pytest.mark.parametrize("spec, expected", [
    (4, "no partition of /dev/sda matches partition number 4"),
    ("Root", "no partition"),                     # labels compare exactly
    ({"fstype": "<or> ext4 <or> xfs"}, "matches 2 partitions"),
])
def test_resolve_refuses(spec, expected) -> None:
    with pytest.raises(DeviceNotFound, match=expected) as info:
        resolve(spec, TARGETS, "/dev/sda")
    if "no partition" in expected:
        assert "seen: /dev/sda1" in info.value.details


def test_hint_with_a_numeric_operator_is_a_bad_request() -> None:
    with pytest.raises(InvalidCommandParamsError, match="hint 'label'"):
        resolve({"label": ">= 3"}, TARGETS, "/dev/sda")


def test_device_path_must_be_a_block_device(tmp_path) -> None:
    with pytest.raises(DeviceNotFound, match="no block device"):
        resolve(str(tmp_path), TARGETS, "/dev/sda")
