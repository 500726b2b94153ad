"""boot_method=vmedia on real media: a vfat ir-vfd-dev image and an ISO on loop devices.

Covers the merge of parameters.txt into the settings, the CA file from the ISO
verifying a real HTTPS "Ironic" on 127.0.0.1, static addressing from
network_data.json inside a network namespace, and the erase plan and install
disk choice leaving the media alone.
"""

from __future__ import annotations

import http.server
import itertools
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from agent import config
from agent.errors import DeviceNotFound
from agent.hardware import disks as disk_list
from agent.hardware import hints
from agent.ironic import inspect, vmedia
from agent.ironic.http import AttemptFailed, ControllerClient
from tests.conftest import requires_loop
from tests.functional.vmedia_media import attach, make_ca_and_server_cert, make_iso, make_vfd

pytestmark = requires_loop
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
__all__ = ["attach"]      # the fixture, imported for pytest

TLS_CONF = b"[DEFAULT]\ncafile = /etc/ironic-python-agent/ironic.crt\n"
NETWORK_DATA = {
    "links": [{"id": "port0", "type": "phy", "ethernet_mac_address": "52:54:00:AB:CD:01",
               "mtu": 1400},
              {"id": "gone", "type": "phy", "ethernet_mac_address": "52:54:00:00:00:99"},
              {"id": "bond0", "type": "bond", "bond_links": ["port0"]}],
    "networks": [
        {"id": "v4", "type": "ipv4", "link": "port0", "ip_address": "192.0.2.10",
         "netmask": "255.255.255.0",
         "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.0.2.1"},
                    {"network": "198.51.100.0", "netmask": "255.255.255.0",
                     "gateway": "192.0.2.254"}],
         "services": [{"type": "dns", "address": "192.0.2.53"}]},
        {"id": "v6", "type": "ipv6", "link": "port0", "ip_address": "2001:db8::10",
         "netmask": "ffff:ffff:ffff:ffff::",
         "routes": [{"network": "::", "netmask": "::", "gateway": "2001:db8::1"}]},
        {"id": "bad", "type": "ipv4", "link": "port0", "ip_address": "192.0.2.11",
         "netmask": "255.0.255.0"},
        {"id": "dhcp", "type": "ipv4_dhcp", "link": "port0"}],
    "services": [{"type": "dns", "address": "2001:db8::53"},
                 {"type": "dns", "address": "192.0.2.53"}],
}


def cmdline(tmp_path, text: str = "boot_method=vmedia ipa-debug=0") -> str:
    path = tmp_path / "cmdline"
    path.write_text(text + "\n")
    return str(path)


def only(tmp_path, *devices: str) -> dict[str, str]:
    """A sysfs root listing only ``devices`` (their real size and ro), so the scan is ours."""
    root = tmp_path / "fakeroot"
    for dev in devices:
        kname = os.path.basename(dev)
        target = root / "sys" / "block" / kname
        target.mkdir(parents=True)
        for attr in ("size", "ro"):
            (target / attr).write_text(open(f"/sys/block/{kname}/{attr}").read())
    (root / "sys" / "block").mkdir(parents=True, exist_ok=True)
    return {"root": str(root), "dev_dir": "/dev"}


# -- parameters.txt --------------------------------------------------------------------

def test_parameters_txt_joins_the_kernel_parameters_and_wins(tmp_path, attach, caplog):
    vfd = attach(make_vfd(str(tmp_path / "vfd.img"), {"parameters.txt": (
        b"ipa-api-url=http://127.0.0.1:6385\r\nipa-debug=1\nboot_method=vmedia\n"
        b"this line is wrong\n=novalue\n\nipa-agent-token=s3cret\n")}))
    # the real sysfs scan: the device is found without udev, by its label
    found = vmedia.from_cmdline(cmdline(tmp_path), runtime_dir=str(tmp_path / "run"))
    assert vfd in found.devices
    cfg = config.load(cmdline_file=cmdline(tmp_path), env={}, extra_cmdline=found.params)
    assert cfg.api_url == ["http://127.0.0.1:6385"]
    assert cfg.debug is True            # parameters.txt beats the command line's ipa-debug=0
    assert cfg.agent_token == "s3cret" and cfg.boot_method == "vmedia"
    errors = found.errors
    assert any("line 4 is not key=value" in e for e in errors)
    assert any("line 5 is not key=value" in e for e in errors)
    with caplog.at_level("INFO", logger="agent.ironic.vmedia"):
        vmedia.apply(found, cfg)
    assert "s3cret" not in caplog.text      # the token's value is never logged
    assert "ipa-agent-token" in caplog.text


