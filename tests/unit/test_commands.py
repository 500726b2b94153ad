"""The command runner: registry, validation, sync/async execution, store, cancel."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import pytest

from agent import commands, config, errors
from agent.commands import CommandContext, CommandRunner, StepOutcome, command
from agent.extensions import Extension, load_extensions
from agent.state import AgentState

PLUGIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "plugins", "testext")
FIVE = {"id", "command_name", "command_status", "command_error", "command_result"}


def wait_for(predicate, timeout: float = 30.0) -> None:
    """Poll until predicate() is true; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def _check_value(params: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(params.get("value"), int):
        raise errors.InvalidCommandParamsError("'value' must be an integer")
    return {"value": params["value"]}


class Work(Extension):
    """Commands whose pace the test controls, so nothing depends on timing."""

    name = "work"

    def __init__(self, state: AgentState) -> None:
        super().__init__(state)
        self.step = threading.Semaphore(0)
        self.entered = threading.Event()
        self.seen: dict[str, Any] = {}

    @command(is_async=True)
    def gated(self, ctx: CommandContext, steps: int = 3) -> str:
        ctx.progress.update(phase="gated", done=0, total=steps, unit="steps")
        self.entered.set()
        for _ in range(steps):
            while not self.step.acquire(timeout=0.01):
                ctx.check_cancelled()
            ctx.progress.advance(1)
        return "all steps done"

    @command()
    def sync_gated(self, ctx: CommandContext) -> None:
        self.entered.set()
        self.step.acquire(timeout=30)

    @command()
    def returns(self, ctx: CommandContext, value: Any = None) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @command(is_async=True)
    def returns_async(self, ctx: CommandContext, value: Any = None) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @command()
    def raises(self, ctx: CommandContext, kind: str = "value") -> None:
        if kind == "agent":
            raise errors.DeviceNotFound("no disk matched")
        if kind == "exit":
            raise SystemExit(3)
        if kind.startswith("echo:"):
            raise ValueError(f"cannot use {kind!r}")    # an exception quoting its input
        raise ValueError("something odd")

    @command(is_async=True)
    def raises_async(self, ctx: CommandContext) -> None:
        raise KeyError("missing")

    @command()
    def not_json(self, ctx: CommandContext) -> Any:
        return {"when": {1, 2, 3}}

    @command(validator=_check_value)
    def validated(self, ctx: CommandContext, value: int) -> dict[str, Any]:
        return {"doubled": value * 2}

    @command(validator=lambda params: params["nope"])
    def buggy_validator(self, ctx: CommandContext) -> None:
        pass

    @command(validator=lambda params: (_ for _ in ()).throw(errors.DeviceNotFound("sda")))
    def agent_error_validator(self, ctx: CommandContext) -> None:
        pass

    @command()
    def needs(self, ctx: CommandContext, required: str, optional: int = 1) -> dict[str, Any]:
        return {"required": required, "optional": optional}

    @command()
    def flexible(self, ctx: CommandContext, **params: Any) -> dict[str, Any]:
        return params

    @command("renamed")
    def some_method(self, ctx: CommandContext) -> str:
        return "renamed ran"

    @command()
    def outcome(self, ctx: CommandContext) -> StepOutcome:
        return StepOutcome(commands.VERSION_MISMATCH, None,
                           errors.VersionMismatch("Current versions: {}").to_dict())

    @command()
    def context(self, ctx: CommandContext) -> dict[str, Any]:
        return {"id": ctx.id, "name": ctx.name}


class Log(Extension):
    name = "log"

    @command()
    def collect_system_logs(self, ctx: CommandContext) -> dict[str, Any]:
        return {"system_logs": "QUJD" * 100}


@pytest.fixture
def state() -> AgentState:
    return AgentState(config.load(env={}, read_proc=False, flags={"standalone": True}))


@pytest.fixture
def work(state: AgentState) -> Work:
    return Work(state)


@pytest.fixture
def runner(state: AgentState, work: Work) -> CommandRunner:
    return CommandRunner([work, Log(state)], max_results=10)


def release_all(work: Work, n: int = 100) -> None:
    for _ in range(n):
        work.step.release()


# -- registry ------------------------------------------------------------------------

def test_commands_are_registered_by_extension_and_name(runner: CommandRunner) -> None:
    assert runner.extension_names() == ["log", "work"]
    short, fn, spec = runner.resolve("work.gated")
    assert short == "gated" and spec.is_async and callable(fn)
    assert runner.resolve("work.renamed")[0] == "renamed"
    assert runner.resolve("work.returns")[2].is_async is False


@pytest.mark.parametrize("name, exc, text", [
    ("nodot", errors.InvalidCommandError,
     "Invalid command: Command name must be of the form <extension>.<name>"),
    (42, errors.InvalidCommandError,
     "Invalid command: Command name must be of the form <extension>.<name>"),
    ("nosuch.thing", errors.ExtensionNotFoundError,
     "Not found: Extension with id nosuch not found."),
    ("work.nosuch", errors.InvalidCommandError, "Invalid command: Unknown command: nosuch"),
    ("work.some_method", errors.InvalidCommandError,
     "Invalid command: Unknown command: some_method"),
])
def test_resolve_errors(runner: CommandRunner, name: Any, exc: type, text: str) -> None:
    with pytest.raises(exc) as info:
        runner.execute(name, {})
    assert info.value.faultstring() == text
    assert runner.list_results() == []


def test_extensions_are_found_through_entry_points(state, monkeypatch) -> None:
    monkeypatch.syspath_prepend(PLUGIN_DIR)
    found = load_extensions(state, names=["testing", "standby"])
    assert sorted(e.name for e in found) == ["standby", "testing"]
    runner = CommandRunner(found)
    result = runner.execute("testing.echo", {"value": "hi"})
    assert result.to_dict()["command_result"] == {"echoed": "hi"}
    with pytest.raises(errors.InvalidCommandParamsError, match="non-empty string"):
        runner.execute("testing.echo", {"value": ""})


def test_a_broken_extension_is_logged_and_skipped(state, monkeypatch, tmp_path, caplog) -> None:
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[deploy_agent.extensions]\nbroken = no_such_module_anywhere:Broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.ERROR, logger="agent.extensions"):
        found = load_extensions(state, names=["broken", "standby"])
    assert [e.name for e in found] == ["standby"]
    assert "extension broken (no_such_module_anywhere:Broken) failed to load" in caplog.text


