"""The mount's complete-directory lease (mount/dirs.py), with a fake clock."""

from __future__ import annotations

from dfs.client.cluster import DirStamp
from dfs.core.namespace import Attr
from mount.dirs import CompleteDirs


def dattr(ino: int, ctime_ns: int) -> Attr:
    return Attr(ino, 0o40755, 2, 0, 0, 0, 4096, 0, ctime_ns, ctime_ns, ctime_ns, 0)


def stamp(ino: int, before: int, after: int) -> DirStamp:
    return DirStamp(ino, before, dattr(ino, after))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_new_directory_is_known_empty_until_the_lease_ends() -> None:
    clock = Clock()
    dirs = CompleteDirs(1.0, clock=clock)
    assert not dirs.absent(7, b"x")
    dirs.made(dattr(7, 10))
    assert dirs.absent(7, b"x")
    clock.now += 1.5
    assert not dirs.absent(7, b"x")


def test_own_changes_renew_and_track_names() -> None:
    clock = Clock()
    dirs = CompleteDirs(1.0, clock=clock)
    dirs.made(dattr(7, 10))
    for i in range(5):
        clock.now += 0.6  # each own change proves nobody else changed it, renewing the lease
        dirs.changed([stamp(7, 10 + i, 11 + i)], added=[(7, f"f{i}".encode(), 100 + i)])
    assert not dirs.absent(7, b"f3")  # our own names are asked of the daemon
    assert dirs.absent(7, b"other")
    dirs.changed([stamp(7, 15, 16)], removed=[(7, b"f3")])
    assert dirs.absent(7, b"f3")


def test_foreign_change_drops_knowledge() -> None:
    clock = Clock()
    dirs = CompleteDirs(1.0, clock=clock)
    dirs.made(dattr(7, 10))
    # Someone else changed the directory (mtime 12) before our change (12 -> 13).
    dirs.changed([stamp(7, 12, 13)], added=[(7, b"mine", 99)])
    assert not dirs.absent(7, b"theirs")


def test_expired_lease_is_renewed_only_by_proof() -> None:
    clock = Clock()
    dirs = CompleteDirs(1.0, clock=clock)
    dirs.made(dattr(7, 10))
    clock.now += 2
    assert not dirs.absent(7, b"x")  # unproven for too long: ask the daemon
    assert dirs.confirm(7, 10)  # the daemon's answer shows the same ctime
    assert dirs.absent(7, b"x")
    clock.now += 2
    assert dirs.attr(7) is None  # not proven lately
    dirs.changed([stamp(7, 10, 11)])  # our own change, nobody else's in between
    assert dirs.absent(7, b"x")
    attr = dirs.attr(7)
    assert attr is not None
    assert attr.ctime_ns == 11
    assert not dirs.confirm(7, 12)  # a ctime we did not make: someone else changed it
    assert not dirs.absent(7, b"x")
    assert len(dirs) == 0


def test_bounded_and_disabled() -> None:
    dirs = CompleteDirs(1.0, max_dirs=3, clock=Clock())
    for ino in range(10):
        dirs.made(dattr(ino, 1))
    assert len(dirs) == 3
    assert dirs.absent(9, b"x")
    assert not dirs.absent(0, b"x")
    off = CompleteDirs(0.0, clock=Clock())
    off.made(dattr(1, 1))
    assert not off.absent(1, b"x")


def test_the_lease_is_asked_at_each_use() -> None:
    # While the daemon's notices are complete the lease is the kernel's long one; once they stop
    # being complete, what was proven under the long lease is held to the short one at once.
    clock = Clock()
    lease = [300.0]
    dirs = CompleteDirs(lambda: lease[0], clock=clock)
    dirs.made(dattr(7, 10))
    clock.now += 60
    assert dirs.absent(7, b"x") and dirs.attr(7) is not None
    lease[0] = 1.0
    assert not dirs.absent(7, b"x") and dirs.attr(7) is None
    assert dirs.confirm(7, 10)  # a lookup's answer proves it again, for the short lease
    assert dirs.absent(7, b"x")
    clock.now += 1.5
    assert not dirs.absent(7, b"x")


def test_a_directory_with_more_names_than_the_bound_is_asked_about_instead() -> None:
    """The names known of one directory are bounded: past ``max_names`` its knowledge goes
    and lookups ask the daemon (kept, they grew with the directory without limit)."""
    clock = Clock()
    dirs = CompleteDirs(1.0, max_names=100, clock=clock)
    dirs.made(dattr(7, 10))
    for i in range(100):
        dirs.changed([stamp(7, 10 + i, 11 + i)], added=[(7, b"f%d" % i, 1000 + i)])
    assert dirs.absent(7, b"other") and dirs.entry(7, b"f5") == 1005
    dirs.changed([stamp(7, 110, 111)], added=[(7, b"f100", 1100)])
    assert len(dirs) == 0
    assert not dirs.absent(7, b"other") and dirs.entry(7, b"f5") is None
