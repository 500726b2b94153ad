"""image: make the written disk bootable (reference §7)."""

from __future__ import annotations

import logging
from typing import Any

from agent.commands import CommandContext, command
from agent.config import parse_bool
from agent.errors import InvalidCommandParamsError
from agent.extensions import Extension

LOG = logging.getLogger(__name__)

BOOT_MODES = ("bios", "uefi")
UUID_PARAMS = ("root_uuid", "efi_system_part_uuid", "prep_boot_part_uuid")


class ImageExtension(Extension):
    name = "image"

    def validate_install_bootloader(self, params: dict[str, Any]) -> dict[str, Any]:
        from agent.imaging.bootloader import Request

        values: dict[str, Any] = {}
        for key in UUID_PARAMS:
            value = params.get(key)
            if value is not None and not isinstance(value, str):
                raise InvalidCommandParamsError(f"'{key}' must be a string or null, "
                                                f"got {type(value).__name__}")
            values[key] = (value.strip() or None) if isinstance(value, str) else None
        mode = params.get("target_boot_mode")
        mode = "bios" if mode is None else str(mode).strip().lower()
        if mode not in BOOT_MODES:
            raise InvalidCommandParamsError(f"'target_boot_mode' must be one of "
                                            f"{', '.join(BOOT_MODES)}, got {mode!r}")
        ignore = params.get("ignore_bootloader_failure")
        if ignore is None:
            ignore = self.config.ignore_bootloader_failure
        else:
            try:
                ignore = parse_bool(ignore)
            except ValueError:
                raise InvalidCommandParamsError("'ignore_bootloader_failure' must be a boolean "
                                                "or null") from None
        return {"request": Request(target_boot_mode=mode, ignore_failure=ignore, **values)}

    @command(is_async=True, validator="validate_install_bootloader")
    def install_bootloader(self, ctx: CommandContext, request: Any) -> None:
        from agent.imaging.bootloader import install_bootloader

        outcome = install_bootloader(self.state, request, ctx=ctx)
        LOG.info("install_bootloader on %s finished via %s%s", outcome.disk, outcome.path,
                 f"; ignored: {'; '.join(outcome.ignored)}" if outcome.ignored else "")
