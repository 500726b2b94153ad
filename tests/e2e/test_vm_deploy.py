"""tools/vm-deploy as a test (tox -e e2e): real QEMU, real iPXE, the real ramdisk.

Each case runs the command exactly as a developer would and checks its
exit status and the result it writes with ``--json``.  The cases share the
artifact cache (.cache/vm, or VM_DEPLOY_CACHE), so only the first one pays
for the ramdisk and test OS builds.  One QEMU runs at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VM_DEPLOY = os.path.join(REPO, "tools", "vm-deploy")
# a cold run builds the ramdisk (minutes); cached ones take one to two minutes
TIMEOUT_S = 1500

# CI sets this: there, a case that cannot run is a failure, not a skip
REQUIRED = os.environ.get("VM_DEPLOY_REQUIRED") == "1"
# the slower tier CI does not run (RAID over UEFI, RAID-5, the UEFI partition image):
# VM_DEPLOY_SLOW=1 tox -e e2e
SLOW = os.environ.get("VM_DEPLOY_SLOW") == "1"
slow_tier = pytest.mark.skipif(not SLOW, reason="slow e2e tier: set VM_DEPLOY_SLOW=1")

pytestmark = [pytest.mark.timeout(TIMEOUT_S)]


def skip_or_fail(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"VM_DEPLOY_REQUIRED=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _prerequisites() -> None:
    if os.geteuid() != 0:
        skip_or_fail("the ramdisk build needs root")
    if shutil.which("qemu-system-x86_64") is None:
        skip_or_fail("qemu-system-x86_64 is missing (tools/dev-setup --vm installs it)")


# prebuilt ramdisks (e.g. from the ramdisk tier) instead of tools/vm-deploy's own cached build
RAMDISK_ENV = {"amd64": "VM_DEPLOY_RAMDISK_DIR", "ppc64el": "VM_DEPLOY_PPC64EL_RAMDISK_DIR",
               "arm64": "VM_DEPLOY_ARM64_RAMDISK_DIR"}


def vm_deploy(tmp_path, *args: str, arch: str = "amd64") -> tuple[int, dict, str]:
    result_file = tmp_path / "result.json"
    extra = []
    if os.environ.get(RAMDISK_ENV[arch]):
        extra = ["--ramdisk-dir", os.environ[RAMDISK_ENV[arch]]]
    argv = [sys.executable, VM_DEPLOY, *args, *extra, "--json", str(result_file)]
    if shutil.which("setpriv"):
        # if pytest itself is killed, tools/vm-deploy still gets to stop its VMs
        argv = ["setpriv", "--pdeathsig", "TERM", "--", *argv]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S - 60)
    except subprocess.TimeoutExpired:
        # SIGTERM first: tools/vm-deploy stops QEMU and its helpers on the way out
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        print(out)
        pytest.fail(f"tools/vm-deploy {' '.join(args)} did not finish in {TIMEOUT_S - 60}s")
    print(out)                  # shown by pytest when the test fails
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return proc.returncode, result, out


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_deploy_and_boot_the_deployed_os(tmp_path, firmware):
    code, result, out = vm_deploy(tmp_path, "--firmware", firmware)
    assert code == 0, result.get("error")
    assert result["ok"] and result["firmware"] == firmware
    timings = result["timings"]
    assert {"build", "boot to API", "deploy", "reboot to marker"} <= set(timings)
    assert "the deployed OS booted from disk and read hostname vm-deploy-" in out
    if firmware == "uefi":
        assert "bootloader installed (whole-disk image in UEFI mode)" in out
        # OVMF started the OS through the NVRAM entry install_bootloader wrote
        assert "firmware started Boot" in out


@pytest.mark.parametrize("negative", ["bad-checksum", "unreachable-image"])
def test_failed_deploy_leaves_an_unbootable_disk(tmp_path, negative):
    code, result, out = vm_deploy(tmp_path, "--negative", negative)
    assert code == 0, result.get("error")
    assert "deploy failed as expected" in out
    assert "the disk did not boot" in out
    assert "disk boot refused" in result["timings"]


def check_raid_run(code: int, result: dict, out: str, level: str, members: int) -> None:
    assert code == 0, result.get("error")
    assert result["ok"] and result["raid"] == level and result["members"] == members
    timings = result["timings"]
    assert {"create_configuration", "reboot to API", "arrays after reboot", "deploy",
            "reboot to marker", "first sync + power off"} <= set(timings)
    # the array the clean step made was there after the reboot, and the deploy used it
    assert "raid.create_configuration: root: RAID-" + level in out
    assert "bootloader installed (software RAID)" in out
    assert f"booted from the RAID-{level} array and read hostname vm-deploy-" in out
    # every member was left out once, and the OS came up on the rest
    assert {f"boot without member {i}" for i in range(members)} <= set(timings)
    assert f"the OS booted with each of the {members} members missing in turn" in out


def test_raid1_survives_a_reboot_deploys_and_boots_with_each_member_missing(tmp_path):
    """The conductor-like driver: create_configuration in cleaning, a reboot, the deploy."""
    code, result, out = vm_deploy(tmp_path, "--raid", "1")
    check_raid_run(code, result, out, "1", 2)
    assert result["firmware"] == "bios"


@slow_tier
@pytest.mark.parametrize(("level", "firmware", "members"),
                         [("1", "uefi", 2), ("5", "bios", 3)])
def test_raid_slow_tier(tmp_path, level, firmware, members):
    code, result, out = vm_deploy(tmp_path, "--raid", level, "--firmware", firmware)
    check_raid_run(code, result, out, level, members)
    if firmware == "uefi":
        # one NVRAM entry per member: the firmware found one on a disk that is left
        assert "firmware started Boot" in out


@slow_tier
def test_uefi_partition_image_boots_through_the_esp_the_agent_filled(tmp_path):
    """enable_bios_bootloader_install from the lookup: the image's /boot/efi onto the new ESP."""
    code, result, out = vm_deploy(tmp_path, "--partition-image", "--firmware", "uefi")
    assert code == 0, result.get("error")
    assert result["ok"] and result["partition_image"] and result["firmware"] == "uefi"
    assert {"partition image", "boot to API", "deploy", "reboot to marker",
            "deployed disk read back"} <= set(result["timings"])
    assert "bootloader installed (partition image)" in out
    # an NVRAM entry install_bootloader wrote started the image's grub, not EFI/BOOT
    assert "firmware started Boot" in out
    # the agent added the removable loader and the fstab line for the new ESP
    assert "holds EFI/debian/grubx64.efi and EFI/BOOT/BOOTX64.EFI" in out
    assert "/boot/efi vfat" in out