def test_without_boot_method_vmedia_nothing_is_read(tmp_path, attach):
    attach(make_vfd(str(tmp_path / "vfd.img"), {"parameters.txt": b"ipa-debug=1\n"}))
    found = vmedia.from_cmdline(cmdline(tmp_path, "ipa-debug=0"))
    assert found.devices == [] and found.params == ""


def test_no_device_is_an_error_note_and_the_command_line_still_counts(tmp_path):
    found = vmedia.from_cmdline(cmdline(tmp_path), **only(tmp_path))
    assert found.params == "" and found.devices == []
    assert "no virtual-media device was found" in found.errors[0]
    assert config.load(cmdline_file=cmdline(tmp_path), env={},
                       extra_cmdline=found.params).debug is False


def test_a_vfd_without_parameters_txt_is_reported(tmp_path, attach):
    vfd = attach(make_vfd(str(tmp_path / "vfd.img"), {"other.txt": b"x=1\n"}))
    found = vmedia.from_cmdline(cmdline(tmp_path), **only(tmp_path, vfd))
    assert found.devices == [vfd] and found.params == ""
    assert any("cannot read parameters.txt" in e and vfd in e for e in found.errors)


def test_a_vfat_image_with_another_label_is_not_virtual_media(tmp_path, attach):
    other = attach(make_vfd(str(tmp_path / "vfd.img"), {"parameters.txt": b"ipa-debug=1\n"},
                            label="OTHER"))
    found = vmedia.from_cmdline(cmdline(tmp_path), **only(tmp_path, other))
    assert found.devices == [] and found.params == ""


# -- the ISO: TLS files and network data -----------------------------------------------

def iso_with(tmp_path, attach, ca_pem: bytes, network: bytes | None = None,
             read_only: bool = True) -> str:
    files = {"etc/ironic-python-agent/ironic.crt": ca_pem,
             "etc/ironic-python-agent.d/ironic-tls.conf": TLS_CONF,
             "etc/ironic-python-agent/ironic-python-agent.conf": b"[DEFAULT]\ndebug = true\n"}
    if network is not None:
        files["openstack/latest/network_data.json"] = network
    return attach(make_iso(str(tmp_path / "boot.iso"), files), read_only=read_only)


