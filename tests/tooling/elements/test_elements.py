"""Structure of the diskimage-builder elements, checked without building an image.

The package lists are resolved the way diskimage-builder's package-installs
and pkg-map elements resolve them, once per architecture, and compared with
agent/tools.py.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml

from agent.tools import TOOLS
from tests.scripts import load_script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
ELEMENTS = os.path.join(REPO, "elements")
NAMES = ("deploy-agent", "deploy-agent-ramdisk")
ARCHES = ("amd64", "ppc64el", "arm64")
PHASES = ("root.d", "extra-data.d", "pre-install.d", "install.d", "post-install.d",
          "block-device.d", "pre-finalise.d", "finalise.d", "cleanup.d")
PARAMS = {"arch", "not-arch", "uninstall", "build-only", "phase", "when", "installtype",
          "dib_python_version"}
STATIC = os.path.join(ELEMENTS, "deploy-agent", "static")
BURNIN_HOOKS = ("extra-data.d/55-deploy-agent-burnin-tools",
                "install.d/65-deploy-agent-burnin-tools")


build_ramdisk = load_script("build_ramdisk_for_elements", "tools", "build-ramdisk")
modules = load_script("ramdisk_modules", "elements", "deploy-agent-ramdisk", "post-install.d",
                      "98-deploy-agent-ramdisk-modules")
prune_files = load_script("ramdisk_prune", "elements", "deploy-agent-ramdisk", "post-install.d",
                          "97-deploy-agent-ramdisk-prune")
wheelhouse = load_script("deploy_agent_wheelhouse", "elements", "deploy-agent", "extra-data.d",
                         "deploy-agent-lib", "wheelhouse.py")


def _package_installs(element: str) -> dict:
    with open(os.path.join(ELEMENTS, element, "package-installs.yaml")) as f:
        return yaml.safe_load(f) or {}


def _pkg_map(element: str) -> dict:
    with open(os.path.join(ELEMENTS, element, "pkg-map")) as f:
        return json.load(f)["family"]["debian"]


def _for_arch(params: dict, arch: str) -> bool:
    # diskimage-builder splits on "," without stripping, so no spaces allowed
    if "arch" in params:
        return arch in params["arch"].split(",")
    if "not-arch" in params:
        return arch not in params["not-arch"].split(",")
    return True


def resolve(arch: str) -> set[str]:
    """Debian packages the elements leave installed for ``arch``."""
    installed: set[str] = set()
    for element in NAMES:
        mapping = _pkg_map(element)
        for key, params in _package_installs(element).items():
            for entry in (params or [{}]) if isinstance(params, list) else [params or {}]:
                if entry.get("uninstall") or entry.get("build-only"):
                    continue
                if _for_arch(entry, arch) and mapping.get(key, key):
                    installed.add(mapping.get(key, key))
    return installed


# ------------------------------------------------------------------ element layout

@pytest.mark.parametrize("element", NAMES)
def test_element_has_the_dib_files(element):
    path = os.path.join(ELEMENTS, element)
    for name in ("README.rst", "element-deps", "package-installs.yaml", "pkg-map"):
        assert os.path.isfile(os.path.join(path, name)), f"{element} lacks {name}"
    with open(os.path.join(path, "README.rst")) as f:
        title = f.read().splitlines()[:3]
    assert title[1] == element and set(title[0]) == {"="}, "README starts with the element name"


@pytest.mark.parametrize("element", NAMES)
def test_element_deps_are_element_names(element):
    with open(os.path.join(ELEMENTS, element, "element-deps")) as f:
        deps = [line.strip() for line in f if line.strip()]
    assert deps
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*", d) for d in deps), deps
    assert "package-installs" in deps and "pkg-map" in deps


@pytest.mark.parametrize("element", NAMES)
def test_package_installs_use_known_parameters(element):
    installs = _package_installs(element)
    assert installs, f"{element} installs no packages"
    for key, params in installs.items():
        entry = params or {}
        assert isinstance(entry, dict), f"{key}: expected a mapping"
        assert set(entry) <= PARAMS, f"{key}: unknown parameters {set(entry) - PARAMS}"
        assert not ("arch" in entry and "not-arch" in entry), f"{key}: arch and not-arch"
        for field in ("arch", "not-arch"):
            if field in entry:
                assert " " not in entry[field], f"{key}: DIB does not strip spaces"
                assert set(entry[field].split(",")) <= set(ARCHES), key


@pytest.mark.parametrize("element", NAMES)
def test_pkg_map_values_are_single_debian_packages(element):
    mapping = _pkg_map(element)
    assert mapping, f"{element} maps no packages"
    for key, value in mapping.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9+.-]*", value), f"{key} -> {value!r}"


def _hook_scripts():
    for element in NAMES:
        for phase in PHASES:
            directory = os.path.join(ELEMENTS, element, phase)
            if os.path.isdir(directory):
                for name in sorted(os.listdir(directory)):
                    path = os.path.join(directory, name)
                    if os.path.isfile(path):
                        yield pytest.param(path, id=f"{element}/{phase}/{name}")


@pytest.mark.parametrize("path", list(_hook_scripts()))
def test_hook_scripts_run_under_dib_run_parts(path):
    name = os.path.basename(path)
    assert re.fullmatch(r"[0-9]{2}-[A-Za-z0-9_-]+", name), "dib-run-parts skips this name"
    assert os.access(path, os.X_OK), "dib-run-parts skips non-executable hooks"
    with open(path) as f:
        text = f.read()
    shebang = text.splitlines()[0]
    if "python" in shebang:
        compile(text, path, "exec")
    else:
        assert shebang == "#!/bin/bash"
        assert "set -eu" in text and "set -o pipefail" in text
        subprocess.run(["bash", "-n", path], check=True)


@pytest.mark.parametrize("element", ["deploy-agent", "deploy-agent-ramdisk"])
def test_environment_files_are_valid_bash(element):
    directory = os.path.join(ELEMENTS, element, "environment.d")
    names = os.listdir(directory)
    assert names, "environment.d is empty"
    for name in names:
        proc = subprocess.run(["bash", "-n", os.path.join(directory, name)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"


def test_apt_cleanup_is_off_because_the_prune_removes_apt():
    with open(os.path.join(ELEMENTS, "deploy-agent-ramdisk", "environment.d",
                           "10-deploy-agent-ramdisk.bash")) as f:
        assert "export DIB_DISABLE_APT_CLEANUP=1" in f.read()
    assert "usr/bin/apt-*" in {p for _why, group in prune_files.GROUPS for p in group}


@pytest.mark.parametrize("path", list(_hook_scripts()))
def test_no_hook_branches_on_arch(path):
    with open(path) as f:
        text = f.read()
    # handing ARCH to the wheelhouse helper picks a wheel platform, not packages
    text = text.replace('--arch "${ARCH}"', "")
    assert not re.search(r"\$\{?ARCH\b", text), \
        "architecture conditions belong in package-installs.yaml (arch:/not-arch:)"


# ------------------------------------------------------------------ tools coverage

@pytest.mark.parametrize("arch", ARCHES)
def test_every_agent_tool_is_installed_or_explicitly_excluded(arch):
    installed = resolve(arch)
    entries = _package_installs("deploy-agent")
    for name, tool in TOOLS.items():
        assert name in entries, (f"{name} from agent/tools.py is not in package-installs.yaml; "
                                 "run tools/build-ramdisk --sync-tool-packages")
        entry = entries[name] or {}
        if name in build_ramdisk.BUILT_TOOLS and arch in tool.arches:
            # the slim build goes in through the element's own hooks; Debian's
            # package (ceph, glusterfs, ICU, EGL/mesa, IPSec_MB) must stay out
            assert not _for_arch(entry, arch), f"{name}: Debian's {tool.package} on {arch}"
            assert tool.package not in installed, f"{name}: Debian's {tool.package} on {arch}"
            for hook in BURNIN_HOOKS:
                assert os.access(os.path.join(ELEMENTS, "deploy-agent", hook), os.X_OK), hook
        elif arch in tool.arches:
            assert tool.package in installed, f"{name} ({tool.package}) missing on {arch}"
            assert _for_arch(entry, arch)
        else:
            assert ("arch" in entry or "not-arch" in entry) and not _for_arch(entry, arch), \
                f"{name} is not for {arch} but the lists do not exclude it explicitly"


def test_a_slim_tool_switched_on_keeps_debians_package_out():
    fio = dataclasses.replace(TOOLS["fio"], arches=tuple(ARCHES))
    block = build_ramdisk.tool_block({"fio": fio}).splitlines()
    assert block[1:4] == ["# fio: built by tools/build-burnin-tools on amd64,ppc64el,arm64, "
                          "never Debian's package", "fio:", "  not-arch: amd64,ppc64el,arm64"]
    for hook in BURNIN_HOOKS:
        assert os.access(os.path.join(ELEMENTS, "deploy-agent", hook), os.X_OK), hook


def test_tool_block_is_what_the_sync_writes():
    with open(os.path.join(ELEMENTS, "deploy-agent", "package-installs.yaml")) as f:
        text = f.read()
    start = text.index(build_ramdisk.TOOLS_BEGIN)
    end = text.index(build_ramdisk.TOOLS_END) + len(build_ramdisk.TOOLS_END) + 1
    assert text[start:end] == build_ramdisk.tool_block(TOOLS), \
        "run tools/build-ramdisk --sync-tool-packages"
    mapping = _pkg_map("deploy-agent")
    assert {n: mapping.get(n) for n in TOOLS} == {n: t.package for n, t in TOOLS.items()}


def test_arch_specific_bootloader_and_firmware_tooling():
    amd64, ppc, arm64 = resolve("amd64"), resolve("ppc64el"), resolve("arm64")
    assert {"efibootmgr", "grub-efi-amd64-bin", "grub-pc-bin", "dmidecode"} <= amd64
    assert not {"efibootmgr", "dmidecode", "grub-efi-amd64-bin", "grub-pc-bin"} & ppc
    assert {"grub-ieee1275-bin", "powerpc-utils", "linux-image-powerpc64le"} <= ppc
    assert not {"grub-ieee1275-bin", "linux-image-powerpc64le"} & amd64
    # arm64 boots through UEFI only: its own grub-efi, no BIOS or PReP tooling
    assert {"efibootmgr", "grub-efi-arm64-bin", "dmidecode"} <= arm64
    assert not {"grub-efi-amd64-bin", "grub-pc-bin", "grub-ieee1275-bin", "powerpc-utils",
                "linux-image-powerpc64le"} & arm64
    assert "grub-efi-arm64-bin" not in amd64 | ppc


def test_ramdisk_basics_on_both_arches():
    for arch in ARCHES:
        packages = resolve(arch)
        assert {"systemd-sysv", "udev", "kmod", "python3-psutil", "ca-certificates",
                "systemd-resolved"} <= packages, arch


def test_build_only_packages_do_not_stay():
    assert "binutils" not in resolve("amd64")
    assert _package_installs("deploy-agent")["binutils"] == {"build-only": True}


def test_build_time_drift_check_accepts_the_checkout_and_names_a_missing_tool(tmp_path,
                                                                              capsys):
    element = os.path.join(ELEMENTS, "deploy-agent")
    wheelhouse.check_tool_packages(REPO, element)
    copy = tmp_path / "deploy-agent"
    copy.mkdir()
    shutil.copy(os.path.join(element, "pkg-map"), copy)
    with open(os.path.join(element, "package-installs.yaml")) as f:
        text = f.read()
    (copy / "package-installs.yaml").write_text(text.replace("\nsgdisk:\n", "\n"))
    with pytest.raises(SystemExit):
        wheelhouse.check_tool_packages(REPO, str(copy))
    assert "sgdisk is missing from package-installs.yaml" in capsys.readouterr().err


# ------------------------------------------------------------------ wheelhouse helpers

def test_wheel_requirements_skip_extras_and_debian_provided(tmp_path):
    wheel = tmp_path / "deploy_agent-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("deploy_agent-0.1.0.dist-info/METADATA", "\n".join([
            "Metadata-Version: 2.1", "Name: deploy-agent", "Version: 0.1.0",
            "Requires-Dist: flask>=2.3", "Requires-Dist: psutil>=5.9",
            "Requires-Dist: zstandard>=0.21", "Provides-Extra: test",
            'Requires-Dist: pytest>=7.4; extra == "test"']))
    assert wheelhouse.requirements(str(wheel)) == ["flask>=2.3", "zstandard>=0.21"]


def test_wheel_platforms_follow_the_debian_arch():
    args = wheelhouse.platform_args("ppc64el")
    assert "manylinux2014_ppc64le" in args and "manylinux_2_28_ppc64le" in args
    assert not any("x86_64" in a for a in args)
    args = wheelhouse.platform_args("arm64")
    assert "manylinux2014_aarch64" in args and "manylinux_2_36_aarch64" in args
    assert not any("x86_64" in a or "ppc64le" in a for a in args)
    with pytest.raises(SystemExit):
        wheelhouse.platform_args("sparc64")


def test_target_python_read_from_the_chroot_symlink(tmp_path, monkeypatch):
    monkeypatch.delenv("DIB_DEPLOY_AGENT_PYTHON_VERSION", raising=False)
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    os.symlink("python3.11", tmp_path / "usr" / "bin" / "python3")
    assert wheelhouse.target_python(str(tmp_path)) == "3.11"
    monkeypatch.setenv("DIB_DEPLOY_AGENT_PYTHON_VERSION", "3.13")
    assert wheelhouse.target_python(str(tmp_path)) == "3.13"


# ------------------------------------------------------------------ module pruning

def test_module_allow_list_longest_prefix_wins():
    assert modules.wanted("kernel/drivers/nvme/host/nvme.ko")
    assert modules.wanted("kernel/drivers/net/virtio_net.ko")
    assert modules.wanted("kernel/drivers/net/ethernet/intel/ice/ice.ko")
    assert not modules.wanted("kernel/drivers/net/ethernet/3com/3c59x.ko")
    assert not modules.wanted("kernel/drivers/scsi/lpfc/lpfc.ko")
    assert modules.wanted("kernel/drivers/scsi/megaraid/megaraid_sas.ko")
    assert not modules.wanted("kernel/drivers/gpu/drm/i915/i915.ko")
    assert modules.wanted("kernel/drivers/gpu/drm/i915/i915.ko", ("drivers/gpu/",))


def test_module_closure_keeps_dependencies_outside_the_allow_list(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/drivers/md/raid456.ko: kernel/crypto/async_tx/async_pq.ko "
        "kernel/lib/raid6/raid6_pq.ko\n"
        "kernel/crypto/async_tx/async_pq.ko: kernel/lib/raid6/raid6_pq.ko\n"
        "kernel/lib/raid6/raid6_pq.ko:\n"
        "kernel/drivers/gpu/drm/drm.ko:\n")
    deps = modules.read_deps(str(tmp_path))
    keep = modules.closure(deps, {m for m in deps if modules.wanted(m)})
    assert keep == {"kernel/drivers/md/raid456.ko", "kernel/crypto/async_tx/async_pq.ko",
                    "kernel/lib/raid6/raid6_pq.ko"}


def test_newest_kernel_compares_versions_numerically(tmp_path):
    for version in ("6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-10-amd64"):
        (tmp_path / version).mkdir()
    assert modules.newest_kernel(str(tmp_path)) == "6.1.0-56-amd64"


def test_firmware_not_asked_for_is_pruned(tmp_path):
    (tmp_path / "bnx2x").mkdir()
    (tmp_path / "bnx2x" / "bnx2x-e2-7.13.21.0.fw").write_bytes(b"x")
    (tmp_path / "i915").mkdir()
    (tmp_path / "i915" / "tgl_dmc.bin.xz").write_bytes(b"x")
    (tmp_path / "regulatory.db").write_bytes(b"x")
    removed = modules.prune_firmware(str(tmp_path), {"bnx2x/bnx2x-e2-7.13.21.0.fw"})
    assert removed == 2
    assert sorted(os.listdir(tmp_path)) == ["bnx2x"]


# ------------------------------------------------------------------ static files

def _tree(root, paths: dict[str, str]) -> None:
    for path, text in paths.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)


def _files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


SITE = "opt/deploy-agent/lib/python3.11/site-packages"
# what the agent and the tools in agent/tools.py use: must survive every prune
KEPT = {
    "usr/share/zoneinfo/Etc/UTC": "TZif", f"{SITE}/click-8.1.7.dist-info/METADATA": "x",
    f"{SITE}/click-8.1.7.dist-info/entry_points.txt": "x", f"{SITE}/click/core.py": "x",
    "usr/bin/grub-mkimage": "x", "usr/sbin/grub-install": "x", "usr/sbin/grub-probe": "x",
    "usr/lib/grub/i386-pc/boot.img": "x", "usr/lib/grub/i386-pc/biosdisk.mod": "x",
    "usr/bin/qemu-img": "x", "usr/bin/mcopy": "x", "usr/bin/python3.11": "x",
    "usr/lib/locale/C.utf8/LC_CTYPE": "x", "usr/share/locale/locale.alias": "x",
    "usr/lib/x86_64-linux-gnu/gconv/IBM850.so": "x",
    "usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache": "x",
    "usr/lib/x86_64-linux-gnu/libc.so.6": "x", "usr/lib/x86_64-linux-gnu/libgnutls.so.30": "x",
    "usr/lib/python3.11/json/__init__.py": "x", "usr/lib/python3.11/ssl.py": "x",
    "usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so": "x",
    "usr/bin/ipmitool": "x", "usr/sbin/mkfs.xfs": "x", "usr/bin/fio": "x",
    "usr/lib/deploy-agent-burnin/stress-ng": "x", "usr/bin/deb-helper": "#!/bin/sh\n",
    "var/lib/dpkg/status": "Package: x\n", "etc/apt/apt.conf.d/no-languages": "x",
}


def test_prune_drops_what_the_ramdisk_never_reads_and_keeps_the_tools(tmp_path):
    dropped = {
        "usr/share/doc/x/README": "x", "usr/lib/locale/locale-archive": "x",
        "usr/share/locale/de/LC_MESSAGES/x.mo": "x", "usr/bin/perl": "x",
        "usr/lib/x86_64-linux-gnu/perl-base/strict.pm": "x",
        "usr/sbin/adduser": "#!/usr/bin/perl -w\n", "usr/bin/apt-get": "x",
        "usr/lib/x86_64-linux-gnu/libapt-pkg.so.6.0": "x", "var/lib/dpkg/info/x.list": "x",
        "usr/bin/grub-mkrescue": "x", "usr/bin/grub-mount": "x",
        "usr/lib/grub/x86_64-efi/monolithic/grubx64.efi": "x", "usr/bin/qemu-nbd": "x",
        "usr/bin/qemu-io": "x", "usr/lib/x86_64-linux-gnu/libsqlite3.so.0": "x",
        "usr/lib/python3.11/lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so": "x",
        "usr/lib/python3.11/pydoc_data/topics.py": "x", "usr/lib/python3.11/lib2to3/x.py": "x",
        "usr/lib/udev/hwdb.bin": "x", "usr/lib/udev/hwdb.d/20-OUI.hwdb": "x",
        "usr/share/misc/enterprise-numbers.txt": "x", "usr/bin/busybox": "x",
        "usr/lib/x86_64-linux-gnu/gconv/BIG5.so": "x",
        "usr/lib/x86_64-linux-gnu/libicuuc.so.72": "x",
        "usr/share/zoneinfo/Europe/Paris": "x", "usr/share/zoneinfo/posix/Europe/Paris": "x",
        f"{SITE}/click-8.1.7.dist-info/RECORD": "x", f"{SITE}/click/py.typed": "",
        f"{SITE}/cryptography/hazmat/bindings/_rust/x509.pyi": "x",
    }
    _tree(tmp_path, {**KEPT, **dropped})
    removed = dict(prune_files.prune(str(tmp_path)))
    assert _files(tmp_path) == set(KEPT)
    assert removed["perl"] > 0 and removed["iconv modules for code pages no tool here uses"] > 0


def test_prune_of_a_pruned_tree_changes_nothing(tmp_path):
    _tree(tmp_path, KEPT)
    assert sum(size for _why, size in prune_files.prune(str(tmp_path))) == 0
    assert _files(tmp_path) == set(KEPT)


@pytest.mark.skipif(shutil.which("readelf") is None, reason="no readelf")
def test_foreign_tree_check_names_a_lost_library(tmp_path):
    (tmp_path / "usr/bin").mkdir(parents=True)
    binary = tmp_path / "usr/bin/true"
    shutil.copy(shutil.which("true"), binary)
    needed = re.findall(r"Shared library: \[([^\]]+)\]", subprocess.run(
        ["readelf", "-d", str(binary)], capture_output=True, text=True).stdout)
    assert needed
    assert prune_files.unresolved_sonames(str(tmp_path)) == [
        f"usr/bin/true ({', '.join(needed)})"]
    libdir = tmp_path / "usr/lib/powerpc64le-linux-gnu"
    libdir.mkdir(parents=True)
    for soname in needed:
        (libdir / (soname + ".real")).write_text("x")
        # a dangling link provides nothing; a link to a file does
        (libdir / soname).symlink_to(soname + ".gone")
    assert prune_files.unresolved_sonames(str(tmp_path))
    for soname in needed:
        (libdir / soname).unlink()
        (libdir / soname).symlink_to(soname + ".real")
    assert prune_files.unresolved_sonames(str(tmp_path)) == []


def test_systemd_unit_starts_the_agent_with_restart():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(os.path.join(STATIC, "etc/systemd/system/deploy-agent.service"))
    assert unit["Service"]["ExecStart"] == "/usr/local/bin/deploy-agent serve --ramdisk true"
    assert unit["Service"]["Restart"] == "always"
    assert float(unit["Service"]["RestartSec"]) > 0
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # the agent waits for an address itself: ordering it after network-online
    # would put Python's start-up behind DHCP again
    after = unit["Unit"]["After"].split()
    assert not [u for u in after if u.startswith(("network", "sysinit", "basic"))], after
    assert "systemd-udev-trigger.service" in after
    assert unit["Unit"]["DefaultDependencies"] == "no"
    # without default dependencies, stopping at shutdown must be asked for
    assert unit["Unit"]["Conflicts"] == unit["Unit"]["Before"] == "shutdown.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_units_verify_cleanly(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(os.path.join(STATIC, "etc"), root / "etc")
    # verify resolves dependencies and executables inside --root
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/deploy-agent").write_text("#!/bin/sh\n")
    (root / "usr/local/bin/deploy-agent").chmod(0o755)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}",
         "/etc/systemd/system/deploy-agent.service"], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout + result.stderr, \
        result.stdout + result.stderr


def test_journal_is_volatile_and_capped():
    conf = configparser.ConfigParser()
    conf.read(os.path.join(STATIC, "etc/systemd/journald.conf.d/50-deploy-agent.conf"))
    assert conf["Journal"]["Storage"] == "volatile"
    assert conf["Journal"]["RuntimeMaxUse"].endswith("M")


def test_dhcp_on_every_wired_interface():
    conf = configparser.ConfigParser()
    conf.read(os.path.join(STATIC, "etc/systemd/network/80-deploy-agent-wired.network"))
    assert set(conf["Match"]["Name"].split()) == {"en*", "eth*"}
    assert conf["Network"]["DHCP"] == "yes"


def test_wait_online_needs_only_one_interface():
    path = os.path.join(STATIC, "etc/systemd/system/systemd-networkd-wait-online.service.d",
                        "50-deploy-agent.conf")
    with open(path) as f:
        lines = [line.strip() for line in f if line.startswith("ExecStart")]
    assert lines[0] == "ExecStart=" and "--any" in lines[1]


def test_ipxe_template_matches_ironic_kernel_parameters():
    with open(os.path.join(STATIC, "usr/share/deploy-agent/boot.ipxe.template")) as f:
        text = f.read()
    kernel = next(line for line in text.splitlines() if line.startswith("kernel "))
    for param in ("selinux=0", "troubleshoot=0", "text", "nofb", "vga=normal",
                  "console=ttyS0,115200n8", "ipa-api-url=@API_URL@", "BOOTIF=${mac}",
                  "initrd=deploy_ramdisk"):
        assert param in kernel.split(), param
    assert "initrd --name deploy_ramdisk" in text and "\nboot\n" in text


def test_python_helpers_need_only_the_stdlib():
    # wheelhouse.py runs with whatever Python drives diskimage-builder
    tree = open(wheelhouse.__file__).read()
    imports = set(re.findall(r"^(?:import|from) (\w+)", tree, re.M))
    assert imports <= set(sys.stdlib_module_names) | {"agent"}


# ------------------------------------------------------------------ packing

@pytest.mark.skipif(not all(shutil.which(t) for t in ("sudo", "cpio", "zstd")),
                    reason="needs sudo, cpio and zstd")
def test_pack_writes_kernel_and_a_cpio_of_the_tree(tmp_path):
    root = tmp_path / "root"
    files = {"boot/vmlinuz-6.1.0-9-amd64": "old kernel", "boot/vmlinuz-6.1.0-10-amd64": "kernel",
             "etc/fstab": "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n",
             "etc/machine-id": "0123456789abcdef\n", "usr/bin/hello": "#!/bin/sh\n",
             "proc/leftover": "x", "lost+found/junk": "x", "tmp/build-file": "x",
             "var/cache/apt/archives/pkg.deb": "x"}
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
    os.symlink("/sbin/init", root / "init")
    os.symlink("boot/vmlinuz-6.1.0-10-amd64", root / "vmlinuz")
    image = tmp_path / "out" / "deploy-agent"
    image.parent.mkdir()
    script = os.path.join(ELEMENTS, "deploy-agent-ramdisk", "cleanup.d",
                          "90-deploy-agent-ramdisk-pack")
    result = subprocess.run([script], env=dict(os.environ, TARGET_ROOT=str(root),
                                               IMAGE_NAME=str(image),
                                               DIB_DEPLOY_AGENT_RAMDISK_LEVEL="3"),
                            capture_output=True, text=True, check=True)
    assert "initramfs" in result.stdout and "MiB (zstd" in result.stdout
    # the newest kernel by version, not by name
    assert (tmp_path / "out/deploy-agent.kernel").read_text() == "kernel"
    archive = subprocess.run(f"zstd -dc {image}.initramfs", shell=True, capture_output=True,
                             check=True).stdout
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True,
                             check=True).stdout.decode().split()
    assert {"usr/bin/hello", "init", "proc", "tmp", "etc/fstab"} <= set(listing)
    assert not [p for p in listing if p.startswith(("boot", "lost+found", "proc/", "tmp/",
                                                    "vmlinuz"))]
    assert "var/cache/apt/archives/pkg.deb" not in listing
    assert archive.rstrip(b"\0").endswith(b"TRAILER!!!") and b"dev/console" in archive[-2048:]
    assert (root / "etc/fstab").read_text().startswith("#")
    assert (root / "etc/machine-id").read_text() == ""


def test_pack_rejects_an_unknown_compression(tmp_path):
    script = os.path.join(ELEMENTS, "deploy-agent-ramdisk", "cleanup.d",
                          "90-deploy-agent-ramdisk-pack")
    result = subprocess.run([script], env=dict(os.environ, TARGET_ROOT=str(tmp_path),
                                               IMAGE_NAME=str(tmp_path / "x"),
                                               DIB_DEPLOY_AGENT_RAMDISK_COMPRESSION="lz5"),
                            capture_output=True, text=True)
    assert result.returncode == 1 and "unknown compression 'lz5'" in result.stderr


def test_pack_without_a_kernel_says_so(tmp_path):
    (tmp_path / "boot").mkdir()
    script = os.path.join(ELEMENTS, "deploy-agent-ramdisk", "cleanup.d",
                          "90-deploy-agent-ramdisk-pack")
    result = subprocess.run([script], env=dict(os.environ, TARGET_ROOT=str(tmp_path),
                                               IMAGE_NAME=str(tmp_path / "x")),
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(f"no kernel in {tmp_path}/boot")


def test_venv_install_without_a_pip_wheel_says_so(tmp_path):
    # the hook finds its wheelhouse beside its own directory, so run a copy there
    hooks = tmp_path / "install.d"
    hooks.mkdir()
    (tmp_path / "deploy-agent-wheels").mkdir()
    script = hooks / "60-deploy-agent-venv"
    shutil.copy(os.path.join(ELEMENTS, "deploy-agent", "install.d", "60-deploy-agent-venv"),
                script)
    result = subprocess.run([str(script)], capture_output=True, text=True,
                            env=dict(os.environ, DIB_DEPLOY_AGENT_VENV=str(tmp_path / "venv")))
    assert result.returncode == 1
    assert "no pip wheel in" in result.stderr
    assert not (tmp_path / "venv").exists()
