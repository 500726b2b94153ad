"""LLDP frames heard on the NICs, as the raw TLV lists Ironic's hooks parse.

One raw AF_PACKET socket per interface, all polled together, so the whole
capture takes at most ``timeout`` however many NICs the machine has.  Each
socket joins the LLDP multicast groups on its interface (the NIC's hardware
filter drops them otherwise) and leaves them when it closes; an interface is
dropped from the poll as soon as one valid LLDPDU arrived on it.

A TLV is reported as ``[type, hex of value]`` (802.1AB: 7-bit type, 9-bit
length).  Parsing stops at the End TLV, which is not reported: it carries no
value, and the bytes after it are Ethernet padding.  Nothing here raises:
an interface that cannot be opened or goes away is logged and skipped.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from agent.disk import sysfs

LOG = logging.getLogger(__name__)

ETH_P_LLDP = 0x88CC
# nearest bridge (the one switches use), nearest non-TPMR bridge, nearest customer bridge
LLDP_GROUPS = (bytes.fromhex("0180c200000e"), bytes.fromhex("0180c2000003"),
               bytes.fromhex("0180c2000000"))
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_MR_MULTICAST = 0
IFF_UP = 0x1
TLV_END, TLV_CHASSIS_ID, TLV_PORT_ID, TLV_TTL = 0, 1, 2, 3
DRAIN_MAX = 64
FRAME_MAX = 9216          # jumbo frames; an LLDPDU itself fits in 1500

Tlvs = list[list[Any]]    # [[type, "hex"], ...], the JSON shape Ironic reads


def parse_tlvs(payload: bytes) -> Tlvs:
    """TLVs of an LLDPDU (the bytes after the Ethernet header), up to End."""
    tlvs: Tlvs = []
    offset = 0
    while offset + 2 <= len(payload):
        header = struct.unpack_from("!H", payload, offset)[0]
        tlv_type, length = header >> 9, header & 0x1FF
        if tlv_type == TLV_END:
            break
        start = offset + 2
        if start + length > len(payload):
            LOG.warning("LLDP TLV type %d claims %d bytes, only %d left: rest ignored",
                        tlv_type, length, len(payload) - start)
            break
        tlvs.append([tlv_type, payload[start:start + length].hex()])
        offset = start + length
    return tlvs


def parse_frame(frame: bytes) -> Tlvs | None:
    """The TLVs of an Ethernet frame carrying an LLDPDU, or None when it is not one.

    802.1AB: an LLDPDU starts with Chassis ID, Port ID and TTL, in that
    order; anything else is discarded rather than reported.
    """
    if len(frame) < 14 or frame[:6] not in LLDP_GROUPS:
        return None
    if struct.unpack_from("!H", frame, 12)[0] != ETH_P_LLDP:
        return None
    tlvs = parse_tlvs(frame[14:])
    if [t[0] for t in tlvs[:3]] != [TLV_CHASSIS_ID, TLV_PORT_ID, TLV_TTL]:
        LOG.warning("frame with LLDP ethertype lacks the mandatory chassis/port/TTL "
                    "TLVs; ignored")
        return None
    return tlvs


def is_up(name: str, root: str = "/") -> bool:
    """Administratively up (IFF_UP), from sysfs; unreadable counts as down."""
    text = sysfs.read_str(sysfs.path(root, "/sys/class/net", name, "flags"))
    try:
        return bool(int(text or "0", 16) & IFF_UP)
    except ValueError:
        return False


def up_interfaces(names: Iterable[str], root: str = "/") -> list[str]:
    return [n for n in names if is_up(n, root)]


def _mreq(ifindex: int, group: bytes) -> bytes:
    # struct packet_mreq {int mr_ifindex; u16 mr_type; u16 mr_alen; u8 mr_address[8]}
    return struct.pack("iHH8s", ifindex, PACKET_MR_MULTICAST, len(group), group)


class _Listener:
    """One interface's socket, bound to the LLDP ethertype, with the groups joined."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ifindex = socket.if_nametoindex(name)
        # protocol 0 until bound: a socket made with ETH_P_LLDP would queue
        # frames from every interface in the moment before bind()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.joined: list[bytes] = []
        try:
            self.sock.bind((name, ETH_P_LLDP))
            for group in LLDP_GROUPS:
                self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                                     _mreq(self.ifindex, group))
                self.joined.append(group)
            self.sock.setblocking(False)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        # closing drops the memberships too; leaving explicitly keeps the NIC's
        # filter tidy even if something else holds a duplicate of the fd
        for group in self.joined:
            try:
                self.sock.setsockopt(SOL_PACKET, PACKET_DROP_MEMBERSHIP,
                                     _mreq(self.ifindex, group))
            except OSError:
                pass  # the interface is gone; the kernel already forgot the group
        self.joined = []
        self.sock.close()


