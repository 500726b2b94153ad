"""Resolving paths inside an image root: symlinks never leave the root."""

from __future__ import annotations

import os

import pytest

from agent.errors import InvalidImage
from agent.imaging.bootloader import chroot, grub_bios


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "usr/sbin").mkdir(parents=True)
    (r / "usr/bin").mkdir(parents=True)
    (r / "boot/grub2").mkdir(parents=True)
    os.symlink("usr/sbin", r / "sbin")              # merged /usr, relative
    os.symlink("/usr/bin", r / "bin")               # absolute: must stay inside the root
    return str(r)


def test_absolute_symlinks_resolve_inside_the_root(root):
    assert chroot.resolve(root, "/bin/sh") == os.path.join(root, "usr/bin/sh")
    assert chroot.resolve(root, "/sbin/grub2-install") == os.path.join(root,
                                                                      "usr/sbin/grub2-install")
    os.symlink("../../../../../etc", os.path.join(root, "boot/escape"))
    assert chroot.resolve(root, "/boot/escape/passwd") == os.path.join(root, "etc/passwd")
    assert chroot.resolve(root, "../../..") == root


def test_symlink_loops_are_an_invalid_image(root):
    os.symlink("/loop", os.path.join(root, "loop"))
    with pytest.raises(InvalidImage, match="too many levels of symbolic links resolving "
                                           "/loop/x"):
        chroot.resolve(root, "/loop/x")


def test_find_program_prefers_names_then_dirs_and_needs_exec(root):
    path = os.path.join(root, "usr/sbin/grub-install")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n")
    assert chroot.find_program(root, ["grub2-install", "grub-install"]) is None   # not +x
    os.chmod(path, 0o755)
    assert chroot.find_program(root, ["grub2-install", "grub-install"]) == \
        "/usr/sbin/grub-install"
    # a symlink pointing at the host's program does not count
    os.symlink("/usr/bin/env", os.path.join(root, "usr/bin/grub2-install"))
    assert chroot.find_program(root, ["grub2-install"]) is None


def test_image_grub_flavours(root):
    assert grub_bios.image_grub(root) == grub_bios.ImageGrub(None, None, "/boot/grub/grub.cfg")
    for name in ("grub2-mkconfig", "grub-install"):
        path = os.path.join(root, "usr/sbin", name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(path, 0o755)
    # grub2-* wins as soon as any grub2 program exists: mixing flavours would split
    # the config from the modules
    assert grub_bios.image_grub(root) == grub_bios.ImageGrub(None, "/usr/sbin/grub2-mkconfig",
                                                             "/boot/grub2/grub.cfg")
    with pytest.raises(InvalidImage, match="the image has no grub-install \\(looked for"):
        grub_bios.require(grub_bios.image_grub(root), install=True, mkconfig=True)


def test_exists_needs_a_non_empty_regular_file(root):
    cfg = os.path.join(root, "boot/grub2/grub.cfg")
    open(cfg, "w").close()
    assert not chroot.exists(root, "/boot/grub2/grub.cfg")
    with open(cfg, "w") as f:
        f.write("set default=0\n")
    assert chroot.exists(root, "/boot/grub2/grub.cfg")
    assert not chroot.exists(root, "/boot/grub2")
