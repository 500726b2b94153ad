"""Configuration: five sources in order of precedence, typed and validated."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from agent import config
from agent.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(**kwargs):
    kwargs.setdefault("env", {})
    kwargs.setdefault("read_proc", False)
    return config.load(**kwargs)


def test_defaults() -> None:
    cfg = load()
    assert cfg.listen_port == 9999
    assert cfg.listen_host == "::"
    assert cfg.api_url == []
    assert cfg.insecure is False
    assert cfg.ramdisk == "auto"
    assert cfg.permitted_image_formats == ["raw", "gpt", "qcow2", "iso"]
    assert set(cfg.sources.values()) == {"default"}


def test_defaults_are_not_shared_between_configs() -> None:
    a = load()
    a.permitted_image_formats.append("vmdk")
    assert load().permitted_image_formats == ["raw", "gpt", "qcow2", "iso"]


def test_kernel_cmdline_ipa_names() -> None:
    cmdline = ("BOOT_IMAGE=/vmlinuz selinux=0 troubleshoot=0 text nofb vga=normal ipa-debug=1 "
               "ipa-api-url=https://10.0.0.1:6385,https://10.0.0.2:6385/ "
               "ipa-insecure=yes ipa-listen-port=9898 ipa-advertise-host=10.0.0.15 "
               "BOOTIF=01-52-54-00-12-34-56 boot_method=vmedia ipa-tls-certificate-curve=P256 "
               "ipa-agent-token=abc=def initrd=deploy_ramdisk")
    cfg = load(cmdline=cmdline)
    assert cfg.debug is True
    # a trailing slash would end up in callback paths; it is dropped
    assert cfg.api_url == ["https://10.0.0.1:6385", "https://10.0.0.2:6385"]
    assert cfg.insecure is True
    assert cfg.listen_port == 9898
    assert cfg.advertise_host == "10.0.0.15"
    assert cfg.bootif == "01-52-54-00-12-34-56"
    assert cfg.boot_method == "vmedia"
    assert cfg.tls_certificate_curve == "p256"
    # only the first '=' splits, as in IPA
    assert cfg.agent_token == "abc=def"
    assert cfg.sources["listen_port"] == "cmdline"
    assert cfg.sources["listen_host"] == "default"


def test_parse_cmdline_ignores_tokens_without_equals() -> None:
    assert config.parse_cmdline("quiet ro a=1 b==2 \n") == {"a": "1", "b": "=2"}


def test_cmdline_file(tmp_path) -> None:
    path = tmp_path / "cmdline"
    path.write_text("ipa-listen-port=8000 ipa-api-url=mdns\n")
    cfg = load(cmdline_file=str(path))
    assert cfg.listen_port == 8000
    assert cfg.api_url == ["mdns"]


def test_missing_cmdline_file_is_an_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read kernel command line file .*nope"):
        load(cmdline_file=str(tmp_path / "nope"))


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a private mount namespace")
def test_proc_cmdline_is_read_by_default(tmp_path) -> None:
    # The real /proc/cmdline holds no ipa-* keys here, so a child process in its own
    # mount namespace sees a known command line bind-mounted over that very path.
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("BOOT_IMAGE=/vmlinuz ipa-listen-port=1234 ipa-debug=1 quiet\n")
    probe = ("import json; from agent import config; c = config.load(env={}); "
             "print(json.dumps([c.listen_port, c.debug, c.sources['listen_port'], "
             "c.sources['debug'], c.sources['listen_host']]))")
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount --bind "$1" /proc/cmdline && exec "$2" -c "$3"', "sh",
         str(cmdline), sys.executable, probe],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [1234, True, "cmdline", "cmdline", "default"]


def test_precedence_default_cmdline_file_env_flag(tmp_path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text('[agent]\nlisten-port = 3000\nlisten_host = "10.1.1.1"\n'
                    'debug = true\ndisk_wait_delay = 1.5\n')
    cmdline = "ipa-listen-port=1000 ipa-listen-host=10.0.0.1 ipa-debug=0 ipa-insecure=1"
    env = {"DEPLOY_AGENT_LISTEN_PORT": "4000", "DEPLOY_AGENT_DEBUG": "off",
           "UNRELATED": "x"}
    cfg = config.load(cmdline=cmdline, config_file=str(conf), env=env,
                      flags={"listen_port": "5000", "listen_host": None})
    assert cfg.listen_port == 5000            # flag beats env, file, cmdline
    assert cfg.sources["listen_port"] == "flag"
    assert cfg.debug is False                 # env beats file and cmdline
    assert cfg.sources["debug"] == "env"
    assert cfg.listen_host == "10.1.1.1"      # file beats cmdline; a None flag is "not given"
    assert cfg.sources["listen_host"] == "file"
    assert cfg.insecure is True               # cmdline beats default
    assert cfg.disk_wait_delay == 1.5
    assert cfg.lookup_timeout == 600.0        # default


def test_config_file_without_section(tmp_path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text('max_results = 50\npermitted_image_formats = ["raw"]\n')
    cfg = load(config_file=str(conf))
    assert cfg.max_results == 50
    assert cfg.permitted_image_formats == ["raw"]


@pytest.mark.parametrize("text, match", [
    ("nonsense = 1\n", "unknown setting 'nonsense' in .*configuration table"),
    ("listen_prot = 1\n", "unknown setting 'listen_prot' in .*did you mean listen_port"),
    ("listen_port = [1\n", "cannot read config file"),
])
def test_bad_config_file(tmp_path, text: str, match: str) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load(config_file=str(conf))


def test_unknown_environment_variable_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown environment variable DEPLOY_AGENT_LISTN_PORT"):
        load(env={"DEPLOY_AGENT_LISTN_PORT": "1"})


@pytest.mark.parametrize("source, value, words", [
    ("cmdline", "ipa-listen-port=http", ["listen_port", "kernel parameter ipa-listen-port",
                                         "expected an integer"]),
    ("cmdline", "ipa-listen-port=70000", ["listen_port", "between 1 and 65535"]),
    ("cmdline", "ipa-insecure=maybe", ["insecure", "'maybe'", "1/0, true/false, yes/no, on/off"]),
    ("cmdline", "ipa-api-url=ftp://x", ["api_url", "http:// or https://", "mdns"]),
    ("cmdline", "ipa-tls-certificate-curve=p999", ["tls_certificate_curve",
                                                   "accepted values: p256, p384, p521"]),
    ("cmdline", "ipa-lookup-timeout=-1", ["lookup_timeout", "must be at least 0"]),
    ("env", "DEPLOY_AGENT_RAMDISK=sometimes", ["ramdisk", "environment DEPLOY_AGENT_RAMDISK",
                                               "auto, true, false"]),
    ("env", "DEPLOY_AGENT_MAX_RESULTS=5", ["max_results", "at least 10"]),
    ("flag", "listen_port=0", ["listen_port", "flag --listen-port"]),
    ("flag", "debug=2", ["debug", "flag --debug"]),
])
def test_bad_value_names_parameter_source_and_accepted_values(source, value, words) -> None:
    key, raw = value.split("=", 1)
    kwargs = {"cmdline": value} if source == "cmdline" else (
        {"env": {key: raw}} if source == "env" else {"flags": {key: raw}})
    with pytest.raises(ConfigError) as info:
        load(**kwargs)
    assert info.value.code == 400
    for word in words:
        assert word in info.value.details


def test_number_refuses_booleans() -> None:
    with pytest.raises(ConfigError, match="expected a number"):
        load(flags={"listen_port": True})


def test_cert_and_key_go_together() -> None:
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file"):
        load(flags={"tls_cert_file": "/x.crt"})


def test_set_validates_runtime_overrides() -> None:
    cfg = load()
    cfg.set("md5_enabled", "true", source="lookup")
    assert cfg.md5_enabled is True
    assert cfg.sources["md5_enabled"] == "lookup"
    with pytest.raises(ConfigError, match="tls_min_version .*from lookup.*1.2, 1.3"):
        cfg.set("tls_min_version", "1.0", source="lookup")


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        load().no_such_setting  # noqa: B018


def test_as_dict_is_a_copy() -> None:
    cfg = load()
    data = cfg.as_dict()
    data["listen_port"] = 1
    assert cfg.listen_port == 9999


@pytest.mark.parametrize("mounts, expected", [
    ("rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n", True),
    ("none / tmpfs rw 0 0\n", True),
    ("/dev/sda1 / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\n", False),
    # an overlay stacked on the initramfs: the last "/" entry is the one in effect
    ("rootfs / rootfs rw 0 0\noverlay / overlay rw 0 0\n", False),
    ("", False),
])
def test_ramdisk_auto_detects_initramfs_root(tmp_path, mounts: str, expected: bool) -> None:
    path = tmp_path / "mounts"
    path.write_text(mounts)
    assert config.is_ramdisk(load(), str(path)) is expected


def test_ramdisk_explicit_setting_wins(tmp_path) -> None:
    path = tmp_path / "mounts"
    path.write_text("/dev/sda1 / ext4 rw 0 0\n")
    assert config.is_ramdisk(load(flags={"ramdisk": "true"}), str(path)) is True
    path.write_text("rootfs / rootfs rw 0 0\n")
    assert config.is_ramdisk(load(flags={"ramdisk": "false"}), str(path)) is False


def test_ramdisk_unreadable_mounts_means_not_a_ramdisk(tmp_path) -> None:
    assert config.is_ramdisk(load(), str(tmp_path / "missing")) is False


def test_readme_configuration_table_matches_settings() -> None:
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "gen-config-table"),
                           "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
