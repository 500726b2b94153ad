"""The LLDP frame and TLV parser, on frames built byte by byte from 802.1AB."""

from __future__ import annotations

import json
import logging

from agent.hardware import lldp
from tests.unit.hardware.fake_sysfs import write
from tests.unit.hardware.lldp_frames import SWITCH_FRAME, SWITCH_TLVS, frame, mandatory, tlv


def test_switch_frame_gives_every_tlv_up_to_end():
    tlvs = lldp.parse_frame(SWITCH_FRAME)
    assert tlvs == SWITCH_TLVS
    # the wire shape Ironic's hooks read: [int, "hex"] pairs
    assert json.loads(json.dumps(tlvs)) == SWITCH_TLVS
    assert all(isinstance(t, int) and isinstance(v, str) for t, v in tlvs)


def test_end_stops_parsing_and_padding_is_not_reported():
    data = frame(*mandatory())                       # zero-padded past End
    assert [t for t, _ in lldp.parse_frame(data)] == [1, 2, 3]
    assert [0, ""] not in lldp.parse_frame(data)


def test_nine_bit_length():
    # a 300-byte system description needs the 9th length bit (type 6 -> 0x0d2c)
    description = bytes(range(256)) + bytes(44)
    data = frame(*mandatory(), tlv(6, description))
    assert bytes.fromhex("0d2c") + description[:4] in data
    tlvs = lldp.parse_frame(data)
    assert tlvs[3] == [6, description.hex()]
    assert len(tlvs) == 4


def test_truncated_tlv_stops_with_a_warning(caplog):
    payload = tlv(1, b"\x04abcdef") + bytes.fromhex("0a20") + b"short"
    with caplog.at_level(logging.WARNING):
        assert lldp.parse_tlvs(payload) == [[1, "04616263646566"]]
    assert "claims 32 bytes, only 5 left" in caplog.text


def test_not_lldp_frames_are_refused():
    good = frame(*mandatory())
    assert lldp.parse_frame(good) is not None
    assert lldp.parse_frame(frame(*mandatory(), dst="ffffffffffff")) is None
    assert lldp.parse_frame(frame(*mandatory(), ethertype="0800")) is None
    assert lldp.parse_frame(good[:13]) is None
    # the other two 802.1AB group addresses are LLDP too
    assert lldp.parse_frame(frame(*mandatory(), dst="0180c2000003")) is not None
    assert lldp.parse_frame(frame(*mandatory(), dst="0180c2000000")) is not None


def test_lldpdu_without_the_mandatory_tlvs_is_refused():
    chassis, port, ttl = mandatory()
    assert lldp.parse_frame(frame(port, chassis, ttl)) is None
    assert lldp.parse_frame(frame(chassis, port)) is None
    assert lldp.parse_frame(frame(tlv(5, b"sw1"))) is None


def test_raw_from_inventory_keeps_interfaces_that_heard_something():
    inventory = {"interfaces": [
        {"name": "eno1", "lldp": SWITCH_TLVS},
        {"name": "eno2", "lldp": None},
        {"name": "eno3", "lldp": []},
    ]}
    assert lldp.raw_from_inventory(inventory) == {"eno1": SWITCH_TLVS}
    assert lldp.raw_from_inventory({"interfaces": None}) == {}


def test_up_flag_from_sysfs(tmp_path):
    write(tmp_path / "sys/class/net/eno1/flags", "0x1003\n")
    write(tmp_path / "sys/class/net/eno2/flags", "0x1002\n")
    write(tmp_path / "sys/class/net/eno3/flags", "garbage\n")
    assert lldp.up_interfaces(["eno1", "eno2", "eno3", "gone0"], str(tmp_path)) == ["eno1"]


def test_capture_of_nothing_and_of_missing_interfaces_returns_empty(caplog):
    assert lldp.capture([], 5.0) == {}
    with caplog.at_level(logging.WARNING):
        assert lldp.capture(["no-such-nic0"], 5.0) == {}
    assert "cannot listen on no-such-nic0" in caplog.text
