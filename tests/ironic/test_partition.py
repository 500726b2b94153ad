"""Partition images driven by a real Ironic: the agent partitions the disk, writes the root
file system and the config drive; then Ironic asks for a boot loader.

Ironic 39 always asks ``install_bootloader`` for a partition image.  With
Ironic's default ``[agent]enable_bios_bootloader_install = false`` the agent
must refuse the image's grub (CVE-2026-43003), so the deploy fails unless
the ramdisk was told to tolerate that (``ipa-ignore-bootloader-failure``);
with the option on, the agent runs the image's own grub-install and the
disk gets real BIOS boot code.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import requires_loop
from tests.ironic import harness
from tests.ironic.conftest import to_available
from tests.ironic.test_deploy import DEPLOY_TIMEOUT_S, assert_clean_finish, deploy

pytestmark = requires_loop
MiB = harness.MiB
GiB = 1 << 30


def partition_info(images, name: str, data: bytes) -> dict:
    url, sha = images.add(name, data)
    kernel, _ = images.add("vmlinuz", b"\0" * 4096)
    ramdisk, _ = images.add("initrd", b"\0" * 4096)
    return {"image_source": url, "image_type": "partition", "image_disk_format": "raw",
            "image_os_hash_algo": "sha256", "image_os_hash_value": sha,
            "kernel": kernel, "ramdisk": ramdisk, "root_gb": 1}


def root_partition(disk: str, image: bytes) -> dict:
    """The partition whose first bytes are the image's (the root file system)."""
    for part in harness.partitions(disk):
        if harness.read_disk(disk, part["offset"], 64 * 1024) == image[:64 * 1024]:
            return part
    raise AssertionError(f"no partition on {disk} starts with the image: "
                         f"{harness.partitions(disk)}")


@pytest.fixture
def big_disk(make_loop) -> str:
    # root_gb is whole GiB; the config drive partition goes after it
    return make_loop(2 * GiB)


def test_partition_image_without_a_boot_loader(api, images, agent, make_node, big_disk,
                                               tmp_path):
    image = harness.ext4_image(str(tmp_path / "root.ext4"), marker="partition-plain")
    node = make_node(big_disk)
    to_available(api, node["uuid"])
    agent.params["ipa-ignore-bootloader-failure"] = "1"
    agent.start()
    configdrive = {"meta_data": {"hostname": "ironic-tier-part", "uuid": node["uuid"]}}
    done, seconds = deploy(api, node["uuid"], partition_info(images, "root.ext4", image),
                           configdrive)

    assert_clean_finish(done, "active")
    root = root_partition(big_disk, image)
    assert root["bytes"] == GiB          # root_gb
    assert harness.read_disk(big_disk, root["offset"], len(image)) == image
    assert harness.config_drive_meta(big_disk)["hostname"] == "ironic-tier-part"
    # Ironic recorded the root partition the agent reported
    assert done["driver_internal_info"].get("root_uuid_or_disk_id")
    assert "CVE-2026-43003" in agent.log()
    print(f"partition image deploy (no boot loader): {seconds:.1f}s")


def test_partition_image_boot_loader_refused_by_default(api, images, agent, make_node,
                                                        big_disk, tmp_path):
    image = harness.ext4_image(str(tmp_path / "root.ext4"), marker="partition-refused")
    node = make_node(big_disk)
    to_available(api, node["uuid"])
    agent.start()
    api.patch_node(node["uuid"], **{f"instance_info/{k}": v for k, v in
                                    partition_info(images, "refused.ext4", image).items()})
    api.provision(node["uuid"], "active")
    failed = api.wait_for(node["uuid"], "deploy failed", DEPLOY_TIMEOUT_S)
    assert "CVE-2026-43003" in (failed["last_error"] or ""), failed["last_error"]


@pytest.fixture(scope="module")
def ironic_with_grub(tmp_path_factory, ironic):
    """A second Ironic, with [agent]enable_bios_bootloader_install on."""
    from realironic.server import IronicServer

    from tests.ironic.conftest import HEARTBEAT_TIMEOUT_S

    server = IronicServer(str(tmp_path_factory.mktemp("ironic-grub")), extra_options={
        "api": {"ramdisk_heartbeat_timeout": str(HEARTBEAT_TIMEOUT_S)},
        "agent": {"enable_bios_bootloader_install": "true"}})
    server.start()
    yield server
    server.stop()


def grub_image(tmp_path) -> bytes:
    from tests.functional.imaging.bootloader import rootfs

    if shutil.which("grub-install") is None or not os.path.isdir("/usr/lib/grub/i386-pc"):
        pytest.skip("needs Debian grub2-common and grub-pc-bin on the host")
    root = str(tmp_path / "grub-root")
    rootfs.populate_root(root)
    path = str(tmp_path / "grub-root.ext4")
    with open(path, "wb") as f:
        f.truncate(160 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "img-root", "-d", root, path], check=True,
                   capture_output=True)
    with open(path, "rb") as f:
        return f.read()


def test_partition_image_with_the_images_grub(ironic_with_grub, images, make_loop, tmp_path,
                                              request):
    from realironic.client import Ironic

    from tests.ironic.conftest import NODE_INTERFACES, keep_logs_of

    api = Ironic(ironic_with_grub.url)
    disk = make_loop(2 * GiB)
    image = grub_image(tmp_path)
    # Ironic 39 defaults to UEFI; BIOS grub is what the image's grub-install can do here
    node = api.create_node(**NODE_INTERFACES, properties={"root_device": {"name": disk},
                                                          "capabilities": "boot_mode:bios"},
                           driver_info={"deploy_forces_oob_reboot": True})
    api.create_port(node["uuid"], harness.host_mac())
    booted = harness.Agent(str(tmp_path), ironic_with_grub.url, name="grub-agent")
    keep_logs_of(request, booted)
    try:
        to_available(api, node["uuid"])
        booted.start()
        done, seconds = deploy(api, node["uuid"],
                               partition_info(images, "grub-root.ext4", image))
        assert_clean_finish(done, "active")
        # the image's grub wrote BIOS boot code into the MBR and its core after it
        mbr = harness.read_disk(disk, 0, 512)
        assert b"GRUB" in mbr and mbr[510:] == b"\x55\xaa"
        assert "grub-bios" in booted.log() or "grub-install" in booted.log()
        print(f"partition image deploy with the image's grub: {seconds:.1f}s")
    finally:
        booted.stop()
        api.request("PUT", f"/v1/nodes/{node['uuid']}/maintenance", json={"reason": "done"})
        api.delete_node(node["uuid"])
