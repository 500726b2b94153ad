"""The command line: serve's config errors, call against a real local server, tools."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pytest

from agent import __version__, api, cli, config, tools
from agent.commands import CommandRunner
from agent.driver.client import AgentClient
from agent.extensions import load_extensions
from agent.server import AgentServer
from agent.state import AgentState

PLUGIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "plugins", "testext")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(config.ENV_PREFIX):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def agent_url():
    """A real agent API on 127.0.0.1 (in this process), token 'tok'."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(PLUGIN_DIR)
        cfg = config.load(env={}, read_proc=False,
                          flags={"standalone": True, "agent_token": "tok", "ramdisk": "false"})
        state = AgentState(cfg)
        runner = CommandRunner(load_extensions(state, ["testing", "standby"]))
    server = AgentServer(api.create_app(state, runner), "127.0.0.1", 0, threads=4)
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"deploy-agent {__version__}"


def test_a_subcommand_is_required(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "serve" in capsys.readouterr().err


def test_parse_params() -> None:
    params = cli.parse_params(["a=1", "b=true", "c=hello", 'd={"x": [1]}', "e=x=y", "f="])
    assert params == {"a": 1, "b": True, "c": "hello", "d": {"x": [1]}, "e": "x=y", "f": ""}


def test_parse_params_refuses_a_bare_word() -> None:
    with pytest.raises(SystemExit, match="parameter 'oops' is not key=value"):
        cli.parse_params(["oops"])


@pytest.mark.parametrize("argv, words", [
    (["--port", "70000"], ["listen_port", "flag --listen-port", "between 1 and 65535"]),
    (["--port", "http"], ["listen_port", "expected an integer"]),
    (["--tls-cert", "/nonexistent.crt"], ["tls_cert_file and tls_key_file"]),
])
def test_serve_refuses_bad_values(tmp_path, capsys, argv: list[str], words: list[str]) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("")
    assert cli.main(["serve", "--cmdline", str(cmdline), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deploy-agent: invalid value") or "must be given together" in err
    for word in words:
        assert word in err


def test_serve_refuses_a_bad_kernel_parameter(tmp_path, capsys) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("ipa-insecure=perhaps ipa-debug=1\n")
    assert cli.main(["serve", "--cmdline", str(cmdline)]) == 2
    err = capsys.readouterr().err
    assert "insecure" in err and "kernel parameter ipa-insecure" in err
    assert "1/0, true/false, yes/no, on/off" in err


def test_serve_refuses_a_bad_environment_value(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DEPLOY_AGENT_RAMDISK", "maybe")
    assert cli.main(["serve", "--cmdline", "/dev/null"]) == 2
    assert "environment DEPLOY_AGENT_RAMDISK" in capsys.readouterr().err


def test_call_sync_command(agent_url: str, capsys) -> None:
    rc = cli.main(["call", "--agent", agent_url, "--token", "tok", "testing.echo", "value=hi"])
    out = capsys.readouterr().out
    assert rc == 0
    result = json.loads(out)
    assert result["command_status"] == "SUCCEEDED"
    assert result["command_result"] == {"echoed": "hi"}


def test_call_async_command_shows_plain_progress_lines(agent_url: str, capsys) -> None:
    rc = cli.main(["call", "--agent", agent_url, "--token", "tok", "testing.slow",
                   "steps=40", "delay=0.02"])
    captured = capsys.readouterr()
    assert rc == 0
    assert json.loads(captured.out)["command_result"] == {"result": "slow: counted to 40"}
    lines = captured.err.splitlines()
    assert lines, "no progress shown"
    assert all(line.startswith("counting:") for line in lines)
    assert "\r" not in captured.err
    assert lines[-1].startswith("counting: 100.0% 40.0/40.0 steps")


def test_call_no_wait_returns_running(agent_url: str, capsys) -> None:
    rc = cli.main(["call", "--agent", agent_url, "--token", "tok", "--no-wait",
                   "testing.slow", "steps=5", "delay=0.01"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["command_status"] == "RUNNING"
    final = AgentClient(agent_url, token="tok").wait(result, poll=0.05)
    assert final["command_status"] == "SUCCEEDED"


def test_call_failed_command_prints_the_result_and_exits_1(agent_url: str, capsys) -> None:
    rc = cli.main(["call", "--agent", agent_url, "--token", "tok", "standby.power_off"])
    assert rc == 1
    result = json.loads(capsys.readouterr().out)
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["type"] == "PowerActionRefused"


@pytest.mark.parametrize("argv, words", [
    (["--token", "wrong", "standby.sync"], ["HTTP 401", "Token invalid"]),
    (["--token", "tok", "nope.sync"], ["HTTP 404", "Extension with id nope not found"]),
    (["--token", "tok", "testing.echo"], ["HTTP 400", "'value' is required"]),
])
def test_call_api_errors_exit_2_with_the_agent_message(agent_url, capsys, argv, words) -> None:
    assert cli.main(["call", "--agent", agent_url, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for word in words:
        assert word in err


def test_call_unreachable_agent_exits_2(capsys) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]     # bound but not listening: connection refused
        assert cli.main(["call", "--agent", f"http://127.0.0.1:{port}", "standby.sync"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_make_client_verify_options() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["call", "--ca", "insecure", "x.y"])
    assert cli.make_client(args).session.verify is False
    args = parser.parse_args(["call", "--ca", "/etc/agent.crt", "x.y"])
    assert cli.make_client(args).session.verify == "/etc/agent.crt"
    args = parser.parse_args(["call", "x.y"])
    client = cli.make_client(args)
    assert client.session.verify is True
    assert client.url == "http://127.0.0.1:9999"


def snapshot(**kw: Any) -> dict[str, Any]:
    base = {"phase": "write", "done": 0, "total": None, "unit": "bytes", "rate": None,
            "eta_s": None}
    base.update(kw)
    return base


def test_progress_printer_plain_lines_skip_repeats() -> None:
    out = io.StringIO()
    printer = cli.ProgressPrinter(out)
    printer(snapshot(done=1 << 20, total=4 << 20, rate=float(1 << 20), eta_s=3.0))
    printer(snapshot(done=1 << 20, total=4 << 20, rate=float(1 << 20), eta_s=3.0))
    printer(snapshot(done=3 << 20))
    printer.close()
    assert out.getvalue().splitlines() == [
        "write:  25.0% 1.0/4.0 MiB 1.0 MiB/s eta 3s",
        "write: 3.0 MiB",
    ]


def test_progress_printer_bar_on_a_tty() -> None:
    out = TTY()
    printer = cli.ProgressPrinter(out)
    printer(snapshot(phase="erase", done=5, total=10, unit="disks"))
    printer.close()
    text = out.getvalue()
    assert text.startswith("\r[" + "#" * 15 + "-" * 15 + "] erase:  50.0% 5.0/10.0 disks")
    assert text.endswith("\x1b[K\n")


def test_tools_lists_every_tool_for_this_architecture(capsys) -> None:
    cli.main(["tools"])
    out = capsys.readouterr().out
    names = tools.tools_for_this_machine()
    assert "sgdisk" in names
    for name in names:
        assert name in out


def test_tools_of_other_architectures_are_not_reported_missing() -> None:
    assert "grub-install" not in tools.tools_for_this_machine("x86_64")
    assert "efibootmgr" not in tools.tools_for_this_machine("ppc64le")
    assert "grub-install" in tools.tools_for_this_machine("ppc64le")
    assert "efibootmgr" in tools.tools_for_this_machine("aarch64")
    assert "grub-install" not in tools.tools_for_this_machine("aarch64")
    assert set(tools.tools_for_this_machine("riscv64")) == set(tools.TOOLS)


def test_tools_exit_1_when_a_required_tool_is_missing(capsys, monkeypatch) -> None:
    real = tools.which
    monkeypatch.setattr(tools, "which", lambda n: None if n == "sgdisk" else real(n))
    assert cli.main(["tools"]) == 1
    captured = capsys.readouterr()
    assert "sgdisk         MISSING" in captured.out
    assert "sgdisk (REQUIRED, Debian package gdisk): missing" in captured.err


@pytest.mark.parametrize("cmdline,ramdisk,waits", [
    ("ipa-api-url=http://192.0.2.1:6385", "true", True),
    ("ipa-inspection-callback-url=http://192.0.2.1:5050/v1/continue", "true", True),
    ("ipa-api-url=http://192.0.2.1:6385", "false", False),     # a workstation's network
    ("", "true", False),                                         # nobody to talk to
])
def test_start_waits_for_an_address_only_in_a_ramdisk_with_a_peer(monkeypatch, cmdline,
                                                                  ramdisk, waits) -> None:
    from agent.hardware import netwait
    seen: list[float] = []
    monkeypatch.setattr(netwait, "wait_for_address", lambda timeout: seen.append(timeout)
                        or True)
    cfg = config.load(env={}, read_proc=False, flags={"ramdisk": ramdisk},
                      cmdline=cmdline + " ipa-network-wait-timeout=7")
    assert cli._wait_for_network(cfg) is (True if waits else None)
    assert seen == ([7.0] if waits else [])
    standalone = config.load(env={}, read_proc=False, cmdline=cmdline,
                             flags={"ramdisk": ramdisk, "standalone": True})
    assert cli._wait_for_network(standalone) is None