def test_no_extensions_at_all_is_logged(state, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="agent.extensions"):
        assert load_extensions(state, names=[]) == []
    assert "no extensions found" in caplog.text


# -- sync execution and result shape ---------------------------------------------------

def test_sync_success_is_stored_with_the_short_name(runner: CommandRunner) -> None:
    result = runner.execute("work.validated", {"value": 21})
    data = result.to_dict()
    assert set(data) == FIVE
    assert data["command_name"] == "validated"
    assert data["command_status"] == "SUCCEEDED"
    assert data["command_error"] is None
    assert data["command_result"] == {"doubled": 42}
    assert [r.id for r in runner.list_results()] == [result.id]
    assert runner.get(result.id) is result


def test_params_are_never_echoed(runner: CommandRunner) -> None:
    result = runner.execute("work.needs", {"required": "s3cr3t-password"})
    data = result.to_dict()
    assert "command_params" not in data
    data["command_result"] = None
    assert "s3cr3t" not in json.dumps(data)


def test_context_knows_id_and_name(runner: CommandRunner) -> None:
    result = runner.execute("work.context", {})
    assert result.to_dict()["command_result"] == {"id": result.id, "name": "context"}


@pytest.mark.parametrize("kind, expected", [
    ("value", {"type": "CommandExecutionError", "code": 500,
               "message": "Command execution failed", "details": "ValueError: something odd"}),
    ("agent", {"type": "DeviceNotFound", "code": 404, "message": errors.DeviceNotFound.message,
               "details": "no disk matched"}),
    ("exit", {"type": "CommandExecutionError", "code": 500,
              "message": "Command execution failed", "details": "SystemExit: 3"}),
])
def test_sync_failure_is_a_stored_json_safe_failed_result(runner, kind, expected) -> None:
    result = runner.execute("work.raises", {"kind": kind})
    data = result.to_dict()
    assert data["command_status"] == "FAILED"
    assert data["command_name"] == "raises"      # IPA stores the dotted name here
    assert data["command_error"] == expected
    assert data["command_result"] is None
    json.dumps([r.to_dict() for r in runner.list_results()])
    # the agent is free again
    assert runner.execute("work.returns", {}).status == "SUCCEEDED"


