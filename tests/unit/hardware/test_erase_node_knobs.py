"""Per-node erase knobs: agent_enable_discard_erase and wipe_special_filesystems."""

from __future__ import annotations

import pytest

from agent.errors import CleaningError, InvalidCommandParamsError, normalise
from agent.hardware.erase_base import EraseOptionError, EraseOptions, options_from_node


def di(**values) -> dict:
    return {"driver_internal_info": values}


def test_without_node_values_the_ramdisk_settings_apply():
    assert options_from_node({}) == EraseOptions(discard=False, guard_shared=True)
    assert options_from_node(None, discard=True, guard_shared=False) == EraseOptions(
        discard=True, guard_shared=False)
    # None is "not set", as for every other erase key
    opts = options_from_node(di(agent_enable_discard_erase=None, wipe_special_filesystems=None),
                             discard=True, guard_shared=False)
    assert (opts.discard, opts.guard_shared) == (True, False)


@pytest.mark.parametrize("value, ramdisk, expected", [
    (True, False, True), ("true", False, True), ("yes", False, True),
    (False, True, False), ("False", True, False), ("off", True, False),
])
def test_node_discard_overrides_the_ramdisk_setting(value, ramdisk, expected):
    opts = options_from_node(di(agent_enable_discard_erase=value), discard=ramdisk)
    assert opts.discard is expected


@pytest.mark.parametrize("value, ramdisk_guard, guard", [
    (True, True, False),      # "wipe them": the guard is lifted for this node
    ("True", True, False),
    (False, False, True),     # "do not wipe them": guarded even if the ramdisk is not
    ("no", False, True),
    (False, True, True),
    (True, False, False),
])
def test_wipe_special_filesystems_overrides_the_guard(value, ramdisk_guard, guard):
    opts = options_from_node(di(wipe_special_filesystems=value), guard_shared=ramdisk_guard)
    assert opts.guard_shared is guard


def test_driver_internal_info_wins_over_driver_info():
    node = {"driver_internal_info": {"wipe_special_filesystems": False,
                                     "agent_enable_discard_erase": False},
            "driver_info": {"wipe_special_filesystems": True,
                            "agent_enable_discard_erase": True}}
    opts = options_from_node(node, discard=True, guard_shared=False)
    assert (opts.discard, opts.guard_shared) == (False, True)


def test_driver_info_is_read_when_ironic_did_not_copy_the_value():
    # Ironic 39 copies neither key into driver_internal_info; IPA's docs say
    # `baremetal node set --driver-info wipe_special_filesystems=True`
    node = {"driver_internal_info": {"agent_erase_devices_iterations": 1},
            "driver_info": {"wipe_special_filesystems": "True",
                            "agent_enable_discard_erase": "true"}}
    opts = options_from_node(node)
    assert (opts.discard, opts.guard_shared) == (True, False)


@pytest.mark.parametrize("where", ["driver_internal_info", "driver_info"])
@pytest.mark.parametrize("key", ["agent_enable_discard_erase", "wipe_special_filesystems"])
@pytest.mark.parametrize("value, kind", [
    (1, "int"), (0, "int"), (1.0, "float"), ([True], "list"), ({"on": True}, "dict"),
    ("perhaps-SECRET", "str"),
])
def test_bad_values_are_a_400_naming_key_and_type_not_value(where, key, value, kind):
    with pytest.raises(EraseOptionError) as exc:
        options_from_node({where: {key: value}})
    err = exc.value
    assert isinstance(err, CleaningError) and isinstance(err, InvalidCommandParamsError)
    assert err.code == 400
    assert f"{where}.{key} is invalid ({kind})" in err.details
    assert "expected a boolean" in err.details
    assert "SECRET" not in err.details
    stored = normalise(err)
    assert (stored["type"], stored["code"]) == ("EraseOptionError", 400)


def test_a_bad_value_fails_even_when_the_other_knob_is_fine():
    with pytest.raises(EraseOptionError, match="wipe_special_filesystems"):
        options_from_node(di(agent_enable_discard_erase=True, wipe_special_filesystems=2))


def test_existing_keys_still_fail_as_cleaning_errors_now_with_400():
    with pytest.raises(CleaningError) as exc:
        options_from_node(di(disk_erasure_concurrency=0))
    assert exc.value.code == 400


def test_a_node_that_is_not_an_object_reads_as_empty():
    assert options_from_node("not a node", discard=True) == EraseOptions(discard=True)  # type: ignore[arg-type]
    assert options_from_node({"driver_internal_info": "x"}) == EraseOptions()
