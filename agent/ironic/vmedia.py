"""Boot configuration from Ironic's virtual media (``boot_method=vmedia``).

What Ironic 39's ``redfish-virtual-media`` boot puts there:

* a vfat image labelled ``ir-vfd-dev`` with ``parameters.txt``, one
  ``key=value`` a line, the same parameters as the kernel command line
  (only when the node sets ``config_via_removable``);
* on the ISO: ``etc/ironic-python-agent/ironic.crt`` and
  ``etc/ironic-python-agent.d/ironic-tls.conf`` (``[DEFAULT] cafile =
  /etc/ironic-python-agent/ironic.crt``) when ``[agent]api_ca_file`` is set,
  and ``openstack/latest/network_data.json`` when the network interface has
  static network data (the ISO is then labelled ``config-2``).

Precedence: ``parameters.txt`` is appended to the kernel command line, so a
key given in both takes the file's value, as in IPA (which updates the
command-line parameters with the file's).  Both come from the same Ironic.

Nothing here is fatal: a missing device, an unreadable file or a malformed
line becomes a note, logged once logging is set up, and the agent goes on
with what the kernel command line says.
"""

from __future__ import annotations

import configparser
import dataclasses
import io
import json
import logging
import os
import re
from typing import Any

from agent import config, tools
from agent.disk import vmedia as media
from agent.errors import AgentError

LOG = logging.getLogger(__name__)

RUNTIME_DIR = "/run/deploy-agent/vmedia"
PARAMS_FILE = "parameters.txt"
NETWORK_DATA = "openstack/latest/network_data.json"
CONFIG_DIRS = ("etc/ironic-python-agent", "etc/ironic-python-agent.d")
# IPA's [DEFAULT] options for its own HTTPS client, mapped onto our settings
TLS_OPTIONS = ("cafile", "certfile", "keyfile")
MAX_FILE = 1 << 20          # every file Ironic writes there is a few KiB
_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclasses.dataclass
class VmediaConfig:
    """What the virtual media said; ``params`` is command-line text to append."""

    devices: list[str] = dataclasses.field(default_factory=list)
    params: str = ""
    settings: dict[str, str] = dataclasses.field(default_factory=dict)
    network_data: dict[str, Any] | None = None
    notes: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    def note(self, level: int, message: str) -> None:
        self.notes.append((level, message))

    @property
    def errors(self) -> list[str]:
        return [m for level, m in self.notes if level >= logging.WARNING]


def wanted(cmdline_file: str | None = None, cmdline: str | None = None) -> bool:
    """True when the kernel command line says ``boot_method=vmedia`` (Ironic always sets it)."""
    text = cmdline
    if text is None:
        try:
            with open(cmdline_file or "/proc/cmdline", encoding="utf-8") as f:
                text = f.read()
        except OSError:
            return False    # config.load reports an unreadable --cmdline file
    return config.parse_cmdline(text).get("boot_method", "").lower() == "vmedia"


def from_cmdline(cmdline_file: str | None = None, **where: str) -> VmediaConfig:
    """``discover`` when the command line asks for it, else nothing; never raises."""
    if not wanted(cmdline_file):
        return VmediaConfig()
    try:
        return discover(**where)
    except Exception as exc:  # noqa: BLE001 - the kernel command line alone must still boot
        found = VmediaConfig()
        found.note(logging.ERROR, f"reading the virtual media failed: {type(exc).__name__}: "
                   f"{exc}; going on with the kernel command line alone")
        return found


def discover(*, root: str = "/", dev_dir: str = "/dev",
             runtime_dir: str = RUNTIME_DIR) -> VmediaConfig:
    """Read parameters, TLS files and network data from every virtual-media device."""
    found = VmediaConfig()
    devices = media.scan(root, dev_dir)
    found.devices = [m.device for m in devices]
    if not devices:
        found.note(logging.ERROR, "boot_method=vmedia, but no virtual-media device was found "
                   f"(no vfat labelled {media.VFD_LABEL}, no read-only ISO); going on with the "
                   "kernel command line alone")
        return found
    params: str | None = None
    for medium in devices:
        if medium.kind == "vfd" and params is None:
            params = _read_vfd(medium.device, PARAMS_FILE, found)
    isos = [m for m in devices if m.kind == "iso"]
    for medium in isos[:1]:     # the ISO Ironic built sorts first; others are not ours
        files = _read_iso(medium.device, found)
        if files is None:
            continue
        if params is None and PARAMS_FILE in files:
            params = _decode(files[PARAMS_FILE], f"{medium.device}:{PARAMS_FILE}", found)
        if NETWORK_DATA in files:
            found.network_data = _network_data(files[NETWORK_DATA], medium.device, found)
        _tls_settings(files, runtime_dir, medium.device, found)
    if params is not None:
        found.params = _params(params, found)
    elif not any(m.kind == "vfd" for m in devices):
        found.note(logging.INFO, f"no {media.VFD_LABEL} image: the kernel command line "
                   "carries every parameter")
    return found


