"""Run Ironic's own inspection hooks over collector output (executed by .venv-ironic's python).

stdin: {"plugin_data": {...}, "inventory": {...}, "pci_device_alias": [...],
"extra_hardware_strict": bool}; stdout: {"plugin_data": {...}, "properties": {...}}.
Only the node's ``properties``, ``uuid`` and ``save`` are touched by these hooks.
"""

import json
import sys
import types

from ironic.common import utils as ironic_utils  # noqa: F401 - imports ironic.conf options
from ironic.conf import CONF


def main() -> None:
    request = json.load(sys.stdin)
    CONF([], project="ironic")
    CONF.set_override("extra_hardware_strict", request.get("extra_hardware_strict", False),
                      group="inspector")
    CONF.set_override("pci_device_alias", request.get("pci_device_alias", []),
                      group="inspector")
    from ironic.drivers.modules.inspector.hooks import accelerators, extra_hardware, pci_devices

    properties: dict = {}

    def set_property(name, value):
        properties[name] = value
    node = types.SimpleNamespace(uuid="1be26c0b-03f2-4d2e-ae87-c02d7f33c123",
                                 properties=properties, set_property=set_property,
                                 save=lambda: None)
    task = types.SimpleNamespace(node=node)
    plugin_data = request["plugin_data"]
    inventory = request.get("inventory", {})
    # the alias table is read when the class is defined: rebuild it after the override
    pci_devices.PciDevicesHook._aliases = pci_devices._parse_pci_alias_entries()
    for hook in (pci_devices.PciDevicesHook(), accelerators.AcceleratorsHook(),
                 extra_hardware.ExtraHardwareHook()):
        hook(task, inventory, plugin_data)
    json.dump({"plugin_data": plugin_data, "properties": properties}, sys.stdout)


if __name__ == "__main__":
    main()
