"""NVMe format erase, fed captured ``nvme id-ctrl`` / ``nvme list`` JSON."""

from __future__ import annotations

import json

import pytest

from agent import tools
from agent.errors import ToolError
from agent.hardware import erase_nvme
from agent.hardware.disks import Disk
from agent.hardware.erase_base import EraseFailed, EraseUnsupported
from tests.unit.hardware.tool_fakes import FakeTools, fixture

NVME0 = Disk(name="/dev/nvme0n1", size=1000204886016, tran="nvme")
NVME1 = Disk(name="/dev/nvme1n1", size=1000204886016, tran="nvme")


def id_ctrl(name: str, **override) -> str:
    data = json.loads(fixture(name))
    data.update(override)
    return json.dumps(data)


def test_crypto_erase_when_fna_says_so(monkeypatch):
    fake = FakeTools({
        ("nvme", "id-ctrl", "/dev/nvme0n1", "-o", "json"): fixture("nvme_id_ctrl_crypto.json"),
        ("nvme", "format", "/dev/nvme0n1", "--ses=2", "--force"): "Success formatting "
                                                                     "namespace:1\n"})
    monkeypatch.setattr(tools, "run", fake)
    assert erase_nvme.erase(NVME0, ["/dev/nvme0n1"]) == "nvme format (cryptographic erase)"
    assert fake.calls[-1] == ("nvme", "format", "/dev/nvme0n1", "--ses=2", "--force")


def test_user_data_erase_without_crypto_support(monkeypatch):
    fake = FakeTools({
        ("nvme", "id-ctrl", "/dev/nvme1n1", "-o", "json"):
            fixture("nvme_id_ctrl_user_data.json"),
        ("nvme", "format", "/dev/nvme1n1", "--ses=1", "--force"): "Success formatting "
                                                                     "namespace:1\n"})
    monkeypatch.setattr(tools, "run", fake)
    assert erase_nvme.erase(NVME1, ["/dev/nvme1n1"]) == "nvme format (user data erase)"


def test_format_of_all_namespaces_refused_when_a_sibling_is_spared(monkeypatch):
    fake = FakeTools({
        ("nvme", "id-ctrl", "/dev/nvme1n1", "-o", "json"):
            id_ctrl("nvme_id_ctrl_user_data.json", fna=1),
        ("nvme", "list", "-o", "json"): fixture("nvme_list.json")})
    monkeypatch.setattr(tools, "run", fake)
    with pytest.raises(EraseUnsupported, match="also erase namespace.*nvme1n2"):
        erase_nvme.erase(NVME1, ["/dev/nvme1n1"])
    assert not any(c[1] == "format" for c in fake.calls)


def test_format_of_all_namespaces_allowed_when_all_are_erased(monkeypatch):
    fake = FakeTools({
        ("nvme", "id-ctrl", "/dev/nvme1n1", "-o", "json"):
            id_ctrl("nvme_id_ctrl_user_data.json", fna=1),
        ("nvme", "list", "-o", "json"): fixture("nvme_list.json"),
        ("nvme", "format", "/dev/nvme1n1", "--ses=1", "--force"): ""})
    monkeypatch.setattr(tools, "run", fake)
    assert erase_nvme.erase(NVME1, ["/dev/nvme1n1", "/dev/nvme1n2"]) == \
        "nvme format (user data erase)"
    # the sibling check ran and found nothing spared, then exactly one format
    assert ("nvme", "list", "-o", "json") in fake.calls
    assert [c for c in fake.calls if c[1] == "format"] == \
        [("nvme", "format", "/dev/nvme1n1", "--ses=1", "--force")]


def test_no_format_support_or_not_nvme_is_unsupported(monkeypatch):
    monkeypatch.setattr(tools, "run", FakeTools({
        ("nvme", "id-ctrl", "/dev/nvme0n1", "-o", "json"):
            id_ctrl("nvme_id_ctrl_crypto.json", oacs=0)}))
    with pytest.raises(EraseUnsupported, match="Format NVM"):
        erase_nvme.erase(NVME0, [])
    with pytest.raises(EraseUnsupported, match="not an NVMe"):
        erase_nvme.erase(Disk(name="/dev/sda", size=1, tran="sata"), [])


def test_failed_format_is_a_failure(monkeypatch):
    monkeypatch.setattr(tools, "run", FakeTools({
        ("nvme", "id-ctrl", "/dev/nvme0n1", "-o", "json"): fixture("nvme_id_ctrl_crypto.json"),
        ("nvme", "format", "/dev/nvme0n1", "--ses=2", "--force"):
            ToolError("nvme format failed with exit code 1: NVMe status: INVALID_FORMAT",
                      tool="nvme")}))
    with pytest.raises(EraseFailed, match="INVALID_FORMAT"):
        erase_nvme.erase(NVME0, ["/dev/nvme0n1"])


def test_siblings_share_the_controller_serial():
    listing = json.loads(fixture("nvme_list.json"))
    assert erase_nvme.siblings(listing, "/dev/nvme1n1") == {"/dev/nvme1n1", "/dev/nvme1n2"}
    assert erase_nvme.siblings(listing, "/dev/nvme0n1") == {"/dev/nvme0n1"}


@pytest.mark.parametrize("responses, fragment", [
    ({}, "nvme id-ctrl failed"),
    ({("nvme", "id-ctrl", "/dev/nvme0n1", "-o", "json"): "NVMe status: INVALID_FIELD\n"},
     "nvme id-ctrl printed no JSON"),
    ({("nvme", "id-ctrl", "/dev/nvme0n1", "-o", "json"):
      id_ctrl("nvme_id_ctrl_crypto.json", fna=5)}, "nvme list failed"),
])
def test_tool_problems_make_the_method_unsupported(monkeypatch, responses, fragment):
    monkeypatch.setattr(tools, "run", FakeTools(responses))
    with pytest.raises(EraseUnsupported, match=fragment):
        erase_nvme.erase(NVME0, ["/dev/nvme0n1"])
