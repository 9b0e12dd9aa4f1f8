"""daemon.cluster.hints.HintQueue: order, dedup, durability across reopen, threads, settings."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.cluster.hints import HintQueue
from dfs.core.errors import InternalError, InvalidArgument


def cid(n: int) -> bytes:
    return n.to_bytes(32, "big")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "hints.db"


@pytest.fixture
def hints(db_path: Path) -> Iterator[HintQueue]:
    queue = HintQueue(db_path)
    yield queue
    queue.close()


def test_add_peek_remove(hints: HintQueue) -> None:
    assert hints.count() == 0
    assert hints.targets() == {}
    assert hints.peek("n1", 10) == []
    hints.add("n1", [cid(5), cid(1), cid(3)])
    hints.add("n2", [cid(1)])
    hints.add("n1", [cid(4)])
    assert hints.peek("n1", 10) == [cid(5), cid(1), cid(3), cid(4)]  # oldest first, not sorted
    assert hints.peek("n1", 2) == [cid(5), cid(1)]
    assert hints.peek("n1", 0) == []
    assert hints.peek("n1", 2) == [cid(5), cid(1)]  # peek leaves them queued
    assert hints.targets() == {"n1": 4, "n2": 1}
    assert hints.count() == 5

    hints.remove("n1", [cid(1), cid(5), cid(99)])  # unknown ids are ignored
    assert hints.peek("n1", 10) == [cid(3), cid(4)]
    assert hints.peek("n2", 10) == [cid(1)]  # per target: n2's copy of 1 is still owed
    hints.remove("n3", [cid(3)])
    hints.remove("n1", [])
    assert hints.count() == 3


def test_duplicates_are_ignored_and_keep_their_place(hints: HintQueue) -> None:
    hints.add("n1", [cid(1), cid(2)])
    hints.add("n1", [cid(3), cid(1), cid(3)])
    assert hints.peek("n1", 10) == [cid(1), cid(2), cid(3)]
    assert hints.targets() == {"n1": 3}


def test_new_hints_go_after_removed_ones(hints: HintQueue) -> None:
    # A reused rowid must never put a new hint before older ones.
    hints.add("n1", [cid(1), cid(2), cid(3)])
    hints.remove("n1", [cid(3)])
    hints.add("n1", [cid(4)])
    hints.remove("n1", [cid(1)])
    hints.add("n1", [cid(1)])
    assert hints.peek("n1", 10) == [cid(2), cid(4), cid(1)]


def test_drop_target(hints: HintQueue) -> None:
    hints.add("n1", [cid(i) for i in range(5)])
    hints.add("n2", [cid(1)])
    assert hints.drop_target("n1") == 5
    assert hints.drop_target("n1") == 0
    assert hints.targets() == {"n2": 1}
    assert hints.count() == 1


def test_survives_close_and_reopen(db_path: Path) -> None:
    first = HintQueue(db_path)
    first.add("n1", [cid(3), cid(1)])
    first.add("n2", [cid(2)])
    first.remove("n2", [cid(2)])
    first.add("n2", [cid(7)])
    first.close()
    first.close()  # idempotent
    with HintQueue(db_path) as again:
        assert again.targets() == {"n1": 2, "n2": 1}
        assert again.peek("n1", 10) == [cid(3), cid(1)]
        again.add("n1", [cid(1), cid(9)])
        assert again.peek("n1", 10) == [cid(3), cid(1), cid(9)]
    with pytest.raises(InternalError):
        again.count()  # closed


def test_durable_settings(hints: HintQueue, db_path: Path) -> None:
    assert hints._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert hints._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    hints.add("n1", [cid(1)])
    # Committed when add returned: another connection sees it at once.
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("SELECT COUNT(*) FROM hints").fetchone()[0] == 1
    finally:
        other.close()


def test_bad_arguments(hints: HintQueue) -> None:
    with pytest.raises(InvalidArgument):
        hints.add("", [cid(1)])
    with pytest.raises(InvalidArgument):
        hints.add("n1", [b""])
    with pytest.raises(InvalidArgument):
        hints.add("n1", [cid(1), "not bytes"])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument):
        hints.peek("n1", -1)
    assert hints.count() == 0  # a bad batch adds nothing
    hints.add("n1", [])
    assert hints.count() == 0


def test_threads_share_one_queue(hints: HintQueue) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(50):
                hints.add(f"n{t % 2}", [cid((t + 1) * 1000 + i), cid(i)])
                if i % 5 == 0:
                    hints.remove(f"n{t % 2}", [cid((t + 1) * 1000 + i)])
                hints.peek(f"n{t % 2}", 3)
                hints.targets()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # Per target: 4 threads x 40 kept own ids, plus the 50 shared ids once each.
    assert hints.targets() == {"n0": 4 * 40 + 50, "n1": 4 * 40 + 50}
