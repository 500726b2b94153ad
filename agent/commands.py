"""Command registry, runner, results store and cancellation.

Extensions declare commands with ``@command``; the runner validates a POSTed
command inside the request, then either runs it there (sync) or registers a
RUNNING result *before* answering and runs it in a worker thread (async).
Every exception is normalised into the JSON-safe error shape before it is
stored, so the results list is always serialisable.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from agent import errors
from agent.context import CommandContext

LOG = logging.getLogger(__name__)

RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
VERSION_MISMATCH = "CLEAN_VERSION_MISMATCH"

# Commands that may run while another is RUNNING; they are answered but never
# recorded, so the step the conductor is watching stays the last entry.
OUT_OF_BAND = {"log.collect_system_logs"}


Validator = Callable[[dict[str, Any]], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    name: str
    is_async: bool
    validator: Validator | str | None


def command(name: str | None = None, *, is_async: bool = False,
            validator: Validator | str | None = None
            ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark an extension method as a command.

    The method is called as ``method(ctx, **params)``.  ``validator`` receives
    the raw params and returns the keyword arguments, raising
    InvalidCommandParamsError; a string names a validator method on the
    extension.  Without one, params are checked against the method's signature.
    """
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, "_command_spec",  # noqa: B010 - a marker the runner looks for
                CommandSpec(name or fn.__name__, is_async, validator))
        return fn
    return decorate


class CommandResult:
    def __init__(self, name: str, is_async: bool) -> None:
        self.id = str(uuid.uuid4())
        self.command_name = name
        self.is_async = is_async
        self.status = RUNNING
        self.error: dict[str, Any] | None = None
        self.result: Any = None
        self.context = CommandContext(self.id, name)
        self.done = threading.Event()
        self.started_at = time.time()
        self.finished_at: float | None = None

    def wait(self, gone: Callable[[], bool] | None = None, poll: float = 0.5) -> bool:
        """Block until done, or until ``gone()`` says nobody is waiting any more."""
        while not self.done.wait(poll):
            if gone is not None and gone():
                return False
        return True

    def finish(self, status: str, result: Any = None,
               error: dict[str, Any] | None = None) -> None:
        self.result = result
        self.error = error
        self.status = status
        self.finished_at = time.time()
        self.done.set()

    def to_dict(self, *, elide_large: bool = False) -> dict[str, Any]:
        # status first: finish() sets it last, so a reader that sees the final
        # status also sees the final result and error
        status = self.status
        result = self.result
        if status == RUNNING and self.context.progress.started:
            result = {"progress": self.context.progress.snapshot()}
        elif elide_large and isinstance(result, dict) and "system_logs" in result:
            result = dict(result, system_logs=f"<elided, {len(result['system_logs'])} "
                                              "characters; returned in the POST response>")
        data = {"id": self.id, "command_name": self.command_name,
                "command_status": status, "command_error": self.error,
                "command_result": result}
        if self.context.progress.started:
            data["progress"] = self.context.progress.snapshot()
        return data


def wrap_result(value: Any, short_name: str, is_async: bool) -> Any:
    """Shape a command's return value the way IPA does (reference §2.6)."""
    if value is None:
        return None
    if isinstance(value, str):
        return {"result": f"{short_name}: {value}" if is_async else value}
    if isinstance(value, (list, tuple)):
        return list(value)
    return value


