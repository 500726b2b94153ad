"""Wait, at start, until some interface has an address the controller can answer.

The ramdisk starts the agent as soon as udev and networkd are running instead of
after ``network-online.target``: Python's start-up then overlaps DHCP, which
under slow firmware or emulation is worth seconds.  The price is this wait,
which is the same rule as ``systemd-networkd-wait-online --any``: one
interface with an IPv4 address or a non-link-local IPv6 one is enough.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

LOG = logging.getLogger(__name__)
POLL_S = 0.1


def usable_addresses() -> dict[str, list[str]]:
    """Interface -> addresses that can reach beyond the link (no loopback, no fe80::)."""
    import psutil

    found: dict[str, list[str]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        if name == "lo":
            continue
        for addr in addrs:
            address = addr.address.split("%", 1)[0].lower()
            if addr.family == socket.AF_INET and not address.startswith("127."):
                found.setdefault(name, []).append(address)
            elif (addr.family == socket.AF_INET6 and not address.startswith("fe80")
                  and address != "::1"):
                found.setdefault(name, []).append(address)
    return found


def wait_for_address(timeout: float, *,
                     addresses: Callable[[], dict[str, list[str]]] = usable_addresses,
                     sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> bool:
    """True once any interface has a usable address; False (and a warning) after ``timeout``.

    Not an error either way: a static or late network still lets lookup's own
    retries succeed, so the agent goes on.
    """
    if timeout <= 0:
        return True
    started = clock()
    deadline = started + timeout
    while True:
        found = addresses()
        if found:
            name = sorted(found)[0]
            LOG.info("network: %s has %s after %.1fs", name, ", ".join(found[name]),
                     clock() - started)
            return True
        if clock() >= deadline:
            LOG.warning("network: no interface has an address after %.0fs; going on "
                        "(lookup keeps retrying)", timeout)
            return False
        sleep(POLL_S)
