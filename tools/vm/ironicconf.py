"""What ``vm-deploy --ironic`` changes in Ironic and in its node, each with the reason.

On top of tools/realironic/server.py's ``base_options`` (noauth, sqlite,
no message bus, 127.0.0.1): the ``ipmi`` hardware type, Ironic's ``ipxe``
boot interface, and the URLs as the *guest* sees them, because the guest
reaches the host only through QEMU's guestfwd addresses.
"""

from __future__ import annotations

import os
from typing import Any

GUEST_SERVER_IP = "10.0.2.100"
GUEST_HTTP = f"http://{GUEST_SERVER_IP}"
GUEST_API = f"http://{GUEST_SERVER_IP}:6385"


def ironic_options(work_dir: str) -> dict[str, dict[str, str]]:
    return {
        "DEFAULT": {
            # ipmi for the VM; fake-hardware stays because server.py waits for it to
            # show in /v1/drivers before it calls Ironic ready
            "enabled_hardware_types": "ipmi,fake-hardware",
            "enabled_boot_interfaces": "ipxe,fake",
            "enabled_power_interfaces": "ipmitool,fake",
            "enabled_management_interfaces": "ipmitool,noop,fake",
        },
        # the agent calls Ironic through this URL (ipa-api-url in the iPXE config): the
        # guest's view, forwarded by QEMU to Ironic's 127.0.0.1 port
        "service_catalog": {"endpoint_override": GUEST_API},
        "deploy": {
            # Ironic writes boot.ipxe, per-MAC configs, the deploy kernel/ramdisk and the
            # cached instance image under http_root and names them by this URL: the guest's
            # view of the file server that serves http_root
            "http_url": GUEST_HTTP,
            "http_root": os.path.join(work_dir, "httpboot"),
        },
        "agent": {
            # Ironic downloads and checks the image on the host (127.0.0.1 image store) and
            # serves it to the agent from http_root; the agent cannot reach 127.0.0.1
            "image_download_source": "local",
            # the agent powers the ramdisk off in-band after a deploy; give it time to do
            # so before Ironic pulls the plug through IPMI (base: 2 x 1 s)
            "post_deploy_get_power_state_retries": "30",
            "post_deploy_get_power_state_retry_interval": "1",
        },
        "conductor": {
            # the lifecycle includes automated cleaning (base: off, for loop-disk tests)
            "automated_clean": "true",
            # Ironic unpacks every zstd file it downloads, the deploy ramdisk included: the
            # agent's zstd initramfs (89 MiB) became a 357 MiB cpio that no longer unpacks
            # in the ramdisk's 1 GiB ("Initramfs unpacking failed: write error")
            "disable_zstandard_decompression": "true",
        },
        "ipmi": {
            # default 5 s between two commands to one BMC, for fragile hardware; ipmi_sim
            # answers in ~0.1 s and a lifecycle sends dozens of commands
            "min_command_interval": "1",
        },
    }


def kernel_params(agent_port: int, extra: list[str]) -> str:
    """The ramdisk's kernel parameters besides what Ironic adds (ipa-api-url, ipa-debug)."""
    return " ".join([
        # Ironic's default, plus the serial console the harness reads
        "nofb", "vga=normal", "console=tty0", "console=ttyS0,115200n8",
        # Ironic reaches the agent through QEMU's hostfwd on 127.0.0.1, not 10.0.2.15:9999;
        # the agent's auto-TLS certificate then names 127.0.0.1, which Ironic verifies
        "ipa-advertise-host=127.0.0.1", f"ipa-advertise-port={agent_port}",
        *extra])


def node_fields(run: Any, driver_info: dict[str, str]) -> dict[str, Any]:
    """The node as an operator would enroll it: interfaces named, BMC credentials, ramdisk."""
    store = f"http://127.0.0.1:{run.store.port}"
    return {
        "name": run.hostname.replace("vm-deploy-", "vm-node-"),
        "driver": "ipmi",
        "boot_interface": "ipxe",
        "deploy_interface": "direct",
        "power_interface": "ipmitool",
        "management_interface": "ipmitool",
        # in-band inspection by the agent, Ironic 39's (and metal3's) inspect interface
        "inspect_interface": "agent",
        "network_interface": "noop",
        "console_interface": "no-console",
        "raid_interface": "no-raid",
        "rescue_interface": "no-rescue",
        "vendor_interface": "no-vendor",
        "bios_interface": "no-bios",
        "firmware_interface": "no-firmware",
        "driver_info": {
            **driver_info,
            # Ironic fetches these on the host and publishes them under http_root
            "deploy_kernel": f"{store}/deploy-agent.kernel",
            "deploy_ramdisk": f"{store}/deploy-agent.initramfs",
            "kernel_append_params": kernel_params(run.agent_port, list(run.opts.kernel_args)),
            # real power: the agent powers the ramdisk off itself, as on hardware
            "deploy_forces_oob_reboot": False,
        },
        "properties": {
            # Ironic 39 defaults to UEFI; this VM boots SeaBIOS
            "capabilities": f"boot_mode:{run.opts.firmware}",
            "cpu_arch": "x86_64",
            "memory_mb": run.opts.memory_mib,
            "cpus": run.opts.smp,
            "local_gb": 5,
        },
    }


def configdrive(hostname: str, node_uuid: str, mac: str) -> dict[str, Any]:
    # network_data with a link and an MTU: Ironic otherwise regenerates the drive, and
    # that path needs mkisofs, which Debian no longer ships
    return {"meta_data": {"hostname": hostname, "name": hostname, "uuid": node_uuid,
                          "public_keys": {}},
            "user_data": "#!/bin/sh\necho deploy-agent vm-deploy --ironic\n",
            "network_data": {"links": [{"id": "nic0", "type": "phy", "mtu": 1500,
                                        "ethernet_mac_address": mac}],
                             "networks": [{"id": "net0", "link": "nic0", "type": "ipv4_dhcp"}],
                             "services": []}}
