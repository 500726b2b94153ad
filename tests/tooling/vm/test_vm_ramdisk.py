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


def _builders(tmp_path, monkeypatch, first: str) -> list[str]:
    """Stand-ins for build-ramdisk (printing ``first``, failing) and the assembler."""
    calls = tmp_path / "calls"
    scripts = []
    for name, body in (("build-ramdisk", f"print({first!r}); sys.exit(2)"),
                       ("assemble-foreign", "sys.exit(2)")):
        script = tmp_path / name
        script.write_text(f"import sys\nopen({str(calls)!r}, 'a').write({name!r} + ' ' + "
                          f"' '.join(sys.argv[1:]) + '\\n')\n{body}\n")
        scripts.append(str(script))
    monkeypatch.setattr(ramdisk, "BUILDERS", {"arm64": tuple(scripts)})
    monkeypatch.setattr(ramdisk, "ASSEMBLER", scripts[1])
    with pytest.raises(ramdisk.RamdiskError, match="no arm64 ramdisk could be built"):
        ramdisk._build("arm64", "bookworm", str(tmp_path / "out"), log=lambda m: None)
    return calls.read_text().splitlines()


def test_the_assembler_is_the_fallback_after_a_chroot_build(tmp_path, monkeypatch):
    calls = _builders(tmp_path, monkeypatch, "disk-image-create failed")
    assert [c.split()[0] for c in calls] == ["build-ramdisk", "assemble-foreign"]
    assert all("--arch arm64" in c for c in calls)


def test_the_assembler_is_not_run_twice(tmp_path, monkeypatch):
    calls = _builders(tmp_path, monkeypatch, "build-ramdisk: no binfmt_misc; assembling the "
                      "arm64 ramdisk " + ramdisk.HANDED_OVER + "; log in x")
    assert [c.split()[0] for c in calls] == ["build-ramdisk"]
