"""tools/build-ramdisk: mirror discovery, preflight checks, boot configs, tool list sync."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess

import pytest

from tests.scripts import load_script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "ramdisk")
ELEMENT = os.path.join(REPO, "elements", "deploy-agent")


br = load_script("build_ramdisk", "tools", "build-ramdisk")


# ------------------------------------------------------------------ mirrors

def test_mirrors_from_deb822_sources_skip_disabled_files_and_stanzas():
    mirror, security = br.debian_mirrors("bookworm", env={},
                                         apt_dir=os.path.join(FIXTURES, "apt"))
    assert mirror == "http://mirror.example.org/debian"
    assert security == "http://mirror.example.org/debian-security"


def test_disabled_stanza_is_not_an_entry():
    uris = [uri for uri, _, _ in br.apt_entries(os.path.join(FIXTURES, "apt"))]
    assert "http://other.example.org/debian" not in uris
    assert not any("repo.example.net" in u for u in uris)


def test_mirrors_from_one_line_sources_with_options():
    mirror, security = br.debian_mirrors("bookworm", env={},
                                         apt_dir=os.path.join(FIXTURES, "apt-oneline"))
    assert mirror == "http://ftp.example.org/debian"
    assert security == "http://security.example.org/debian-security"


def test_environment_overrides_apt_sources():
    env = {"DIB_DISTRIBUTION_MIRROR": "http://env.example.org/debian/",
           "DIB_DEBIAN_SECURITY_MIRROR": "http://env.example.org/sec"}
    assert br.debian_mirrors("bookworm", env=env, apt_dir=os.path.join(FIXTURES, "apt")) == (
        "http://env.example.org/debian", "http://env.example.org/sec")


def test_missing_security_mirror_names_the_variable():
    with pytest.raises(br.BuildError, match="DIB_DEBIAN_SECURITY_MIRROR"):
        br.debian_mirrors("bookworm", env={}, apt_dir=os.path.join(FIXTURES, "apt-nosecurity"))


def test_unknown_release_names_the_mirror_variable(tmp_path):
    with pytest.raises(br.BuildError, match="DIB_DISTRIBUTION_MIRROR"):
        br.debian_mirrors("trixie", env={}, apt_dir=os.path.join(FIXTURES, "apt"))


# ------------------------------------------------------------------ preflight

def test_native_arch_needs_no_binfmt(tmp_path):
    assert br.foreign_arch_problem("amd64", "amd64", binfmt_dir=str(tmp_path / "none")) is None


def test_foreign_arch_without_binfmt_misc_says_so(tmp_path):
    problem = br.foreign_arch_problem("ppc64el", "amd64", binfmt_dir=str(tmp_path / "none"))
    assert "binfmt_misc" in problem and "not mounted" in problem


def test_foreign_arch_without_handler_names_qemu_user_static(tmp_path):
    (tmp_path / "status").write_text("enabled\n")
    problem = br.foreign_arch_problem("ppc64el", "amd64", binfmt_dir=str(tmp_path))
    assert "qemu-ppc64le" in problem and "qemu-user-static" in problem


def test_foreign_arch_with_disabled_handler(tmp_path):
    (tmp_path / "status").write_text("enabled\n")
    (tmp_path / "qemu-ppc64le").write_text("disabled\ninterpreter /usr/bin/qemu-ppc64le\n")
    assert "disabled" in br.foreign_arch_problem("ppc64el", "amd64", binfmt_dir=str(tmp_path))


def test_foreign_arch_handler_without_fix_binary_flag(tmp_path):
    (tmp_path / "status").write_text("enabled\n")
    (tmp_path / "qemu-ppc64le").write_text("enabled\ninterpreter /usr/bin/qemu-ppc64le\n"
                                           "flags: OC\n")
    assert "F (fix binary)" in br.foreign_arch_problem("ppc64el", "amd64",
                                                        binfmt_dir=str(tmp_path))


def test_foreign_arch_with_enabled_handler_is_fine(tmp_path):
    (tmp_path / "status").write_text("enabled\n")
    (tmp_path / "qemu-ppc64le").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt\n"
                                           "flags: POCF\n")
    assert br.foreign_arch_problem("ppc64el", "amd64", binfmt_dir=str(tmp_path)) is None


def test_missing_host_tools_are_listed(tmp_path):
    for tool in ("sudo", "cpio", "losetup", "chroot", "gzip"):
        (tmp_path / tool).write_text("#!/bin/sh\n")
        (tmp_path / tool).chmod(0o755)
    assert br.missing_host_tools("zstd", path=str(tmp_path)) == [
        "debootstrap", "mkfs.ext4", "zstd"]
    assert br.missing_host_tools("gzip", path=str(tmp_path)) == ["debootstrap", "mkfs.ext4"]


def _fake_assembler(tmp_path, monkeypatch, body: str) -> str:
    """A stand-in for tools/assemble-foreign that records its arguments."""
    script = tmp_path / "assemble-foreign"
    script.write_text("import sys, os\n"
                      "open(os.environ['ARGS_FILE'], 'w').write(' '.join(sys.argv[1:]))\n"
                      + body)
    args_file = tmp_path / "args"
    monkeypatch.setenv("ARGS_FILE", str(args_file))
    monkeypatch.setattr(br, "ASSEMBLER", str(script))
    monkeypatch.setattr(br, "foreign_arch_problem", lambda arch, host: "no binfmt_misc here")
    monkeypatch.setattr(br, "ensure_dib", lambda *a: pytest.fail("diskimage-builder started"))
    return str(args_file)


@pytest.mark.parametrize("arch", ["ppc64el", "arm64"])
def test_foreign_arch_without_binfmt_is_assembled_without_a_chroot(monkeypatch, capsys,
                                                                   tmp_path, arch):
    args_file = _fake_assembler(tmp_path, monkeypatch, """
