"""The one place that builds and runs qemu-img command lines.

Images are described to qemu-img as ``json:`` block-graph filenames rather
than plain paths, for three reasons: the source format is always explicit (a
``driver`` key plus a matching ``-f``, so qemu never probes), every format node
carries ``"backing": null`` so no header can make qemu open a host file
(dotted ``--image-opts`` can only say ``backing=``, which qemu 7.2 deprecates),
and paths need no comma escaping.  The raw driver's ``offset``/``size`` keys,
layered over a format node or under it, select byte ranges: a slice of the
guest disk, or a staging area inside a block device.

Every run happens under an address-space cap and ``MALLOC_ARENA_MAX``, in the
C locale so stderr can be recognised; a transient out-of-memory failure is
retried a bounded number of times; any failure becomes an AgentError whose
details tell the operator what went wrong and what to do (qemu_errors.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import resource
import selectors
import stat
import subprocess
import time
from collections.abc import Callable
from typing import Any

from agent import tools
from agent.errors import ToolError
from agent.imaging.qemu_errors import ADDRESS_SPACE_LIMIT, ENOMEM, TOOL, explain

LOG = logging.getLogger(__name__)

ENV = {"MALLOC_ARENA_MAX": "2", "LC_ALL": "C"}
ENOMEM_ATTEMPTS = 3
ENOMEM_DELAY_S = 2.0
INFO_TIMEOUT_S = 120.0
STDERR_KEEP = 16 * 1024

Node = dict[str, Any]
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


# --- block graph ----------------------------------------------------------------------

def protocol_node(path: str, *, direct: bool = True) -> Node:
    """The node that reads or writes ``path``: a block device, a file or an http(s) URL.

    ``direct`` asks for O_DIRECT on block devices so multi-GiB images do not
    fill the page cache of a ramdisk; regular files keep the page cache.
    """
    scheme = path.split("://", 1)[0].lower() if "://" in path else ""
    if scheme in ("http", "https"):
        return {"driver": scheme, "url": path}
    try:
        is_device = stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        is_device = False           # qemu-img will say what is wrong with the path
    if is_device:
        node: Node = {"driver": "host_device", "filename": path}
        if direct:
            node["cache"] = {"direct": True}
        return node
    return {"driver": "file", "filename": path}


def window(node: Node, offset: int, size: int | None = None) -> Node:
    """Bytes ``offset .. offset+size`` of ``node`` as a raw image of their own."""
    out: Node = {"driver": "raw", "offset": int(offset), "file": node}
    if size is not None:
        out["size"] = int(size)
    return out


def image_node(path: str, fmt: str, *, offset: int = 0, size: int | None = None,
               direct: bool = True) -> Node:
    """An image of qemu format ``fmt`` stored at ``path`` (bytes ``offset..+size``)."""
    proto = protocol_node(path, direct=direct)
    if offset or size is not None:
        proto = window(proto, offset, size)
    return {"driver": fmt, "backing": None, "file": proto}


def device_node(device: str, *, offset: int = 0, size: int | None = None,
                direct: bool = True) -> Node:
    """The raw target: ``device``, or bytes ``offset..+size`` of it."""
    return window(protocol_node(device, direct=direct), offset, size)


def filename(node: Node) -> str:
    return "json:" + json.dumps(node, separators=(",", ":"))


# --- running --------------------------------------------------------------------------

def _limits(address_space: int) -> Callable[[], None]:
    def apply() -> None:
        # runs in the child between fork and exec: nothing here may take a lock
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    return apply


def _retry_or_raise(stderr: str, rc: int | None, attempt: int, attempts: int,
                    address_space: int, action: str) -> None:
    """Return to retry a transient ENOMEM; raise the explained error otherwise."""
    if ENOMEM.search(stderr) and attempt < attempts:
        LOG.warning("qemu-img ran out of memory (attempt %d of %d); retrying",
                    attempt, attempts)
        return
    err = explain(stderr, rc, address_space=address_space, action=action)
    if attempt > 1:
        err.details += f" after {attempt} attempts"
        err.args = (err.details,)
    raise err


def info(source: Node | str, fmt: str | None = None, *, timeout: float = INFO_TIMEOUT_S,
         address_space: int = ADDRESS_SPACE_LIMIT, attempts: int = ENOMEM_ATTEMPTS,
         retry_delay: float = ENOMEM_DELAY_S) -> dict[str, Any]:
    """``qemu-img info --output=json`` of a node, or of ``source`` read as ``fmt``."""
    if isinstance(source, str):
        if not fmt:
            raise ValueError("qemu_img.info needs an explicit format for a path")
        source = image_node(source, fmt)
    argv = ["info", "--output=json", "-f", source["driver"], filename(source)]
    for attempt in range(1, attempts + 1):
        proc = tools.run(TOOL, *argv, timeout=timeout, check=False, env=ENV,
                         preexec_fn=_limits(address_space))
        if proc.returncode == 0:
            try:
                data = json.loads(proc.stdout)
            except ValueError as exc:
                raise ToolError(f"qemu-img info printed invalid JSON: {exc}",
                                tool=TOOL) from exc
            if not isinstance(data, dict) or "virtual-size" not in data:
                raise ToolError("qemu-img info did not report a virtual size", tool=TOOL)
            return data
        _retry_or_raise(proc.stderr, proc.returncode, attempt, attempts, address_space,
                        "reading the image header")
        time.sleep(retry_delay)
    raise AssertionError("unreachable")


@dataclasses.dataclass
class ConvertResult:
    peak_rss_bytes: int
    elapsed_s: float
    attempts: int


def convert(source: Node, target: Node, *, progress: Callable[[float], None] | None = None,
            cancel_check: Callable[[], None] | None = None, parallel: int | None = None,
            out_of_order: bool = False, force_share: bool = False,
            timeout: float | None = None, address_space: int = ADDRESS_SPACE_LIMIT,
            attempts: int = ENOMEM_ATTEMPTS, retry_delay: float = ENOMEM_DELAY_S,
            action: str = "converting the image") -> ConvertResult:
    """Copy the guest bytes of ``source`` onto the existing ``target`` (both nodes).

    ``progress`` gets qemu-img's percentage (0-100) as it advances.
    ``cancel_check`` is polled at least twice a second and may raise to stop
    qemu-img.  ``parallel`` (-m) is forced to 1 when the source is read over
    HTTP.  ``force_share`` (-U) lets the source share a device the target also
    opens (a staging area on the target disk).  Rewriting the same bytes is
    harmless, so a transient ENOMEM is retried up to ``attempts`` times.
    """
    argv = ["convert", "-n", "-p", "-f", source["driver"], "-O", target["driver"]]
    if _reads_http(source):
        # qemu-img 7.2's curl driver hangs with more than one request in flight
        # (seen with nginx and with Python servers); one at a time is reliable
        parallel = 1
    if force_share:
        argv.append("-U")
    if parallel:
        argv += ["-m", str(parallel)]
    if out_of_order:
        argv.append("-W")
    argv += [filename(source), filename(target)]
    started = time.monotonic()
    peak = 0
    for attempt in range(1, attempts + 1):
        rc, stderr, rss = _run(argv, progress, cancel_check, timeout, address_space)
        peak = max(peak, rss)
        if rc == 0:
            return ConvertResult(peak, time.monotonic() - started, attempt)
        _retry_or_raise(stderr, rc, attempt, attempts, address_space, action)
        _sleep(retry_delay, cancel_check)
    raise AssertionError("unreachable")


def compare(image: Node, target: Node, *, progress: Callable[[float], None] | None = None,
            cancel_check: Callable[[], None] | None = None,
            address_space: int = ADDRESS_SPACE_LIMIT) -> bool:
    """True when ``target`` holds exactly the guest bytes of ``image`` (and no more)."""
    argv = ["compare", "-p", "-f", image["driver"], "-F", target["driver"], filename(image),
            filename(target)]
    rc, stderr, _ = _run(argv, progress, cancel_check, None, address_space)
    if rc in (0, 1):            # 1: they differ; 2 and up: qemu-img could not tell
        return rc == 0
    raise explain(stderr, rc, address_space=address_space,
                  action="comparing the disk with the image")


def _reads_http(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    return node.get("driver") in ("http", "https") or any(_reads_http(v) for v in node.values())


def _sleep(seconds: float, cancel_check: Callable[[], None] | None) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if cancel_check:
            cancel_check()
        time.sleep(min(left, 0.5))


def _run(argv: list[str], progress: Callable[[float], None] | None,
         cancel_check: Callable[[], None] | None, timeout: float | None,
         address_space: int) -> tuple[int, str, int]:
    """One qemu-img run: (exit code, stderr tail, peak RSS in bytes)."""
    proc = tools.popen(TOOL, *argv, env=ENV, preexec_fn=_limits(address_space),
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    deadline = None if timeout is None else time.monotonic() + timeout
    err = bytearray()
    pending = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    peak = 0
    try:
        while sel.get_map():
            peak = max(peak, _hwm(proc.pid))
            if cancel_check:
                cancel_check()
            if deadline is not None and time.monotonic() > deadline:
                raise ToolError(f"qemu-img did not finish within {timeout:g}s", tool=TOOL)
            for key, _ in sel.select(timeout=0.5):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    pending = _progress(pending + chunk, progress)
                else:
                    err += chunk
                    del err[:-STDERR_KEEP]
    except BaseException:
        _stop(proc)
        raise
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    peak = max(peak, _hwm(proc.pid))
    rc, _ = _reap(proc)
    return rc, err.decode("utf-8", "replace"), peak


def _hwm(pid: int) -> int:
    """qemu-img's own peak RSS.

    Not wait4's ru_maxrss: on Linux that keeps the high-water mark of the
    forking parent from before exec, so a large agent would be blamed on
    qemu-img.  VmHWM belongs to the exec'd image alone.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _progress(data: bytes, progress: Callable[[float], None] | None) -> bytes:
    """Report complete ``(12.50/100%)`` records; return the unfinished tail."""
    *records, rest = re.split(rb"[\r\n]", data)
    if progress:
        for rec in records:
            m = _PROGRESS.search(rec)
            if m:
                progress(float(m.group(1)))
    return rest[-256:]


def _reap(proc: subprocess.Popen) -> tuple[int, int]:
    try:
        _pid, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        return proc.wait(), 0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
