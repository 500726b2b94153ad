"""tools/vm-deploy --arch arm64: the options it takes and the firmware's variable store."""

import os

import pytest
from vm import arm, cli, qemu


def test_arm64_is_a_smoke_run_in_1_gib():
    args = cli.parse_args(["--arch", "arm64"])
    assert args.arch == "arm64" and args.memory == 1024


@pytest.mark.parametrize("wrong", [["--firmware", "uefi"], ["--negative", "bad-checksum"],
                                   ["--raid", "1"], ["--ironic"]])
def test_arm64_refuses_what_only_the_amd64_deploy_does(wrong, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--arch", "arm64", *wrong])
    assert "error:" in capsys.readouterr().err


def test_variable_store_is_a_sparse_copy_of_the_template(tmp_path, monkeypatch):
    template = tmp_path / "VARS.fd"
    data = bytearray(8 << 20)
    data[(3 << 20) + 5] = 0x42              # one block that is not all zeros
    template.write_bytes(bytes(data))
    monkeypatch.setattr(qemu, "aavmf_files", lambda: ("/fw/CODE.fd", str(template)))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = arm.variable_store(str(run_dir))
    assert open(path, "rb").read() == bytes(data)
    assert os.stat(path).st_blocks * 512 < 2 << 20      # only the written block