def test_result_that_json_cannot_encode_fails_cleanly(runner: CommandRunner) -> None:
    result = runner.execute("work.not_json", {})
    data = result.to_dict()
    assert data["command_status"] == "FAILED"
    assert data["command_error"]["type"] == "CommandExecutionError"
    assert "not_json returned a result that cannot be encoded as JSON" in \
        data["command_error"]["details"]
    json.dumps([r.to_dict() for r in runner.list_results()])


def test_step_outcome_sets_another_status(runner: CommandRunner) -> None:
    data = runner.execute("work.outcome", {}).to_dict()
    assert data["command_status"] == "CLEAN_VERSION_MISMATCH"
    assert data["command_error"]["type"] == "VersionMismatch"
    assert data["command_error"]["code"] == 409
    assert data["command_result"] is None


# -- wrapping rules (reference §2.6) -------------------------------------------------

@pytest.mark.parametrize("value, sync_expected, async_expected", [
    (None, None, None),
    ("done", {"result": "done"}, {"result": "returns_async: done"}),
    ({"a": 1}, {"a": 1}, {"a": 1}),
    ([1, "two"], [1, "two"], [1, "two"]),          # the command returns a tuple
    (0, 0, 0),
])
def test_result_wrapping(runner, value, sync_expected, async_expected) -> None:
    sync = runner.execute("work.returns", {"value": value}).to_dict()
    assert sync["command_result"] == sync_expected
    result = runner.execute("work.returns_async", {"value": value}, wait=True)
    assert result.to_dict()["command_result"] == async_expected


def test_wrap_result_directly() -> None:
    assert commands.wrap_result(("a", "b"), "x", True) == ["a", "b"]
    assert commands.wrap_result("s", "prepare_image", True) == \
        {"result": "prepare_image: s"}
    assert commands.wrap_result("s", "sync", False) == {"result": "s"}


# -- validation ---------------------------------------------------------------------

def test_missing_required_parameter(runner: CommandRunner) -> None:
    with pytest.raises(errors.InvalidCommandParamsError) as info:
        runner.execute("work.needs", {"optional": 2})
    assert info.value.faultstring() == \
        "Invalid command parameters: missing required parameter 'required'"
    assert runner.list_results() == []


def test_unknown_parameters_are_ignored_and_logged(runner, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="agent.commands"):
        data = runner.execute("work.needs", {"required": "x", "future_thing": 1}).to_dict()
    assert data["command_result"] == {"required": "x", "optional": 1}
    assert "ignoring unknown parameters ['future_thing']" in caplog.text


def test_var_keyword_commands_receive_everything(runner: CommandRunner) -> None:
    data = runner.execute("work.flexible", {"a": 1, "b": [2]}).to_dict()
    assert data["command_result"] == {"a": 1, "b": [2]}


def test_custom_validator(runner: CommandRunner) -> None:
    with pytest.raises(errors.InvalidCommandParamsError, match="must be an integer"):
        runner.execute("work.validated", {"value": "21"})


def test_validator_bug_is_still_a_clean_400(runner: CommandRunner) -> None:
    with pytest.raises(errors.InvalidCommandParamsError) as info:
        runner.execute("work.buggy_validator", {})
    assert info.value.code == 400
    assert info.value.details == "KeyError: 'nope'"


def test_validator_raising_another_agent_error_becomes_400(runner: CommandRunner) -> None:
    with pytest.raises(errors.InvalidCommandParamsError) as info:
        runner.execute("work.agent_error_validator", {})
    assert info.value.details == "sda"


