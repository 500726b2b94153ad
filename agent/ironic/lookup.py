"""Lookup: find this machine's node, retrying with jittered backoff; apply what it says.

Pure logic with injected sleep/clock/random, so the retry policy is unit
tested without waiting (reference §8.3, §8.4).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from agent.config import Config
from agent.errors import ConfigError, LookupFailed
from agent.ironic.http import AttemptFailed, ControllerClient

LOG = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
MIN_BACKOFF = 0.01  # a zero interval would turn the retry loop into a busy loop
CONFLICT_WAITS = (5.0, 10.0, 30.0)
MASKED_TOKEN = "******"
MIN_TOKEN_LENGTH = 32

# lookup ``config`` key → agent setting
OVERRIDES = {
    "heartbeat_timeout": "heartbeat_timeout",
    "agent_token": "agent_token",
    "permitted_image_formats": "permitted_image_formats",
    "agent_md5_checksum_enable": "md5_enabled",
    "enable_bios_bootloader_install": "enable_bios_bootloader_install",
    "tls_min_version": "tls_min_version",
    "tls_cipher_suites": "tls_cipher_suites",
    "disable_deep_image_inspection": "disable_deep_image_inspection",
    "agent_skip_bmc_detect": "skip_bmc_detect",
}
# read but not settings of this agent; listed so they are not reported as unknown
KNOWN_IGNORED = {"agent_token_required", "agent_containers", "metrics", "metrics_statsd"}


def backoff_delay(attempt: int, base: float, cap: float = MAX_BACKOFF,
                  uniform: Callable[[float, float], float] = random.uniform) -> float:
    """Random exponential backoff: U(base, min(cap, base·2^attempt)), attempt from 0."""
    base = min(max(base, MIN_BACKOFF), cap)
    high = min(cap, base * 2 ** min(attempt, 32))
    return uniform(base, high)


def conflict_wait(consecutive: int) -> float:
    """Extra wait after the n-th 409 in a row (the node is locked while a token is made)."""
    if consecutive <= 0:
        return 0.0
    return CONFLICT_WAITS[min(consecutive, len(CONFLICT_WAITS)) - 1]


def lookup(client: ControllerClient, macs: list[str], *, timeout: float, interval: float,
           node_uuid: str | None = None, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic,
           uniform: Callable[[float, float], float] = random.uniform) -> dict[str, Any]:
    """Retry until a node answers or ``timeout`` seconds pass (then LookupFailed)."""
    deadline = clock() + timeout
    attempts = conflicts = 0
    while True:
        attempts += 1
        try:
            body = client.lookup(macs, node_uuid)
        except AttemptFailed as exc:
            conflicts = conflicts + 1 if exc.conflict else 0
            remaining = deadline - clock()
            if remaining <= 0:
                raise LookupFailed(
                    f"no node found after {attempts} attempt(s) in {timeout:.0f}s for MAC "
                    f"address(es) {', '.join(macs) or '(none)'}; last error: {exc}. Check that "
                    "the node has a port with one of these MACs and is in a state that allows "
                    "lookup (deploying, cleaning, inspecting, rescuing, servicing), or raise "
                    "ipa-lookup-timeout") from None
            delay = min(remaining, backoff_delay(attempts - 1, interval, uniform=uniform)
                        + conflict_wait(conflicts))
            LOG.warning("lookup attempt %d failed: %s; retrying in %.1fs (%.0fs left)",
                        attempts, exc, delay, remaining)
            sleep(delay)
            continue
        LOG.info("lookup found node %s via %s after %d attempt(s)", body["node"]["uuid"],
                 client.preferred, attempts)
        return body


def apply_overrides(config: Config, data: Any) -> list[str]:
    """Set the agent settings the lookup ``config`` carries; return their names.

    A value the agent cannot parse keeps the local setting and is logged: a
    controller quirk must not stop a deploy.  The token is handled by
    ``resolve_token`` because the masked form is not a value.
    """
    applied: list[str] = []
    if not isinstance(data, dict):
        return applied
    for key, value in data.items():
        name = OVERRIDES.get(key)
        if name is None:
            if key not in KNOWN_IGNORED:
                LOG.debug("ignoring unknown lookup config key %s", key)
            continue
        if value is None or name == "agent_token":
            continue
        try:
            config.set(name, value, "controller")
        except ConfigError as exc:
            LOG.warning("controller setting %s ignored: %s", key, exc.details)
            continue
        applied.append(name)
    if applied:
        LOG.info("applied controller settings: %s",
                 ", ".join(f"{n}={getattr(config, n)!r}" for n in applied))
    return applied


def resolve_token(config: Config, issued: Any) -> tuple[str | None, str]:
    """Decide the token: (source, explanation); source None means lock down.

    A fresh token from the lookup wins over a pre-set one: the controller is
    the authority.  The masked form means the token was already handed out;
    that is fine when it was pre-set (virtual media), and fatal otherwise,
    because any heartbeat or command would be refused.
    """
    if isinstance(issued, str) and issued and issued != MASKED_TOKEN:
        if len(issued) >= MIN_TOKEN_LENGTH:
            config.set("agent_token", issued, "controller")
            return "lookup", "token issued by the controller at lookup"
        LOG.warning("ignoring a %d-character token from the controller (at least %d "
                    "required)", len(issued), MIN_TOKEN_LENGTH)
    if config.agent_token:
        return "preset", "token pre-set with ipa-agent-token"
    if issued == MASKED_TOKEN:
        return None, ("the controller returned a masked agent token (******): it already "
                      "issued this node's one-time token, to an earlier boot or run of the "
                      "agent, and this agent has none (no ipa-agent-token). The controller "
                      "would refuse this agent's heartbeats and no command may be accepted; "
                      "power-cycle the node through the controller to get a fresh token")
    return None, ("the controller issued no agent token (an API older than 1.62, or a "
                  "lookup without the token microversion); commands cannot be "
                  "authenticated, so none will be accepted")
