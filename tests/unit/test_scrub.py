"""daemon.cluster.scrub: the token bucket (pure, fake clock) and the Scrubber over a real ChunkStore.

Scrubber tests that measure time use trio's autojump clock and await the
pass directly, or wait on events: while a worker thread runs, autojump would
skip to any pending deadline, so no test here keeps a deadline of its own
running while it needs exact virtual time.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from daemon.chunks import ChunkStore
from daemon.cluster.scrub import Scrubber, TokenBucket
from dfs.core import codec
from dfs.core.errors import PermissionDenied

KEY = b"s" * 32


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


# -- TokenBucket --------------------------------------------------------------------------
def test_bucket_starts_full_then_paces() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_bytes_s=100, burst_bytes=50, clock=clock)
    assert bucket.take(30) == 0.0
    assert bucket.take(40) == pytest.approx(0.2)  # 20 left, 20 short
    clock.now_s = 0.2
    assert bucket.take(0) == 0.0  # debt paid exactly
    assert bucket.take(100) == pytest.approx(1.0)
    clock.now_s = 0.7
    assert bucket.take(10) == pytest.approx(0.6)  # queues behind the earlier debt


def test_bucket_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_bytes_s=1000, burst_bytes=500, clock=clock)
    bucket.take(500)
    clock.now_s = 3600.0  # idle for an hour: still only one burst saved up
    assert bucket.take(500) == 0.0
    assert bucket.take(1000) == pytest.approx(1.0)


def test_bucket_clock_going_back_adds_nothing() -> None:
    clock = FakeClock()
    clock.now_s = 10.0
    bucket = TokenBucket(rate_bytes_s=10, burst_bytes=0, clock=clock)
    assert bucket.take(10) == pytest.approx(1.0)
    clock.now_s = 5.0
    assert bucket.take(10) == pytest.approx(2.0)


def test_bucket_zero_rate_is_unlimited() -> None:
    for rate in (0, -1):
        bucket = TokenBucket(rate_bytes_s=rate, burst_bytes=0, clock=FakeClock())
        assert bucket.take(10**12) == 0.0
        assert bucket.take(1) == 0.0


def test_bucket_rejects_negative_amounts() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate_bytes_s=1, burst_bytes=-1, clock=FakeClock())
    with pytest.raises(ValueError):
        TokenBucket(rate_bytes_s=1, burst_bytes=1, clock=FakeClock()).take(-1)


def test_bucket_long_run_rate() -> None:
    clock = FakeClock()
    rate, burst = 1_000_000.0, 250_000.0
    bucket = TokenBucket(rate_bytes_s=rate, burst_bytes=burst, clock=clock)
    rng = random.Random(7)
    total = 0
    for _ in range(2000):
        n = rng.randrange(1, 4 << 20)
        total += n
        clock.now_s += bucket.take(n)  # a caller that sleeps exactly as told
    assert clock.now_s == pytest.approx((total - burst) / rate)


# -- Scrubber -----------------------------------------------------------------------------
def make(data: bytes) -> tuple[bytes, bytes]:
    return codec.chunk_id(KEY, data), codec.encode(data, level=1)


def flip_a_byte(store: ChunkStore, chunk_id: bytes) -> None:
    path = store.path_of(chunk_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def in_partition(p: int, n: int) -> bytes:
    return (p << 244 | n).to_bytes(32, "big")


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return ChunkStore(tmp_path, fsync=False)


def fill(store: ChunkStore, n: int) -> list[bytes]:
    ids = []
    for i in range(n):
        cid, blob = make(os.urandom(1000 + 100 * i))
        assert store.put(cid, blob)
        ids.append(cid)
    return sorted(ids)  # the order a pass checks them in


class Reports:
    """An on_corrupt that records what it was told and the scrubber's state at that moment."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.ids: list[bytes] = []
        self.progress: list[float] = []
        self.passes: list[float] = []
        self.still_stored: list[bool] = []
        self.scrubber: Scrubber | None = None
        self.send, self.received = trio.open_memory_channel[bytes](math.inf)

    async def __call__(self, chunk_id: bytes) -> None:
        self.ids.append(chunk_id)
        self.still_stored.append(self.store.exists(chunk_id))
        if self.scrubber is not None:
            self.progress.append(self.scrubber.statistics()["current_pass_progress"])
            self.passes.append(self.scrubber.statistics()["passes"])
        self.send.send_nowait(chunk_id)


def scrubber_for(store: ChunkStore, reports: Reports, pass_interval_s: float = 3600.0) -> Scrubber:
    scrubber = Scrubber(store, rate_bytes_s=0, on_corrupt=reports, pass_interval_s=pass_interval_s)
    reports.scrubber = scrubber
    return scrubber


