"""Config drive decoding, the JSON-to-ISO builder and filesystem label probing."""

from __future__ import annotations

import base64
import gzip
import http.server
import io
import json
import subprocess
import threading
from collections.abc import Iterator

import pycdlib
import pytest

from agent.errors import DeploymentError, InvalidCommandParamsError
from agent.imaging import configdrive as cd
from agent.imaging import configdrive_build as build

MiB = 1024 * 1024
CONTENT = {
    "meta_data": {"uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "hostname": "node-1",
                  "public_keys": {"0": "ssh-ed25519 AAAA test"}},
    "user_data": "#cloud-config\nruncmd:\n  - echo hello\n",
    "network_data": {"links": [{"id": "eth0", "type": "phy",
                                "ethernet_mac_address": "52:54:00:12:34:56"}],
                     "networks": [], "services": []},
    "vendor_data": {"vendor": True},
}


@pytest.fixture(scope="module")
def iso() -> bytes:
    return build.build_iso(CONTENT)


def read_rr(data: bytes, path: str) -> bytes:
    image = pycdlib.PyCdlib()
    image.open_fp(io.BytesIO(data))
    out = io.BytesIO()
    image.get_file_from_iso_fp(out, rr_path=path)
    image.close()
    return out.getvalue()


# --- builder -----------------------------------------------------------------------------

def test_built_iso_has_the_openstack_layout(iso):
    assert iso[32769:32774] == b"CD001"
    assert build.iso_label(iso) == "config-2"
    for version in ("latest", build.OPENSTACK_VERSION):
        base = f"/openstack/{version}"
        assert json.loads(read_rr(iso, f"{base}/meta_data.json")) == CONTENT["meta_data"]
        assert read_rr(iso, f"{base}/user_data").decode() == CONTENT["user_data"]
        assert json.loads(read_rr(iso, f"{base}/network_data.json")) == \
            CONTENT["network_data"]
        assert json.loads(read_rr(iso, f"{base}/vendor_data.json")) == CONTENT["vendor_data"]


def test_built_iso_has_joliet_names_too(iso):
    image = pycdlib.PyCdlib()
    image.open_fp(io.BytesIO(iso))
    out = io.BytesIO()
    image.get_file_from_iso_fp(out, joliet_path="/openstack/latest/meta_data.json")
    image.close()
    assert json.loads(out.getvalue()) == CONTENT["meta_data"]


def test_iso_files_lists_everything(iso):
    files = build.iso_files(iso)
    assert set(files) == {f"openstack/{v}/{n}" for v in ("latest", build.OPENSTACK_VERSION)
                          for n in ("meta_data.json", "user_data", "network_data.json",
                                    "vendor_data.json")}


def test_missing_optional_parts_are_omitted_and_meta_data_defaults():
    files = build.iso_files(build.build_iso({"user_data": b"\x00binary"}))
    assert files["openstack/latest/user_data"] == b"\x00binary"
    assert json.loads(files["openstack/latest/meta_data.json"]) == {}
    assert "openstack/latest/network_data.json" not in files


def test_structured_user_data_is_json():
    files = build.iso_files(build.build_iso({"user_data": {"a": [1]}}))
    assert json.loads(files["openstack/latest/user_data"]) == {"a": [1]}


@pytest.mark.parametrize("content,match", [
    ({"meta_data": {}, "extra": 1}, "unknown config drive keys"),
    ({"meta_data": {"x": object()}}, "not JSON-serialisable"),
    (["meta_data"], "must be an object"),
])
def test_builder_rejects_bad_content(content, match):
    with pytest.raises(InvalidCommandParamsError, match=match):
        build.build_iso(content)


# --- decoding ----------------------------------------------------------------------------

def test_decode_gzip_base64(iso):
    assert cd.decode_configdrive(base64.b64encode(gzip.compress(iso)).decode()) == iso


def test_decode_base64_with_line_breaks(iso):
    assert cd.decode_configdrive(base64.encodebytes(gzip.compress(iso)).decode()) == iso


def test_decode_raw_iso_bytes(iso):
    assert cd.decode_configdrive(iso) == iso


def test_decode_base64_of_raw_iso(iso):
    assert cd.decode_configdrive(base64.b64encode(iso).decode()) == iso


def test_decode_gzip_bytes(iso):
    assert cd.decode_configdrive(gzip.compress(iso)) == iso


def test_decode_json_object_and_text():
    from_dict = cd.decode_configdrive(CONTENT)
    from_text = cd.decode_configdrive(json.dumps(CONTENT))
    for image in (from_dict, from_text):
        files = build.iso_files(image)
        assert json.loads(files["openstack/latest/meta_data.json"]) == CONTENT["meta_data"]


@pytest.mark.parametrize("value", [None, "", "  ", b""])
def test_decode_nothing(value):
    assert cd.decode_configdrive(value) is None


def test_decode_too_big_after_gunzip():
    bomb = base64.b64encode(gzip.compress(b"\0" * (64 * MiB + 1))).decode()
    with pytest.raises(DeploymentError) as exc:
        cd.decode_configdrive(bomb)
    assert exc.value.details == "Config drive size exceeds maximum limit of 64MiB"