def test_validation_failure_while_idle_records_nothing(runner: CommandRunner) -> None:
    with pytest.raises(errors.InvalidCommandParamsError):
        runner.execute("work.validated", {})
    assert runner.list_results() == []
    assert runner.current() is None


# -- async execution ------------------------------------------------------------------

def test_async_is_registered_running_before_the_call_returns(runner, work) -> None:
    result = runner.execute("work.gated", {"steps": 1})
    try:
        data = result.to_dict()
        assert data["command_status"] == "RUNNING"
        assert runner.list_results()[-1] is result
        assert runner.current() is result
    finally:
        release_all(work)
    result.done.wait(30)
    assert result.to_dict()["command_result"] == {"result": "gated: all steps done"}
    assert runner.current() is None


def test_async_failure_is_normalised(runner: CommandRunner) -> None:
    result = runner.execute("work.raises_async", {}, wait=True)
    data = result.to_dict()
    assert data["command_status"] == "FAILED"
    assert data["command_error"] == {"type": "CommandExecutionError", "code": 500,
                                     "message": "Command execution failed",
                                     "details": "KeyError: 'missing'"}
    json.dumps([r.to_dict() for r in runner.list_results()])


def test_async_done_hooks_run_and_a_broken_hook_is_contained(runner, caplog) -> None:
    seen = []

    def broken(_: Any) -> None:
        raise RuntimeError("hook bug")

    runner.on_async_done += [broken, seen.append]
    with caplog.at_level(logging.ERROR, logger="agent.commands"):
        result = runner.execute("work.returns_async", {"value": "x"}, wait=True)
        wait_for(lambda: seen)
    assert seen == [result]
    assert "async-done hook failed" in caplog.text
    runner.execute("work.returns", {})   # sync commands do not fire the hook
    assert seen == [result]


def test_progress_changes_while_running(runner, work) -> None:
    result = runner.execute("work.gated", {"steps": 3})
    try:
        work.entered.wait(30)
        first = result.to_dict()
        assert first["command_status"] == "RUNNING"
        assert first["progress"]["phase"] == "gated"
        assert first["progress"]["done"] == 0
        assert first["progress"]["total"] == 3
        assert first["progress"]["unit"] == "steps"
        assert first["command_result"] == {"progress": first["progress"]}
        work.step.release()
        wait_for(lambda: result.to_dict()["progress"]["done"] == 1)
        work.step.release()
        wait_for(lambda: result.to_dict()["progress"]["done"] == 2)
    finally:
        release_all(work)
    result.done.wait(30)
    final = result.to_dict()
    assert final["command_status"] == "SUCCEEDED"
    # the final result replaces the live view; the top-level progress stays
    assert final["command_result"] == {"result": "gated: all steps done"}
    assert final["progress"]["done"] == 3


def test_commands_without_progress_have_exactly_five_fields(runner: CommandRunner) -> None:
    result = runner.execute("work.returns_async", {}, wait=True)
    assert set(result.to_dict()) == FIVE


# -- one at a time ---------------------------------------------------------------------

def test_busy_while_async_runs(runner, work) -> None:
    running = runner.execute("work.gated", {"steps": 1})
    try:
        for name in ("work.returns", "work.returns_async", "work.gated"):
            with pytest.raises(errors.AgentIsBusy) as info:
                runner.execute(name, {})
            assert info.value.code == 409
            assert info.value.faultstring() == "Agent is busy: executing command gated"
        # even an invalid request is refused as busy first
        with pytest.raises(errors.AgentIsBusy):
            runner.execute("work.validated", {})
        assert runner.list_results() == [running]
    finally:
        release_all(work)
    running.done.wait(30)
    assert runner.execute("work.returns", {}).status == "SUCCEEDED"


def test_busy_while_sync_runs_in_another_request(runner, work) -> None:
    thread = threading.Thread(target=runner.execute, args=("work.sync_gated", {}))
    thread.start()
    try:
        work.entered.wait(30)
        with pytest.raises(errors.AgentIsBusy, match="executing command sync_gated"):
            runner.execute("work.returns", {})
    finally:
        work.step.release()
        thread.join(30)
    assert [r.command_name for r in runner.list_results()] == ["sync_gated"]


