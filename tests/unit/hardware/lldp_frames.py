"""LLDP frames assembled by hand from the 802.1AB layout, shared by unit and veth tests.

A TLV header is 16 bits: 7-bit type, 9-bit length.  The values below are the
bytes a switch port would send; ``SWITCH_FRAME`` is one whole Ethernet frame.
"""

from __future__ import annotations

SWITCH_FRAME = bytes.fromhex(
    "0180c200000e"                      # destination: nearest bridge group
    "001122334455"                      # source: the switch port
    "88cc"                              # ethertype LLDP
    "0207" "04001122334455"             # chassis ID, subtype 4 (MAC)
    "040c" "05" "45746865726e6574312f37"   # port ID, subtype 5 (name) "Ethernet1/7"
    "0602" "0078"                       # TTL 120 s
    "0a09" "73772d7261636b3132"         # system name "sw-rack12"
    "fe06" "0080c2" "01" "0064"         # 802.1 port VLAN ID 100
    "fe0e" "0080c2" "03" "00c8" "07" "73746f72616765"   # 802.1 VLAN name 200 "storage"
    "fe07" "0080c2" "02" "00" "012c"    # 802.1 port-and-protocol VLAN ID: not a VLAN name
    "fe09" "00120f" "01" "03" "6c03" "0010"   # 802.3 MAC/PHY status: not 802.1
    "0000"                              # end
    "deadbeef")                         # trailing bytes after End are not TLVs

SWITCH_TLVS = [
    [1, "04001122334455"],
    [2, "0545746865726e6574312f37"],
    [3, "0078"],
    [5, "73772d7261636b3132"],
    [127, "0080c2010064"],
    [127, "0080c20300c80773746f72616765"],
    [127, "0080c20200012c"],
    [127, "00120f01036c030010"],
]


def tlv(tlv_type: int, value: bytes) -> bytes:
    return ((tlv_type << 9) | len(value)).to_bytes(2, "big") + value


def frame(*tlvs: bytes, dst: str = "0180c200000e", src: str = "02aabbccddee",
          ethertype: str = "88cc", pad_to: int = 60) -> bytes:
    """An Ethernet frame around ``tlvs`` plus End, zero-padded to the 60-byte minimum."""
    data = bytes.fromhex(dst + src + ethertype) + b"".join(tlvs) + tlv(0, b"")
    return data + bytes(max(0, pad_to - len(data)))


def mandatory(port: bytes = b"\x05swp1") -> tuple[bytes, bytes, bytes]:
    return (tlv(1, b"\x04" + bytes.fromhex("02aabbccddee")), tlv(2, port),
            tlv(3, b"\x00\x78"))
