"""Re-marking chunks' replication factors after a policy change (daemon/meta/remark.py), on
both metadata engines: bounded steps, progress that survives a reopen, raise and lower,
nested overrides and shared chunks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.meta import MetaStore
from dfs.core.namespace import ROOT_INO, BlockRef
from tests.metastores import Clock, cid, open_meta

pytestmark = pytest.mark.usefixtures("meta_engine")

BS = 4096
SESSION = "s1"


def open_store(path: Path, clock: Clock) -> MetaStore:
    return open_meta(path / "meta.db", block_size=BS, now_ns=clock)


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[MetaStore]:
    s = open_store(tmp_path, clock)
    yield s
    s.close()


def write_file(
    store: MetaStore, chunks: set[bytes], parent: int, name: bytes, ids: list[bytes], replicas: int | None
) -> int:
    ino = store.create(parent, name, 0o644, 0, 0, SESSION).ino
    store.release(ino, SESSION)
    chunks.update(ids)
    refs = [BlockRef(i, c, BS, 100) for i, c in enumerate(ids)]
    store.commit_write(
        ino,
        size=BS * len(ids),
        mtime_ns=5,
        blocks=refs,
        inline=None,
        chunk_exists=chunks.__contains__,
        replicas=replicas,
    )
    return ino


def run_all(store: MetaStore, max_chunks: int = 3) -> int:
    """Steps until no job is left; returns how many steps it took (bounded by a generous limit)."""
    for steps in range(1, 10_000):
        if store.remark_step(max_chunks)["jobs"] == 0:
            return steps
    raise AssertionError("re-marking never finished")


def test_raise_then_lower_a_volume_resumes_after_reopen(
    tmp_path: Path, clock: Clock, chunks: set[bytes]
) -> None:
    store = open_store(tmp_path, clock)
    vol = store.create_volume("vol", {"replication": 1}, mode=0o755, uid=0, gid=0).ino
    sub = store.mkdir(vol, b"sub", 0o755, 0, 0).ino
    ids = [cid(n) for n in range(12)]
    write_file(store, chunks, vol, b"a", ids[:5], 1)
    write_file(store, chunks, sub, b"b", ids[5:], 1)
    assert store.remark_progress()["jobs"] == 0
    assert set(store.chunk_replicas(ids)) == {1}

    store.update_volume("vol", {"replication": 3})
    assert store.remark_progress() == {"jobs": 1, "counting": 1, "total": 0, "marked": 0}
    store.remark_step(3)  # counting: both directories
    assert store.remark_progress() == {"jobs": 1, "counting": 0, "total": 12, "marked": 0}
    first = store.remark_step(3)
    assert first["marked"] >= 3 and first["changed"] >= 3
    progress = store.remark_progress()
    assert 0 < progress["marked"] < 12
    store.close()

    store = open_store(tmp_path, clock)  # a restart continues where the last step stopped
    try:
        assert store.remark_progress()["marked"] == progress["marked"]
        run_all(store)
        assert store.chunk_replicas(ids) == [3] * 12
        assert store.remark_progress()["jobs"] == 0

        store.update_volume("vol", {"replication": 2})
        run_all(store)
        assert store.chunk_replicas(ids) == [2] * 12
        assert store.fsck(chunks.__contains__, repair=False) == []
    finally:
        store.close()


def test_unchanged_factor_queues_nothing(store: MetaStore) -> None:
    store.create_volume("vol", {"replication": 2}, mode=0o755, uid=0, gid=0)
    store.update_volume("vol", {"replication": 2, "consistency": "strong"})
    assert store.remark_progress()["jobs"] == 0


def test_directory_xattr_overrides_and_removal(store: MetaStore, chunks: set[bytes]) -> None:
    vol = store.create_volume("vol", {"replication": 2}, mode=0o755, uid=0, gid=0).ino
    d = store.mkdir(vol, b"d", 0o755, 0, 0).ino
    deep = store.mkdir(d, b"deep", 0o755, 0, 0).ino
    store.setxattr(deep, b"user.dfs.replicas", b"1")
    run_all(store)
    a = [cid(1), cid(2)]
    b = [cid(3)]
    write_file(store, chunks, d, b"a", a, 2)
    write_file(store, chunks, deep, b"b", b, 1)

    store.setxattr(d, b"user.dfs.replicas", b"4")
    run_all(store)
    # deep/ keeps its own factor: the nearest xattr wins, as MetaStore.policy resolves it.
    assert store.chunk_replicas(a + b) == [4, 4, 1]

    store.removexattr(deep, b"user.dfs.replicas")
    run_all(store)
    assert store.chunk_replicas(b) == [4]  # inherited from d/ now

    store.removexattr(d, b"user.dfs.replicas")
    run_all(store)
    assert store.chunk_replicas(a + b) == [2, 2, 2]  # the volume's again

    store.update_volume("vol", {})  # unset: the cluster default (NULL: repair applies it)
    run_all(store)
    assert store.chunk_replicas(a + b) == [None, None, None]


def test_shared_chunk_keeps_the_higher_factor(store: MetaStore, chunks: set[bytes]) -> None:
    low = store.create_volume("low", {"replication": 3}, mode=0o755, uid=0, gid=0).ino
    high = store.create_volume("high", {"replication": 3}, mode=0o755, uid=0, gid=0).ino
    shared, own = cid(7), cid(8)
    write_file(store, chunks, low, b"f", [shared, own], 3)
    write_file(store, chunks, high, b"g", [shared], 3)
    store.update_volume("low", {"replication": 1})
    run_all(store)
    # The chunk "high" references too keeps 3 (it is only ever raised); low's own chunk drops.
    assert store.chunk_replicas([shared, own]) == [3, 1]
    store.update_volume("high", {"replication": 5})
    run_all(store)
    assert store.chunk_replicas([shared, own]) == [5, 1]


def test_removed_subtree_drops_its_job(store: MetaStore, chunks: set[bytes]) -> None:
    d = store.mkdir(ROOT_INO, b"d", 0o755, 0, 0).ino
    store.setxattr(d, b"user.dfs.replicas", b"3")
    store.rmdir(ROOT_INO, b"d")
    assert store.remark_progress()["jobs"] == 1
    run_all(store)
    assert store.remark_progress()["jobs"] == 0


def test_file_xattr_marks_that_file(store: MetaStore, chunks: set[bytes]) -> None:
    f = write_file(store, chunks, ROOT_INO, b"f", [cid(1), cid(2)], None)
    store.setxattr(f, b"user.dfs.replicas", b"3")
    run_all(store)
    assert store.chunk_replicas([cid(1), cid(2)]) == [3, 3]


def test_too_many_jobs_collapse_into_one_over_everything(
    store: MetaStore, chunks: set[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon.meta import remark

    monkeypatch.setattr(remark, "MAX_JOBS", 3)
    vol = store.create_volume("vol", {"replication": 2}, mode=0o755, uid=0, gid=0).ino
    dirs = [store.mkdir(vol, f"d{i}".encode(), 0o755, 0, 0).ino for i in range(4)]
    files = [write_file(store, chunks, d, b"f", [cid(10 + i)], 2) for i, d in enumerate(dirs)]
    assert files
    for i, d in enumerate(dirs):
        store.setxattr(d, b"user.dfs.replicas", str(3 + i % 2).encode())
    assert store.remark_progress()["jobs"] == 1  # the fourth collapsed them into one
    run_all(store)
    assert store.chunk_replicas([cid(10 + i) for i in range(4)]) == [3, 4, 3, 4]
