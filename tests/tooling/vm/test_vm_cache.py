import os

import pytest
from vm import cache


def test_tree_digest_follows_content_and_ignores_bytecode(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    first = cache.tree_digest(["pkg"], root=str(tmp_path))
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"other junk")
    assert cache.tree_digest(["pkg"], root=str(tmp_path)) == first
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert cache.tree_digest(["pkg"], root=str(tmp_path)) != first
    os.chmod(tmp_path / "pkg" / "a.py", 0o755)
    assert cache.tree_digest(["pkg"], root=str(tmp_path)) != first


def test_missing_inputs_and_extra_parts_count():
    assert cache.tree_digest(["no-such-dir"], extra=["a"]) != cache.tree_digest(
        ["no-such-dir"], extra=["b"])
    assert cache.digest("ab", "c") != cache.digest("a", "bc")


def test_building_publishes_only_finished_builds(tmp_path):
    final = tmp_path / "out" / "thing"
    with pytest.raises(RuntimeError):
        with cache.building(str(final)) as scratch:
            open(os.path.join(scratch, "half"), "w").close()
            raise RuntimeError("build broke")
    assert not final.exists()
    assert os.listdir(tmp_path / "out") == []
    with cache.building(str(final)) as scratch:
        open(os.path.join(scratch, "done"), "w").close()
    assert (final / "done").exists()


def test_prune_keeps_the_newest_and_skips_builds_in_progress(tmp_path):
    for i, name in enumerate(["a", "b", "c", ".in-progress"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    cache.prune(str(tmp_path), "", keep=1, protect=str(tmp_path / "a"))
    assert sorted(os.listdir(tmp_path)) == [".in-progress", "a", "c"]
