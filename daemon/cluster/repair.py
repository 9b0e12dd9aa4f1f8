"""Self-healing on every dfsd: hint replay, anti-entropy, misplaced copies, corrupt copies.

Each daemon looks after the chunks it holds; together they cover every
chunk that has a copy anywhere.  Work comes in short units, every copy goes
through one bandwidth budget (a token bucket) and one concurrency limit, so
foreground I/O stays responsive.

- **Hints**: copies a writer could not make (the replica was down or slow)
  were recorded here, on a node holding the chunk.  Once the target is up
  again it gets them (after being asked whether it already has them).
- **Anti-entropy**, per round (every ``anti_entropy_interval_s`` and at once
  after a layout change): for every partition this node holds chunks of, it
  compares per-partition digests with each peer; where they differ it asks
  the peers that should hold a copy which ids they lack, and sends them, the
  chunks with the fewest copies first (one copy left > under R).  Of the
  holders of a chunk only the first in preference order sends it, so a
  missing copy crosses the network once.
- **Misplaced copies** (this node is not among a chunk's replicas: it was a
  substitute during a failure, the layout changed, or this node is draining)
  are sent where they belong and deleted here only once every replica is up
  and holds the chunk: a surplus copy goes only after the new ones are durable.
- **Pinned copies**, a hot chunk's temporary extra copies (``daemon/cluster/hot.py``),
  are left alone until their pin lapses; then they are misplaced copies.
- **Corrupt copies** (found by the scrubber or by a read) are quarantined by
  the chunk store and replaced from another replica.

The replication factor of a chunk comes from metadata (``chunks.replicas``: the
largest R a write asked, re-marked after a policy change by daemon/meta/remark.py;
else the default).  After a lowering, the copies beyond the new R are misplaced
copies like any other: deleted once the remaining replicas hold the chunk.  A
node whose misplaced copy waits for another holder to make the missing copies
looks again soon (not at the next periodic round), so a drain ends promptly.
Chunks metadata does not know are left alone: an uncommitted write's missing copies are covered by its hints,
and a chunk garbage collection or the orphan sweep removed must not be
copied back from a node that has not deleted its copy yet.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from daemon.chunks import ChunkStore
from daemon.cluster.hints import HintQueue
from daemon.cluster.scrub import Scrubber, TokenBucket
from dfs.client.chunks import ChunkIO
from dfs.core import codec
from dfs.core.config import Config
from dfs.core.endpoints import CHUNK_DIGESTS, CHUNK_HAS, CHUNK_PUT
from dfs.core.errors import ChunkMissing, CorruptChunk, DfsError
from dfs.core.placement import NodeState
from dfs.core.replicas import ClusterView

log = logging.getLogger("dfs.repair")

_HAS_BATCH = 2048  # ids per has() question
_HINT_BATCH = 512
_R_BATCH = 2000  # ids per replication-factor lookup
_RETRY_S = 5.0  # a round that left work undone runs again this soon
_HISTORY = 32  # rounds remembered for the copy rate
_RATE_WINDOW_S = 300.0


@dataclass
class _Work:
    chunk_id: bytes
    copies: int  # known durable copies, this one included
    send_to: list[str]
    misplaced: bool


@dataclass
class RepairStats:
    rounds: int = 0
    round_epoch: int = -1
    last_round_at: float = 0.0
    last_round_s: float = 0.0
    under_replicated: int = 0  # chunks this node leads that have fewer than R copies
    misplaced: int = 0  # copies here that belong elsewhere
    copies_made: int = 0
    bytes_moved: int = 0
    surplus_removed: int = 0
    hints_delivered: int = 0
    hints_pending: int = 0  # as of the last replay
    corrupt_replaced: int = 0
    errors: int = 0
    # (monotonic time, copies_made) at the end of recent rounds, for the copy rate.
    history: list[tuple[float, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "history"}


class Repair:
    def __init__(
        self,
        cfg: Config,
        store: ChunkStore,
        hints: HintQueue,
        chunkio: ChunkIO,
        replicas_of: Callable[[list[bytes]], Awaitable[list[int | None]]],
        *,
        limiter: trio.CapacityLimiter,
        pinned: Callable[[bytes], bool] = lambda chunk_id: False,
    ) -> None:
        self.cfg = cfg
        self._pinned = pinned
        self.node_id = cfg.node_id
        self.store = store
        self.hints = hints
        self.io = chunkio
        self._replicas_of = replicas_of
        self._limiter = limiter
        cl = cfg.cluster
        self.bucket = TokenBucket(
            float(cl.repair_bandwidth_bytes_s),
            float(max(cl.repair_bandwidth_bytes_s, 8 << 20)),
            time.monotonic,
        )
        self.stats = RepairStats()
        self._kick = trio.Event()
        self.scrubber: Scrubber | None = None
        if cl.scrub_bytes_s > 0:
            self.scrubber = Scrubber(
                store,
                rate_bytes_s=float(cl.scrub_bytes_s),
                on_corrupt=self.replace_corrupt,
                limiter=limiter,
                pass_interval_s=cl.scrub_interval_s,
            )

    async def _thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(*args), limiter=self._limiter)

    # -- the loops -------------------------------------------------------------------
    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._hint_loop)
            nursery.start_soon(self._anti_entropy_loop)
            if self.scrubber is not None:
                nursery.start_soon(self.scrubber.run)

    def kick(self) -> None:
        """Run an anti-entropy round now (layout change, operator request)."""
        self._kick.set()

    async def _hint_loop(self) -> None:
        while True:
            await trio.sleep(self.cfg.cluster.hint_interval_s)
            try:
                await self.replay_hints()
            except DfsError as exc:
                log.warning("hint replay failed: %s", exc.message)
            except Exception:  # never let one bad round stop repair for good
                log.exception("hint replay failed")

    async def _anti_entropy_loop(self) -> None:
        cl = self.cfg.cluster
        last_full = time.monotonic()
        retry_at = None
        while True:
            with trio.move_on_after(min(cl.refresh_s, cl.anti_entropy_interval_s)):
                await self._kick.wait()
            view = await self.io.view()
            now = time.monotonic()
            due = (
                self._kick.is_set()
                or view.epoch != self.stats.round_epoch
                or now - last_full >= cl.anti_entropy_interval_s
                or (retry_at is not None and now >= retry_at)
            )
            if not due:
                continue
            self._kick = trio.Event()
            last_full = now
            try:
                left = await self.anti_entropy_round()
            except DfsError as exc:
                log.warning("anti-entropy round failed: %s", exc.message)
                self.stats.errors += 1
                left = 1
            except Exception:
                log.exception("anti-entropy round failed")
                self.stats.errors += 1
                left = 1
            retry_at = time.monotonic() + _RETRY_S if left else None

    # -- hints -----------------------------------------------------------------------
    async def replay_hints(self) -> int:
        """Deliver the copies owed to nodes that are up; returns how many were delivered."""
        try:
            return await self._replay_hints()
        finally:
            self.stats.hints_pending = await self._thread(self.hints.count)

    async def _replay_hints(self) -> int:
        view = await self.io.view()
        delivered = 0
        in_layout = {n.node_id: n.state for n in view.layout.nodes}
        for target in list((await self._thread(self.hints.targets)).keys()):
            if in_layout.get(target, NodeState.OUT) is NodeState.OUT:
                # Gone from the layout: anti-entropy places its copies elsewhere.
                await self._thread(self.hints.drop_target, target)
                continue
            if view.is_down(target):
                continue
            while ids := await self._thread(self.hints.peek, target, _HINT_BATCH):
                try:
                    held = await self.io.call_node(target, CHUNK_HAS, ids, view=view)
                    for cid, h in zip(ids, held, strict=True):
                        if not h and await self._send(cid, [target], view):
                            delivered += 1
                except DfsError as exc:
                    log.info("hints for %s wait: %s", target, exc.message)
                    break
                await self._thread(self.hints.remove, target, ids)
        self.stats.hints_delivered += delivered
        return delivered

    # -- anti-entropy ----------------------------------------------------------------
    async def anti_entropy_round(self) -> int:
        """One pass over every local chunk; returns how many chunks still need work."""
        self.io.invalidate()
        view = await self.io.view()
        started = time.monotonic()
        me = self.node_id
        mine: dict[int, bytes] = await self._thread(self.store.partition_digests)
        peers = [
            n.node_id
            for n in view.layout.nodes
            if n.node_id != me and n.state is not NodeState.OUT and not view.is_down(n.node_id)
        ]
        theirs: dict[str, dict[int, bytes]] = {}

        async def digests(peer: str) -> None:
            try:
                raw = await self.io.call_node(peer, CHUNK_DIGESTS, sorted(mine), view=view)
                theirs[peer] = {int(p): bytes(d) for p, d in raw.items()}
            except DfsError as exc:
                log.info("digests from %s: %s", peer, exc.message)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(digests, peer)

        # Which (chunk, peer) pairs to ask about: only where digests differ.
        work: list[_Work] = []
        questions: dict[str, list[bytes]] = defaultdict(list)
        plans: list[tuple[bytes, list[str], bool]] = []  # (chunk, replicas, misplaced here)
        for p in sorted(mine):
            ids = await self._thread(self.store.ids_in_partition, p)
            if not ids:
                continue
            rs = await self._replication(ids, view)
            pref: list[str] = list(view.table.preference(p))
            if not pref:
                continue  # no active node at all: nowhere to put anything, keep every copy
            for cid, r in zip(ids, rs, strict=True):
                if r is None:
                    # Uncommitted (its writer's hints cover missing copies) or already collected
                    # (copying it would undo the collection): not repair's business.
                    continue
                reps = pref[: view.replica_count(r)]
                if me not in reps and self._pinned(cid):
                    continue  # a hot chunk's extra copy: it stays while pinned (daemon/cluster/hot.py)
                plans.append((cid, reps, me not in reps))
                for peer in reps:
                    if peer == me:
                        continue
                    if peer in theirs and theirs[peer].get(p) == mine[p]:
                        continue  # same set of ids there: it holds this chunk
                    questions[peer].append(cid)
        held_by: dict[bytes, set[str]] = defaultdict(set)
        unreachable: set[str] = {x for x in peers if x not in theirs}
        answered: dict[str, set[bytes]] = {}
        for peer, ids in questions.items():
            if peer in unreachable or view.is_down(peer):
                continue
            asked: set[bytes] = set()
            try:
                for i in range(0, len(ids), _HAS_BATCH):
                    batch = ids[i : i + _HAS_BATCH]
                    held = await self.io.call_node(peer, CHUNK_HAS, batch, view=view)
                    asked.update(batch)
                    for cid, h in zip(batch, held, strict=True):
                        if h:
                            held_by[cid].add(peer)
            except DfsError as exc:
                log.info("has() on %s: %s", peer, exc.message)
                unreachable.add(peer)
            answered[peer] = asked
        under = misplaced = waiting = 0
        for cid, reps, is_misplaced in plans:
            holders = {me}
            lacking: list[str] = []
            unknown = False
            for peer in reps:
                if peer == me:
                    continue
                if peer not in answered or cid not in answered[peer]:
                    # Not asked (digest equal: it holds it) or could not ask (unknown).
                    if peer in theirs and peer not in unreachable:
                        holders.add(peer)
                    else:
                        unknown = True
                elif peer in held_by[cid]:
                    holders.add(peer)
                else:
                    lacking.append(peer)
            copies = len(holders & set(reps)) + (1 if is_misplaced else 0)
            # Only the first holder (in preference order) sends, so a copy crosses the wire once.
            first = next((x for x in reps if x in holders), me)
            leader = first == me or (is_misplaced and not (holders & set(reps)))
            if len(holders & set(reps)) < len(reps) and leader:
                under += 1
            if is_misplaced:
                misplaced += 1
            if lacking and leader:
                work.append(_Work(cid, copies, lacking, is_misplaced))
            elif is_misplaced and not lacking and not unknown and set(reps) <= holders:
                work.append(_Work(cid, copies, [], True))
            elif is_misplaced and lacking:
                # Another holder sends the missing copies; look again soon, so this surplus copy
                # goes once they are made (a drain ends then, not at the next periodic round).
                waiting += 1
        work.sort(key=lambda w: (w.copies, w.misplaced))
        self.stats.under_replicated = under
        self.stats.misplaced = misplaced
        left = await self._do(work, view) + waiting
        self.stats.rounds += 1
        self.stats.round_epoch = view.epoch
        self.stats.last_round_at = time.time()
        self.stats.last_round_s = round(time.monotonic() - started, 3)
        self.stats.history = [
            *self.stats.history[-(_HISTORY - 1) :],
            (time.monotonic(), self.stats.copies_made),
        ]
        return left

    async def _replication(self, ids: list[bytes], view: ClusterView) -> list[int | None]:
        """Each chunk's R (None: metadata does not know it; see MetaStore.chunk_factors)."""
        default = view.default_policy.replicas
        out: list[int | None] = []
        for i in range(0, len(ids), _R_BATCH):
            rs = await self._replicas_of(ids[i : i + _R_BATCH])
            out.extend(None if r is None else (int(r) or default) for r in rs)
        return out

    async def _do(self, work: list[_Work], view: ClusterView) -> int:
        left = 0
        removable: list[bytes] = []
        slots = trio.Semaphore(self.cfg.cluster.repair_concurrency)

        async def one(w: _Work) -> None:
            nonlocal left
            try:
                if w.send_to and not await self._send(w.chunk_id, w.send_to, view):
                    left += 1
                elif w.misplaced and not w.send_to:
                    removable.append(w.chunk_id)
                elif w.misplaced:
                    left += 1  # removed next round, once every replica confirms its copy
            finally:
                slots.release()

        async with trio.open_nursery() as nursery:
            for w in work:
                await slots.acquire()  # bounded fan-out: at most repair_concurrency copies at once
                nursery.start_soon(one, w)
        if removable:
            n = await self._thread(self.store.delete, removable)
            self.stats.surplus_removed += n
            # Gone from here now: "misplaced" reports what is still here (node removal reads it).
            self.stats.misplaced = max(0, self.stats.misplaced - n)
            log.info("removed %d surplus copies now held by their replicas", n)
        return left

    async def _send(self, chunk_id: bytes, targets: list[str], view: ClusterView) -> bool:
        """Copy a local chunk to ``targets`` within the bandwidth budget; False if any failed."""
        try:
            blob: bytes = await self._thread(self.store.get, chunk_id)
        except (ChunkMissing, CorruptChunk) as exc:
            log.info("cannot send chunk %s: %s", chunk_id.hex()[:16], exc.message)
            return False
        ok = True
        for target in targets:
            wait_s = self.bucket.take(len(blob))
            if wait_s > 0:
                await trio.sleep(wait_s)
            try:
                await self.io.call_node(target, CHUNK_PUT, chunk_id, blob, view=view)
            except DfsError as exc:
                log.info("copy of %s to %s failed: %s", chunk_id.hex()[:16], target, exc.message)
                self.stats.errors += 1
                ok = False
                continue
            self.stats.copies_made += 1
            self.stats.bytes_moved += len(blob)
        return ok

    # -- corrupt copies ----------------------------------------------------------------
    async def replace_corrupt(self, chunk_id: bytes) -> None:
        """A local copy was bad (and is quarantined): fetch a good one from another node."""
        try:
            blob, source = await self.io.get(chunk_id, skip=[self.node_id])
            await self._thread(codec.verify, blob)
            await self._thread(self.store.put, chunk_id, blob)
        except Exception as exc:  # runs as a background task: it must never raise
            reason = exc.message if isinstance(exc, DfsError) else repr(exc)
            log.warning("corrupt chunk %s could not be replaced yet: %s", chunk_id.hex()[:16], reason)
            self.stats.errors += 1
            self.kick()
            return
        self.stats.corrupt_replaced += 1
        log.warning("replaced corrupt chunk %s with the copy from %s", chunk_id.hex()[:16], source)

    def copy_rate_s(self) -> float:
        """Copies made per second over the rounds of the last few minutes (0: too few rounds)."""
        now = time.monotonic()
        recent = [(t, n) for t, n in self.stats.history if now - t <= _RATE_WINDOW_S]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return 0.0
        return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])

    def status(self) -> dict[str, Any]:
        out = self.stats.to_dict()
        out["copies_rate_s"] = round(self.copy_rate_s(), 2)
        out["hints_pending"] = self.hints.count()  # exact for `dfs status` (a quick indexed count)
        if self.scrubber is not None:
            out["scrub"] = self.scrubber.statistics()
        return out
