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
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agent.errors import ConfigError

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _number(kind: Callable[[Any], Any], minimum: float | None) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}") from None
        if minimum is not None and number < minimum:
            raise ValueError(f"must be at least {minimum:g}")
        return number
    return parse


def _choice(choices: Iterable[str]) -> Callable[[Any], str]:
    allowed = tuple(choices)

    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in allowed:
            raise ValueError(f"accepted values: {', '.join(allowed)}")
        return text
    return parse


def _list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _api_urls(value: Any) -> list[str]:
    urls = _list(value)
    for url in urls:
        if url != "mdns" and not url.startswith(("http://", "https://")):
            raise ValueError("each URL must start with http:// or https:// (or be 'mdns')")
    return [u.rstrip("/") for u in urls]


def _opt_str(value: Any) -> str | None:
    text = str(value).strip()
    return text or None


def _port(value: Any) -> int:
    port = _number(int, 1)(value)
    if port > 65535:
        raise ValueError("must be between 1 and 65535")
    return port


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    cmdline: tuple[str, ...] = ()
    # parsed so Ironic's command line is accepted, but no code acts on it yet
    inert: bool = False


S = Setting
SETTINGS: tuple[Setting, ...] = (
    S("api_url", _api_urls, [], "controller (Ironic API) URLs, tried in order", ("ipa-api-url",)),
    S("insecure", parse_bool, False, "skip TLS verification for outbound HTTPS", ("ipa-insecure",)),
    S("agent_token", _opt_str, None, "pre-generated agent token", ("ipa-agent-token",)),
    S("global_request_id", _opt_str, None, "X-OpenStack-Request-ID to send",
      ("ipa-global-request-id",)),
    S("debug", parse_bool, False, "debug logging", ("ipa-debug",)),
    S("listen_host", str, "::", "API bind address", ("ipa-listen-host",)),
    S("listen_port", _port, 9999, "API port", ("ipa-listen-port",)),
    S("advertise_host", _opt_str, None, "host in callback_url (auto when unset)",
      ("ipa-advertise-host",)),
    S("advertise_port", _port, 9999, "port in callback_url", ("ipa-advertise-port",)),
    S("advertise_protocol", _choice(("http", "https")), "http", "scheme in callback_url",
      ("ipa-advertise-protocol",)),
    S("network_interface", _opt_str, None, "take the advertise IP from this NIC",
      ("ipa-network-interface",)),
    S("ip_lookup_attempts", _number(int, 1), 6, "attempts to find the advertise IP",
      ("ipa-ip-lookup-attempts",)),
    S("ip_lookup_timeout", _number(float, 0), 10.0, "seconds between those attempts",
      ("ipa-ip-lookup-timeout",)),
    S("lookup_timeout", _number(float, 0), 600.0, "seconds before lookup gives up",
      ("ipa-lookup-timeout",)),
    S("lookup_interval", _number(float, 0), 1.0, "initial lookup backoff, seconds",
      ("ipa-lookup-interval",)),
    S("http_request_timeout", _number(float, 0.1), 30.0, "timeout for controller requests",
      ("ipa-http-request-timeout",)),
    S("ironic_api_version", _opt_str, None, "pin the controller API microversion",
      ("ipa-ironic-api-version",)),
    S("tls_min_version", _choice(("1.2", "1.3")), "1.2", "minimum TLS version served",
      ("ipa-tls-min-version",)),
    S("tls_cipher_suites", _opt_str, None, "TLS 1.2 cipher list", ("ipa-tls-cipher-suites",)),
    S("tls_certificate_curve", _choice(("p256", "p384", "p521")), "p384",
      "auto-TLS key curve", ("ipa-tls-certificate-curve",)),
    S("tls_cert_file", _opt_str, None, "static TLS certificate (PEM)"),
    S("tls_key_file", _opt_str, None, "static TLS key (PEM)"),
    S("auto_tls", parse_bool, False, "serve HTTPS with a generated self-signed certificate"),
    S("hardware_initialization_delay", _number(float, 0), 0.0, "sleep before touching hardware",
      ("ipa-hardware-initialization-delay",)),
    S("disk_wait_attempts", _number(int, 1), 10, "attempts to wait for a root disk",
      ("ipa-disk-wait-attempts",)),
    S("disk_wait_delay", _number(float, 0), 3.0, "seconds between disk waits",
      ("ipa-disk-wait-delay",)),
    S("image_download_connection_timeout", _number(float, 0.1), 60.0,
      "connect and per-read timeout for image downloads",
      ("ipa-image-download-connection-timeout",)),
    S("image_download_connection_retries", _number(int, 0), 9, "image download retries",
      ("ipa-image-download-connection-retries",)),
    S("image_download_connection_retry_interval", _number(float, 0), 10.0,
      "seconds between image download retries",
      ("ipa-image-download-connection-retry-interval",)),
    S("image_download_max_duration", _number(float, 0), 0.0,
      "total image download limit, seconds (0 = none)", ("ipa-image-download-max-duration",)),
    S("ntp_server", _opt_str, None, "NTP server to sync with", ("ipa-ntp-server",), inert=True),
    S("inspection_callback_url", _opt_str, None, "inspection endpoint",
      ("ipa-inspection-callback-url",), inert=True),
    S("ignore_bootloader_failure", parse_bool, False, "tolerate bootloader failures",
      ("ipa-ignore-bootloader-failure",)),
    S("inject_files_priority", _number(int, 0), 0, "priority of the inject_files deploy step",
      ("ipa-inject-files-priority",), inert=True),
    S("guard_special_filesystems", parse_bool, True,
      "refuse to erase disks with shared-SAN filesystems", ("ipa-guard-special-filesystems",)),
    S("enable_discard_erase", parse_bool, False, "allow verified discard as erase",
      ("ipa-enable-discard-erase",)),
    S("bootif", _opt_str, None, "PXE boot MAC, reported verbatim", ("BOOTIF",)),
    S("boot_method", _opt_str, None, "boot method (vmedia)", ("boot_method",), inert=True),
    S("standalone", parse_bool, False, "run without a controller (no lookup/heartbeat)"),
    S("ramdisk", _choice(("auto", "true", "false")), "auto",
      "running in a deploy ramdisk: enables power actions (auto = detect initramfs root)"),
    S("include_loop_devices", parse_bool, False, "treat loop devices as disks (tests, local use)"),
    # a config drive is at most 64 MiB of gzip: 89,478,488 bytes of base64,
    # 91.8 MB if wrapped in escaped newlines every 76; plus 1 MiB for the rest
    S("max_request_bytes", _number(int, 1024), 90 * 1024 * 1024,
      "largest accepted request body"),
    S("max_results", _number(int, 10), 1000, "finished command results kept"),
    S("log_file", _opt_str, None, "also write the agent log here"),
    S("log_cap_bytes", _number(int, 1024), 20 * 1024 * 1024, "cap on collected system logs"),
    S("md5_enabled", parse_bool, False, "accept MD5 checksums (lookup config may enable)"),
    S("permitted_image_formats", _list, ["raw", "gpt", "qcow2", "iso"],
      "formats an image may be detected as"),
    S("disable_deep_image_inspection", parse_bool, False, "skip image format inspection"),
    S("enable_bios_bootloader_install", parse_bool, False,
      "permit running the image's grub-install (CVE-2026-43003)"),
    S("image_direct_io", parse_bool, True,
      "write images with O_DIRECT (measured faster; see bench/stream.py)"),
    S("image_zero_skip", parse_bool, True,
      "turn zero runs into no-fallback zero-out (punch hole) instead of writing them"),
    S("heartbeat_timeout", _number(float, 1), 300.0, "base of the heartbeat interval"),
    S("skip_bmc_detect", parse_bool, False, "do not probe the BMC"),
    S("exit_on_stop", parse_bool, False,
      "exit after lockdown instead of idling (tests; a ramdisk must not restart the agent)"),
)
BY_NAME = {s.name: s for s in SETTINGS}
BY_CMDLINE = {key: s for s in SETTINGS for key in s.cmdline}
ENV_PREFIX = "DEPLOY_AGENT_"


@dataclasses.dataclass
class Config:
    """Validated settings; attribute names are the ``SETTINGS`` names."""

    values: dict[str, Any]
    sources: dict[str, str]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def set(self, name: str, value: Any, source: str = "runtime") -> None:
        """Validate and set one value (used for controller overrides)."""
        self.values[name] = _parse(BY_NAME[name], value, source)
        self.sources[name] = source

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def inert_settings_given(self) -> list[str]:
        """Settings a source gave a value that no code acts on yet (see ``Setting.inert``)."""
        return [s.name for s in SETTINGS if s.inert and self.sources[s.name] != "default"]


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
         flags: Mapping[str, Any] | None = None, read_proc: bool = True) -> Config:
    """Build a Config from all sources; raise ConfigError on any bad value."""
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
    for key, raw in parse_cmdline(text or "").items():
        setting = BY_CMDLINE.get(key)
        if setting:
            values[setting.name] = _parse(setting, raw, f"kernel parameter {key}")
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
                raise ConfigError(f"unknown setting {key!r} in {config_file}; known: "
                                  f"{', '.join(sorted(BY_NAME))}")
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
    return Config(values, sources)


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