def _open(names: Sequence[str]) -> list[_Listener]:
    listeners = []
    for name in dict.fromkeys(names):
        try:
            listeners.append(_Listener(name))
        except OSError as exc:
            LOG.warning("LLDP: cannot listen on %s: %s", name, exc)
    return listeners


def _receive(listener: _Listener) -> Tlvs | None:
    """Read what is queued; the first LLDPDU found, or None (raises OSError on error)."""
    # bounded, so a flood of malformed frames cannot hold the loop past the deadline
    for _ in range(DRAIN_MAX):
        try:
            frame = listener.sock.recv(FRAME_MAX)
        except (BlockingIOError, InterruptedError):
            return None
        # frames this host sends (lldpd, say) never show up here: the kernel
        # copies outgoing frames only to sockets bound to every protocol
        tlvs = parse_frame(frame)
        if tlvs is not None:
            return tlvs
    return None


def capture(interfaces: Sequence[str], timeout: float) -> dict[str, Tlvs]:
    """Listen on ``interfaces`` at once for up to ``timeout`` seconds in total.

    Returns ``{interface: TLVs}`` for the interfaces that heard an LLDPDU;
    the others are absent.  Never raises.
    """
    started = time.monotonic()
    deadline = started + max(0.0, timeout)
    result: dict[str, Tlvs] = {}
    listeners = _open(interfaces)
    selector = selectors.DefaultSelector()
    try:
        for listener in listeners:
            selector.register(listener.sock, selectors.EVENT_READ, listener)
        pending = len(listeners)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                listener = key.data
                try:
                    tlvs = _receive(listener)
                except OSError as exc:
                    # ENETDOWN / ENODEV: the interface went down or away mid-capture
                    LOG.warning("LLDP: stopped listening on %s: %s", listener.name,
                                errno.errorcode.get(exc.errno or 0, exc))
                    tlvs = None
                else:
                    if tlvs is None:
                        continue
                    result[listener.name] = tlvs
                selector.unregister(listener.sock)
                pending -= 1
    except Exception:  # noqa: BLE001 - the inventory must come back even if polling breaks
        LOG.exception("LLDP capture failed; returning what was heard so far")
    finally:
        selector.close()
        for listener in listeners:
            listener.close()
    LOG.info("LLDP: heard %d of %d interface(s) in %.1fs (%s)", len(result),
             len(listeners), time.monotonic() - started,
             ", ".join(sorted(result)) or "none")
    return result


def capture_up(names: Iterable[str], timeout: float, root: str = "/") -> dict[str, Tlvs]:
    """``capture`` on those of ``names`` that are up; a down NIC hears nothing."""
    names = list(names)
    up = up_interfaces(names, root)
    if len(up) < len(names):
        LOG.info("LLDP: not listening on down interface(s) %s",
                 ", ".join(n for n in names if n not in up))
    return capture(up, timeout) if up else {}


class CaptureCache:
    """What one agent process heard: listened for once, reused by every later inventory.

    Like IPA, the agent listens again only while nothing at all has been heard, so
    repeated ``get_hardware_info`` calls do not each wait ``ipa-lldp-timeout``.
    """

    def __init__(self, capture: Callable[[list[str], float, str], dict[str, Tlvs]]
                 | None = None) -> None:
        self._capture = capture
        self._heard: dict[str, Tlvs] = {}
        self._lock = threading.Lock()

    def get(self, names: Iterable[str], timeout: float, root: str = "/") -> dict[str, Tlvs]:
        with self._lock:
            if not self._heard:
                listen = self._capture or capture_up
                self._heard = {k: v for k, v in listen(list(names), timeout, root).items()
                               if v}
            return dict(self._heard)


def raw_from_inventory(inventory: dict[str, Any]) -> dict[str, Tlvs]:
    """``lldp_raw`` for inspection: the TLVs the inventory already heard, by interface.

    The inventory's capture is reused so one inspection listens only once.
    """
    return {str(i["name"]): list(i["lldp"]) for i in inventory.get("interfaces") or []
            if isinstance(i, dict) and i.get("name") and i.get("lldp")}
