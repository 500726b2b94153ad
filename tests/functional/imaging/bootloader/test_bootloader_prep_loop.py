"""ppc64le PReP on real loop disks: real tables, ext4 root, mounts and chroot.

The image's grub-install is a recording script inside the image (this host
has no powerpc-ieee1275 grub modules), so the exact invocation is asserted;
grub-mkconfig is the real one copied into the image.
"""

from __future__ import annotations

import os

import pytest

from agent.errors import CommandExecutionError, InvalidImage
from agent.imaging.bootloader import CVE_MESSAGE, Request, install_bootloader
from tests.conftest import requires_loop
from tests.functional.imaging.bootloader import rootfs
from tests.functional.imaging.bootloader.conftest import agent_state, copy_tree
from tests.functional.imaging.bootloader.rootfs import assert_clean, read_head, root_files

pytestmark = [requires_loop, pytest.mark.usefixtures("bios_booted")]
MIB = rootfs.MIB
ARGV = "/boot/grub-install.argv"
RECORDER = f'echo "$@" > {ARGV}\necho "Installing for powerpc-ieee1275 platform."\n'
MAPS_SEEN = "/boot/device.maps.seen"
# also records every device.map grub-install could read while it runs
MAP_RECORDER = (f"for f in /boot/grub/device.map /boot/grub2/device.map; do\n"
                f'  [ -e "$f" ] && {{ echo "== $f"; cat "$f"; }}\n'
                f"done > {MAPS_SEEN}\n" + RECORDER)


def image(template: str, *, install: str | None = "grub-install",
          mkconfig_body: str | None = None, config: str | None = None,
          recorder: str = RECORDER):
    """populate callback: ``template`` plus a recording grub-install and optional extras."""
    def populate(mnt: str) -> None:
        copy_tree(template)(mnt)
        for name in ("grub-install", "grub2-install"):
            path = os.path.join(mnt, "usr/sbin", name)
            if os.path.exists(path):
                os.unlink(path)
        if install:
            rootfs.write_script(os.path.join(mnt, "usr/sbin", install), recorder)
        if mkconfig_body is not None:
            rootfs.write_script(os.path.join(mnt, "usr/sbin/grub2-mkconfig"), mkconfig_body)
        if config:
            os.makedirs(os.path.dirname(os.path.join(mnt, config.lstrip("/"))), exist_ok=True)
            with open(os.path.join(mnt, config.lstrip("/")), "w") as f:
                f.write("menuentry 'Image' { linux /boot/vmlinux }\n")
    return populate


def prep_disk(make_loop, populate, *, garbage: bool = False,
              sector_size: int = 512) -> tuple[str, str, str, str]:
    dev = make_loop(96 * MIB, sector_size=sector_size)
    prep, root = rootfs.gpt(dev, [(8, rootfs.PREP_TYPE), (0, rootfs.LINUX_TYPE)])
    if garbage:
        with open(prep, "r+b") as f:
            f.write(b"left over by an earlier tenant" * 1000)
    return dev, prep, root, rootfs.fill_ext4(root, populate)


def ppc_state(dev: str):
    return agent_state(dev, enable_bios_bootloader_install=True)


def test_grub_goes_into_the_prep_partition_found_by_type(make_loop, grub_root_template):
    dev, prep, root, uuid = prep_disk(make_loop, image(grub_root_template), garbage=True)
    outcome = install_bootloader(ppc_state(dev), Request(root_uuid=uuid), arch="ppc64le")
    assert outcome.path == "prep"
    files = root_files(root, ARGV, "/boot/grub/grub.cfg")
    assert files[ARGV] == f"--target=powerpc-ieee1275 --no-nvram {prep}\n"
    assert "menuentry" in files["/boot/grub/grub.cfg"]       # real grub-mkconfig ran
    # grub-install refuses a PReP partition holding anything but zeros or an ELF image
    assert read_head(prep, 8 * MIB) == b"\0" * (8 * MIB)
    assert_clean(dev)


