"""tools/assemble-foreign: private APT setup, unpacking, offline configuration, per arch."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.scripts import load_script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


asm = load_script("assemble_foreign", "tools", "assemble-foreign")
br = asm.br


def _deb(tmp_path, name: str, files: dict[str, str]) -> str:
    """A real .deb built by dpkg-deb, holding ``files`` (path -> content)."""
    pkg = tmp_path / f"{name}-src"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0-1\nArchitecture: ppc64el\n"
        "Maintainer: Test <test@example.org>\nDescription: test package\n")
    for path, content in files.items():
        target = pkg / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    out = tmp_path / f"{name}_1.0-1_ppc64el.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(out)],
                   check=True, capture_output=True)
    return str(out)


# ------------------------------------------------------------------ package lists

@pytest.mark.parametrize("element", ["deploy-agent", "deploy-agent-ramdisk"])
def test_minimal_parser_agrees_with_yaml(element):
    path = os.path.join(REPO, "elements", element, "package-installs.yaml")
    with open(path) as f:
        expected = {k: {f: str(v) for f, v in (p or {}).items()}
                    for k, p in yaml.safe_load(f).items()}
    assert br.read_package_installs(path) == expected


def test_minimal_parser_rejects_lists(tmp_path):
    path = tmp_path / "package-installs.yaml"
    path.write_text("pkg:\n  - arch: amd64\n")
    with pytest.raises(br.BuildError, match="unsupported"):
        br.read_package_installs(str(path))


def test_ppc64el_package_set():
    packages = br.element_packages("ppc64el")
    assert {"linux-image-powerpc64le", "grub-ieee1275-bin", "powerpc-utils",
            "systemd-sysv", "python3-psutil"} <= set(packages)
    assert not {"efibootmgr", "dmidecode", "grub-pc-bin", "binutils",
                "software-properties-common"} & set(packages)
    assert asm.ARCHES["ppc64el"]["extra"] == ()       # the elements name its kernel


def test_arm64_package_set_adds_the_kernel_debian_minimal_would():
    packages = [*br.element_packages("arm64"), *asm.ARCHES["arm64"]["extra"]]
    assert {"linux-image-arm64", "efibootmgr", "grub-efi-arm64-bin", "dmidecode",
            "systemd-sysv", "python3-psutil"} <= set(packages)
    assert not {"linux-image-powerpc64le", "grub-ieee1275-bin", "powerpc-utils",
                "grub-pc-bin", "grub-efi-amd64-bin", "binutils"} & set(packages)


# ------------------------------------------------------------------ apt

@pytest.mark.parametrize("arch", ["ppc64el", "arm64"])
def test_private_apt_config_targets_the_arch(tmp_path, arch):
    env = asm.apt_config(str(tmp_path), "http://m.example.org/debian",
                         "http://m.example.org/debian-security", "bookworm", arch)
    conf = open(env["APT_CONFIG"]).read()
    assert f'APT::Architecture "{arch}";' in conf
    assert f'APT::Architectures {{ "{arch}"; }};' in conf
    assert f'Dir::State::status "{tmp_path}/var/lib/dpkg/status";' in conf
    assert os.path.getsize(tmp_path / "var/lib/dpkg/status") == 0
    sources = (tmp_path / "etc/apt/sources.list").read_text().splitlines()
    assert sources[0].endswith("http://m.example.org/debian bookworm main")
    assert sources[2].endswith("http://m.example.org/debian-security bookworm-security main")
    assert all("signed-by=" in line for line in sources)


def _fake_apt(tmp_path, script: str) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "apt-get").write_text("#!/bin/sh\n" + script)
    (bindir / "apt-get").chmod(0o755)
    env = asm.apt_config(str(tmp_path / "state"), "http://m.example.org/debian",
                         "http://s.example.org/debian-security", "bookworm", "arm64")
    env["PATH"] = f"{bindir}:{env['PATH']}"
    return env


def test_broken_security_index_is_dropped_with_a_warning(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(asm.time, "sleep", lambda s: None)
    # fails while the security suite is configured, like a mirror mid-sync
    env = _fake_apt(tmp_path, '''
if grep -q s.example.org "$(dirname "$APT_CONFIG")/etc/apt/sources.list"; then
  echo "E: Failed to fetch http://s.example.org/debian-security/dists/x/Packages.xz  \
File has unexpected size" >&2
  exit 100
fi
exit 0
''')
    assert asm.apt_update(env, "http://s.example.org/debian-security", "arm64") is False
    assert "WITHOUT security updates" in capsys.readouterr().err
    sources = (tmp_path / "state/etc/apt/sources.list").read_text()
    assert "s.example.org" not in sources and "m.example.org" in sources


def test_broken_main_index_fails_the_build(tmp_path, monkeypatch):
    monkeypatch.setattr(asm.time, "sleep", lambda s: None)
    env = _fake_apt(tmp_path, 'echo "E: Failed to fetch http://m.example.org/debian/x" >&2\n'
                              'exit 100\n')
    with pytest.raises(asm.BuildError, match="apt-get update for arm64 failed"):
        asm.apt_update(env, "http://s.example.org/debian-security", "arm64")


# ------------------------------------------------------------------ tree

@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="no dpkg-deb")
def test_unpack_merges_usr_and_records_packages(tmp_path):
    debs = [_deb(tmp_path, "alpha", {"bin/alpha": "a\n", "usr/share/doc/alpha/README": "x"}),
            _deb(tmp_path, "beta", {"lib/beta/data": "b\n", "usr/bin/beta": "b\n"})]
    root = tmp_path / "root"
    root.mkdir()
    asm.unpack(debs, str(root))
    assert os.readlink(root / "bin") == "usr/bin"
    assert (root / "usr/bin/alpha").read_text() == "a\n"
    assert (root / "usr/lib/beta/data").read_text() == "b\n"
    status = (root / "var/lib/dpkg/status").read_text()
    assert "Package: alpha\nStatus: install ok installed\n" in status
    assert "Package: beta\nStatus: install ok installed\n" in status


def test_prune_runs_the_elements_scripts_on_the_tree(tmp_path, monkeypatch):
    for path in ("usr/share/doc/x/README", "usr/share/locale/de/LC_MESSAGES/x.mo",
                 "usr/share/locale/locale.alias", "usr/lib/powerpc64le-linux-gnu/libicudata.so.72",
                 "usr/lib/powerpc64le-linux-gnu/libc.so.6", "usr/sbin/xfs_scrub",
                 "usr/sbin/mkfs.xfs", "usr/bin/perl", "usr/lib/udev/hwdb.bin",
                 "usr/lib/modules/6.1.0-9-powerpc64le/modules.dep"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    (tmp_path / "lib").symlink_to("usr/lib")           # merged /usr, as unpack makes it
    # the module pruning has its own tests; here it only has to run on the tree
    monkeypatch.setenv("DIB_DEPLOY_AGENT_KEEP_ALL_MODULES", "1")
    asm.prune(str(tmp_path), "ppc64el")
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["usr/lib/modules/6.1.0-9-powerpc64le/modules.dep",
                    "usr/lib/powerpc64le-linux-gnu/libc.so.6", "usr/sbin/mkfs.xfs",
                    "usr/share/locale/locale.alias"]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="no readelf")
def test_prune_fails_when_a_program_loses_a_library(tmp_path, monkeypatch):
    # a real ELF (this machine's) whose libc the tree does not have
    (tmp_path / "usr/bin").mkdir(parents=True)
    shutil.copy(shutil.which("true"), tmp_path / "usr/bin/true")
    (tmp_path / "usr/lib/modules/6.1.0-9-powerpc64le").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr/lib")
    monkeypatch.setenv("DIB_DEPLOY_AGENT_KEEP_ALL_MODULES", "1")
    with pytest.raises(asm.BuildError, match="97-deploy-agent-ramdisk-prune"):
        asm.prune(str(tmp_path), "ppc64el")


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="no systemctl")
def test_units_are_enabled_inside_the_tree_only(tmp_path):
    root = tmp_path / "root"
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for name in ("systemd-networkd.service", "systemd-resolved.service"):
        (units / name).write_text("[Service]\nExecStart=/bin/true\n"
                                  "[Install]\nWantedBy=multi-user.target\n")
    (units / "multi-user.target").write_text("[Unit]\nDescription=m\n")
    shutil.copytree(os.path.join(REPO, "elements/deploy-agent/static/etc"), root / "etc")
    host_before = sorted(os.listdir("/etc/systemd/system"))
    asm.enable_units(str(root), str(tmp_path / "work"))
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert {"deploy-agent.service", "systemd-networkd.service",
            "systemd-resolved.service"} <= set(os.listdir(wants))
    assert os.readlink(root / "etc/systemd/system/apt-daily.timer") == "/dev/null"
    assert os.readlink(root / "etc/systemd/system/default.target").endswith(
        "multi-user.target")
    assert sorted(os.listdir("/etc/systemd/system")) == host_before


def test_refuses_a_directory_that_is_not_a_checkout(tmp_path, capsys):
    assert asm.main(["--arch", "arm64", "--src", str(tmp_path),
                     "--output", str(tmp_path / "out")]) == 2
    assert "not a deploy-agent checkout" in capsys.readouterr().err


def test_arch_is_required_and_checked(capsys):
    with pytest.raises(SystemExit):
        asm.parse_args([])
    with pytest.raises(SystemExit):
        asm.parse_args(["--arch", "sparc64"])
    assert "invalid choice" in capsys.readouterr().err


def test_the_old_name_is_the_ppc64el_assembly(tmp_path):
    out = subprocess.run([os.path.join(REPO, "tools", "assemble-ppc64el"), "--src",
                          str(tmp_path), "--output", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "not a deploy-agent checkout" in out.stderr
    parsed = subprocess.run([os.path.join(REPO, "tools", "assemble-ppc64el"), "--help"],
                            capture_output=True, text=True, check=True).stdout
    assert "assemble-foreign" in parsed
