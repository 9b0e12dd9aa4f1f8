"""The mount's complete-directory lease (mount/dirs.py), with a fake clock."""

from __future__ import annotations

from dfs.client import DirStamp
from mount.dirs import CompleteDirs


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_new_directory_is_known_empty_until_the_lease_ends() -> None:
    clock = Clock()
    dirs = CompleteDirs(1.0, clock=clock)
    assert not dirs.absent(7, b"x")
    dirs.made(7, mtime_ns=10)
    assert dirs.absent(7, b"x")
    clock.now += 1.5
    assert not dirs.absent(7, b"x")
    assert len(dirs) == 0


def test_own_changes_renew_and_track_names() -> None:
    clock = Clock()
    dirs = CompleteDirs(1.0, clock=clock)
    dirs.made(7, mtime_ns=10)
    for i in range(5):
        clock.now += 0.6  # each own change proves nobody else changed it, renewing the lease
        dirs.changed([DirStamp(7, 10 + i, 11 + i)], added=[(7, f"f{i}".encode())])
    assert not dirs.absent(7, b"f3")  # our own names are asked of the daemon
    assert dirs.absent(7, b"other")
    dirs.changed([DirStamp(7, 15, 16)], removed=[(7, b"f3")])
    assert dirs.absent(7, b"f3")


def test_foreign_change_drops_knowledge() -> None:
    clock = Clock()
    dirs = CompleteDirs(1.0, clock=clock)
    dirs.made(7, mtime_ns=10)
    # Someone else changed the directory (mtime 12) before our change (12 -> 13).
    dirs.changed([DirStamp(7, 12, 13)], added=[(7, b"mine")])
    assert not dirs.absent(7, b"theirs")


def test_expired_lease_is_not_renewed() -> None:
    clock = Clock()
    dirs = CompleteDirs(1.0, clock=clock)
    dirs.made(7, mtime_ns=10)
    clock.now += 2
    dirs.changed([DirStamp(7, 10, 11)])
    assert not dirs.absent(7, b"x")


def test_bounded_and_disabled() -> None:
    dirs = CompleteDirs(1.0, max_dirs=3, clock=Clock())
    for ino in range(10):
        dirs.made(ino, mtime_ns=1)
    assert len(dirs) == 3
    assert dirs.absent(9, b"x")
    assert not dirs.absent(0, b"x")
    off = CompleteDirs(0.0, clock=Clock())
    off.made(1, mtime_ns=1)
    assert not off.absent(1, b"x")