class _Ironic(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = ({"default_version": {"version": "1.68"}} if self.path == "/"
                else {"node": {"uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"},
                      "config": {"heartbeat_timeout": 300}})
        self._send(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send({"uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"})

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def https_ironic(tmp_path) -> Iterator[tuple[str, str]]:
    """(URL of an HTTPS Ironic stand-in on 127.0.0.1, the CA that signed its certificate)."""
    ca, cert, key = make_ca_and_server_cert(str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ironic)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", ca
    server.shutdown()
    server.server_close()


def test_the_isos_ca_verifies_ironic_for_lookup_and_inspection(tmp_path, attach, https_ironic,
                                                               monkeypatch):
    url, ca = https_ironic
    # an unrelated CA in the environment must not stand in for the ISO's CA
    (tmp_path / "other").mkdir()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", make_ca_and_server_cert(str(tmp_path / "other"))[0])
    iso = iso_with(tmp_path, attach, open(ca, "rb").read())
    found = vmedia.from_cmdline(cmdline(tmp_path, f"boot_method=vmedia ipa-api-url={url}"),
                                runtime_dir=str(tmp_path / "run"), **only(tmp_path, iso))
    copied = tmp_path / "run" / "etc" / "ironic-python-agent" / "ironic.crt"
    assert found.settings == {"cafile": str(copied)}
    assert copied.read_bytes() == open(ca, "rb").read()
    assert (tmp_path / "run" / "etc" / "ironic-python-agent" / "ironic-python-agent.conf"
            ).exists()
    cfg = config.load(cmdline=f"boot_method=vmedia ipa-api-url={url}", env={},
                      extra_cmdline=found.params)
    vmedia.apply(found, cfg)
    assert cfg.cafile == str(copied) and cfg.sources["cafile"] == "vmedia"

    # built the way run_with_controller builds it
    client = ControllerClient(cfg.api_url, verify=not cfg.insecure, cafile=cfg.cafile,
                              certfile=cfg.certfile, keyfile=cfg.keyfile)
    assert client.lookup(["52:54:00:ab:cd:01"])["node"]["uuid"].startswith("1be26c0b")
    with pytest.raises(AttemptFailed, match="CERTIFICATE_VERIFY_FAILED"):
        ControllerClient(cfg.api_url).lookup(["52:54:00:ab:cd:01"])
    assert ControllerClient(cfg.api_url, verify=False, cafile="/nonexistent").lookup(
        ["52:54:00:ab:cd:01"])      # ipa-insecure beats the CA file

    clock = itertools.count(0, 1000)      # one attempt: a failure does not wait 300 s

    def post(cfg: config.Config) -> dict:
        return inspect.post(f"{url}/v1/continue_inspection", {}, cfg, sleep=lambda _: None,
                            clock=lambda: next(clock))
    assert post(cfg) == {"uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"}
    with pytest.raises(inspect.InspectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
        post(config.load(cmdline=f"ipa-api-url={url}", env={}, read_proc=False))


def test_a_config_file_cafile_beats_the_media(tmp_path, attach):
    iso = iso_with(tmp_path, attach, b"CA")
    found = vmedia.discover(runtime_dir=str(tmp_path / "run"), **only(tmp_path, iso))
    mine = tmp_path / "mine.pem"
    mine.write_text("x")
    toml = tmp_path / "agent.toml"
    toml.write_text(f'cafile = "{mine}"\n')
    cfg = config.load(cmdline="", env={}, config_file=str(toml), read_proc=False)
    vmedia.apply(found, cfg)
    assert cfg.cafile == str(mine)


def test_malformed_network_data_is_reported_and_the_tls_files_still_count(tmp_path, attach):
    iso = iso_with(tmp_path, attach, b"CA", network=b"{not json")
    found = vmedia.discover(runtime_dir=str(tmp_path / "run"), **only(tmp_path, iso))
    assert found.network_data is None
    assert any("network_data.json" in e and "not JSON" in e for e in found.errors)
    assert "cafile" in found.settings


def test_an_iso_on_a_writable_disk_is_not_the_boot_media(tmp_path, attach):
    iso = iso_with(tmp_path, attach, b"CA", read_only=False)
    found = vmedia.discover(runtime_dir=str(tmp_path / "run"), **only(tmp_path, iso))
    assert found.devices == [] and found.settings == {}


# -- network_data.json in a network namespace ------------------------------------------

needs_ip = pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"dav-vm-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "port0", "address",
                        "52:54:00:ab:cd:01", "type", "veth", "peer", "name", "peer0"],
                       check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "peer0", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def configure_in(ns: str, data: dict, tmp_path) -> dict:
    (tmp_path / "nd.json").write_text(json.dumps(data))
    code = ("import json, sys; from agent.ironic import netconfig; "
            "r = netconfig.configure(json.load(open(sys.argv[1])), ramdisk=True, "
            "resolv_conf=sys.argv[2]); print(json.dumps(r))")
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code,
                          str(tmp_path / "nd.json"), str(tmp_path / "resolv.conf")],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_ip
def test_static_addresses_routes_and_dns_in_a_namespace(tmp_path, netns):
    (tmp_path / "resolv.conf").write_text("search example.test\n")
    first = configure_in(netns, NETWORK_DATA, tmp_path)
    addrs = json.loads(subprocess.run(["ip", "-n", netns, "-j", "addr", "show", "port0"],
                                      capture_output=True, text=True, check=True).stdout)[0]
    have = {f"{a['local']}/{a['prefixlen']}" for a in addrs["addr_info"]}
    assert {"192.0.2.10/24", "2001:db8::10/64"} <= have
    assert "192.0.2.11/24" not in " ".join(have)
    assert addrs["mtu"] == 1400 and "UP" in addrs["flags"]
    v4 = subprocess.run(["ip", "-n", netns, "route"], capture_output=True, text=True).stdout
    assert "default via 192.0.2.1 dev port0" in v4
    assert "198.51.100.0/24 via 192.0.2.254 dev port0" in v4
    v6 = subprocess.run(["ip", "-n", netns, "-6", "route"], capture_output=True,
                        text=True).stdout
    assert "default via 2001:db8::1 dev port0" in v6
    resolv = (tmp_path / "resolv.conf").read_text()
    assert resolv == "nameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch example.test\n"
    # the bad netmask is an error; everything else went on
    assert len(first["errors"]) == 1 and "255.0.255.0" in first["errors"][0]
    skipped = " | ".join(first["skipped"])
    assert "52:54:00:00:00:99" in skipped and "bond" in skipped and "ipv4_dhcp" in skipped

    again = configure_in(netns, NETWORK_DATA, tmp_path)
    assert again["errors"] == first["errors"]      # idempotent: nothing new fails
    assert (tmp_path / "resolv.conf").read_text() == resolv


@needs_ip
def test_no_interface_matches_and_nothing_fails(tmp_path, netns):
    data = {"links": [{"id": "x", "type": "phy", "ethernet_mac_address": "52:54:00:00:00:77"}],
            "networks": [{"id": "n", "type": "ipv4", "link": "x", "ip_address": "192.0.2.5",
                          "netmask": "255.255.255.0"}]}
    result = configure_in(netns, data, tmp_path)
    assert result["errors"] == [] and result["configured"] == []
    assert not (tmp_path / "resolv.conf").exists()


# -- erase and install-disk guards -----------------------------------------------------

def erase_plan(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOY_AGENT_")}
    env["PYTHONPATH"] = ROOT
    out = subprocess.run([sys.executable, "-m", "agent.cli", "erase-plan", *args], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)


def test_the_erase_plan_skips_the_media_and_erases_a_writable_iso(tmp_path, attach):
    vfd = attach(make_vfd(str(tmp_path / "vfd.img"), {"parameters.txt": b"a=b\n"}))
    iso = iso_with(tmp_path, attach, b"CA")
    (tmp_path / "w").mkdir()
    data_iso = attach(make_iso(str(tmp_path / "w" / "data.iso"), {"x.txt": b"x"}))
    listed = erase_plan("--include-loop-devices")
    others = [d for d in listed["disks"] if d not in (vfd, iso, data_iso)]
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"properties": {"skip_block_devices": [
        {"name": d} for d in others]}}))
    plan = erase_plan("--include-loop-devices", "--node", str(node))
    # the read-only ISO is skipped, not refused as read-only: the plan goes ahead
    assert plan["refused"] is None
    assert plan["erase"] == [data_iso]
    assert "ir-vfd-dev" in plan["skipped"][vfd]
    assert "booted from" in plan["skipped"][iso]


