import hashlib

import pytest
from vm import ramdisk


def _artifacts(directory, kernel=b"kernel", initramfs=b"initramfs", sums=True):
    directory.mkdir(exist_ok=True)
    (directory / ramdisk.KERNEL).write_bytes(kernel)
    (directory / ramdisk.INITRAMFS).write_bytes(initramfs)
    if sums:
        (directory / ramdisk.SUMS).write_text(
            f"{hashlib.sha256(b'kernel').hexdigest()}  {ramdisk.KERNEL}\n"
            f"{hashlib.sha256(b'initramfs').hexdigest()}  {ramdisk.INITRAMFS}\n")
    return directory


def test_prebuilt_ramdisk_is_used_as_is(tmp_path):
    found = ramdisk.ensure("amd64", prebuilt=str(_artifacts(tmp_path / "rd")))
    assert found.cached and found.kernel.endswith(ramdisk.KERNEL)
    assert "deploy-agent.initramfs 0.0 MiB" in found.sizes()


def test_prebuilt_ramdisk_without_checksums_is_accepted(tmp_path):
    assert ramdisk.problems(str(_artifacts(tmp_path / "rd", sums=False))) == []


def test_a_corrupted_or_missing_artifact_is_refused(tmp_path):
    bad = _artifacts(tmp_path / "rd", initramfs=b"truncated")
    with pytest.raises(ramdisk.RamdiskError, match="initramfs does not match"):
        ramdisk.ensure("amd64", prebuilt=str(bad))
    (bad / ramdisk.KERNEL).unlink()
    assert "deploy-agent.kernel is missing" in ramdisk.problems(str(bad))


def test_cache_key_follows_the_architecture():
    assert ramdisk.cache_key("amd64", "bookworm") != ramdisk.cache_key("ppc64el", "bookworm")
