"""The agent's temporary grub device.map, on a real directory tree standing in for the root."""

from __future__ import annotations

import os

import pytest

from agent.errors import CommandExecutionError, InvalidImage
from agent.imaging.bootloader import devicemap


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "boot/grub").mkdir(parents=True)
    (r / "dev/disk/by-id").mkdir(parents=True)
    return str(r)


def read(root: str, path: str) -> str:
    with open(os.path.join(root, path.lstrip("/"))) as f:
        return f.read()


def test_written_while_inside_and_removed_after(root):
    with devicemap.install_disk_map(root, "/boot/grub", "/dev/sdc") as written:
        assert written == "/boot/grub/device.map"
        assert read(root, written) == "(hd0)\t/dev/sdc\n"
    assert os.listdir(os.path.join(root, "boot/grub")) == []


def test_removed_when_grub_install_fails_and_the_error_is_unchanged(root):
    failure = CommandExecutionError("the image's grub-install failed")
    with pytest.raises(CommandExecutionError) as err:
        with devicemap.install_disk_map(root, "/boot/grub", "/dev/sdc"):
            raise failure
    assert err.value is failure and not getattr(failure, "__notes__", None)
    assert os.listdir(os.path.join(root, "boot/grub")) == []


@pytest.mark.parametrize("own", [b"(hd0) /dev/vda\n(hd1) /dev/vdb", b""])
def test_the_images_own_file_is_untouched(root, own):
    path = os.path.join(root, "boot/grub/device.map")
    with open(path, "wb") as f:
        f.write(own)
    os.utime(path, (1_000_000, 1_000_000))
    before = os.stat(path)
    with devicemap.install_disk_map(root, "/boot/grub", "/dev/sdc") as written:
        assert written is None
    after = os.stat(path)
    with open(path, "rb") as f:
        assert f.read() == own
    assert (after.st_ino, after.st_mtime_ns, after.st_mode) == \
        (before.st_ino, before.st_mtime_ns, before.st_mode)


def test_an_image_symlink_named_device_map_counts_as_its_own(root):
    os.symlink("/etc/grub-device.map", os.path.join(root, "boot/grub/device.map"))
    with devicemap.install_disk_map(root, "/boot/grub", "/dev/sdc") as written:
        assert written is None
    assert os.readlink(os.path.join(root, "boot/grub/device.map")) == "/etc/grub-device.map"
    assert not os.path.exists(os.path.join(root, "etc/grub-device.map"))


def test_a_missing_grub2_directory_is_made_and_removed_again(root):
    with devicemap.install_disk_map(root, "/boot/grub2", "/dev/sdc") as written:
        assert read(root, written) == "(hd0)\t/dev/sdc\n"
    assert sorted(os.listdir(os.path.join(root, "boot"))) == ["grub"]


def test_a_directory_grub_install_filled_is_kept(root):
    with devicemap.install_disk_map(root, "/boot/grub2", "/dev/sdc"):
        with open(os.path.join(root, "boot/grub2/core.img"), "wb") as f:
            f.write(b"grub")
    assert os.listdir(os.path.join(root, "boot/grub2")) == ["core.img"]


def test_the_disk_is_named_as_the_chroot_resolves_it(root):
    os.symlink("../../sdc", os.path.join(root, "dev/disk/by-id/wwn-0x5000"))
    os.symlink("/dev/sdd", os.path.join(root, "dev/disk/by-id/wwn-0x6000"))  # inside the root
    assert devicemap.entry(root, "/dev/disk/by-id/wwn-0x5000") == "(hd0)\t/dev/sdc\n"
    assert devicemap.entry(root, "/dev/disk/by-id/wwn-0x6000") == "(hd0)\t/dev/sdd\n"


def test_the_map_follows_an_image_symlinked_grub_directory(root):
    os.rmdir(os.path.join(root, "boot/grub"))
    os.makedirs(os.path.join(root, "usr/lib/grub-boot"))
    os.symlink("/usr/lib/grub-boot", os.path.join(root, "boot/grub"))
    with devicemap.install_disk_map(root, "/boot/grub", "/dev/sdc"):
        assert read(root, "/usr/lib/grub-boot/device.map") == "(hd0)\t/dev/sdc\n"
    assert os.listdir(os.path.join(root, "usr/lib/grub-boot")) == []


@pytest.mark.parametrize("target", ["/dev", "/run/grub", "../../proc"])
def test_a_grub_directory_leading_into_a_bind_mount_is_refused(root, target):
    os.rmdir(os.path.join(root, "boot/grub"))
    os.symlink(target, os.path.join(root, "boot/grub"))
    with pytest.raises(InvalidImage, match="the image's /boot/grub leads into /(dev|run|proc), "
                                           "which is the ramdisk's"):
        with devicemap.install_disk_map(root, "/boot/grub", "/dev/sdc"):
            pytest.fail("grub-install must not run")
    assert sorted(os.listdir(root)) == ["boot", "dev"]
    assert os.listdir(os.path.join(root, "dev")) == ["disk"]


def test_an_unwritable_place_is_a_clear_error_with_nothing_left_behind(root):
    os.rmdir(os.path.join(root, "boot/grub"))
    os.rmdir(os.path.join(root, "boot"))
    with open(os.path.join(root, "boot"), "w") as f:      # /boot is a file: no directory below
        f.write("not a directory")
    with pytest.raises(CommandExecutionError, match="could not write /boot/grub/device.map into "
                                                    "the image for grub-install: Not a directory"):
        with devicemap.install_disk_map(root, "/boot/grub", "/dev/sdc"):
            pytest.fail("grub-install must not run")
    assert read(root, "/boot") == "not a directory"
