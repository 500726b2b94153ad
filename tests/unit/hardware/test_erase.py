"""Erase planning, method preference, fallbacks and bounded concurrency."""

from __future__ import annotations

import threading
import time

import pytest

from agent.errors import Cancelled, CleaningError, UnsafeDevice
from agent.hardware import erase, erase_ata, erase_nvme, erase_overwrite
from agent.hardware.disks import Disk
from agent.hardware.erase_base import EraseFailed, EraseOptions, EraseUnsupported, options_from_node
from agent.progress import Progress


class Ctx:
    def __init__(self):
        self.progress = Progress()
        self.cancel = threading.Event()

    def check_cancelled(self):
        if self.cancel.is_set():
            raise Cancelled("cancelled")


@pytest.fixture
def no_guards(monkeypatch):
    refusals = {}
    monkeypatch.setattr(erase, "UsageSnapshot", lambda *a, **k: None)
    monkeypatch.setattr(erase, "refusal_reasons",
                        lambda disk, usage, guard_shared, stopping=(): refusals.get(disk.name, []))
    return refusals


@pytest.fixture
def methods(monkeypatch):
    """Every method unsupported unless a test says otherwise; records the order tried."""
    tried = []

    def make(label):
        def method(disk, *args, **kwargs):
            tried.append((label, disk.name))
            outcome = behaviour.get(label, EraseUnsupported("n/a"))
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        return method
    behaviour: dict[str, object] = {}
    monkeypatch.setattr(erase_nvme, "erase", make("nvme"))
    monkeypatch.setattr(erase_ata, "erase", make("ata"))
    monkeypatch.setattr(erase_overwrite, "discard", make("discard"))
    monkeypatch.setattr(erase_overwrite, "overwrite", make("overwrite"))
    return behaviour, tried


DISK = Disk(name="/dev/sda", size=1 << 30)


def run_one(options, disk=DISK):
    return erase.erase_one(disk, options, [disk.name], lambda f: None, lambda: None)


def test_preference_order_nvme_ata_discard_overwrite(methods):
    behaviour, tried = methods
    behaviour["overwrite"] = "overwritten"
    assert run_one(EraseOptions(discard=True)) == "overwritten"
    assert [t[0] for t in tried] == ["nvme", "ata", "discard", "overwrite"]


def test_first_applicable_method_wins(methods):
    behaviour, tried = methods
    behaviour["nvme"] = "nvme format (cryptographic erase)"
    assert run_one(EraseOptions()) == "nvme format (cryptographic erase)"
    assert [t[0] for t in tried] == ["nvme"]


def test_disabled_methods_and_discard_are_opt_outs(methods):
    behaviour, tried = methods
    behaviour["overwrite"] = "overwritten"
    run_one(EraseOptions(nvme=False, ata=False))
    assert [t[0] for t in tried] == ["overwrite"]


def test_failure_stops_unless_continue_is_allowed(methods):
    behaviour, tried = methods
    behaviour["ata"] = EraseFailed("the drive's security is frozen")
    behaviour["overwrite"] = "overwritten"
    with pytest.raises(CleaningError, match="ATA secure erase failed: the drive's security is "
                                            "frozen; set agent_continue_if_secure_erase_failed"):
        run_one(EraseOptions())
    assert "overwrite" not in [t[0] for t in tried]
    assert run_one(EraseOptions(continue_if_failed=True)) == "overwritten"


def test_overwrite_disabled_reports_not_erased(methods, caplog):
    assert run_one(EraseOptions(iterations=0, zeroize=False)).startswith("not erased")
    assert "the disk was NOT erased" in caplog.text


def test_every_method_failing_names_them_all(methods):
    behaviour, _ = methods
    behaviour["ata"] = EraseFailed("frozen")
    behaviour["overwrite"] = EraseFailed("short write at offset 0")
    with pytest.raises(CleaningError, match="every erase method failed: ATA secure erase: "
                                            "frozen; overwrite: short write"):
        run_one(EraseOptions(continue_if_failed=True))


def test_plan_refuses_all_before_anything_is_written(no_guards, methods):
    _, tried = methods
    no_guards["/dev/sdb"] = ["/dev/sdb is mounted"]
    no_guards["/dev/sdc"] = ["partition 1 of /dev/sdc has the VMFS partition type"]
    disks = [Disk(name=n, size=1) for n in ("/dev/sda", "/dev/sdb", "/dev/sdc")]
    with pytest.raises(UnsafeDevice) as exc:
        erase.erase_devices(disks, {}, EraseOptions())
    assert "nothing was written" in exc.value.details
    assert "/dev/sdb is mounted" in exc.value.details and "VMFS" in exc.value.details
    assert tried == []


def test_read_only_refused_or_skipped_by_option(no_guards, methods):
    behaviour, _ = methods
    behaviour["overwrite"] = "overwritten"
    disks = [Disk(name="/dev/sda", size=1), Disk(name="/dev/sr1", size=1, read_only=True)]
    with pytest.raises(UnsafeDevice, match="/dev/sr1 is read-only"):
        erase.erase_devices(disks, {}, EraseOptions())
    result = erase.erase_devices(disks, {}, EraseOptions(skip_read_only=True))
    assert result == {"erased": {"/dev/sda": "overwritten"},
                      "skipped": {"/dev/sr1": "read-only (agent_erase_skip_read_only)"}}