def apply(found: VmediaConfig, cfg: config.Config) -> None:
    """Log the notes and take the TLS files where no other source named one."""
    for level, message in found.notes:
        LOG.log(level, "%s", message)
    for name, value in found.settings.items():
        if cfg.sources.get(name, "default") == "default":
            cfg.set(name, value, source="vmedia")
            LOG.info("outbound TLS: %s=%s (from the virtual media)", name, value)
        else:
            LOG.info("outbound TLS: keeping %s from the %s over the virtual media's",
                     name, cfg.sources[name])


def configure_network(found: VmediaConfig, cfg: config.Config) -> dict[str, Any] | None:
    """Static addressing from the ISO's network_data.json, when it carried one."""
    if found.network_data is None:
        return None
    from agent.ironic import netconfig
    try:
        result = netconfig.configure(found.network_data, ramdisk=config.is_ramdisk(cfg))
    except Exception as exc:  # noqa: BLE001 - lookup may still work over what is configured
        LOG.exception("static network configuration failed")
        return {"configured": [], "skipped": [], "errors": [f"{type(exc).__name__}: {exc}"],
                "dns": []}
    if result["errors"]:
        LOG.error("static network configuration had %d error(s): %s", len(result["errors"]),
                  "; ".join(result["errors"]))
    return result


# -- reading ----------------------------------------------------------------------------

def _read_vfd(device: str, name: str, found: VmediaConfig) -> str | None:
    try:
        # mcopy to '-' reads one file without mounting: no vfat driver in the ramdisk
        proc = tools.run("mcopy", "-n", "-i", device, f"::{name}", "-", text=False,
                         env={"MTOOLS_SKIP_CHECK": "1"}, timeout=60)
    except AgentError as exc:
        found.note(logging.ERROR, f"cannot read {name} from {device}: {exc.details}")
        return None
    return _decode(proc.stdout[:MAX_FILE], f"{device}:{name}", found)


def _decode(data: bytes, where: str, found: VmediaConfig) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        found.note(logging.ERROR, f"{where} is not UTF-8 text ({exc}); ignoring it")
        return None


def _params(text: str, found: VmediaConfig) -> str:
    """The file's valid ``key=value`` lines as command-line text; the rest noted and dropped."""
    good = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        # a value with blanks would split into two kernel parameters: refuse, never guess
        if not sep or not _KEY.match(key) or any(c.isspace() for c in value):
            found.note(logging.WARNING, f"{PARAMS_FILE} line {number} is not key=value "
                       f"({line[:80]!r}); ignored")
            continue
        good.append(f"{key}={value}")
    keys = sorted({p.split("=", 1)[0] for p in good})
    # values are not logged: ipa-agent-token is one of them
    found.note(logging.INFO, f"{PARAMS_FILE}: {len(good)} parameter(s): {', '.join(keys)}")
    return " ".join(good)


def _read_iso(device: str, found: VmediaConfig) -> dict[str, bytes] | None:
    """The files Ironic injects, by their path on the ISO (Rock Ridge or Joliet names)."""
    import pycdlib  # only a vmedia boot pays for the import
    from pycdlib.pycdlibexception import PyCdlibException

    iso = pycdlib.PyCdlib()
    try:
        with open(device, "rb") as f:
            iso.open_fp(f)
            try:
                return _iso_files(iso, found, device)
            finally:
                iso.close()
    except (OSError, PyCdlibException) as exc:
        found.note(logging.ERROR, f"cannot read the ISO on {device}: {exc}")
        return None