def signature_validator(fn: Callable[..., Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Check params against ``fn(self, ctx, ...)``: missing → 400, extras ignored."""
    sig = inspect.signature(fn)
    names = list(sig.parameters)[1:]  # drop ctx (fn is bound)
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())

    def validate(params: dict[str, Any]) -> dict[str, Any]:
        kwargs = {}
        for name in names:
            p = sig.parameters[name]
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            if name in params:
                kwargs[name] = params[name]
            elif p.default is p.empty:
                raise errors.InvalidCommandParamsError(f"missing required parameter '{name}'")
        extra = set(params) - set(kwargs)
        if extra:
            if takes_kwargs:
                kwargs.update({k: params[k] for k in extra})
            else:
                LOG.info("ignoring unknown parameters %s for %s",
                         errors.cap(str(sorted(extra)), 200), fn.__name__)
        return kwargs
    return validate


class CommandRunner:
    """Runs commands one at a time and keeps their results."""

    def __init__(self, extensions: Iterable[Any], max_results: int = 1000) -> None:
        self._commands: dict[str, dict[str, tuple[Callable[..., Any], CommandSpec, Validator]]] = {}
        for ext in extensions:
            table = self._commands.setdefault(ext.name, {})
            for attr in dir(type(ext)):
                spec = getattr(getattr(type(ext), attr), "_command_spec", None)
                if spec is not None:
                    fn = getattr(ext, attr)
                    validate = spec.validator
                    if isinstance(validate, str):
                        # a method name: validators that need the extension's config
                        validate = getattr(ext, validate)
                    table[spec.name] = (fn, spec, validate or signature_validator(fn))
        self._results: collections.OrderedDict[str, CommandResult] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._busy: str | None = None  # short name of an in-flight sync command
        self.max_results = max_results
        self.on_async_done: list[Callable[[CommandResult], None]] = []

    # -- lookup ------------------------------------------------------------------------
    def extension_names(self) -> list[str]:
        return sorted(self._commands)

    def resolve(self, name: Any) -> tuple[str, Callable[..., Any], CommandSpec]:
        cmd, fn, spec, _ = self._lookup(name)
        return cmd, fn, spec

    def _lookup(self, name: Any) -> tuple[str, Callable[..., Any], CommandSpec, Validator]:
        if not isinstance(name, str) or "." not in name:
            raise errors.InvalidCommandError(
                "Command name must be of the form <extension>.<name>")
        ext, cmd = name.split(".", 1)
        if ext not in self._commands:
            raise errors.ExtensionNotFoundError(ext)
        try:
            fn, spec, validate = self._commands[ext][cmd]
        except KeyError:
            raise errors.InvalidCommandError(f"Unknown command: {cmd}") from None
        return cmd, fn, spec, validate

    def list_results(self) -> list[CommandResult]:
        with self._lock:
            return list(self._results.values())

    def get(self, command_id: str) -> CommandResult:
        with self._lock:
            try:
                return self._results[command_id]
            except KeyError:
                raise errors.CommandNotFoundError(command_id) from None

    def current(self) -> CommandResult | None:
        with self._lock:
            return self._running_locked()

    def _running_locked(self) -> CommandResult | None:
        if self._results:
            last = next(reversed(self._results.values()))
            if last.status == RUNNING:
                return last
        return None

    # -- execution ---------------------------------------------------------------------
    def execute(self, name: Any, params: dict[str, Any], wait: bool = False,
                gone: Callable[[], bool] | None = None) -> CommandResult:
        """Validate and run a command; ``wait`` blocks on an async one unless ``gone()``."""
        short, fn, spec, validate = self._lookup(name)
        out_of_band = name in OUT_OF_BAND
        with self._lock:
            running = self._running_locked()
            busy = running.command_name if running else self._busy
            if busy and not out_of_band:
                raise errors.AgentIsBusy(busy)
            kwargs = self._validate(validate, params)
            result = CommandResult(short, spec.is_async)
            if spec.is_async:
                self._store(result)
            elif not (busy and out_of_band):
                self._busy = short
        if spec.is_async:
            threading.Thread(target=self._run_async, args=(result, fn, kwargs),
                             name=f"cmd-{short}", daemon=True).start()
            if wait:
                result.wait(gone)
            return result
        try:
            self._call(result, fn, kwargs)
        finally:
            with self._lock:
                if not (busy and out_of_band):
                    self._busy = None
                    self._store(result)
        return result

    def _validate(self, validate: Validator, params: dict[str, Any]) -> dict[str, Any]:
        try:
            return validate(dict(params))
        except errors.AgentError as exc:
            if isinstance(exc, errors.InvalidCommandParamsError):
                raise
            raise errors.InvalidCommandParamsError(exc.details) from exc
        except Exception as exc:  # a validator bug must still be a clean 400
            raise errors.InvalidCommandParamsError(f"{type(exc).__name__}: {exc}") from exc

    def _call(self, result: CommandResult, fn: Callable[..., Any],
              kwargs: dict[str, Any]) -> None:
        try:
            value = fn(result.context, **kwargs)
            status = SUCCEEDED
            error = None
            if isinstance(value, StepOutcome):
                status, error, value = value.status, value.error, value.result
            value = wrap_result(value, result.command_name, result.is_async)
            try:
                json.dumps([value, error])
            except (TypeError, ValueError) as exc:
                # stored as is, it would make every later GET /v1/commands/ fail:
                # the same trap as IPA's raw exceptions
                raise errors.CommandExecutionError(
                    f"{result.command_name} returned a result that cannot be encoded as "
                    f"JSON: {exc}") from exc
        except BaseException as exc:  # noqa: BLE001 - everything becomes a FAILED result
            error = errors.normalise(exc)
            if not isinstance(exc, (errors.AgentError,)):
                # the traceback without the exception's own text, which may quote a payload
                LOG.error("command %s raised %s\n%s", result.command_name, error["details"],
                          "".join(traceback.format_tb(exc.__traceback__)))
            else:
                LOG.error("command %s failed: %s", result.command_name, error["details"])
            result.finish(FAILED, None, error)
        else:
            result.finish(status, value, error)

    def _run_async(self, result: CommandResult, fn: Callable[..., Any],
                   kwargs: dict[str, Any]) -> None:
        self._call(result, fn, kwargs)
        LOG.info("command %s finished: %s", result.command_name, result.status)
        for hook in list(self.on_async_done):
            try:
                hook(result)
            except Exception:  # noqa: BLE001 - a hook must not kill the worker
                LOG.exception("async-done hook failed")

    def _store(self, result: CommandResult) -> None:
        self._results[result.id] = result
        excess = len(self._results) - self.max_results
        if excess > 0:
            # never prune running results nor the newest entry the conductor reads
            for key in [k for k, r in self._results.items() if r.status != RUNNING][:excess]:
                if key != result.id:
                    del self._results[key]

    def cancel(self, command_id: str) -> CommandResult:
        result = self.get(command_id)
        if result.status != RUNNING:
            raise errors.CommandNotRunning(
                f"command {command_id} ({result.command_name}) already ended with "
                f"{result.status}")
        LOG.warning("cancel requested for %s (%s)", result.command_name, command_id)
        result.context.cancel_event.set()
        return result


@dataclasses.dataclass
class StepOutcome:
    """Lets a command end with a status other than SUCCEEDED without raising."""

    status: str
    result: Any = None
    error: dict[str, Any] | None = None