def test_the_install_disk_is_never_the_media(tmp_path, attach):
    vfd = attach(make_vfd(str(tmp_path / "vfd.img"), {"parameters.txt": b"a=b\n"}))
    iso = iso_with(tmp_path, attach, b"CA")
    found = [d for d in disk_list.list_disks(include_loop=True) if d.name in (vfd, iso)]
    assert len(found) == 2
    for dev in (vfd, iso):
        with pytest.raises(DeviceNotFound, match="skipped as virtual media"):
            hints.select_root_device(found, {"name": dev})


# -- the door: deploy-agent serve ------------------------------------------------------

def test_serve_merges_the_media_before_parsing_settings(tmp_path, attach):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the address and port come only from parameters.txt: listening there proves the merge
    attach(make_vfd(str(tmp_path / "vfd.img"), {"parameters.txt": (
        f"ipa-listen-host=127.0.0.1\nipa-listen-port={port}\nbogus\n").encode()}))
    iso_with(tmp_path, attach, b"CA")
    env = {k: v for k, v in os.environ.items() if not k.startswith(config.ENV_PREFIX)}
    env["PYTHONPATH"] = ROOT
    log = tmp_path / "agent.log"
    runtime_dir_existed = os.path.exists(vmedia.RUNTIME_DIR)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "serve", "--standalone",
         "--cmdline", cmdline(tmp_path), "--log-file", str(log)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listening = False
    try:
        deadline = time.monotonic() + 60
        while not listening and proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                listening = True
            except OSError:
                time.sleep(0.05)
        text = log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)
        if not runtime_dir_existed:
            shutil.rmtree(vmedia.RUNTIME_DIR, ignore_errors=True)
    assert listening, text
    assert "parameters.txt line 3 is not key=value" in text
    assert f"outbound TLS: cafile={vmedia.RUNTIME_DIR}/etc/ironic-python-agent/ironic.crt" \
        in text
