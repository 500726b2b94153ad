"""Settings that are parsed but not acted on say so: in README, in the log, and in the code."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re

import pytest

from agent import config
from agent.runtime import Runtime
from tests.scripts import load_script

AGENT = pathlib.Path(__file__).resolve().parents[2] / "agent"
# every setting has a reader today; the machinery below is kept for the next one
INERT: set[str] = set()
# a real setting the tests below mark inert, to prove the marking still reaches the operator
MARKED = "inject_files_priority"


@pytest.fixture
def one_inert(monkeypatch):
    marked = [dataclasses.replace(s, inert=True) if s.name == MARKED else s
              for s in config.SETTINGS]
    monkeypatch.setattr(config, "SETTINGS", marked)
    return {MARKED}


def _reads_of(name: str, source: str) -> int:
    # attribute access (cfg.name) or a quoted key (sources["name"], getattr(..., "name"))
    return len(re.findall(rf"\.{name}\b|[\"']{name}[\"']", source))


def _agent_source() -> str:
    return "\n".join(p.read_text() for p in sorted(AGENT.rglob("*.py")) if p.name != "config.py")


def test_the_inert_settings_are_the_ones_no_code_reads() -> None:
    source = _agent_source()
    unread = {s.name for s in config.SETTINGS if _reads_of(s.name, source) == 0}
    assert {s.name for s in config.SETTINGS if s.inert} == INERT
    # a setting that gains a reader must lose its "not used yet" mark, and the reverse
    assert unread == INERT


def test_only_settings_a_source_gave_are_reported(one_inert) -> None:
    cfg = config.load(env={"DEPLOY_AGENT_INJECT_FILES_PRIORITY": "50"}, read_proc=False,
                      cmdline="ipa-ntp-server=192.0.2.1 ipa-debug=1")
    assert cfg.inert_settings_given() == ["inject_files_priority"]
    assert config.load(env={}, read_proc=False).inert_settings_given() == []


def test_the_readme_table_marks_each_inert_setting(one_inert) -> None:
    table = load_script("gen_config_table", "tools", "gen-config-table").render()
    for name in one_inert:
        row = table.split(f"* - ``{name}``", 1)[1].split("* - ", 1)[0]
        assert "accepted, not used yet" in row
    assert table.count("accepted, not used yet") == len(one_inert)


@pytest.mark.parametrize("cmdline, warned", [
    ("ipa-ntp-server=192.0.2.1 ipa-inject-files-priority=50",
     "inject_files_priority"),
    ("ipa-debug=1", None),
])
def test_start_logs_one_warning_naming_them(caplog, one_inert, cmdline: str,
                                           warned: str | None) -> None:
    cfg = config.load(env={}, read_proc=False, cmdline=cmdline, flags={"standalone": True})
    with caplog.at_level(logging.WARNING, logger="agent.runtime"):
        Runtime(cfg)
    lines = [r.getMessage() for r in caplog.records if "not used yet" in r.getMessage()]
    if warned is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].endswith(warned)
