"""Typed settings from five sources.

Precedence, lowest to highest: built-in defaults, the kernel command line
(Ironic's ``ipa-*`` names), an optional TOML config file, ``DEPLOY_AGENT_*``
environment variables, and CLI flags.  Every value is parsed and validated in
one place; a bad value raises ``ConfigError`` naming the parameter, the source
and the accepted values, so the agent refuses to start instead of misbehaving
later.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from agent.config_parse import (
    _api_urls,
    _choice,
    _list,
    _memory_mb,
    _number,
    _opt_str,
    _port,
    parse_bool,
)
from agent.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting's parse rule and documentation (the config table is rendered from these)."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    cmdline: tuple[str, ...] = ()
    # parsed so Ironic's command line is accepted, but no code acts on it yet
    inert: bool = False


def setting(parse: Callable[[Any], Any], default: Any, help: str, cmdline: tuple[str, ...] = (),
            *, inert: bool = False) -> Any:
    """A ``Config`` field that is a setting: typed by its annotation, parsed by ``parse``."""
    meta = {"setting": (parse, help, cmdline, inert)}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Config:
    """Validated settings, one typed attribute each; change them only through ``set``.

    Frozen so that nothing assigns an unparsed value by accident; the
    controller's lookup overrides are the one legitimate change at run time,
    and they go through ``set``, which parses and records the source.
    """

    api_url: list[str] = setting(
        _api_urls, [], "controller (Ironic API) URLs, tried in order", ("ipa-api-url",))
    # mDNS answers are unauthenticated: discovery without ipa-api-url=mdns is opt-in (as IPA)
    use_mdns: bool = setting(
        parse_bool, False, "find the controller through mDNS when ipa-api-url is not given",
        ("ipa-use-mdns",))
    mdns_timeout: float = setting(
        _number(float, 1), 60.0, "seconds to keep asking mDNS before giving up")
    mdns_interfaces: list[str] = setting(
        _list, [], "interfaces (names or IP addresses) to ask mDNS on; empty: all")
    mdns_allowed_overrides: list[str] = setting(
        _list, ["inspection_callback_url", "ntp_server"],
        "settings an mDNS TXT record may set (as ipa_<setting>) when no source gave them")
    insecure: bool = setting(
        parse_bool, False, "skip TLS verification for outbound HTTPS", ("ipa-insecure",))
    agent_token: str | None = setting(
        _opt_str, None, "pre-generated agent token", ("ipa-agent-token",))
    global_request_id: str | None = setting(
        _opt_str, None, "X-OpenStack-Request-ID to send", ("ipa-global-request-id",))
    debug: bool = setting(parse_bool, False, "debug logging", ("ipa-debug",))
    listen_host: str = setting(str, "::", "API bind address", ("ipa-listen-host",))
    listen_port: int = setting(_port, 9999, "API port", ("ipa-listen-port",))
    advertise_host: str | None = setting(
        _opt_str, None, "host in callback_url (auto when unset)", ("ipa-advertise-host",))
    advertise_port: int = setting(_port, 9999, "port in callback_url", ("ipa-advertise-port",))
    advertise_protocol: str = setting(
        _choice(("http", "https")), "http", "scheme in callback_url", ("ipa-advertise-protocol",))
    network_interface: str | None = setting(
        _opt_str, None, "take the advertise IP from this NIC", ("ipa-network-interface",))
    ip_lookup_attempts: int = setting(
        _number(int, 1), 6, "attempts to find the advertise IP", ("ipa-ip-lookup-attempts",))
    ip_lookup_timeout: float = setting(
        _number(float, 0), 10.0, "seconds between those attempts", ("ipa-ip-lookup-timeout",))
    lookup_timeout: float = setting(
        _number(float, 0), 600.0, "seconds before lookup gives up", ("ipa-lookup-timeout",))
    network_wait_timeout: float = setting(
        _number(float, 0), 60.0, "seconds to wait at start for an address on any interface "
        "(ramdisk only; 0 = do not wait)", ("ipa-network-wait-timeout",))
    lookup_interval: float = setting(
        _number(float, 0), 1.0, "initial lookup backoff, seconds", ("ipa-lookup-interval",))
    http_request_timeout: float = setting(
        _number(float, 0.1), 30.0, "timeout for controller requests", ("ipa-http-request-timeout",))
    ironic_api_version: str | None = setting(
        _opt_str, None, "pin the controller API microversion", ("ipa-ironic-api-version",))
    tls_min_version: str = setting(
        _choice(("1.2", "1.3")), "1.2", "minimum TLS version served", ("ipa-tls-min-version",))
    tls_cipher_suites: str | None = setting(
        _opt_str, None, "TLS 1.2 cipher list", ("ipa-tls-cipher-suites",))
    tls_certificate_curve: str = setting(
        _choice(("p256", "p384", "p521")), "p384", "auto-TLS key curve",
        ("ipa-tls-certificate-curve",))
    tls_cert_file: str | None = setting(_opt_str, None, "static TLS certificate (PEM)")
    tls_key_file: str | None = setting(_opt_str, None, "static TLS key (PEM)")
    auto_tls: bool = setting(
        parse_bool, False, "serve HTTPS with a generated self-signed certificate")
    hardware_initialization_delay: float = setting(
        _number(float, 0), 0.0, "sleep before touching hardware",
        ("ipa-hardware-initialization-delay",))
    disk_wait_attempts: int = setting(
        _number(int, 1), 10, "attempts to wait for a root disk", ("ipa-disk-wait-attempts",))
    disk_wait_delay: float = setting(
        _number(float, 0), 3.0, "seconds between disk waits", ("ipa-disk-wait-delay",))
    image_download_connection_timeout: float = setting(
        _number(float, 0.1), 60.0, "connect and per-read timeout for image downloads",
        ("ipa-image-download-connection-timeout",))
    image_download_connection_retries: int = setting(
        _number(int, 0), 9, "image download retries", ("ipa-image-download-connection-retries",))
    image_download_connection_retry_interval: float = setting(
        _number(float, 0), 10.0, "seconds between image download retries",
        ("ipa-image-download-connection-retry-interval",))
    image_download_max_duration: float = setting(
        _number(float, 0), 0.0, "total image download limit, seconds (0 = none)",
        ("ipa-image-download-max-duration",))
    ntp_server: str | None = setting(_opt_str, None, "NTP servers, host/IP[:port], comma-"
        "separated, tried in order: set clock and RTC at start and power-off", ("ipa-ntp-server",))
    inspection_callback_url: str | None = setting(
        _opt_str, None, "inspection endpoint: inspect at start and post there",
        ("ipa-inspection-callback-url",))
    inspection_collectors: list[str] = setting(
        _list, ["default", "logs"], "inspection collectors to run, in order",
        ("ipa-inspection-collectors",))
    inspection_dhcp_wait_timeout: float = setting(
        _number(float, 0), 60.0, "seconds to wait for DHCP before inspecting",
        ("ipa-inspection-dhcp-wait-timeout",))
    inspection_dhcp_all_interfaces: bool = setting(
        parse_bool, False, "wait for DHCP on every interface, not only the PXE one",
        ("ipa-inspection-dhcp-all-interfaces",))
    inspection_callback_timeout: float = setting(
        _number(float, 1), 300.0, "seconds to keep retrying the inspection POST")
    collect_lldp: bool = setting(
        parse_bool, False, "listen for LLDP frames for the inventory", ("ipa-collect-lldp",))
    lldp_timeout: float = setting(
        _number(float, 0), 30.0, "seconds to listen for LLDP frames", ("ipa-lldp-timeout",))
    enable_vlan_interfaces: list[str] = setting(
        _list, [], "VLAN sub-interfaces to create: IFACE.VID or IFACE, or 'all'",
        ("ipa-enable-vlan-interfaces",))
    ignore_bootloader_failure: bool = setting(
        parse_bool, False, "tolerate bootloader failures", ("ipa-ignore-bootloader-failure",))
    inject_files_priority: int = setting(_number(int, 0), 0, "priority of the inject_files "
                                         "deploy step", ("ipa-inject-files-priority",))
    guard_special_filesystems: bool = setting(
        parse_bool, True, "refuse to erase disks with shared-SAN filesystems",
        ("ipa-guard-special-filesystems",))
    enable_discard_erase: bool = setting(
        parse_bool, False, "allow verified discard as erase", ("ipa-enable-discard-erase",))
    bootif: str | None = setting(_opt_str, None, "PXE boot MAC, reported verbatim", ("BOOTIF",))
    boot_method: str | None = setting(
        _opt_str, None, "boot method (vmedia: read Ironic's virtual media)", ("boot_method",))
    # IPA's [DEFAULT] cafile/certfile/keyfile: a boot_method=vmedia ISO may carry them
    cafile: str | None = setting(
        _opt_str, None, "CA bundle to verify the controller's HTTPS (unless insecure)")
    certfile: str | None = setting(
        _opt_str, None, "client certificate (PEM) for HTTPS to the controller")
    keyfile: str | None = setting(_opt_str, None, "client key (PEM) for certfile")
    standalone: bool = setting(parse_bool, False, "run without a controller (no lookup/heartbeat)")
    ramdisk: str = setting(
        _choice(("auto", "true", "false")), "auto",
        "running in a deploy ramdisk: enables power actions (auto = detect initramfs root)")
    # a config drive is at most 64 MiB of gzip: 89,478,488 bytes of base64,
    # 91.8 MB if wrapped in escaped newlines every 76; plus 1 MiB for the rest
    include_loop_devices: bool = setting(
        parse_bool, False, "treat loop devices as disks (tests, local use)")
    max_request_bytes: int = setting(
        _number(int, 1024), 90 * 1024 * 1024, "largest accepted request body")
    max_results: int = setting(_number(int, 10), 1000, "finished command results kept")
    log_file: str | None = setting(_opt_str, None, "also write the agent log here")
    log_cap_bytes: int = setting(
        _number(int, 1024), 20 * 1024 * 1024, "cap on collected system logs")
    md5_enabled: bool = setting(
        parse_bool, False, "accept MD5 checksums (lookup config may enable)")
    permitted_image_formats: list[str] = setting(
        _list, ["raw", "gpt", "qcow2", "iso"], "formats an image may be detected as")
    disable_deep_image_inspection: bool = setting(parse_bool, False, "skip image format inspection")
    enable_bios_bootloader_install: bool = setting(
        parse_bool, False, "permit running the image's grub-install (CVE-2026-43003)")
    image_direct_io: bool = setting(
        parse_bool, True, "write images with O_DIRECT (measured faster; see bench/stream.py)")
    image_zero_skip: bool = setting(
        parse_bool, True,
        "turn zero runs into no-fallback zero-out (punch hole) instead of writing them")
    image_staging_memory_mb: int | str = setting(
        _memory_mb, "auto",
        "MiB of RAM a qcow2 (etc.) file may be staged in: auto = min(3/4, all but 1 GiB) of "
        "available memory, 0 = none", ("ipa-image-staging-memory-mb",))
    heartbeat_timeout: float = setting(_number(float, 1), 300.0, "base of the heartbeat interval")
    skip_bmc_detect: bool = setting(parse_bool, False, "do not probe the BMC")
    exit_on_stop: bool = setting(
        parse_bool, False,
        "exit after lockdown instead of idling (tests; a ramdisk must not restart the agent)")

    # where each value came from: default, cmdline, file, env, flag or controller
    sources: dict[str, str] = dataclasses.field(default_factory=dict, compare=False)

    def set(self, name: str, value: Any, source: str = "runtime") -> None:
        """Parse and set one value (the controller's lookup overrides)."""
        object.__setattr__(self, name, _parse(BY_NAME[name], value, source))
        self.sources[name] = source

    def as_dict(self) -> dict[str, Any]:
        return {s.name: getattr(self, s.name) for s in SETTINGS}

    def inert_settings_given(self) -> list[str]:
        """Settings a source gave a value that no code acts on yet (see ``Setting.inert``)."""
        return [s.name for s in SETTINGS if s.inert and self.sources[s.name] != "default"]


def _settings() -> tuple[Setting, ...]:
    found = []
    for f in dataclasses.fields(Config):
        if "setting" not in f.metadata:
            continue
        parse, help_text, cmdline, inert = f.metadata["setting"]
        factory = f.default_factory
        default = f.default if factory is dataclasses.MISSING else factory()
        found.append(Setting(f.name, parse, default, help_text, cmdline, inert))
    return tuple(found)


SETTINGS = _settings()
BY_NAME = {s.name: s for s in SETTINGS}
BY_CMDLINE = {key: s for s in SETTINGS for key in s.cmdline}
ENV_PREFIX = "DEPLOY_AGENT_"


def _parse(setting: Setting, value: Any, source: str) -> Any:
    try:
        return setting.parse(value)
    except ValueError as exc:
        raise ConfigError(f"invalid value {value!r} for {setting.name} (from {source}): {exc}",
                          ) from None


def parse_cmdline(text: str) -> dict[str, str]:
    """Split a kernel command line the way IPA does: tokens with '=', first '=' splits."""
    params: dict[str, str] = {}
    for token in text.split():
        if "=" in token:
            key, value = token.split("=", 1)
            params[key] = value
    return params


def load(*, cmdline: str | None = None, cmdline_file: str | None = None,
         config_file: str | None = None, env: Mapping[str, str] | None = None,
         flags: Mapping[str, Any] | None = None, read_proc: bool = True,
         extra_cmdline: str = "") -> Config:
    """Build a Config from all sources; raise ConfigError on any bad value.

    ``extra_cmdline`` (a vmedia ``parameters.txt``) counts as kernel parameters
    given after the command line's own, so it wins where both name a key.
    """
    values = {s.name: _copy(s.default) for s in SETTINGS}
    sources = dict.fromkeys(values, "default")

    text = cmdline
    if text is None and cmdline_file:
        try:
            with open(cmdline_file, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(
                f"cannot read kernel command line file {cmdline_file}: {exc}") from None
    if text is None and read_proc:
        try:
            with open("/proc/cmdline", encoding="utf-8") as f:
                text = f.read()
        except OSError:
            text = ""
    for origin, params in (("kernel parameter", parse_cmdline(text or "")),
                           ("vmedia parameters.txt", parse_cmdline(extra_cmdline))):
        for key, raw in params.items():
            setting = BY_CMDLINE.get(key)
            if setting:
                values[setting.name] = _parse(setting, raw, f"{origin} {key}")
                sources[setting.name] = "cmdline"

    if config_file:
        try:
            with open(config_file, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
        section = data.get("agent", data)
        for key, raw in section.items():
            setting = BY_NAME.get(key.replace("-", "_"))
            if setting is None:
                # the whole list outgrew an error line: name the likely ones
                close = difflib.get_close_matches(key.replace("-", "_"), BY_NAME, n=3)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                raise ConfigError(f"unknown setting {key!r} in {config_file}; {hint}README's "
                                  "configuration table lists every setting")
            values[setting.name] = _parse(setting, raw, f"config file {config_file}")
            sources[setting.name] = "file"

    for key, raw in (os.environ if env is None else env).items():
        if key.startswith(ENV_PREFIX):
            setting = BY_NAME.get(key[len(ENV_PREFIX):].lower())
            if setting is None:
                raise ConfigError(f"unknown environment variable {key}")
            values[setting.name] = _parse(setting, raw, f"environment {key}")
            sources[setting.name] = "env"

    for key, raw in (flags or {}).items():
        if raw is None:
            continue
        setting = BY_NAME[key]
        values[setting.name] = _parse(setting, raw, f"flag --{key.replace('_', '-')}")
        sources[setting.name] = "flag"

    if bool(values["tls_cert_file"]) != bool(values["tls_key_file"]):
        raise ConfigError("tls_cert_file and tls_key_file must be given together")
    if values["keyfile"] and not values["certfile"]:
        raise ConfigError("keyfile needs certfile")
    return Config(**values, sources=sources)


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def is_ramdisk(config: Config, mounts_path: str = "/proc/mounts") -> bool:
    """True when power actions may act on this machine.

    ``ramdisk=auto`` detects an initramfs: the root filesystem is rootfs,
    ramfs or tmpfs.  A laptop or CI host has a disk-backed root and is never
    powered off by accident.
    """
    if config.ramdisk != "auto":
        return config.ramdisk == "true"
    root_type = ""
    try:
        with open(mounts_path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                # the last "/" entry is the one in effect (over-mounts stack)
                if len(parts) >= 3 and parts[1] == "/":
                    root_type = parts[2]
    except OSError:
        return False
    return root_type in {"rootfs", "ramfs", "tmpfs"}