def test_grub2_install_gets_the_whole_disk_as_hd0_in_boot_grub2(make_loop, shell_root_template):
    populate = image(shell_root_template, install="grub2-install", recorder=MAP_RECORDER,
                     config="/boot/grub2/grub.cfg")
    dev, prep, root, uuid = prep_disk(make_loop, populate)
    outcome = install_bootloader(ppc_state(dev), Request(root_uuid=uuid), arch="ppc64le")
    assert outcome.path == "prep"
    files = root_files(root, MAPS_SEEN, ARGV, "/boot/grub2/device.map", "/boot/grub2/grub.cfg")
    # the disk, not the PReP partition grub-install was given, and only where grub2-* reads it
    assert files[MAPS_SEEN] == f"== /boot/grub2/device.map\n(hd0)\t{dev}\n"
    assert files[ARGV] == f"--target=powerpc-ieee1275 --no-nvram {prep}\n"
    assert files["/boot/grub2/device.map"] is None
    assert files["/boot/grub2/grub.cfg"]
    assert_clean(dev)


def test_a_failing_grub_install_leaves_no_map_and_no_directory_behind(make_loop,
                                                                      shell_root_template):
    populate = image(shell_root_template, install="grub2-install",
                     recorder=MAP_RECORDER + "echo 'grub-install: error: disk full' >&2\nexit 1\n")
    dev, prep, root, uuid = prep_disk(make_loop, populate)
    assert rootfs.root_exists(root, "/boot/grub2") == {"/boot/grub2": False}
    with pytest.raises(CommandExecutionError, match="grub2-install --target=powerpc-ieee1275 "
                                                    "--no-nvram .* failed with exit code 1"):
        install_bootloader(ppc_state(dev), Request(root_uuid=uuid), arch="ppc64le")
    assert root_files(root, MAPS_SEEN)[MAPS_SEEN] == \
        f"== /boot/grub2/device.map\n(hd0)\t{dev}\n"
    # the agent made /boot/grub2 for the map and removed it again
    assert rootfs.root_exists(root, "/boot/grub2", "/boot/grub") == {"/boot/grub2": False,
                                                                     "/boot/grub": True}
    assert_clean(dev)


def test_prep_by_recorded_partuuid_on_an_mbr_disk(make_loop, grub_root_template):
    dev = make_loop(96 * MIB)
    rootfs.sh("sfdisk", "-q", dev, input="label: dos\nlabel-id: 0x1234abcd\n"
              "start=2048, size=16384, type=41, bootable\nstart=18432, type=83\n")
    rootfs.expose(dev)
    prep, root = rootfs.part(dev, 1), rootfs.part(dev, 2)
    uuid = rootfs.fill_ext4(root, image(grub_root_template))
    install_bootloader(ppc_state(dev), Request(root_uuid=uuid, prep_boot_part_uuid="1234abcd-01"),
                       arch="ppc64le")
    assert root_files(root, ARGV)[ARGV] == f"--target=powerpc-ieee1275 --no-nvram {prep}\n"
    assert_clean(dev)


def test_a_prep_uuid_naming_another_partition_is_refused(make_loop, grub_root_template):
    dev, prep, root, uuid = prep_disk(make_loop, image(grub_root_template))
    with pytest.raises(InvalidImage, match=f"{root} \\(UUID {uuid}\\) is not a PReP Boot "
                                           "partition"):
        install_bootloader(ppc_state(dev), Request(root_uuid=uuid, prep_boot_part_uuid=uuid),
                           arch="ppc64le")
    assert root_files(root, ARGV)[ARGV] is None
    assert_clean(dev)


