"""The module compression hook: every .ko becomes an equivalent .ko.xz."""

from __future__ import annotations

import lzma
import os

from tests.scripts import load_script

compress = load_script("ramdisk_compress_modules", "elements", "deploy-agent-ramdisk",
                       "post-install.d", "99-deploy-agent-ramdisk-compress-modules")


def test_each_module_is_replaced_by_an_xz_holding_the_same_bytes(tmp_path):
    root = tmp_path / "6.1.0-57-amd64"
    modules = {"kernel/drivers/net/virtio_net.ko": os.urandom(4096) + b"\0" * 60000,
               "kernel/fs/xfs/xfs.ko": b"ELF" * 30000}
    for rel, data in modules.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, 0o644)
        os.utime(path, (1_700_000_000, 1_700_000_000))
    (root / "modules.dep").write_text("kernel/fs/xfs/xfs.ko:\n")

    count, before, after = compress.compress_tree(str(root), workers=2)

    assert count == 2 and before == sum(len(d) for d in modules.values()) and after < before
    for rel, data in modules.items():
        assert not (root / rel).exists()
        packed = root / (rel + ".xz")
        # the check the kernel's xz decoder accepts
        assert packed.read_bytes()[6:8] == b"\x00\x01"
        assert lzma.decompress(packed.read_bytes()) == data
        assert os.stat(packed).st_mtime == 1_700_000_000
        assert os.stat(packed).st_mode & 0o777 == 0o644
    assert (root / "modules.dep").read_text() == "kernel/fs/xfs/xfs.ko:\n"   # depmod's job


def test_none_leaves_the_tree_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIB_DEPLOY_AGENT_MODULE_COMPRESSION", "none")
    assert compress.main(["99", str(tmp_path)]) == 0
    assert "uncompressed" in capsys.readouterr().out