def test_decode_exactly_64_mib_is_allowed(iso):
    padded = iso + b"\0" * (64 * MiB - len(iso))
    assert cd.decode_configdrive(gzip.compress(padded, compresslevel=1)) == padded


def test_decode_raw_too_big(iso):
    with pytest.raises(DeploymentError, match="exceeds maximum limit of 64MiB"):
        cd.decode_configdrive(iso + b"\0" * (64 * MiB))


@pytest.mark.parametrize("value,match", [
    ("not base64 at all!", "neither gzip\\+base64, base64, JSON nor an ISO9660 image"),
    (base64.b64encode(b"plain text").decode(), "neither gzip"),
    (base64.b64encode(gzip.compress(b"plain text")).decode(), "not an ISO9660 image"),
    (base64.b64encode(gzip.compress(b"x" * 1000)[:-20]).decode(), "truncated gzip"),
    (b"\x1f\x8bnot really gzip", "not valid gzip"),
    ("{broken json", "looks like JSON but is not"),
    (12, "must be a string, bytes or an object"),
])
def test_decode_rejects_garbage(value, match):
    with pytest.raises(InvalidCommandParamsError, match=match):
        cd.decode_configdrive(value)


# --- download over real HTTP on 127.0.0.1 --------------------------------------------------

@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    routes: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            body = routes.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes
    server.shutdown()
    server.server_close()


def test_download_gzip_base64(http_server, iso):
    url, routes = http_server
    routes["/cd"] = base64.b64encode(gzip.compress(iso))
    assert cd.decode_configdrive(f"{url}/cd", timeout=5) == iso


def test_download_raw_iso(http_server, iso):
    url, routes = http_server
    routes["/raw.iso"] = iso
    assert cd.decode_configdrive(f"{url}/raw.iso", timeout=5) == iso


def test_download_404_is_a_deployment_error(http_server):
    url, _routes = http_server
    with pytest.raises(DeploymentError, match="HTTP 404"):
        cd.decode_configdrive(f"{url}/missing", timeout=5)


def test_download_garbage_is_a_deployment_error(http_server):
    url, routes = http_server
    routes["/junk"] = b"\x00\x01 junk"
    with pytest.raises(DeploymentError, match="downloaded from .* is neither"):
        cd.decode_configdrive(f"{url}/junk", timeout=5)


def test_download_connection_refused():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed again: nothing listens there
    with pytest.raises(DeploymentError, match="cannot download the config drive"):
        cd.decode_configdrive(f"http://127.0.0.1:{port}/cd", timeout=5)


def test_download_uses_injected_getter(iso):
    seen = []

    def get(url, timeout):
        seen.append((url, timeout))
        return base64.b64encode(gzip.compress(iso))

    assert cd.decode_configdrive("https://example.invalid/cd", http_get=get, timeout=7) == iso
    assert seen == [("https://example.invalid/cd", 7)]


# --- label probing -----------------------------------------------------------------------

def make_fs(tmp_path, argv: list[str], size: int = 40 * MiB) -> str:
    path = str(tmp_path / "fs.img")
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run([*argv, path], check=True, capture_output=True)
    return path


def test_probe_iso(tmp_path, iso):
    path = tmp_path / "cd.iso"
    path.write_bytes(iso)
    assert cd.probe_filesystem(str(path)) == ("iso9660", "config-2")


@pytest.mark.parametrize("argv,expected", [
    (["mkfs.vfat", "-n", "CONFIG-2"], ("vfat", "CONFIG-2")),
    (["mkfs.vfat", "-F", "32", "-n", "CONFIG-2"], ("vfat", "CONFIG-2")),
    (["mkfs.vfat"], ("vfat", None)),
    (["mkfs.ext4", "-q", "-L", "config-2"], ("ext", "config-2")),
])
def test_probe_filesystems(tmp_path, argv, expected):
    assert cd.probe_filesystem(make_fs(tmp_path, argv)) == expected


def test_probe_xfs(tmp_path):
    path = make_fs(tmp_path, ["mkfs.xfs", "-q", "-L", "cfg"], size=320 * MiB)
    assert cd.probe_filesystem(path) == ("xfs", "cfg")


def test_probe_at_offset(tmp_path, iso):
    path = tmp_path / "disk.img"
    path.write_bytes(b"\0" * MiB + iso)
    assert cd.probe_filesystem(str(path), MiB) == ("iso9660", "config-2")
    assert cd.probe_filesystem(str(path)) == (None, None)


def test_damaged_iso_is_rejected(iso):
    damaged = bytearray(iso)
    damaged[32768 + 80:32768 + 88] = b"\xff" * 8      # volume space size, both byte orders
    damaged[32768 + 128:32768 + 132] = b"\0\0\0\0"    # logical block size 0
    with pytest.raises(InvalidCommandParamsError, match="ISO9660 image is damaged"):
        cd.decode_configdrive(bytes(damaged))
