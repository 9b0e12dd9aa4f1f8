"""daemon.chunks.ChunkStore: storage, dedup, corruption, concurrency and a real ENOSPC."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest
import xxhash

from daemon.chunks import ChunkStore, ids_digest
from dfs.core import codec
from dfs.core.errors import ChunkMissing, CorruptChunk, InvalidArgument, NoSpace
from dfs.core.placement import PARTITIONS, partition_of

KEY = b"k" * 32
T = TypeVar("T")


def make(data: bytes, level: int = 1) -> tuple[bytes, bytes]:
    return codec.chunk_id(KEY, data), codec.encode(data, level=level)


def tmp_files(root: Path) -> list[Path]:
    return list((root / "chunks" / "tmp").iterdir())


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return ChunkStore(tmp_path)


def test_put_get_has_delete(store: ChunkStore, tmp_path: Path) -> None:
    cid, blob = make(b"hello world" * 100)
    other, _ = make(b"absent")
    assert store.put(cid, blob) is True
    assert store.get(cid) == blob
    assert codec.decode(store.get(cid)) == b"hello world" * 100
    assert store.exists(cid)
    assert not store.exists(other)
    assert store.has([cid, other, cid]) == [True, False, True]
    assert store.stored_bytes(cid) == len(blob)
    h = cid.hex()
    assert store.path_of(cid) == tmp_path / "chunks" / h[:2] / h[2:4] / h
    assert store.path_of(cid).read_bytes() == blob
    assert store.delete([cid, other]) == 1
    assert not store.exists(cid)
    assert store.delete([cid]) == 0
    with pytest.raises(ChunkMissing):
        store.get(cid)
    assert tmp_files(tmp_path) == []


def test_dedup_does_not_rewrite(store: ChunkStore) -> None:
    cid, blob = make(b"same")
    assert store.put(cid, blob)
    mtime = store.path_of(cid).stat().st_mtime_ns
    assert store.put(cid, blob) is False
    assert store.put(cid, codec.encode(b"same", level=0)) is False
    assert store.path_of(cid).stat().st_mtime_ns == mtime
    assert store.stats()["chunk_count"] == 1


def test_put_rejects_corrupt_blob(store: ChunkStore, tmp_path: Path) -> None:
    cid, blob = make(os.urandom(1000))
    bad = bytearray(blob)
    bad[-1] ^= 0x40
    with pytest.raises(CorruptChunk):
        store.put(cid, bytes(bad))
    with pytest.raises(CorruptChunk):
        store.put(cid, b"garbage")
    assert not store.exists(cid)
    assert store.stats()["chunk_count"] == 0
    assert tmp_files(tmp_path) == []


def assert_index_matches_disk(store: ChunkStore) -> None:
    """The partition index lists exactly the chunk files on disk (walked independently)."""
    by_part: dict[int, list[bytes]] = {}
    for cid in store.iter_ids():
        by_part.setdefault(partition_of(cid), []).append(cid)
    assert store.partition_counts() == {p: len(ids) for p, ids in by_part.items()}
    for p, ids in by_part.items():
        assert store.ids_in_partition(p) == sorted(ids)
    assert store.partition_digests() == {
        p: xxhash.xxh3_64(b"".join(sorted(ids))).digest() for p, ids in by_part.items()
    }


def test_bad_ids_rejected(store: ChunkStore) -> None:
    _, blob = make(b"x")
    for bad in (b"", b"short", b"x" * 33):
        with pytest.raises(InvalidArgument):
            store.put(bad, blob)
        with pytest.raises(InvalidArgument):
            store.get(bad)
        with pytest.raises(InvalidArgument):
            store.exists(bad)


def test_missing(store: ChunkStore) -> None:
    cid, _ = make(b"never stored")
    with pytest.raises(ChunkMissing, match=cid.hex()):
        store.get(cid)
    with pytest.raises(ChunkMissing):
        store.stored_bytes(cid)
    assert store.scrub([cid]) == [cid]


@pytest.mark.parametrize("where", ["payload", "header", "truncate", "empty"])
def test_corruption_on_disk(store: ChunkStore, where: str, caplog: pytest.LogCaptureFixture) -> None:
    cid, blob = make(os.urandom(5000))
    good, good_blob = make(b"fine")
    store.put(cid, blob)
    store.put(good, good_blob)
    path = store.path_of(cid)
    data = bytearray(path.read_bytes())
    if where == "payload":
        data[len(data) // 2] ^= 1
    elif where == "header":
        data[0] ^= 1
    elif where == "truncate":
        del data[-10:]
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="dfs.chunks"), pytest.raises(CorruptChunk) as info:
        store.get(cid)
    assert cid.hex() in info.value.message
    assert str(path) in info.value.message
    assert store.checksum_failures == 1
    warnings = [r for r in caplog.records if r.name == "dfs.chunks" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert cid.hex() in warnings[0].getMessage()
    assert store.scrub([good, cid]) == [cid]
    assert store.checksum_failures == 2
    assert store.stats()["checksum_failures"] == 2
    assert store.get(good) == good_blob


def test_persistence_across_instances(tmp_path: Path) -> None:
    first = ChunkStore(tmp_path)
    chunks = dict(make(os.urandom(n)) for n in (10, 1000, 70_000))
    for cid, blob in chunks.items():
        first.put(cid, blob)
    second = ChunkStore(tmp_path)
    for cid, blob in chunks.items():
        assert second.get(cid) == blob
        assert second.put(cid, blob) is False
    assert set(second.iter_ids()) == set(chunks)
    assert second.stats()["chunk_count"] == 3
    assert second.stats()["used_bytes"] == sum(map(len, chunks.values()))


def test_leftover_temp_files_cleaned(tmp_path: Path) -> None:
    ChunkStore(tmp_path)
    tmp = tmp_path / "chunks" / "tmp"
    (tmp / "abc.123.0").write_bytes(b"partial")
    (tmp / "junkdir").mkdir()
    (tmp / "junkdir" / "x").write_bytes(b"x")
    store = ChunkStore(tmp_path)
    assert tmp_files(tmp_path) == []
    assert list(store.iter_ids()) == []


def test_junk_is_ignored(store: ChunkStore, tmp_path: Path) -> None:
    cid, blob = make(b"real")
    store.put(cid, blob)
    chunks = tmp_path / "chunks"
    h = cid.hex()
    (chunks / "README").write_text("junk")
    (chunks / "zz").mkdir()
    (chunks / "zz" / "zz").mkdir()
    (chunks / h[:2] / h[2:4] / "notes.txt").write_text("junk")
    (chunks / h[:2] / h[2:4] / h.upper()).write_text("junk")  # wrong case
    (chunks / h[:2] / h[2:4] / ("ff" * 32)).write_text("junk")  # wrong directory
    (chunks / h[:2] / h[2:4] / (h[:4] + "0" * 60 + "0")).write_text("junk")  # too long
    assert list(store.iter_ids()) == [cid]
    reopened = ChunkStore(tmp_path)
    assert list(reopened.iter_ids()) == [cid]
    assert reopened.stats()["chunk_count"] == 1
    assert reopened.stats()["used_bytes"] == len(blob)


def test_iter_ids_and_stats_consistent(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, fsync=False)
    chunks = dict(make(os.urandom(i * 37 % 5000)) for i in range(300))
    for cid, blob in chunks.items():
        assert store.put(cid, blob)
    doomed = list(chunks)[::3]
    assert store.delete(doomed) == len(doomed)
    for cid in doomed:
        del chunks[cid]
    ids = set(store.iter_ids())
    assert ids == set(chunks)
    stats = store.stats()
    assert stats["chunk_count"] == len(chunks)
    assert stats["used_bytes"] == sum(map(len, chunks.values())) == sum(map(store.stored_bytes, ids))
    assert stats["total_bytes"] >= stats["free_bytes"] >= stats["avail_bytes"] >= 0
    assert stats["checksum_failures"] == 0
    again = ChunkStore(tmp_path).stats()
    assert (again["chunk_count"], again["used_bytes"]) == (stats["chunk_count"], stats["used_bytes"])
    assert store.scrub(ids) == []


def _run_threads(n: int, target: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``target(i)`` in ``n`` threads released together; results or exceptions."""
    results: list[T | BaseException] = [RuntimeError("did not run")] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _put_ignoring_index(store: ChunkStore, cid: bytes, blob: bytes, _i: int) -> bool:
    return store.put(cid, blob)


