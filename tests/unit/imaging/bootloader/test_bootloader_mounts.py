"""mountinfo parsing and unmount order, on a mountinfo captured from this kind of machine."""

from __future__ import annotations

import os

from agent.disk import mounts

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "bootloader",
                       "mountinfo_stacked.txt")


def test_mount_points_unescape_spaces():
    points = mounts.mount_points(FIXTURE)
    assert "/tmp/bl cap" in points and "/tmp/bl cap/inner" in points
    assert points[:3] == ["/proc", "/sys", "/dev"]


def test_mounted_under_is_newest_first_with_stacked_mounts_kept():
    # 44 sits on top of 42 and hides 43: it must go first, then 43, then 42
    assert mounts.mounted_under("/tmp/bl cap", FIXTURE) == \
        ["/tmp/bl cap", "/tmp/bl cap/inner", "/tmp/bl cap"]


def test_mounted_under_matches_whole_path_components():
    assert mounts.mounted_under("/tmp/bl", FIXTURE) == []
    assert mounts.mounted_under("/dev", FIXTURE) == \
        ["/dev/shm", "/dev/pts", "/dev/pts", "/dev/shm", "/dev"]
    assert mounts.mounted_under("/sys/fs/cgroup/blkio", FIXTURE) == ["/sys/fs/cgroup/blkio"]


def test_unescape_backslash_tab_and_newline():
    assert mounts._unescape(r"/a\134b\011c\012d") == "/a\\b\tc\nd"
