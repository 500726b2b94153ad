"""Writing an image as a step and as a command: the shared request rules and result shape.

``ImageDeployManager`` offers ``write_image`` and ``inject_files`` (deploy and
service steps) and ``clean_uefi_nvram`` (clean and deploy) as a hardware
manager, so the inventory/erase code and the imaging code version their step
sets independently (reference §4.3).  ``standby.prepare_image`` and
``cache_image`` reach the same ``deploy.prepare`` through the helpers below,
so the two doors cannot drift apart on config-drive defaults, the
``verify_after_write`` flag, or the result they return.
"""

from __future__ import annotations

from typing import Any

from agent.config import parse_bool
from agent.context import CommandContext
from agent.errors import InvalidCommandParamsError
from agent.hardware import managers
from agent.imaging import image_info as image_info_mod
from agent.imaging import inject_spec
from agent.imaging.bootloader import nvram_clean
from agent.imaging.image_info import ImageSpec


def flag(source: dict[str, Any], name: str) -> bool:
    """A boolean request flag; anything unparsable is the caller's 400."""
    try:
        return parse_bool(source.get(name) or False)
    except ValueError:
        raise InvalidCommandParamsError(f"'{name}' must be a boolean") from None


def configdrive_for(spec: ImageSpec, given: Any) -> Any:
    """The config drive to write: the one given, else the one inside ``image_info``."""
    return given if given is not None else spec.raw.get("configdrive")


def shaped(command: str, outcome: dict[str, Any]) -> dict[str, Any]:
    """The result Ironic reads: ``result`` is '<command>: <message>', then the details."""
    message = outcome.pop("message")
    return {"result": f"{command}: {message}", **outcome}


def _step(name: str, priority: int, **extra: Any) -> dict[str, Any]:
    return {"step": name, "priority": priority, "interface": "deploy",
            "reboot_requested": False, **extra}


class ImageDeployManager(managers.HardwareManager):
    NAME = "deploy_agent_image"
    # bump whenever the step set or a priority changes
    VERSION = "1.2"

    def evaluate_hardware_support(self) -> int:
        return managers.SupportLevel.GENERIC

    def get_deploy_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return [_step("write_image", 0, argsinfo={
            "image_info": {"description": "the image to write (reference §5.1)",
                           "required": True},
            "configdrive": {"description": "config drive: gzip+base64 ISO, URL or JSON",
                            "required": False}}),
            # ipa-inject-files-priority: 0 keeps it out of a deploy unless a template asks
            _step(inject_spec.STEP_NAME, self.config.inject_files_priority,
                  argsinfo=inject_spec.ARGSINFO),
            dict(nvram_clean.DEPLOY_STEP)]

    def get_service_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return [dict(step, priority=0) for step in self.get_deploy_steps(node, ports)
                if step["step"] != nvram_clean.DEPLOY_STEP["step"]]

    def get_clean_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return [dict(nvram_clean.CLEAN_STEP)]

    def clean_uefi_nvram(self, node: Any, ports: Any, match_patterns: Any = None,
                         ctx: CommandContext | None = None) -> dict[str, Any]:
        return nvram_clean.clean_uefi_nvram(node, ports, match_patterns, ctx)

    def inject_files(self, node: Any, ports: Any, files: Any = None, verify_ca: Any = True,
                     ctx: CommandContext | None = None) -> dict[str, Any]:
        """IPA's inject_files: ``properties.inject_files`` + ``files`` onto the install disk."""
        from agent.hardware import find_install_disk
        from agent.imaging import inject_files

        disk, _ = find_install_disk(self.state, ctx)
        if self.config.insecure and verify_ca is True:
            verify_ca = False     # ipa-insecure covers every outbound HTTPS, as in IPA
        return inject_files.run(disk, node, ports, files=files, verify_ca=verify_ca, ctx=ctx)

    def write_image(self, node: Any, ports: Any, image_info: Any = None,
                    configdrive: Any = None, ctx: CommandContext | None = None,
                    **extra: Any) -> dict[str, Any]:
        """Ironic 39's write_image: prepare_image run inside the step, not recorded."""
        # the image path (requests, decompressors, disk code) loads with the first write
        from agent.imaging import deploy

        spec = image_info_mod.validate(image_info, md5_allowed=self.config.md5_enabled)
        outcome = deploy.prepare(
            self.state, spec, configdrive_for(spec, configdrive),
            progress=ctx.progress if ctx else None,
            cancel_check=ctx.check_cancelled if ctx else (lambda: None),
            verify_after_write=flag(spec.raw, "verify_after_write"))
        return shaped("prepare_image", outcome)
