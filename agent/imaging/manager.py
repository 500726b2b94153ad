"""The deploy steps that put an image on disk, offered as a hardware manager.

Keeping them out of the generic manager means the inventory/erase code and
the imaging code version their step sets independently (reference §4.3).
"""

from __future__ import annotations

from typing import Any

from agent.config import parse_bool
from agent.errors import InvalidCommandParamsError
from agent.hardware import managers


def _step(name: str, priority: int, **extra: Any) -> dict[str, Any]:
    return {"step": name, "priority": priority, "interface": "deploy",
            "reboot_requested": False, **extra}


class ImageDeployManager(managers.HardwareManager):
    NAME = "deploy_agent_image"
    # bump whenever the step set or a priority changes
    VERSION = "1.0"

    def evaluate_hardware_support(self) -> int:
        return managers.SupportLevel.GENERIC

    def get_deploy_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return [_step("write_image", 0, argsinfo={
            "image_info": {"description": "the image to write (reference §5.1)",
                           "required": True},
            "configdrive": {"description": "config drive: gzip+base64 ISO, URL or JSON",
                            "required": False}})]

    def get_service_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return self.get_deploy_steps(node, ports)

    def write_image(self, node: Any, ports: Any, image_info: Any = None,
                    configdrive: Any = None, ctx: Any = None, **extra: Any) -> dict[str, Any]:
        """Ironic 39's write_image: prepare_image run inside the step, not recorded."""
        from agent.imaging import deploy
        from agent.imaging import image_info as info_mod
        spec = info_mod.validate(image_info, md5_allowed=self.config.md5_enabled)
        if configdrive is None:
            configdrive = spec.raw.get("configdrive")
        try:
            verify = parse_bool(spec.raw.get("verify_after_write") or False)
        except ValueError:
            raise InvalidCommandParamsError("'verify_after_write' must be a boolean") from None
        outcome = deploy.prepare(
            self.state, spec, configdrive, progress=ctx.progress if ctx else None,
            cancel_check=ctx.check_cancelled if ctx else (lambda: None),
            verify_after_write=verify)
        return {"result": f"prepare_image: {outcome.pop('message')}", **outcome}
