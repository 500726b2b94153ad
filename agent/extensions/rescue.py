"""rescue.finalize_rescue: hand the node to its owner for rescue, then go quiet (reference §10).

The password hash is written where IPA writes it (so a ramdisk's IPA-style
rescue service keeps working) and, when ``useradd`` is present, the
``rescue`` user is created with it and given sudo directly.  Afterwards the
agent stops serving and heartbeating for the rest of this boot but leaves
the network up, so the owner can log in.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from typing import Any

from agent import tools
from agent.commands import CommandContext, command
from agent.config import parse_bool
from agent.errors import InvalidCommandParamsError, ToolMissing
from agent.extensions import Extension
from agent.hardware.power import refuse_unless_ramdisk

LOG = logging.getLogger(__name__)

USER = "rescue"
PASSWORD_FILE = "etc/ipa-rescue-config/ipa-rescue-password"
SUDOERS_FILE = "etc/sudoers.d/deploy-agent-rescue"
# crypt(3) shapes: $1$ md5, $5$ sha256, $6$ sha512, $y$ yescrypt, $2b$ bcrypt, ...
CRYPT_HASH = re.compile(r"^\$[0-9a-z]+\$[^\s:]+$")


def hash_plaintext(password: str) -> str:
    """SHA-512 crypt of a legacy plaintext password."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
    except ImportError:
        raise InvalidCommandParamsError(
            "this agent cannot hash a plaintext rescue password (no crypt module); send a "
            "crypt(3) hash with hashed=true") from None
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))


def validate_finalize(params: dict[str, Any]) -> dict[str, Any]:
    password = params.get("rescue_password")
    if not isinstance(password, str) or not password:
        raise InvalidCommandParamsError("'rescue_password' must be a non-empty string")
    try:
        hashed = parse_bool(params.get("hashed") or False)
    except ValueError:
        raise InvalidCommandParamsError("'hashed' must be a boolean") from None
    if hashed and not CRYPT_HASH.match(password):
        raise InvalidCommandParamsError(
            "'rescue_password' is marked hashed but is not a crypt(3) hash ($id$salt$hash)")
    return {"password_hash": password if hashed else hash_plaintext(password)}


def _write(path: str, text: str, mode: int) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def install_rescue_user(root: str, password_hash: str) -> bool:
    """Write the IPA hash file; create or update the user. False if useradd is absent."""
    _write(os.path.join(root, PASSWORD_FILE), password_hash + "\n", 0o600)
    with open(os.path.join(root, "etc/passwd"), encoding="utf-8") as f:
        exists = any(line.split(":", 1)[0] == USER for line in f)
    try:
        if exists:
            tools.run("usermod", "--root", root, "--password", password_hash, USER)
        else:
            tools.run("useradd", "--root", root, "--create-home", "--shell", "/bin/bash",
                      "--password", password_hash, USER)
    except ToolMissing as exc:
        LOG.warning("rescue: %s; only %s was written, for a ramdisk rescue service to use",
                    exc.details, PASSWORD_FILE)
        return False
    _write(os.path.join(root, SUDOERS_FILE), f"{USER} ALL=(ALL) NOPASSWD: ALL\n", 0o440)
    return True


class RescueExtension(Extension):
    name = "rescue"
    root = "/"

    @command(validator=validate_finalize)
    def finalize_rescue(self, ctx: CommandContext, password_hash: str) -> None:
        refuse_unless_ramdisk(self.config, "rescue.finalize_rescue")
        created = install_rescue_user(self.root, password_hash)
        LOG.warning("rescue: password set%s; stopping the API and heartbeats for this boot, "
                    "the network stays up", " for user " + USER if created else "")
        # after the SUCCEEDED response has left, like system.lockdown
        threading.Timer(1.0, self.state.stop).start()