def _iso_files(iso: Any, found: VmediaConfig, device: str) -> dict[str, bytes]:
    from agent.imaging import configdrive_build  # pycdlib: only a vmedia boot pays for it
    facade = configdrive_build.name_kind(iso)
    files: dict[str, bytes] = {}
    wanted_in = {"": PARAMS_FILE, "openstack/latest": "network_data.json"}
    for want_dir in ("", "openstack/latest", *CONFIG_DIRS):
        for real, name in _listing(iso, facade, want_dir):
            only = wanted_in.get(want_dir)
            if only is not None and _plain(name) != _plain(only):
                continue
            rel = f"{want_dir}/{only or name}" if want_dir else PARAMS_FILE
            out = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(out, **{facade: real})
            except Exception as exc:  # noqa: BLE001 - pycdlib raises several types per file
                found.note(logging.ERROR, f"cannot read {rel} from {device}: {exc}")
                continue
            if out.tell() > MAX_FILE:
                found.note(logging.ERROR, f"{rel} on {device} is over {MAX_FILE} bytes; ignored")
                continue
            files[rel] = out.getvalue()
    return files


def _listing(iso: Any, facade: str, rel: str) -> list[tuple[str, str]]:
    """(path on the ISO, file name) of the files in directory ``rel``; [] when absent."""
    current = "/"
    for part in [p for p in rel.split("/") if p]:
        match = next((real for real, name, is_dir in _children(iso, facade, current)
                      if is_dir and _plain(name) == _plain(part)), None)
        if match is None:
            return []
        current = match
    return [(real, name) for real, name, is_dir in _children(iso, facade, current)
            if not is_dir]


def _children(iso: Any, facade: str, path: str) -> list[tuple[str, str, bool]]:
    """(path on the ISO, readable name, is a directory) for each entry of ``path``."""
    for dirpath, dirs, names in iso.walk(**{facade: path}):
        base = dirpath.rstrip("/")

        def shown(raw: str) -> str:
            name = raw.split(";")[0].rstrip(".")
            return name.lower() if facade == "iso_path" else name
        return ([(f"{base}/{d}", shown(d), True) for d in dirs]
                + [(f"{base}/{n}", shown(n), False) for n in names])
    return []


def _plain(name: str) -> str:
    # compare the way plain ISO9660 names survive: without case, with "_" for "-"
    return name.lower().replace("-", "_")


def _network_data(data: bytes, device: str, found: VmediaConfig) -> dict[str, Any] | None:
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        found.note(logging.ERROR, f"{NETWORK_DATA} on {device} is not JSON ({exc}); "
                   "no static network configuration")
        return None
    if not isinstance(parsed, dict):
        found.note(logging.ERROR, f"{NETWORK_DATA} on {device} is not a JSON object; "
                   "no static network configuration")
        return None
    return parsed


def _tls_settings(files: dict[str, bytes], runtime_dir: str, device: str,
                  found: VmediaConfig) -> None:
    """Copy etc/ironic-python-agent{,.d} out and read their [DEFAULT] TLS options."""
    confs = [rel for rel in files if rel.startswith(tuple(d + "/" for d in CONFIG_DIRS))]
    if not confs:
        return
    try:
        for rel in confs:
            target = os.path.join(runtime_dir, rel)
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            # 0600: a keyfile may be among them
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(files[rel])
    except OSError as exc:
        found.note(logging.ERROR, f"cannot copy the agent configuration from {device} to "
                   f"{runtime_dir}: {exc}")
        return
    found.note(logging.INFO, f"copied {', '.join(sorted(confs))} from {device} to {runtime_dir}")
    # oslo.config order: the main file, then the .d directory's files by name
    ordered = sorted((r for r in confs if r.endswith(".conf")),
                     key=lambda r: (r.startswith(CONFIG_DIRS[1] + "/"), r))
    for rel in ordered:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(files[rel].decode("utf-8"), source=rel)
        except (configparser.Error, UnicodeDecodeError) as exc:
            found.note(logging.ERROR, f"{rel} on {device} cannot be parsed ({exc}); ignored")
            continue
        for option in TLS_OPTIONS:
            value = parser.defaults().get(option, "").strip()
            if value:
                path = _local_path(value, runtime_dir)
                if os.path.isfile(path):
                    found.settings[option] = path
                else:
                    found.note(logging.ERROR, f"{rel}: {option}={value} names no file "
                               "on the media or this machine; ignored")


def _local_path(value: str, runtime_dir: str) -> str:
    """Where a path Ironic wrote for /etc is, now that the files live under ``runtime_dir``."""
    rel = value.lstrip("/")
    if rel.startswith(tuple(d + "/" for d in CONFIG_DIRS)):
        return os.path.join(runtime_dir, rel)
    return value