def test_missing_grub_cfg_is_a_clear_error(make_loop, shell_root_template):
    # the image's grub2-mkconfig "succeeds" without writing anything
    populate = image(shell_root_template, install="grub2-install", mkconfig_body="exit 0\n")
    dev, prep, root, uuid = prep_disk(make_loop, populate)
    with pytest.raises(InvalidImage) as err:
        install_bootloader(ppc_state(dev), Request(root_uuid=uuid), arch="ppc64le")
    assert err.value.details == (
        f"the root filesystem on {root} has no /boot/grub/grub.cfg or /boot/grub2/grub.cfg even "
        "after /usr/sbin/grub2-mkconfig ran; petitboot reads that file to boot the node")
    assert root_files(root, ARGV)[ARGV] == f"--target=powerpc-ieee1275 --no-nvram {prep}\n"
    assert_clean(dev)


def test_without_mkconfig_or_config_the_error_says_so(make_loop, shell_root_template):
    dev, _, root, uuid = prep_disk(make_loop, image(shell_root_template))
    with pytest.raises(InvalidImage, match="and the image has no grub-mkconfig to create one; "
                                           "petitboot reads that file"):
        install_bootloader(ppc_state(dev), Request(root_uuid=uuid), arch="ppc64le")
    assert_clean(dev)


def test_no_prep_partition_means_petitboot_only(make_loop, shell_root_template):
    dev = make_loop(64 * MIB)
    (root,) = rootfs.gpt(dev, [(0, rootfs.LINUX_TYPE)])
    uuid = rootfs.fill_ext4(root, image(shell_root_template, install="grub2-install",
                                        config="/boot/grub2/grub.cfg"))
    outcome = install_bootloader(ppc_state(dev), Request(root_uuid=uuid), arch="ppc64le")
    assert outcome.path == "prep"
    assert root_files(root, ARGV)[ARGV] is None            # nothing to install into
    assert_clean(dev)


def test_disabled_on_ppc64le_too(make_loop, grub_root_template):
    dev, prep, root, uuid = prep_disk(make_loop, image(grub_root_template))
    with pytest.raises(InvalidImage, match=CVE_MESSAGE.replace(".", r"\.")):
        install_bootloader(agent_state(dev), Request(root_uuid=uuid), arch="ppc64le")
    assert root_files(root, ARGV)[ARGV] is None
    assert_clean(dev)


def ppc_modules() -> str | None:
    """powerpc-ieee1275 grub modules: fetch_ppc_grub.sh puts them in its default place."""
    for path in (os.environ.get("DEPLOY_AGENT_GRUB_PPC_DIR", ""),
                 "/var/cache/deploy-agent-tests/grub-ppc/powerpc-ieee1275",
                 "/usr/lib/grub/powerpc-ieee1275"):
        if path and os.path.isfile(os.path.join(path, "moddep.lst")):
            return path
    return None


@pytest.mark.skipif(ppc_modules() is None, reason="no powerpc-ieee1275 grub modules; run "
                    "tests/functional/imaging/bootloader/fetch_ppc_grub.sh")
@pytest.mark.parametrize("sector_size", [512, 4096])
def test_real_grub_install_writes_a_powerpc_elf_into_prep(make_loop, grub_root_template,
                                                          sector_size):
    # the image's real grub-install (Debian grub 2.06) with Debian's ppc64el modules; Power
    # systems often have 4Kn disks
    def populate(mnt: str) -> None:
        copy_tree(grub_root_template)(mnt)
        rootfs.sh("cp", "-a", ppc_modules(), os.path.join(mnt, "usr/lib/grub/"))
    dev, prep, root, uuid = prep_disk(make_loop, populate, garbage=True,
                                      sector_size=sector_size)
    outcome = install_bootloader(ppc_state(dev), Request(root_uuid=uuid), arch="ppc64le")
    assert outcome.path == "prep"
    elf = read_head(prep, 20)
    # 32-bit big-endian ELF for PowerPC (e_machine 20): what Open Firmware loads
    assert elf[:6] == b"\x7fELF\x01\x02" and elf[18:20] == b"\x00\x14"
    files = root_files(root, "/boot/grub/grub.cfg", "/boot/grub/powerpc-ieee1275/core.elf",
                       "/boot/grub/powerpc-ieee1275/normal.mod")
    assert all(files.values())
    assert uuid in files["/boot/grub/grub.cfg"]
    assert_clean(dev)