@pytest.mark.parametrize("use_link", [True, False])
def test_concurrent_puts_of_same_id(tmp_path: Path, use_link: bool) -> None:
    store = ChunkStore(tmp_path)
    store._use_link = use_link
    for round_ in range(10):
        cid, blob = make(os.urandom(200_000) + bytes([round_]))
        results = _run_threads(8, partial(_put_ignoring_index, store, cid, blob))
        assert sorted(results, key=repr) == [False] * 7 + [True], results
        assert store.get(cid) == blob
    assert store.stats()["chunk_count"] == 10
    assert_index_matches_disk(store)
    assert tmp_files(tmp_path) == []


def test_concurrent_puts_and_deletes(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    chunks = [make(os.urandom(3000)) for _ in range(64)]
    doomed = chunks[0::4]
    kept = [c for c in chunks if c not in doomed]
    phase = threading.Barrier(8)

    def work(i: int) -> int:
        # Phase 1: every thread puts every chunk, in different orders (dedup races).
        created = sum(store.put(cid, blob) for cid, blob in chunks[i:] + chunks[:i])
        phase.wait()
        # Phase 2: overlapping deletes race with reads of the survivors.
        if i % 2:
            store.delete([cid for cid, _ in doomed[i % 3 :]] + [cid for cid, _ in doomed])
        else:
            for cid, blob in kept:
                assert store.get(cid) == blob
        return created

    results = _run_threads(8, work)
    assert all(isinstance(r, int) for r in results), results
    assert sum(r for r in results if isinstance(r, int)) == len(chunks)
    expected = {cid for cid, _ in kept}
    assert set(store.iter_ids()) == expected
    stats = store.stats()
    assert stats["chunk_count"] == len(expected)
    assert stats["used_bytes"] == sum(store.stored_bytes(c) for c in expected)
    assert_index_matches_disk(store)
    assert tmp_files(tmp_path) == []


def test_rename_fallback_when_links_unsupported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ChunkStore(tmp_path)

    def no_link(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    cid, blob = make(b"no hard links here")
    assert store.put(cid, blob) is True
    assert store.put(cid, blob) is False
    assert store.get(cid) == blob
    assert store._use_link is False
    assert tmp_files(tmp_path) == []


def test_reserve_bytes(tmp_path: Path) -> None:
    avail = ChunkStore(tmp_path).stats()["avail_bytes"]
    store = ChunkStore(tmp_path, reserve_bytes=avail + (1 << 30))
    cid, blob = make(b"anything")
    with pytest.raises(NoSpace, match="reserve"):
        store.put(cid, blob)
    assert not store.exists(cid)
    assert tmp_files(tmp_path) == []
    roomy = ChunkStore(tmp_path, reserve_bytes=1 << 20)
    assert roomy.put(cid, blob)
    assert store.put(cid, blob) is False  # already stored: no space needed


def test_write_error_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ChunkStore(tmp_path)
    real_write = os.write
    calls = 0

    def failing_write(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        return real_write(fd, memoryview(data)[:100])  # a short write first

    monkeypatch.setattr(os, "write", failing_write)
    cid, blob = make(os.urandom(10_000))
    with pytest.raises(NoSpace, match=cid.hex()):
        store.put(cid, blob)
    monkeypatch.undo()
    assert not store.exists(cid)
    assert tmp_files(tmp_path) == []
    assert store.stats()["chunk_count"] == 0
    assert store.put(cid, blob)


# -- a real ENOSPC on a tiny tmpfs ------------------------------------------------------
@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount tmpfs: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def test_enospc_on_full_disk(tiny_fs: Path) -> None:
    store = ChunkStore(tiny_fs)
    stored: dict[bytes, bytes] = {}
    error: NoSpace | None = None
    for i in range(200):
        # Incompressible and of varying sizes so the last write is usually a partial one.
        cid, blob = make(os.urandom(50_000 + i * 997))
        try:
            assert store.put(cid, blob)
        except NoSpace as exc:
            error = exc
            break
        stored[cid] = blob
    assert error is not None, "the 2 MiB tmpfs never filled up"
    assert "no space" in error.message.lower()
    failed = cid
    assert len(stored) >= 10
    assert tmp_files(tiny_fs) == []
    assert not store.exists(failed)
    assert set(store.iter_ids()) == set(stored)
    for cid, blob in stored.items():
        assert store.get(cid) == blob  # verified: no partial chunk
    assert store.stats()["chunk_count"] == len(stored)

    victims = list(stored)[:5]
    assert store.delete(victims) == 5
    for cid in victims:
        del stored[cid]
    small_id, small_blob = make(os.urandom(20_000))
    assert store.put(small_id, small_blob)
    stored[small_id] = small_blob
    reopened = ChunkStore(tiny_fs)
    assert set(reopened.iter_ids()) == set(stored)
    assert reopened.stats()["chunk_count"] == len(stored)
    assert reopened.scrub(list(stored)) == []


# -- partition index ----------------------------------------------------------------------
def in_partition(p: int, n: int) -> bytes:
    """A 32-byte id in partition ``p`` (the top 12 bits); the store does not check ids match blobs."""
    return (p << 244 | n).to_bytes(32, "big")


def test_partition_index_follows_put_and_delete(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, fsync=False)
    _, blob = make(b"any valid blob")
    assert store.partition_counts() == {}
    assert store.partition_digests() == {}
    ids = [in_partition(7, n) for n in (5, 1, 3)] + [in_partition(0, 9), in_partition(PARTITIONS - 1, 2)]
    for cid in ids:
        assert store.put(cid, blob)
    assert store.put(ids[0], blob) is False  # a dedup hit must not count twice
    assert store.ids_in_partition(7) == sorted(ids[:3])
    assert store.ids_in_partition(0) == [ids[3]]
    assert store.ids_in_partition(PARTITIONS - 1) == [ids[4]]
    assert store.ids_in_partition(8) == []
    assert store.partition_counts() == {7: 3, 0: 1, PARTITIONS - 1: 1}
    assert store.partition_digests() == {
        7: xxhash.xxh3_64(b"".join(sorted(ids[:3]))).digest(),
        0: xxhash.xxh3_64(ids[3]).digest(),
        PARTITIONS - 1: xxhash.xxh3_64(ids[4]).digest(),
    }
    assert_index_matches_disk(store)

    assert store.delete([ids[0], ids[3], in_partition(7, 99)]) == 2
    assert store.delete([ids[0]]) == 0  # already gone: must not count down again
    assert store.ids_in_partition(7) == sorted(ids[1:3])
    assert store.partition_counts() == {7: 2, PARTITIONS - 1: 1}  # empty partitions are left out
    assert set(store.partition_digests()) == {7, PARTITIONS - 1}
    assert_index_matches_disk(store)

    reopened = ChunkStore(tmp_path)  # built by the start-up scan
    assert reopened.partition_counts() == store.partition_counts()
    assert reopened.partition_digests() == store.partition_digests()
    assert reopened.ids_in_partition(7) == sorted(ids[1:3])


def test_partition_index_of_random_chunks(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, fsync=False)
    chunks = dict(make(os.urandom(64)) for _ in range(200))
    for cid, blob in chunks.items():
        store.put(cid, blob)
    store.delete(list(chunks)[::4])
    assert sum(store.partition_counts().values()) == 150
    assert_index_matches_disk(store)
    assert_index_matches_disk(ChunkStore(tmp_path))


def test_ids_in_partition_rejects_bad_partitions(store: ChunkStore) -> None:
    for bad in (-1, PARTITIONS):
        with pytest.raises(InvalidArgument):
            store.ids_in_partition(bad)


def test_ids_digest_is_pinned() -> None:
    # Peers compare these digests: a change here is a wire-format change.
    ids = [bytes([i]) * 32 for i in (3, 1, 2)]
    assert ids_digest(ids).hex() == "91088495c079b098"
    assert ids_digest(sorted(ids)) == ids_digest(ids)
    assert ids_digest(ids[:2]) != ids_digest(ids)
    assert len(ids_digest([])) == 8


def test_index_exact_when_delete_lands_inside_put(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delete between put's link(2) and its index update must not leave a phantom id."""
    store = ChunkStore(tmp_path, fsync=False)
    cid, blob = make(b"collected while being written again")
    real_publish = store._publish

    def publish_then_delete(hexid: str, tmp: str, final: str) -> bool:
        created = real_publish(hexid, tmp, final)
        assert store.delete([cid]) == 1  # the garbage collector wins the race
        return created

    monkeypatch.setattr(store, "_publish", publish_then_delete)
    assert store.put(cid, blob) is True
    monkeypatch.undo()
    assert not store.exists(cid)
    assert store.ids_in_partition(partition_of(cid)) == []
    assert store.partition_counts() == {}
    assert store.stats()["chunk_count"] == 0
    assert store.put(cid, blob) is True
    assert_index_matches_disk(store)


def test_index_exact_when_put_lands_inside_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A put between delete's unlink(2) and its index update must not lose the new copy."""
    store = ChunkStore(tmp_path, fsync=False)
    cid, blob = make(b"stored again while being deleted")
    assert store.put(cid, blob)
    chunk_path = str(store.path_of(cid))
    real_unlink = os.unlink
    raced = False

    def unlink_then_put(path: str) -> None:
        nonlocal raced
        real_unlink(path)
        if path == chunk_path and not raced:
            raced = True
            assert store.put(cid, blob) is True  # a writer stores the block again

    monkeypatch.setattr(os, "unlink", unlink_then_put)
    assert store.delete([cid]) == 1
    monkeypatch.undo()
    assert raced
    assert store.get(cid) == blob
    assert store.ids_in_partition(partition_of(cid)) == [cid]
    assert store.stats()["chunk_count"] == 1
    assert_index_matches_disk(store)


# -- quarantine ---------------------------------------------------------------------------
def test_quarantine_moves_a_corrupt_chunk_aside(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    cid, blob = make(os.urandom(3000))
    good, good_blob = make(b"healthy")
    store.put(cid, blob)
    store.put(good, good_blob)
    path = store.path_of(cid)
    damaged = bytearray(blob)
    damaged[len(damaged) // 2] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptChunk):
        store.get(cid)

    assert store.quarantine(cid) is True
    assert not path.exists()
    assert not store.exists(cid)
    with pytest.raises(ChunkMissing):
        store.get(cid)
    bad = list((tmp_path / "chunks" / "bad").iterdir())
    assert len(bad) == 1
    hexid, _, stamp = bad[0].name.partition(".")
    assert hexid == cid.hex()
    assert stamp.isdigit()
    assert bad[0].read_bytes() == bytes(damaged)
    assert store.quarantined == 1
    assert set(store.iter_ids()) == {good}
    stats = store.stats()
    assert (stats["chunk_count"], stats["used_bytes"]) == (1, len(good_blob))
    assert_index_matches_disk(store)
    assert store.ids_in_partition(partition_of(cid)) == (
        [good] if partition_of(good) == partition_of(cid) else []
    )

    assert store.quarantine(cid) is False  # nothing left to move
    absent, _ = make(b"never stored")
    assert store.quarantine(absent) is False
    with pytest.raises(InvalidArgument):
        store.quarantine(b"short")
    assert store.quarantined == 1

    assert store.put(cid, blob) is True  # a good copy from a peer can now be stored again
    assert store.get(cid) == blob
    assert_index_matches_disk(store)


def test_quarantined_chunks_stay_out_after_restart(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    chunks = dict(make(os.urandom(500 + n)) for n in range(3))
    for cid, blob in chunks.items():
        store.put(cid, blob)
    victim = next(iter(chunks))
    assert store.quarantine(victim)
    # Even a file in bad/ named exactly like a chunk, or a two-level dir below it, is not a chunk.
    bad_dir = tmp_path / "chunks" / "bad"
    h = victim.hex()
    (bad_dir / h).write_bytes(chunks[victim])
    (bad_dir / h[:2] / h[2:4]).mkdir(parents=True)
    (bad_dir / h[:2] / h[2:4] / h).write_bytes(chunks[victim])
    before = sorted(p.name for p in bad_dir.iterdir())

    reopened = ChunkStore(tmp_path)
    assert sorted(p.name for p in bad_dir.iterdir()) == before  # start-up cleans tmp/, not bad/
    assert not reopened.exists(victim)
    assert set(reopened.iter_ids()) == set(chunks) - {victim}
    stats = reopened.stats()
    assert stats["chunk_count"] == 2
    assert stats["used_bytes"] == sum(len(b) for c, b in chunks.items() if c != victim)
    assert_index_matches_disk(reopened)
    assert victim not in reopened.ids_in_partition(partition_of(victim))