def test_skip_list_disks_are_never_touched(no_guards, methods):
    behaviour, tried = methods
    behaviour["overwrite"] = "overwritten"
    node = {"properties": {"skip_block_devices": [{"name": "/dev/sdb"}]}}
    disks = [Disk(name="/dev/sda", size=1), Disk(name="/dev/sdb", size=1)]
    result = erase.erase_devices(disks, node, EraseOptions())
    assert result["skipped"] == {"/dev/sdb": "listed in properties.skip_block_devices"}
    assert {name for _, name in tried} == {"/dev/sda"}


def test_bounded_concurrency_and_progress(no_guards, monkeypatch):
    lock = threading.Lock()
    running = [0]
    peak = [0]

    def slow_overwrite(disk, iterations, zeroize, progress, check_cancelled):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        for i in range(1, 5):
            time.sleep(0.02)
            progress(i / 4)
        with lock:
            running[0] -= 1
        return "overwritten"
    monkeypatch.setattr(erase_overwrite, "overwrite", slow_overwrite)
    ctx = Ctx()
    disks = [Disk(name=f"/dev/sd{c}", size=1 << 20, kind="loop") for c in "abcdef"]
    result = erase.erase_devices(disks, {}, EraseOptions(nvme=False, ata=False,
                                                         concurrency=2), ctx)
    assert len(result["erased"]) == 6
    assert peak[0] == 2
    snap = ctx.progress.snapshot()
    assert snap["phase"] == "erase_devices" and snap["unit"] == "bytes"
    assert snap["done"] == snap["total"] == 6 << 20
    assert snap["devices_done"] == snap["devices_total"] == 6


def test_one_disk_failing_does_not_stop_the_others(no_guards, monkeypatch):
    def overwrite(disk, *args):
        if disk.name == "/dev/sdb":
            raise EraseFailed("I/O error")
        return "overwritten"
    monkeypatch.setattr(erase_overwrite, "overwrite", overwrite)
    disks = [Disk(name=n, size=1) for n in ("/dev/sda", "/dev/sdb", "/dev/sdc")]
    with pytest.raises(CleaningError) as exc:
        erase.erase_devices(disks, {}, EraseOptions(nvme=False, ata=False))
    assert "/dev/sdb: every erase method failed: overwrite: I/O error" in exc.value.details
    assert "(erased: /dev/sda, /dev/sdc)" in exc.value.details


def test_cancel_stops_the_run(no_guards, monkeypatch):
    ctx = Ctx()
    ctx.cancel.set()
    with pytest.raises(Cancelled):
        erase.erase_devices([Disk(name="/dev/sda", size=1)], {}, EraseOptions(), ctx)


def test_options_defaults_and_parsing():
    assert options_from_node({}) == EraseOptions()
    opts = options_from_node({"driver_internal_info": {
        "agent_erase_devices_iterations": 3, "agent_erase_devices_zeroize": "false",
        "agent_continue_if_ata_erase_failed": True, "agent_enable_nvme_secure_erase": False,
        "disk_erasure_concurrency": "8", "agent_erase_skip_read_only": "yes"}}, discard=True)
    assert opts == EraseOptions(iterations=3, zeroize=False, continue_if_failed=True,
                                nvme=False, ata=True, concurrency=8, skip_read_only=True,
                                discard=True)


@pytest.mark.parametrize("key, value, expected", [
    ("disk_erasure_concurrency", 0, "an integer >= 1"),
    ("agent_erase_devices_iterations", -1, "an integer >= 0"),
    ("agent_erase_devices_iterations", True, "an integer >= 0"),
    ("agent_erase_devices_zeroize", "perhaps", "a boolean"),
])
def test_bad_options_fail_with_the_key_named(key, value, expected):
    with pytest.raises(CleaningError, match=f"driver_internal_info.{key}=.*{expected}"):
        options_from_node({"driver_internal_info": {key: value}})


def test_express_formats_nvme_and_wipes_metadata_elsewhere(no_guards, methods, monkeypatch):
    behaviour, tried = methods
    wiped = []
    monkeypatch.setattr(erase, "erase_metadata",
                        lambda disk: wiped.append(disk.name) or "metadata erased")
    nvme = Disk(name="/dev/nvme0n1", size=1, tran="nvme")
    sata = Disk(name="/dev/sda", size=1, tran="sata")

    def only_nvme(disk, erasing):
        if disk.tran != "nvme":
            raise EraseUnsupported("not an NVMe namespace")
        return "nvme format (user data erase)"
    monkeypatch.setattr(erase_nvme, "erase", only_nvme)
    ctx = Ctx()
    result = erase.erase_devices_express([nvme, sata], {}, EraseOptions(), ctx)
    assert result["erased"] == {"/dev/nvme0n1": "nvme format (user data erase)",
                                "/dev/sda": "metadata erased"}
    assert wiped == ["/dev/sda"] and not any(t[0] == "ata" for t in tried)
    assert ctx.progress.snapshot()["done"] == 2
    wiped.clear()
    erase.erase_devices_express([nvme], {}, EraseOptions(nvme=False))
    assert wiped == ["/dev/nvme0n1"]


def test_invalid_skip_list_fails_the_step_before_anything(no_guards, methods):
    _, tried = methods
    node = {"properties": {"skip_block_devices": [{"colour": "red"}]}}
    with pytest.raises(CleaningError, match="unknown root device hint"):
        erase.erase_devices([DISK], node, EraseOptions())
    assert tried == []