async def test_pass_quarantines_and_reports_a_corrupt_chunk(store: ChunkStore, tmp_path: Path) -> None:
    ids = fill(store, 4)
    sizes = {cid: store.stored_bytes(cid) for cid in ids}
    bad = ids[1]
    flip_a_byte(store, bad)
    reports = Reports(store)
    scrubber = scrubber_for(store, reports)
    assert scrubber.statistics()["passes"] == 0

    assert await scrubber.run_pass() == 4
    assert reports.ids == [bad]
    assert reports.still_stored == [False]  # quarantined before the report
    assert reports.progress == [0.25]  # reported while checking the second of four
    assert not store.exists(bad)
    assert [p.name.split(".")[0] for p in (tmp_path / "chunks" / "bad").iterdir()] == [bad.hex()]
    stats = scrubber.statistics()
    assert stats["passes"] == 1
    assert stats["chunks_checked"] == 4
    assert stats["bytes_checked"] == sum(sizes.values())
    assert stats["corrupt_found"] == 1
    assert stats["errors"] == 0
    assert stats["current_pass_progress"] == 0.0
    assert stats["last_pass_s"] >= 0.0

    assert await scrubber.run_pass() == 3  # the bad copy is gone, not found again
    stats = scrubber.statistics()
    assert (stats["passes"], stats["chunks_checked"], stats["corrupt_found"]) == (2, 7, 1)
    assert reports.ids == [bad]


async def test_chunk_deleted_during_a_pass_is_skipped(store: ChunkStore) -> None:
    _, blob = make(b"shared blob")
    ids = [in_partition(9, n) for n in (1, 2, 3)]  # one partition: listed together
    for cid in ids:
        store.put(cid, blob)
    flip_a_byte(store, ids[0])

    async def delete_the_next(chunk_id: bytes) -> None:
        assert store.delete([ids[1]]) == 1

    scrubber = Scrubber(store, rate_bytes_s=0, on_corrupt=delete_the_next)
    assert await scrubber.run_pass() == 2
    stats = scrubber.statistics()
    assert (stats["chunks_checked"], stats["corrupt_found"], stats["errors"]) == (2, 1, 0)


async def test_other_errors_are_counted_and_skipped(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = fill(store, 3)
    limiter = trio.CapacityLimiter(1)
    borrowed: list[int] = []
    real_get = store.get

    def get(chunk_id: bytes) -> bytes:
        borrowed.append(limiter.borrowed_tokens)  # runs in the worker thread, under our limiter
        if chunk_id == ids[0]:
            raise PermissionDenied("chmod 000 by someone")
        return real_get(chunk_id)

    monkeypatch.setattr(store, "get", get)
    reports = Reports(store)
    scrubber = Scrubber(store, rate_bytes_s=0, on_corrupt=reports, limiter=limiter)
    assert await scrubber.run_pass() == 2
    assert borrowed == [1, 1, 1]
    stats = scrubber.statistics()
    assert (stats["chunks_checked"], stats["errors"], stats["corrupt_found"]) == (2, 1, 0)
    assert reports.ids == []
    assert store.exists(ids[0])


async def test_pass_is_paced_by_rate(store: ChunkStore, autojump_clock: trio.testing.MockClock) -> None:
    ids = fill(store, 10)
    total_bytes = sum(store.stored_bytes(cid) for cid in ids)
    rate = total_bytes / 5  # burst is one second's worth: the first fifth goes unpaced
    scrubber = Scrubber(store, rate_bytes_s=rate, on_corrupt=Reports(store))
    started = trio.current_time()
    assert await scrubber.run_pass() == 10
    assert trio.current_time() - started == pytest.approx(4.0)
    assert scrubber.statistics()["last_pass_s"] == pytest.approx(4.0)

    unlimited = Scrubber(store, rate_bytes_s=0, on_corrupt=Reports(store))
    started = trio.current_time()
    assert await unlimited.run_pass() == 10
    assert trio.current_time() == started


async def test_run_repeats_passes_and_finds_new_rot(
    store: ChunkStore, autojump_clock: trio.testing.MockClock
) -> None:
    ids = fill(store, 3)
    flip_a_byte(store, ids[1])
    reports = Reports(store)
    scrubber = scrubber_for(store, reports, pass_interval_s=100.0)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scrubber.run)
        # No deadline of ours is pending while we wait: autojump only skips the scrubber's sleeps.
        assert await reports.received.receive() == ids[1]
        assert trio.current_time() == started  # found in the first pass, at once
        flip_a_byte(store, ids[0])  # rots after the first pass checked it
        assert await reports.received.receive() == ids[0]
        assert trio.current_time() - started == pytest.approx(100.0)  # the next pass, one interval on
        nursery.cancel_scope.cancel()
    assert reports.passes == [0, 1]
    assert reports.progress == [pytest.approx(1 / 3), 0.0]
    stats = scrubber.statistics()
    assert stats["corrupt_found"] == 2
    assert stats["chunks_checked"] >= 4
    assert not store.exists(ids[0])
    assert not store.exists(ids[1])


@pytest.mark.parametrize(("interval_s", "passes"), [(0.25, 11), (2.0, 6)])
async def test_empty_store_waits_at_least_a_second(
    store: ChunkStore, autojump_clock: trio.testing.MockClock, interval_s: float, passes: int
) -> None:
    scrubber = Scrubber(store, rate_bytes_s=0, on_corrupt=Reports(store), pass_interval_s=interval_s)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scrubber.run)
        await trio.sleep(10.5)  # an empty store needs no worker thread: virtual time is exact
        nursery.cancel_scope.cancel()
    assert scrubber.statistics()["passes"] == passes
    assert scrubber.statistics()["chunks_checked"] == 0


def test_scrubber_rejects_a_negative_interval(store: ChunkStore) -> None:
    with pytest.raises(ValueError):
        Scrubber(store, rate_bytes_s=0, on_corrupt=Reports(store), pass_interval_s=-1)
