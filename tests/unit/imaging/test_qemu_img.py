"""The qemu-img wrapper: block-graph options, error translation, limits, progress.

Error translation is fed stderr captured from the real qemu-img 7.2 (see
tests/fixtures/formats/qemu-img-stderr.json); everything else runs qemu-img.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import pathlib
import re
import subprocess
import threading

import pytest

from agent import tools
from agent.errors import (
    Cancelled,
    ImageDownloadError,
    ImageWriteError,
    InvalidImage,
    ToolError,
)
from agent.imaging import qemu_img
from tests.conftest import requires_loop

MiB = 1 << 20
FIXTURE = pathlib.Path(__file__).parents[2] / "fixtures" / "formats" / "qemu-img-stderr.json"
CASES = json.loads(FIXTURE.read_text())["cases"]


def make_qcow2(tmp_path, size_mib: int = 8, *, data_at=(0, 3)) -> str:
    path = str(tmp_path / "img.qcow2")
    subprocess.run(["qemu-img", "create", "-f", "qcow2", path, f"{size_mib}M"], check=True,
                   capture_output=True)
    for n, mib in enumerate(data_at):
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {n + 1} {mib}M 64k", path],
                       check=True, capture_output=True)
    return path


def blank(tmp_path, size: int, name: str = "out.raw") -> str:
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# --- block graph ----------------------------------------------------------------------

def test_nodes_for_file_url_and_window(tmp_path):
    path = blank(tmp_path, MiB, "a,b.qcow2")      # a comma needs no escaping in JSON
    assert qemu_img.protocol_node(path) == {"driver": "file", "filename": path}
    assert qemu_img.protocol_node("https://h/x.qcow2") == {"driver": "https",
                                                           "url": "https://h/x.qcow2"}
    node = qemu_img.image_node(path, "qcow2", offset=4096, size=8192)
    assert node == {"driver": "qcow2", "backing": None,
                    "file": {"driver": "raw", "offset": 4096, "size": 8192,
                             "file": {"driver": "file", "filename": path}}}
    assert qemu_img.image_node(path, "vmdk")["file"] == {"driver": "file", "filename": path}
    assert qemu_img.window(node, 1, None) == {"driver": "raw", "offset": 1, "file": node}
    assert json.loads(qemu_img.filename(node).removeprefix("json:")) == node


@requires_loop
def test_block_devices_use_host_device_with_direct_io(make_loop):
    dev = make_loop(4 * MiB)
    assert qemu_img.protocol_node(dev) == {"driver": "host_device", "filename": dev,
                                           "cache": {"direct": True}}
    assert qemu_img.device_node(dev, offset=MiB, size=MiB, direct=False) == {
        "driver": "raw", "offset": MiB, "size": MiB,
        "file": {"driver": "host_device", "filename": dev}}


# --- error translation ------------------------------------------------------------------

EXPECTED = {
    "enomem": (ToolError, "ran out of memory under the agent's limits (address space 1024"),
    "smaller": (InvalidImage, "virtual size is larger than the space"),
    "range_past_end": (ToolError, "byte range 10000000+1048576 reaches past the end"),
    "not_format": (InvalidImage, "not a valid qcow2 image; check the image's disk_format"),
    "backing": (InvalidImage, "refers to a backing file"),
    "encrypted": (InvalidImage, "the image is encrypted"),
    "missing": (ToolError, "the image or the device does not exist"),
    "lock": (ToolError, "another process holds a lock"),
    "permission": (ToolError, "permission denied"),
    "no_range": (ImageDownloadError, "does not support HTTP Range requests"),
    "http_404": (ImageDownloadError, "the image server answered HTTP 404"),
    "refused": (ImageDownloadError, "could not read the image over HTTP: Failed to connect"),
    "bad_option": (ToolError, "options this qemu-img rejects"),
    "file_on_device": (ToolError, "options this qemu-img rejects"),
    "vmdk_mismatch": (InvalidImage, "corrupt or uses a feature"),
    "deprecated_backing_warning": (ToolError, "does not exist"),
    "write_enospc": (ImageWriteError, "writing to the target failed at byte 4194304 "
                                      "(No space left on device)"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_explain_real_stderr(name):
    case = CASES[name]
    cls, text = EXPECTED[name]
    err = qemu_img.explain(case["stderr"], case["returncode"], action="writing the image")
    assert type(err) is cls
    assert err.details.startswith("writing the image: ")
    assert text in err.details
    # what qemu-img itself said stays visible, warnings aside
    assert "qemu-img said: " in err.details and "warning" not in err.details
    if cls is ToolError:
        assert err.tool == "qemu-img" and err.returncode == case["returncode"]


def test_every_fixture_case_has_an_expectation():
    assert set(CASES) == set(EXPECTED)


def test_paths_do_not_steer_the_explanation():
    stderr = ("qemu-img: Could not open '/images/encrypted-corrupt.qcow2': Could not open "
              "'/images/encrypted-corrupt.qcow2': No such file or directory\n")
    assert "does not exist" in qemu_img.explain(stderr, 1).details


@pytest.mark.parametrize("rc,text", [(-9, "killed by SIGKILL (often the kernel's out-of-memory"),
                                     (-11, "killed by SIGSEGV"), (3, "exit code 3")])
def test_explain_signals_and_unknown_failures(rc, text):
    err = qemu_img.explain("", rc)
    assert isinstance(err, ToolError) and text in err.details


def test_progress_records_are_parsed_across_chunks():
    seen: list[float] = []
    rest = qemu_img._progress(b"    (0.00/100%)\r    (12.5", seen.append)
    rest = qemu_img._progress(rest + b"0/100%)\r    (100.00/100%)\r\n", seen.append)
    assert seen == [0.0, 12.5, 100.0] and rest == b""


# --- real runs ----------------------------------------------------------------------------

def test_info_reads_json(tmp_path):
    path = make_qcow2(tmp_path)
    data = qemu_img.info(path, "qcow2")
    assert data["virtual-size"] == 8 * MiB and data["format"] == "qcow2"
    with pytest.raises(ValueError):
        qemu_img.info(path)


def test_info_retries_enomem_then_explains(tmp_path):
    with pytest.raises(ToolError) as exc:
        qemu_img.info(make_qcow2(tmp_path), "qcow2", address_space=24 * MiB, attempts=2,
                      retry_delay=0)
    assert exc.value.details.startswith("reading the image header: qemu-img ran out of memory")
    assert exc.value.details.endswith("after 2 attempts")


def test_info_that_cannot_even_start_says_so(tmp_path):
    with pytest.raises(ToolError, match="could not start; its libraries are missing or its "
                                        r"address-space cap \(8 MiB\)"):
        qemu_img.info(make_qcow2(tmp_path), "qcow2", address_space=8 * MiB)


@pytest.mark.parametrize("stdout,text", [("not json", "printed invalid JSON"),
                                         ('{"format": "qcow2"}', "did not report a virtual")])
def test_info_output_that_makes_no_sense(tmp_path, monkeypatch, stdout, text):
    # a qemu-img that exits 0 with unusable output: only reachable with a stand-in
    monkeypatch.setattr(tools, "run", lambda *a, **kw: subprocess.CompletedProcess(a, 0,
                                                                                    stdout, ""))
    with pytest.raises(ToolError, match=text):
        qemu_img.info(str(tmp_path / "x"), "qcow2")


def test_missing_path_is_explained(tmp_path):
    with pytest.raises(ToolError, match="the image or the device does not exist"):
        qemu_img.info(str(tmp_path / "nothing.qcow2"), "qcow2")


def test_info_with_the_wrong_format_is_an_invalid_image(tmp_path):
    with pytest.raises(InvalidImage, match="not a valid qcow2 image"):
        qemu_img.info(blank(tmp_path, MiB), "qcow2")


def test_backing_null_keeps_qemu_away_from_host_files(tmp_path):
    base = tmp_path / "secret"
    base.write_bytes(b"top secret\n")
    img = str(tmp_path / "evil.qcow2")
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", str(base), "-u",
                    img, "1M"], check=True, capture_output=True)
    out = blank(tmp_path, MiB)
    qemu_img.convert(qemu_img.image_node(img, "qcow2"), qemu_img.device_node(out))
    assert pathlib.Path(out).read_bytes() == bytes(MiB)


def test_convert_reports_progress_and_peak_rss(tmp_path):
    src = make_qcow2(tmp_path)
    out = blank(tmp_path, 8 * MiB)
    seen: list[float] = []
    result = qemu_img.convert(qemu_img.image_node(src, "qcow2"), qemu_img.device_node(out),
                              progress=seen.append)
    assert seen[-1] == 100.0 and seen == sorted(seen)
    assert 1 * MiB < result.peak_rss_bytes < 256 * MiB
    assert result.attempts == 1
    ref = str(tmp_path / "ref.raw")
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", src, ref], check=True,
                   capture_output=True)
    assert pathlib.Path(out).read_bytes() == pathlib.Path(ref).read_bytes()


def test_convert_window_copies_only_the_range(tmp_path):
    src = make_qcow2(tmp_path)
    out = blank(tmp_path, 8 * MiB)
    with open(out, "r+b") as f:
        f.write(b"\xee" * 8 * MiB)
    node = qemu_img.image_node(src, "qcow2")
    qemu_img.convert(qemu_img.window(node, 2 * MiB, 2 * MiB),
                     qemu_img.device_node(out, offset=2 * MiB, size=2 * MiB))
    data = pathlib.Path(out).read_bytes()
    assert data[:2 * MiB] == b"\xee" * 2 * MiB and data[4 * MiB:] == b"\xee" * 4 * MiB
    assert data[2 * MiB:3 * MiB] == bytes(MiB)
    assert data[3 * MiB:3 * MiB + 65536] == b"\x02" * 65536


def test_convert_retries_enomem_a_bounded_number_of_times(tmp_path):
    src = make_qcow2(tmp_path)
    out = blank(tmp_path, 8 * MiB)
    with pytest.raises(ToolError) as exc:
        qemu_img.convert(qemu_img.image_node(src, "qcow2"), qemu_img.device_node(out),
                         address_space=48 * MiB, attempts=2, retry_delay=0)
    assert "ran out of memory under the agent's limits (address space 48 MiB)" in \
        exc.value.details
    assert exc.value.details.endswith("after 2 attempts")


def test_failure_is_translated(tmp_path):
    out = blank(tmp_path, MiB)
    with pytest.raises(InvalidImage, match="virtual size is larger than the space"):
        qemu_img.convert(qemu_img.image_node(make_qcow2(tmp_path), "qcow2"),
                         qemu_img.device_node(out), action="writing the image")


def started(monkeypatch) -> list[subprocess.Popen]:
    procs: list[subprocess.Popen] = []
    real = tools.popen

    def spy(*a, **kw):
        procs.append(real(*a, **kw))
        return procs[-1]
    monkeypatch.setattr(tools, "popen", spy)
    return procs


def test_cancel_stops_qemu_img(tmp_path, monkeypatch):
    procs = started(monkeypatch)
    src = make_qcow2(tmp_path)

    def cancel():
        raise Cancelled("stop")
    with pytest.raises(Cancelled):
        qemu_img.convert(qemu_img.image_node(src, "qcow2"),
                         qemu_img.device_node(blank(tmp_path, 8 * MiB)), cancel_check=cancel)
    assert procs and procs[0].returncode is not None


def test_timeout_stops_qemu_img(tmp_path, monkeypatch):
    procs = started(monkeypatch)
    with pytest.raises(ToolError, match="did not finish within 0s"):
        qemu_img.convert(qemu_img.image_node(make_qcow2(tmp_path), "qcow2"),
                         qemu_img.device_node(blank(tmp_path, 8 * MiB)), timeout=0)
    assert procs[0].returncode is not None


def test_child_runs_under_the_limits(tmp_path, monkeypatch):
    seen = {}
    real = tools.popen

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)
    monkeypatch.setattr(tools, "popen", spy)
    qemu_img.convert(qemu_img.image_node(make_qcow2(tmp_path), "qcow2"),
                     qemu_img.device_node(blank(tmp_path, 8 * MiB)))
    assert seen["env"] == {"MALLOC_ARENA_MAX": "2", "LC_ALL": "C"}
    assert seen["preexec_fn"] is not None
    # the limit really lands on the child: a shell started the same way reports it
    proc = subprocess.run(["sh", "-c", "ulimit -v"], preexec_fn=qemu_img._limits(1 << 30),
                          capture_output=True, text=True, env=os.environ)
    assert proc.stdout.strip() == str((1 << 30) // 1024)


# --- reading over HTTP with qemu's curl driver (the no-staging fallback) ------------------

class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with single-range support, which qemu's curl driver requires."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        size = os.path.getsize(path)
        start, end = 0, size - 1
        m = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        self.send_response(206 if m else 200)
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2) or end), end)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1) if self.command == "GET" else b""
        return io.BytesIO(body)


class PlainHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(handler) -> str:
        srv = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(tmp_path)))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"
    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_curl_driver_reads_a_qcow2_over_http_with_ranges(tmp_path, serve):
    src = make_qcow2(tmp_path)
    url = serve(RangeHandler) + "/img.qcow2"
    node = qemu_img.image_node(url, "qcow2")
    assert qemu_img.info(node)["virtual-size"] == 8 * MiB
    out = blank(tmp_path, 8 * MiB)
    # body then head, as the deploy does; a hang would trip the timeout
    qemu_img.convert(qemu_img.window(node, MiB, 7 * MiB),
                     qemu_img.device_node(out, offset=MiB, size=7 * MiB), timeout=120)
    qemu_img.convert(qemu_img.window(node, 0, MiB), qemu_img.device_node(out, size=MiB),
                     timeout=120)
    ref = str(tmp_path / "ref.raw")
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", src, ref], check=True)
    assert pathlib.Path(out).read_bytes() == pathlib.Path(ref).read_bytes()


def test_curl_driver_runs_one_request_at_a_time(tmp_path, monkeypatch):
    seen = []
    real = tools.popen

    def spy(*a, **kw):
        seen.append(a)
        return real(*a, **kw)
    monkeypatch.setattr(tools, "popen", spy)
    with pytest.raises(ImageDownloadError):
        qemu_img.convert(qemu_img.image_node("http://127.0.0.1:9/x", "qcow2"),
                         qemu_img.device_node(blank(tmp_path, MiB)), parallel=8)
    args = list(seen[0])
    assert args[args.index("-m") + 1] == "1"


def test_curl_driver_needs_range_support(tmp_path, serve):
    make_qcow2(tmp_path)
    base = serve(PlainHandler)
    with pytest.raises(ImageDownloadError, match="does not support HTTP Range requests"):
        qemu_img.info(qemu_img.image_node(base + "/img.qcow2", "qcow2"))
    with pytest.raises(ImageDownloadError, match="answered HTTP 404"):
        qemu_img.info(qemu_img.image_node(serve(RangeHandler) + "/nope.qcow2", "qcow2"))
