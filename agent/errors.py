"""The one error hierarchy.

Every error carries an HTTP-like ``code``, a fixed ``message`` per type and
operator-facing ``details``.  ``normalise`` turns *anything* raised into the
JSON-safe ``command_error`` shape before it is stored, so a stray exception can
never poison ``GET /v1/commands/`` (IPA's bug, see the reference §2.7).
"""

from __future__ import annotations

from typing import Any

# what any error keeps of its text: enough to explain, never a caller's payload
MAX_DETAILS = 1000


class AgentError(Exception):
    """Base class: ``code`` is the HTTP status, ``message`` fixed per type."""

    code: int = 500
    message: str = "Command execution failed"

    def __init__(self, details: str | None = None, *, code: int | None = None) -> None:
        # capped here so neither a stored result nor a log line can carry a payload
        self.details = (cap(details) if isinstance(details, str)
                        else details if details is not None else self.message)
        if code is not None:
            self.code = code
        super().__init__(self.details)

    @property
    def type(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "code": self.code, "message": self.message,
                "details": self.details}

    def faultstring(self) -> str:
        return f"{self.message}: {self.details}"


# --- request-level errors (become HTTP 4xx) -------------------------------------------

class InvalidCommandError(AgentError):
    code = 400
    message = "Invalid command"


class InvalidCommandParamsError(AgentError):
    code = 400
    message = "Invalid command parameters"


class RequestedObjectNotFoundError(AgentError):
    code = 404
    message = "Not found"


class ExtensionNotFoundError(RequestedObjectNotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(f"Extension with id {name} not found.")


class CommandNotFoundError(RequestedObjectNotFoundError):
    def __init__(self, command_id: str) -> None:
        super().__init__(f"Command Result with id {command_id} not found.")


class AgentIsBusy(AgentError):
    code = 409
    message = "Agent is busy"

    def __init__(self, command_name: str) -> None:
        super().__init__(f"executing command {command_name}")


class CommandNotRunning(AgentError):
    code = 409
    message = "Command is not running"


class MalformedRequest(AgentError):
    """The HTTP framing or the JSON body cannot be used as a request."""

    code = 400
    message = "400 Bad Request"


class RequestTooLarge(AgentError):
    code = 413
    message = "413 Request Entity Too Large"


class RequestTimeout(AgentError):
    code = 408
    message = "408 Request Timeout"


class ConfigError(AgentError):
    code = 400
    message = "Invalid configuration"


# --- execution errors (stored in a FAILED CommandResult) ------------------------------

class CommandExecutionError(AgentError):
    message = "Command execution failed"


class Cancelled(AgentError):
    code = 499
    message = "Command cancelled"


class DeploymentError(AgentError):
    message = "Deploy step failed"


class CleaningError(AgentError):
    message = "Clean step failed"


class ServicingError(AgentError):
    message = "Service step failed"


class VersionMismatch(AgentError):
    code = 409
    message = "Hardware managers version mismatch, reload agent with correct version"


class ImageDownloadError(AgentError):
    message = "Error downloading image"


class ImageDownloadTimeoutError(ImageDownloadError):
    code = 408
    message = "Timeout reached while downloading image"


class ImageChecksumError(AgentError):
    message = "Error verifying image checksum"


class InvalidImage(AgentError):
    code = 400
    message = "The image is invalid"


class DeviceNotFound(AgentError):
    code = 404
    message = "Error finding the disk or partition device to deploy the image onto"


class UnsafeDevice(AgentError):
    """The target fails a safety check; nothing has been written."""

    code = 400
    message = "Refusing to write to device"


class ImageWriteError(AgentError):
    message = "Error writing image to device"


class PowerActionRefused(AgentError):
    code = 403
    message = "Power action refused"


class ToolMissing(AgentError):
    code = 500
    message = "Required system tool is missing"


class ToolError(AgentError):
    message = "External command failed"

    def __init__(self, details: str, *, tool: str = "", returncode: int | None = None,
                 stderr: str = "") -> None:
        self.tool = tool
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(details)


class IncompatibleHardwareMethodError(AgentError):
    """A hardware manager does not implement a method; dispatch tries the next."""

    code = 500
    message = "Hardware method not supported"


def cap(text: str, limit: int = MAX_DETAILS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters not shown)"


def normalise(exc: BaseException) -> dict[str, Any]:
    """Return the JSON-safe ``{type, code, message, details}`` for any exception.

    Agent errors keep their type; anything else becomes CommandExecutionError
    with the original class named in ``details``.  ``details`` is capped: it is
    stored and served with every later listing, and an exception can quote
    whatever the caller sent.
    """
    if isinstance(exc, AgentError):
        data = exc.to_dict()
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        data = {"type": CommandExecutionError.__name__, "code": CommandExecutionError.code,
                "message": CommandExecutionError.message, "details": text}
    data["type"] = str(data.get("type") or "CommandExecutionError")
    try:
        data["code"] = int(data.get("code") or 500)
    except (TypeError, ValueError):
        data["code"] = 500
    data["message"] = cap(str(data.get("message") or ""))
    data["details"] = cap(str(data.get("details") or data["message"]))
    return data


# --- controller integration ----------------------------------------------------------

class LookupFailed(AgentError):
    """No node was found for this machine before the lookup timeout."""

    code = 504
    message = "Controller lookup failed"


class AdvertiseAddressNotFound(AgentError):
    code = 500
    message = "Cannot determine the address to advertise to the controller"


class DeployFailed(AgentError):
    """The conductor-like driver could not complete a deploy."""

    code = 500
    message = "Deploy failed"