def test_ppc64le_ramdisk_answers_get_hardware_info(tmp_path):
    if shutil.which("qemu-system-ppc64") is None:
        skip_or_fail("qemu-system-ppc64 is missing (tools/dev-setup --vm installs it)")
    code, result, out = vm_deploy(tmp_path, "--arch", "ppc64el", arch="ppc64el")
    if code == 2 and "no ppc64el ramdisk could be built" in out:
        skip_or_fail("this machine cannot build a ppc64el ramdisk: " + out.splitlines()[-1])
    assert code == 0, result.get("error")
    assert "get_hardware_info" in result["timings"]
    assert "ppc64le" in out


def test_arm64_ramdisk_answers_get_hardware_info(tmp_path):
    if shutil.which("qemu-system-aarch64") is None:
        skip_or_fail("qemu-system-aarch64 is missing (tools/dev-setup --vm installs it)")
    if not os.path.exists("/usr/share/AAVMF/AAVMF_CODE.fd"):
        skip_or_fail("AAVMF is missing (tools/dev-setup --vm installs qemu-efi-aarch64)")
    code, result, out = vm_deploy(tmp_path, "--arch", "arm64", arch="arm64")
    if code == 2 and "no arm64 ramdisk could be built" in out:
        skip_or_fail("this machine cannot build an arm64 ramdisk: " + out.splitlines()[-1])
    assert code == 0, result.get("error")
    assert result["arch"] == "arm64"
    assert {"boot to API", "get_hardware_info"} <= set(result["timings"])
    # the inventory is the guest's own: an aarch64 CPU booted through UEFI (the run
    # also checked the NIC's MAC and the disk)
    assert "(aarch64)" in out and "boot mode uefi" in out


IRONIC_VENV = os.environ.get("IRONIC_VENV", os.path.join(REPO, ".venv-ironic"))


def test_real_ironic_drives_the_vm_through_its_lifecycle(tmp_path):
    """An unmodified Ironic (.venv-ironic), IPMI power through ipmi_sim, Ironic's own iPXE."""
    if not os.path.exists(os.path.join(IRONIC_VENV, "bin", "ironic")):
        skip_or_fail(f"no Ironic in {IRONIC_VENV} (tools/dev-setup --ironic installs it)")
    for tool in ("ipmi_sim", "ipmitool"):
        if shutil.which(tool) is None:
            skip_or_fail(f"{tool} is missing (tools/dev-setup --ironic installs it)")
    code, result, out = vm_deploy(tmp_path, "--ironic")
    assert code == 0, result.get("error")
    assert result["ok"] and result["mode"] == "ironic" and result["firmware"] == "bios"
    assert {"enroll", "manage", "inspect", "clean (provide)", "deploy", "disk boot to marker",
            "undeploy + clean"} <= set(result["timings"])
    # ramdisk boots for inspection, cleaning and the deploy, the disk, cleaning again
    assert result["boots"] >= 5
    # the inventory Ironic stored names the VM's disk, NIC and BMC (checked by the run)
    assert "inventory: disk /dev/" in out and "BMC " in out
    assert "the deployed OS booted from disk and read hostname vm-deploy-" in out
    assert "lifecycle complete" in out


def test_real_ironic_applies_raid1_in_the_deploy_and_cleaning_wipes_it(tmp_path):
    """Ironic's agent RAID interface: apply_configuration as a deploy step, install_bootloader
    for software RAID, the degraded boots outside Ironic, then undeploy with cleaning."""
    if not os.path.exists(os.path.join(IRONIC_VENV, "bin", "ironic")):
        skip_or_fail(f"no Ironic in {IRONIC_VENV} (tools/dev-setup --ironic installs it)")
    for tool in ("ipmi_sim", "ipmitool"):
        if shutil.which(tool) is None:
            skip_or_fail(f"{tool} is missing (tools/dev-setup --ironic installs it)")
    code, result, out = vm_deploy(tmp_path, "--ironic", "--raid", "1")
    assert code == 0, result.get("error")
    assert result["ok"] and result["mode"] == "ironic" and result["raid"] == "1"
    timings = result["timings"]
    assert {"deploy", "disk boot to marker", "first sync + power off", "boot without member 0",
            "boot without member 1", "undeploy + clean"} <= set(timings)
    # Ironic's post-deploy-step hook stored what apply_configuration returned
    assert "Ironic stored the RAID configuration the agent reported: root: RAID-1" in out
    assert "the OS booted with each of the 2 members missing in turn" in out
    # cleaning after the undeploy left no md superblock on either member image
    assert "md superblocks wiped from member-0.img, member-1.img" in out
    assert "lifecycle complete: RAID-1 applied in the deploy" in out
