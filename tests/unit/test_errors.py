"""The error hierarchy and the normalisation that keeps results JSON-safe."""

from __future__ import annotations

import json

import pytest

from agent import errors


def test_agent_error_carries_code_message_and_details() -> None:
    exc = errors.DeviceNotFound("no disk matches the root device hints {'size': 10}")
    assert exc.to_dict() == {
        "type": "DeviceNotFound", "code": 404,
        "message": "Error finding the disk or partition device to deploy the image onto",
        "details": "no disk matches the root device hints {'size': 10}"}
    assert str(exc) == exc.details


def test_details_default_to_the_message() -> None:
    assert errors.CommandExecutionError().details == "Command execution failed"


def test_code_can_be_overridden_per_instance() -> None:
    exc = errors.DeploymentError("bad", code=400)
    assert exc.code == 400
    assert errors.DeploymentError.code == 500


def test_faultstring_is_message_colon_details() -> None:
    exc = errors.InvalidCommandParamsError("Image is missing 'urls' field.")
    assert exc.faultstring() == "Invalid command parameters: Image is missing 'urls' field."


@pytest.mark.parametrize("exc, text", [
    (errors.ExtensionNotFoundError("nope"), "Not found: Extension with id nope not found."),
    (errors.CommandNotFoundError("abc"), "Not found: Command Result with id abc not found."),
    (errors.AgentIsBusy("execute_deploy_step"),
     "Agent is busy: executing command execute_deploy_step"),
])
def test_ipa_faultstrings(exc: errors.AgentError, text: str) -> None:
    assert exc.faultstring() == text


def test_messages_have_no_trailing_period() -> None:
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.AgentError)]
    assert len(classes) > 20
    for cls in classes:
        assert not cls.message.endswith("."), cls


def test_normalise_keeps_agent_errors() -> None:
    data = errors.normalise(errors.ImageChecksumError("sha256 mismatch: expected ab, got cd"))
    assert data == {"type": "ImageChecksumError", "code": 500,
                    "message": "Error verifying image checksum",
                    "details": "sha256 mismatch: expected ab, got cd"}


def test_normalise_wraps_foreign_exceptions_naming_their_class() -> None:
    data = errors.normalise(ValueError("bad literal"))
    assert data == {"type": "CommandExecutionError", "code": 500,
                    "message": "Command execution failed",
                    "details": "ValueError: bad literal"}


def test_normalise_exception_without_text_uses_class_name() -> None:
    assert errors.normalise(KeyboardInterrupt())["details"] == "KeyboardInterrupt"


def test_normalise_never_reports_typeerror() -> None:
    # the conductor reads type "TypeError" as a signature mismatch and aborts
    assert errors.normalise(TypeError("x() missing 1 required argument"))["type"] == \
        "CommandExecutionError"


def test_normalise_result_is_json_even_for_hostile_exceptions() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            return "weird \udcff text"

    class BadCode(errors.AgentError):
        code = "not a number"  # type: ignore[assignment]

    for exc in (Weird(), BadCode({"not": "a string"}), Exception(b"\x00bytes", {1, 2})):
        data = errors.normalise(exc)
        assert set(data) == {"type", "code", "message", "details"}
        assert isinstance(data["code"], int)
        assert all(isinstance(data[k], str) for k in ("type", "message", "details"))
        json.dumps(data)


def test_tool_error_keeps_tool_details() -> None:
    exc = errors.ToolError("sgdisk failed", tool="sgdisk", returncode=2, stderr="oops")
    assert (exc.tool, exc.returncode, exc.stderr) == ("sgdisk", 2, "oops")
    assert exc.to_dict()["message"] == "External command failed"


# -- issue 15 point 8: an error never carries the caller's payload ---------------------

BIG = "A" * (4 * 1024 * 1024)


@pytest.mark.parametrize("exc", [
    errors.InvalidCommandParamsError(f"bad value {BIG!r}"),
    errors.DeploymentError(f"Malformed deploy step, no 'step' key: {BIG}"),
    ValueError(BIG),
    KeyError(BIG),
])
def test_normalised_details_are_capped(exc: BaseException) -> None:
    data = errors.normalise(exc)
    assert len(json.dumps(data)) < 2 * errors.MAX_DETAILS
    assert data["details"].endswith("more characters not shown)")


def test_agent_error_text_is_capped_where_it_is_made() -> None:
    # the exception itself, not only the stored result: log lines quote str(exc)
    exc = errors.DeploymentError(BIG)
    assert len(str(exc)) < 2 * errors.MAX_DETAILS
    assert len(exc.faultstring()) < 2 * errors.MAX_DETAILS


def test_cap_leaves_short_text_alone() -> None:
    assert errors.cap("short") == "short"
    assert errors.cap("x" * 10, 4) == "xxxx... (6 more characters not shown)"