out = sys.argv[sys.argv.index('--output') + 1]
for name in ('deploy-agent.kernel', 'deploy-agent.initramfs', 'deploy-agent.sha256'):
    open(os.path.join(out, name), 'w').write(name)
print('assembled')
""")
    out = tmp_path / "out"
    assert br.main(["--arch", arch, "--output", str(out), "--quiet"]) == 0
    args = open(args_file).read().split()
    assert args[:4] == ["--arch", arch, "--output", str(out)]
    printed = capsys.readouterr().out
    assert "no binfmt_misc here; assembling the" in printed and "assembled\n" not in printed
    assert "(assembled without a chroot)" in printed
    assert (out / "deploy-agent.build.log").read_text() == "assembled\n"


def test_a_failed_assembly_shows_the_log_tail(monkeypatch, capsys, tmp_path):
    _fake_assembler(tmp_path, monkeypatch, "print('apt cannot resolve it')\nsys.exit(2)\n")
    assert br.main(["--arch", "arm64", "--output", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "tools/assemble-foreign failed with exit code 2" in err
    assert "apt cannot resolve it" in err


def test_extra_elements_need_the_chroot(monkeypatch, capsys, tmp_path):
    args_file = _fake_assembler(tmp_path, monkeypatch, "")
    code = br.main(["--arch", "arm64", "--element", "devuser",
                    "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot build arm64" in err and "without extra --element" in err
    assert not os.path.exists(args_file) and not (tmp_path / "out").exists()


def test_not_a_checkout_is_refused(capsys, tmp_path):
    assert br.main(["--src", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "not a deploy-agent checkout" in capsys.readouterr().err


# ------------------------------------------------------------------ boot configs

def test_boot_configs_rendered_with_urls(tmp_path):
    written = br.write_boot_configs(str(tmp_path), "http://10.0.0.1:8080/ramdisk/",
                                    "https://ironic.example.com:6385")
    assert set(written) == {"boot.ipxe", "boot.ipxe.template", "petitboot.cfg",
                            "petitboot.cfg.template"}
    ipxe = (tmp_path / "boot.ipxe").read_text()
    assert ipxe.startswith("#!ipxe")
    assert "@" not in ipxe.replace("#!ipxe", "")
    assert ("kernel --timeout 60000 http://10.0.0.1:8080/ramdisk/deploy-agent.kernel " in ipxe)
    assert "ipa-api-url=https://ironic.example.com:6385 BOOTIF=${mac}" in ipxe
    assert "initrd --name deploy_ramdisk --timeout 120000 " \
           "http://10.0.0.1:8080/ramdisk/deploy-agent.initramfs" in ipxe
    cfg = (tmp_path / "petitboot.cfg").read_text()
    assert "KERNEL http://10.0.0.1:8080/ramdisk/deploy-agent.kernel" in cfg
    assert "APPEND console=hvc0 ipa-api-url=https://ironic.example.com:6385" in cfg


def test_boot_templates_copied_without_urls(tmp_path):
    assert br.write_boot_configs(str(tmp_path), None, None) == [
        "boot.ipxe.template", "petitboot.cfg.template"]
    assert "@HTTP_URL@" in (tmp_path / "boot.ipxe.template").read_text()


# ------------------------------------------------------------------ tool list sync

@dataclasses.dataclass
class FakeTool:
    package: str
    arches: tuple[str, ...] = ("amd64", "ppc64el", "arm64")


def _element_copy(tmp_path) -> str:
    dst = tmp_path / "deploy-agent"
    dst.mkdir()
    for name in ("package-installs.yaml", "pkg-map"):
        shutil.copy(os.path.join(ELEMENT, name), dst)
    return str(dst)


def test_sync_rewrites_tool_block_and_keeps_everything_else(tmp_path):
    element = _element_copy(tmp_path)
    tools = {"sgdisk": FakeTool("gdisk"), "newtool": FakeTool("new-pkg", ("amd64",))}
    changed = br.sync_tool_packages(element, tools)
    assert len(changed) == 2
    text = open(os.path.join(element, "package-installs.yaml")).read()
    block = text[text.index(br.TOOLS_BEGIN):text.index(br.TOOLS_END)]
    assert block.splitlines()[1:] == ["sgdisk:", "newtool:", "  arch: amd64"]
    assert "grub-efi-tooling:" in text and "kernel-ppc64le:" in text
    assert "grub-efi-arm64-tooling:" in text
    debian = json.load(open(os.path.join(element, "pkg-map")))["family"]["debian"]
    assert debian["newtool"] == "new-pkg" and debian["sgdisk"] == "gdisk"
    # tools that left TOOLS leave pkg-map; mappings of other keys stay
    assert "qemu-img" not in debian
    assert debian["grub-efi-tooling"] == "grub-efi-amd64-bin"
    assert br.sync_tool_packages(element, tools) == []


def test_sync_refuses_a_file_without_markers(tmp_path):
    element = _element_copy(tmp_path)
    with open(os.path.join(element, "package-installs.yaml"), "w") as f:
        f.write("sgdisk:\n")
    with pytest.raises(br.BuildError, match="markers"):
        br.sync_tool_packages(element, {"sgdisk": FakeTool("gdisk")})


def test_checksum_matches_sha256sum(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"deploy-agent\n" * 1000)
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    assert br.sha256(str(path)) == out.stdout.split()[0]
