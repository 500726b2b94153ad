"""ATA security erase, fed captured ``hdparm -I`` output."""

from __future__ import annotations

import pytest

from agent import tools
from agent.hardware import erase_ata
from agent.hardware.disks import Disk
from agent.hardware.erase_base import EraseFailed, EraseUnsupported
from tests.unit.hardware.tool_fakes import FakeTools, fixture

SDA = Disk(name="/dev/sda", size=500107862016, tran="sata")
SET = ("hdparm", "--user-master", "u", "--security-set-pass", "NULL", "/dev/sda")
ERASE = ("hdparm", "--user-master", "u", "--security-erase-enhanced", "NULL", "/dev/sda")


def sequence(*outputs):
    remaining = list(outputs)
    return lambda key: remaining.pop(0)


def test_parse_security_states():
    frozen = erase_ata.parse_security(fixture("hdparm_I_frozen.txt"))
    assert frozen == erase_ata.SecurityState(supported=True, enabled=False, locked=False,
                                             frozen=True, enhanced=True, erase_minutes=8)
    assert erase_ata.parse_security(fixture("hdparm_I_not_frozen.txt")).frozen is False
    assert erase_ata.parse_security(fixture("hdparm_I_enabled.txt")).enabled is True
    assert erase_ata.parse_security(fixture("hdparm_I_no_security.txt")) is None


def test_frozen_drive_is_refused_before_any_security_command(monkeypatch):
    fake = FakeTools({("hdparm", "-I", "/dev/sda"): fixture("hdparm_I_frozen.txt")})
    monkeypatch.setattr(tools, "run", fake)
    with pytest.raises(EraseFailed, match="frozen"):
        erase_ata.erase(SDA)
    assert fake.calls == [("hdparm", "-I", "/dev/sda")]


def test_not_frozen_sets_password_then_enhanced_erase(monkeypatch):
    fake = FakeTools({
        ("hdparm", "-I", "/dev/sda"): sequence(fixture("hdparm_I_not_frozen.txt"),
                                               fixture("hdparm_I_not_frozen.txt")),
        SET: "security_password: \"NULL\"\n", ERASE: "security_password: \"NULL\"\n"})
    monkeypatch.setattr(tools, "run", fake)
    assert erase_ata.erase(SDA) == "ATA secure erase (enhanced)"
    assert fake.calls[1:3] == [SET, ERASE]


def test_leftover_password_from_an_interrupted_attempt_is_reused(monkeypatch):
    fake = FakeTools({
        ("hdparm", "-I", "/dev/sda"): sequence(fixture("hdparm_I_enabled.txt"),
                                               fixture("hdparm_I_not_frozen.txt")),
        ERASE: ""})
    monkeypatch.setattr(tools, "run", fake)
    erase_ata.erase(SDA)
    assert SET not in fake.calls and ERASE in fake.calls


def test_security_still_enabled_after_erase_fails(monkeypatch):
    fake = FakeTools({
        ("hdparm", "-I", "/dev/sda"): sequence(fixture("hdparm_I_not_frozen.txt"),
                                               fixture("hdparm_I_enabled.txt")),
        SET: "", ERASE: ""})
    monkeypatch.setattr(tools, "run", fake)
    with pytest.raises(EraseFailed, match="still enabled"):
        erase_ata.erase(SDA)


def test_no_security_feature_set_or_nvme_is_unsupported(monkeypatch):
    monkeypatch.setattr(tools, "run", FakeTools(
        {("hdparm", "-I", "/dev/sda"): fixture("hdparm_I_no_security.txt")}))
    with pytest.raises(EraseUnsupported, match="security feature set"):
        erase_ata.erase(SDA)
    with pytest.raises(EraseUnsupported, match="not an ATA"):
        erase_ata.erase(Disk(name="/dev/nvme0n1", size=1, tran="nvme"))
    with pytest.raises(EraseUnsupported, match="hdparm -I failed"):
        erase_ata.erase(Disk(name="/dev/sdz", size=1))


def test_locked_drive_is_unlocked_with_the_agent_password(monkeypatch):
    locked = fixture("hdparm_I_enabled.txt").replace("\tnot\tlocked", "\t\tlocked")
    unlock = ("hdparm", "--user-master", "u", "--security-unlock", "NULL", "/dev/sda")
    fake = FakeTools({("hdparm", "-I", "/dev/sda"): sequence(
        locked, fixture("hdparm_I_not_frozen.txt")), unlock: "", ERASE: ""})
    monkeypatch.setattr(tools, "run", fake)
    erase_ata.erase(SDA)
    assert fake.calls[1:3] == [unlock, ERASE]


def test_failing_security_command_is_a_failure(monkeypatch):
    fake = FakeTools({("hdparm", "-I", "/dev/sda"): fixture("hdparm_I_not_frozen.txt")})
    monkeypatch.setattr(tools, "run", fake)                  # set-pass is not answered
    with pytest.raises(EraseFailed, match="hdparm --security-set-pass NULL failed"):
        erase_ata.erase(SDA)
    assert ERASE not in fake.calls
