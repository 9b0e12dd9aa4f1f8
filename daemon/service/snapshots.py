"""Volume snapshots in bounded batches, and the scheduled-snapshot duty.

:class:`SnapshotTaker` copies a volume's tree without holding up other metadata
writers: a read snapshot on a connection of its own (SQLite WAL, PostgreSQL
REPEATABLE READ) fixes the image, a breadth-first walk of it (:class:`TreeWalk`,
in a worker thread) hands :data:`BATCH_ENTRIES` names at a time to the metadata
thread, and each batch is a transaction of a few milliseconds.  The partial copy
grows outside the namespace and appears at /.snapshots/VOLUME/NAME whole, in the
last transaction (daemon/meta/snapshots.py).  Chunk GC waits while a build is
under way, so every chunk the read snapshot names stays.

The duty (:class:`SnapshotDuty`): a cluster-wide duty (the metadata leader runs it,
every ``[snapshots] check_interval_s``).  Each run gives up builds whose builder
died, reads the volumes' schedules and snapshots, asks the pure planner
(dfs/core/snapshot_schedule.py) what to do, and applies each action, at most
:data:`MAX_ACTIONS` per run: what is left waits for the next.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from daemon.meta import MetaStore
from daemon.service.meta_calls import MetaCalls
from dfs.core.errors import DfsError, Exists, NotFound
from dfs.core.snapshot_schedule import Snap, parse_schedule, plan

log = logging.getLogger("dfs.daemon")

MAX_ACTIONS = 64  # snapshots taken or expired per run, across all volumes
# Names copied per batch: one batch is one short write transaction (a few ms), so other writers
# wait at most that long; the rows of a batch are held in memory twice (read and staged).
BATCH_ENTRIES = 1000
_IFMT, _IFDIR = 0o170000, 0o040000

Fence = Callable[[Callable[..., Any]], Callable[..., Any]]


def _no_fence(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


class TreeWalk:
    """Breadth-first walk of the tree at ``src`` in a reader's read snapshot, in batches.

    Worker thread only (``next_batch``); ``copied`` takes each batch's result.  Memory holds
    the directories found and not yet listed (the walk's frontier) and the files with more
    than one name (their copy must get each further name), source -> copy.
    """

    def __init__(self, reader: MetaStore, src: int) -> None:
        self._reader = reader
        self._src = src
        self._queue: deque[tuple[int, int]] = deque([(src, 0)])  # (directory, last dentry id read)
        self._copies: dict[int, int] = {}
        self._dirs: set[int] = set()  # the directories of the batch in flight
        self._listed: list[int] = []  # directories the batch in flight finished listing
        self._first = True

    def next_batch(self, limit: int) -> tuple[dict[str, list[tuple[Any, ...]]], list[tuple[int, int]]] | None:
        """The next batch's rows and the (source, copy) pairs its names need; None: all done."""
        reader = self._reader
        dentries: list[tuple[Any, ...]] = []
        self._listed = []
        while self._queue and len(dentries) < limit:
            parent, after = self._queue[0]
            want = limit - len(dentries)
            page = reader.snapshot_read_page(parent, after, want)
            dentries += page
            if len(page) < want:
                self._queue.popleft()
                self._listed.append(parent)
            else:
                self._queue[0] = (parent, int(page[-1][0]))
        if not dentries and not self._first:
            return None
        fresh = dict.fromkeys(int(d[3]) for d in dentries if int(d[3]) not in self._copies)
        if self._first:  # the top itself: no name in the tree names it
            fresh = {self._src: None, **fresh}
            self._first = False
        rows = reader.snapshot_read_rows(list(fresh))
        rows["dentries"] = dentries
        self._dirs = {int(r[0]) for r in rows["inodes"] if int(r[1]) & _IFMT == _IFDIR}
        named = {int(d[1]) for d in dentries} | {int(d[3]) for d in dentries}
        mapped = [(ino, self._copies[ino]) for ino in named if ino in self._copies]
        return rows, mapped

    def copied(self, pairs: list[tuple[int, int]]) -> None:
        """The batch's (source, copy) directories and multi-name files, as the writer made them."""
        for old, new in pairs:
            self._copies[old] = new
            if old in self._dirs and old != self._src:  # the top was queued first
                self._queue.append((old, 0))
        for parent in self._listed:  # every name in it is copied: no later batch needs it
            self._copies.pop(parent, None)


class SnapshotTaker:
    """Takes volume snapshots in batches (RPC, the admin API and the duty all come here)."""

    def __init__(self, metacalls: MetaCalls) -> None:
        self._metacalls = metacalls

    async def create(self, volume: str, name: str) -> dict[str, Any]:
        """Snapshot ``name`` of ``volume`` (the RPC and admin API entry point)."""
        with self._metacalls.outside_request() as retried:
            try:
                return await self.take(volume, name)
            except Exists:
                if not retried:
                    raise
                # The client's first attempt may have taken it and lost the reply.
                for snap in await self._metacalls.run(self._metacalls.meta.list_snapshots, volume):
                    if snap["name"] == name:
                        return dict(snap)
                raise

    async def take(
        self, volume: str, name: str, origin: str = "manual", fence: Fence = _no_fence
    ) -> dict[str, Any]:
        metacalls = self._metacalls
        meta = metacalls.meta
        src: int = await metacalls.run(fence(meta.snapshot_build_begin), volume, name, origin=origin)
        try:
            reader = await trio.to_thread.run_sync(meta.reader)
            try:
                await trio.to_thread.run_sync(reader.snapshot_read_open)
                walk = TreeWalk(reader, src)
                while (batch := await trio.to_thread.run_sync(walk.next_batch, BATCH_ENTRIES)) is not None:
                    rows, mapped = batch
                    pairs = await metacalls.run(fence(meta.snapshot_build_batch), volume, name, rows, mapped)
                    walk.copied(pairs)
            finally:
                await trio.to_thread.run_sync(_close_reader, reader)
            doc: dict[str, Any] = await metacalls.run(fence(meta.snapshot_build_finish), volume, name)
            return doc
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await metacalls.run(meta.snapshot_build_abort, volume, name)
                except DfsError as exc:  # the duty gives it up once it is stale
                    log.warning("snapshot %s of volume %s: partial copy left: %s", name, volume, exc.message)
            raise


def _close_reader(reader: MetaStore) -> None:
    try:
        reader.snapshot_read_close()
    finally:
        reader.close()


class SnapshotDuty:
    """One run per period; ``fence`` wraps each metadata call in the leader's epoch check."""

    def __init__(
        self, metacalls: MetaCalls, taker: SnapshotTaker, *, now_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self._metacalls = metacalls
        self._taker = taker
        self._now_ns = now_ns
        self.fence: Fence = _no_fence
        self.last_run_ns: int | None = None  # the end of the last run that failed nothing
        self.taken = 0
        self.expired = 0

    async def step(self) -> None:
        meta = self._metacalls.meta
        for volume, name in await self._metacalls.run(self.fence(meta.snapshot_build_expire)):
            log.warning(
                "volume %s: gave up snapshot %s, whose build stalled (its partial copy is gone)", volume, name
            )
        volumes: list[tuple[str, str]] = await self._metacalls.run(_schedules, meta)
        actions: list[tuple[str, str, str | None]] = []  # (volume, name, tier to take | None: expire)
        for volume, text in volumes:
            try:
                schedule = parse_schedule(text)
            except ValueError as exc:  # written by older code or by hand: skipped, and said so
                log.warning("volume %s: snapshot_schedule %r ignored: %s", volume, text, exc)
                continue
            snaps = await self._metacalls.run(meta.list_snapshots, volume)
            existing = [Snap(s["name"], s["created_ns"], s["origin"]) for s in snaps]
            todo = plan(self._now_ns(), schedule, existing)
            actions += [(volume, name, tier) for tier, name in todo.create]
            actions += [(volume, name, None) for name in todo.delete]
        failed = False
        for volume, name, tier in actions[:MAX_ACTIONS]:
            try:
                if tier is not None:
                    await self._taker.take(volume, name, tier, self.fence)
                    self.taken += 1
                    log.info("volume %s: took scheduled snapshot %s", volume, name)
                else:
                    await self._metacalls.run(self.fence(meta.delete_snapshot), volume, name)
                    self.expired += 1
                    log.info("volume %s: expired snapshot %s", volume, name)
            except (Exists, NotFound):
                pass  # an operator (or another leader) got there first
            except DfsError as exc:
                failed = True
                log.warning("volume %s: scheduled snapshot %s failed: %s", volume, name, exc.message)
        if not failed:
            self.last_run_ns = self._now_ns()


def _schedules(meta: Any) -> list[tuple[str, str]]:
    """Metadata thread: (volume, snapshot_schedule) of every volume that has one."""
    out: list[tuple[str, str]] = []
    for vol in meta.list_volumes():
        text = vol["policy"].get("snapshot_schedule")
        if isinstance(text, str) and text:
            out.append((vol["name"], text))
    return out