def test_log_collection_runs_out_of_band_while_busy_and_is_not_recorded(runner, work) -> None:
    running = runner.execute("work.gated", {"steps": 1})
    try:
        logs = runner.execute("log.collect_system_logs", {})
        assert logs.status == "SUCCEEDED"
        assert logs.to_dict()["command_result"]["system_logs"].startswith("QUJD")
        # the step the conductor watches is still the last entry
        assert runner.list_results() == [running]
        assert runner.current() is running
    finally:
        release_all(work)
    running.done.wait(30)


def test_log_collection_while_idle_is_recorded_and_elided_in_listings(runner) -> None:
    logs = runner.execute("log.collect_system_logs", {})
    assert runner.list_results() == [logs]
    assert logs.to_dict()["command_result"]["system_logs"] == "QUJD" * 100
    listed = logs.to_dict(elide_large=True)["command_result"]["system_logs"]
    assert listed == "<elided, 400 characters; returned in the POST response>"


# -- bounded store --------------------------------------------------------------------

def test_oldest_finished_results_are_pruned(runner: CommandRunner) -> None:
    ids = [runner.execute("work.returns", {"value": i}).id for i in range(15)]
    kept = [r.id for r in runner.list_results()]
    assert kept == ids[-10:]
    with pytest.raises(errors.CommandNotFoundError):
        runner.get(ids[0])


def test_pruning_never_drops_a_running_result(state, work) -> None:
    runner = CommandRunner([work], max_results=10)
    running = runner.execute("work.gated", {"steps": 1})
    try:
        # fill the store around the running entry through the internal hook the
        # runner uses, as if results had accumulated before it
        for i in range(12):
            extra = commands.CommandResult(f"filler{i}", False)
            extra.finish(commands.SUCCEEDED)
            with runner._lock:
                runner._store(extra)
        names = [r.command_name for r in runner.list_results()]
        assert len(names) == 10
        assert "gated" in names
        assert names[-1] == "filler11"
    finally:
        release_all(work)
    running.done.wait(30)


# -- cancel ---------------------------------------------------------------------------

def test_cancel_ends_failed_with_cancelled(runner, work) -> None:
    result = runner.execute("work.gated", {"steps": 5})
    work.entered.wait(30)
    assert runner.cancel(result.id) is result
    assert result.done.wait(30)
    data = result.to_dict()
    assert data["command_status"] == "FAILED"
    assert data["command_error"]["type"] == "Cancelled"
    assert data["command_error"]["details"] == "gated was cancelled by request"
    assert runner.current() is None


def test_cancel_unknown_id(runner: CommandRunner) -> None:
    with pytest.raises(errors.CommandNotFoundError) as info:
        runner.cancel("nope")
    assert info.value.code == 404


def test_cancel_finished_command(runner: CommandRunner) -> None:
    result = runner.execute("work.returns", {})
    with pytest.raises(errors.CommandNotRunning) as info:
        runner.cancel(result.id)
    assert info.value.code == 409
    assert "already ended with SUCCEEDED" in info.value.details


def test_context_cancel_flag() -> None:
    ctx = CommandContext("id", "thing")
    assert ctx.cancelled is False
    ctx.check_cancelled()
    ctx.cancel_event.set()
    assert ctx.cancelled is True
    with pytest.raises(errors.Cancelled):
        ctx.check_cancelled()


def test_a_huge_argument_is_neither_stored_nor_logged(runner, caplog) -> None:
    big = "echo:" + "B" * (4 * 1024 * 1024)
    with caplog.at_level(logging.DEBUG):
        result = runner.execute("work.raises", {"kind": big, "unknown_" + "k" * 100_000: 1})
    assert result.status == "FAILED"
    assert len(json.dumps([r.to_dict() for r in runner.list_results()])) < 4096
    assert len(caplog.text) < 16 * 1024
    assert "ValueError" in caplog.text
