"""rescue.finalize_rescue with the real useradd/usermod on a throw-away root tree."""

from __future__ import annotations

import os
import shutil
import warnings

import pytest

from agent import config
from agent.commands import CommandRunner
from agent.errors import InvalidCommandParamsError
from agent.extensions.rescue import PASSWORD_FILE, SUDOERS_FILE, RescueExtension
from agent.state import AgentState

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                                reason="needs root and useradd")
HASH = "$6$saltsalt$" + "A" * 86


@pytest.fixture
def root(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\nusers:x:100:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\nusers:*::\n")
    (tmp_path / "home").mkdir()
    return tmp_path


def make(root, ramdisk="true"):
    state = AgentState(config.load(read_proc=False, env={}, flags={"ramdisk": ramdisk}))
    ext = RescueExtension(state)
    ext.root = str(root)
    return CommandRunner([ext]), state


def shadow_entry(root):
    for line in (root / "etc" / "shadow").read_text().splitlines():
        if line.startswith("rescue:"):
            return line.split(":")[1]
    return None


def test_hashed_password_creates_the_user_then_the_agent_stops(root):
    runner, state = make(root)
    result = runner.execute("rescue.finalize_rescue",
                            {"rescue_password": HASH, "hashed": True}, wait=True).to_dict()
    assert result["command_status"] == "SUCCEEDED" and result["command_result"] is None
    assert result["command_name"] == "finalize_rescue"
    assert shadow_entry(root) == HASH
    assert (root / PASSWORD_FILE).read_text() == HASH + "\n"
    assert oct((root / PASSWORD_FILE).stat().st_mode & 0o777) == "0o600"
    assert (root / SUDOERS_FILE).read_text() == "rescue ALL=(ALL) NOPASSWD: ALL\n"
    assert (root / "home" / "rescue").is_dir()
    assert state.stopped.wait(10), "the API and heartbeats stop after the answer"


def test_existing_user_gets_the_new_hash(root):
    runner, _ = make(root)
    runner.execute("rescue.finalize_rescue", {"rescue_password": HASH, "hashed": True},
                   wait=True)
    other = "$5$pepper$" + "b" * 43
    result = runner.execute("rescue.finalize_rescue",
                            {"rescue_password": other, "hashed": True}, wait=True)
    assert result.status == "SUCCEEDED" and shadow_entry(root) == other


def test_legacy_plaintext_is_hashed_by_the_agent(root):
    runner, _ = make(root)
    runner.execute("rescue.finalize_rescue", {"rescue_password": "s3cret"}, wait=True)
    stored = shadow_entry(root)
    assert stored.startswith("$6$") and "s3cret" not in stored
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    assert crypt.crypt("s3cret", stored) == stored


@pytest.mark.parametrize("params,text", [
    ({}, "'rescue_password' must be a non-empty string"),
    ({"rescue_password": ""}, "'rescue_password' must be a non-empty string"),
    ({"rescue_password": "plain", "hashed": True}, "not a crypt(3) hash"),
    ({"rescue_password": HASH, "hashed": "maybe"}, "'hashed' must be a boolean"),
])
def test_bad_parameters_are_a_400_and_write_nothing(root, params, text):
    runner, _ = make(root)
    with pytest.raises(InvalidCommandParamsError) as err:
        runner.execute("rescue.finalize_rescue", params, wait=True)
    assert text in err.value.details
    assert not (root / PASSWORD_FILE).exists()


def test_refused_outside_a_ramdisk(root):
    runner, state = make(root, ramdisk="false")
    result = runner.execute("rescue.finalize_rescue",
                            {"rescue_password": HASH, "hashed": True}, wait=True).to_dict()
    assert result["command_status"] == "FAILED"
    assert result["command_error"]["type"] == "PowerActionRefused"
    assert shadow_entry(root) is None and not (root / PASSWORD_FILE).exists()
    assert not state.stopped.is_set()
