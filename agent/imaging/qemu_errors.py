"""What a failed qemu-img run means, in words an operator can act on.

qemu-img's stderr is matched against the messages it is known to print
(``tests/unit/imaging`` holds real captures); a match picks the error type and
the advice, and paths in the message never decide the match.
"""

from __future__ import annotations

import re
import signal

from agent.errors import (
    AgentError,
    ImageDownloadError,
    ImageWriteError,
    InvalidImage,
    ToolError,
)

TOOL = "qemu-img"
# measured with qemu-img 7.2: peak VmSize stays under 300 MiB with two arenas and
# up to 44 worker threads; 1 GiB leaves room and still stops a runaway
ADDRESS_SPACE_LIMIT = 1 << 30
ENOMEM = re.compile(r"Cannot allocate memory|failed to allocate|"
                    r"qemu_thread_create: Resource temporarily unavailable")


def _last_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "warning:" not in ln] or lines
    return errors[-1].removeprefix("qemu-img: ")[:500] if errors else ""


def _without_names(stderr: str) -> str:
    # a path like /images/corrupt-test.qcow2 must not decide what went wrong
    return re.sub(r"Could not open '.*?': ", "", stderr)


_EXPLAIN: tuple[tuple[str, type[AgentError], str], ...] = (
    (ENOMEM.pattern, ToolError,
     "qemu-img ran out of memory under the agent's limits (address space {cap} MiB); "
     "free memory on the node or use a smaller image"),
    (r"error while loading shared libraries", ToolError,
     "qemu-img could not start; its libraries are missing or its address-space cap "
     "({cap} MiB) is too small"),
    (r"output file is smaller than input file", InvalidImage,
     "the image's virtual size is larger than the space it is being written to"),
    (r"The sum of offset \((\d+)\) and size \((\d+)\) has to be smaller or equal", ToolError,
     "the byte range {1}+{2} reaches past the end of its device or file; the staged "
     "image or the target is smaller than expected"),
    (r"Image is not in (\S+) format", InvalidImage,
     "the image is not a valid {1} image; check the image's disk_format"),
    (r"Could not open backing file", InvalidImage,
     "the image refers to a backing file; only self-contained images can be deployed"),
    (r"encrypt|key-secret", InvalidImage,
     "the image is encrypted; encrypted images cannot be deployed"),
    (r"error while writing at byte (\d+): (.+)", ImageWriteError,
     "writing to the target failed at byte {1} ({2}); check the disk and the kernel log"),
    (r"error while reading at byte (\d+): (.+)", ImageWriteError,
     "reading the image failed at byte {1} ({2}); the staged copy may be damaged"),
    (r"No space left on device", ImageWriteError,
     "the target ran out of space"),
    (r"Failed to get \"(\w+)\" lock", ToolError,
     "another process holds a lock on the image or device; make sure nothing else uses it"),
    (r"Device or resource busy", ToolError,
     "the device is busy: unmount it and stop whatever holds it open"),
    (r"Permission denied", ToolError,
     "permission denied opening the image or the device"),
    (r"No such file or directory", ToolError,
     "the image or the device does not exist"),
    (r"Server does not support 'range'", ImageDownloadError,
     "the image server does not support HTTP Range requests, which qemu-img's HTTP "
     "driver needs"),
    (r"CURL: .*returned error: (\d+)", ImageDownloadError,
     "the image server answered HTTP {1}"),
    (r"CURL: (?:Error opening file: )?(.+)", ImageDownloadError,
     "qemu-img could not read the image over HTTP: {1}"),
    (r"does not support the option|Parameter '[^']*' (?:is unexpected|expects)|"
     r"driver requires .* to be a", ToolError,
     "the agent built qemu-img options this qemu-img rejects (please report this)"),
    (r"Invalid argument", ToolError,
     "the device or file refused the request (Invalid argument); it may not support "
     "direct I/O or the requested alignment"),
    (r"[Cc]orrupt|Could not read|[Ii]nvalid|[Uu]nsupported", InvalidImage,
     "the image is corrupt or uses a feature this qemu-img does not support"),
    (r"Input/output error", ImageWriteError,
     "an I/O error occurred; check the disk and the kernel log"),
)


def explain(stderr: str, returncode: int | None, *, address_space: int = ADDRESS_SPACE_LIMIT,
            action: str = "qemu-img") -> AgentError:
    """Turn qemu-img's exit into an error an operator can act on."""
    said = _last_line(stderr)
    reason = _without_names(stderr)
    cls: type[AgentError] = ToolError
    for pattern, kind, text in _EXPLAIN:
        m = re.search(pattern, reason)
        if m:
            cls = kind
            advice = text.format(*([m.group(0), *m.groups()]), cap=address_space >> 20)
            break
    else:
        if returncode is not None and returncode < 0:
            name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() \
                else str(-returncode)
            advice = f"qemu-img was killed by {name}"
            if returncode == -signal.SIGKILL:
                advice += " (often the kernel's out-of-memory killer; see dmesg)"
        else:
            advice = f"qemu-img failed with exit code {returncode}"
    details = f"{action}: {advice}" + (f" (qemu-img said: {said})" if said else "")
    if cls is ToolError:
        return ToolError(details, tool=TOOL, returncode=returncode, stderr=stderr[-2000:])
    return cls(details)
