"""Cloud tiers at work: reading cold chunks back, and the leader's tiering worker.

:class:`TierSet` is every daemon's view of the tiers (their specs from metadata,
refreshed every :data:`REFRESH_S`, and an open backend each).  It reads a chunk no
local disk holds from the tiers (``chunk.get`` falls back to it), so the mount
and S3 never see where a chunk lives.

:class:`TierWorker` is a cluster-wide duty (the metadata leader runs it every
``[tiers] interval_s``).  A pass:

1. every ``[tiers] verify_interval_s`` (or on request), lists each tier and
   compares it with metadata: copies whose object is gone are forgotten (and
   stored again below, from a local copy or another tier), objects metadata does
   not know are deleted;
2. deletes the objects of copies whose chunks garbage collection collected;
3. brings the cold chunks of pinned trees back to local disks;
4. for each volume whose policy names tiers, walks its files a page at a time
   and, for files untouched for ``tier_after_days``, stores a copy of each chunk
   in every tier the policy names; with ``tier_mode = "tiered"`` a chunk whose
   copies are all stored is then marked cold and its local copies deleted.

The order is what keeps data safe: an object is stored whole before its row is
written, a chunk is marked cold only while every tier of its policy holds it,
and local copies go only after the mark.  A tier that fails during a pass is
skipped for the rest of it (its chunks stay local and are tried next pass).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from daemon.chunks import ChunkStore
from daemon.service.cluster_runner import ClusterRunner
from daemon.service.meta_calls import MetaCalls
from daemon.service.threads import ChunkThreads
from daemon.tiers.backends import ObjectBackend, open_backend
from daemon.tiers.cache import TierCache
from dfs.core import codec
from dfs.core.config import Config
from dfs.core.errors import ChunkMissing, CorruptChunk, DfsError, InvalidArgument, NotFound, Unavailable
from dfs.core.replicas import Policy
from dfs.core.tiers import TierSpec, TokenBucket, chunk_id_of_key, chunk_key

log = logging.getLogger("dfs.tiers")
# Its own generator: the process-wide one belongs to whoever seeded it (tests, hypothesis),
# and draws from worker threads would perturb it.
_SAMPLER = random.Random()

#: How often a daemon re-reads the tier definitions (a new tier serves reads within this).
REFRESH_S = 10.0
#: Files per metadata page of a volume walk, and chunks handled per batch of work.
PAGE_FILES = 2000
BATCH_CHUNKS = 64
#: (chunk, tier) deletions per metadata batch, and chunk rows compared per verify page.
DELETE_BATCH = 500
VERIFY_PAGE = 5000
#: Objects of each tier read back and checked per verify (a scrub by sampling: listing shows
#: an object is there, only reading it shows it is sound).
SCRUB_SAMPLE = 32
#: How long `dfs fsck` waits for a running pass before it leaves the tiers unchecked.
FSCK_WAIT_S = 60.0


class TierSet:
    """The tiers this daemon knows and their open backends (blocking: used in worker threads)."""

    def __init__(
        self,
        fetch_specs: Callable[[], Awaitable[list[dict[str, Any]]]],
        max_in_flight: int,
        cache: TierCache | None = None,
    ) -> None:
        self._fetch_specs = fetch_specs
        self.cache = cache
        self._specs: dict[str, TierSpec] = {}
        self._backends: dict[str, ObjectBackend] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._at = -math.inf
        self._lock = trio.Lock()
        self.limiter = trio.CapacityLimiter(max_in_flight)
        # Reads of chunks no local disk held, served from a tier (metrics, `dfs tier status`).
        self.cold_reads = 0
        self.cold_read_bytes = 0
        self.cold_read_seconds = 0.0
        self.cold_read_failures = 0

    async def refresh(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._at < REFRESH_S:
            return
        async with self._lock:
            if not force and time.monotonic() - self._at < REFRESH_S:
                return
            try:
                docs = await self._fetch_specs()
            except DfsError as exc:
                log.info("tier definitions not refreshed: %s", exc.message)
                return
            specs = {}
            for doc in docs:
                try:
                    specs[str(doc["name"])] = TierSpec.from_dict(doc["spec"])
                except (InvalidArgument, KeyError, TypeError) as exc:
                    log.warning("tier %r has a bad definition, not used: %s", doc.get("name"), exc)
            for name in list(self._backends):
                if specs.get(name) != self._specs.get(name):
                    backend = self._backends.pop(name)
                    await trio.to_thread.run_sync(backend.close)
            self._specs = specs
            self._buckets = {
                name: self._buckets.get(name) or TokenBucket(spec.bandwidth_bytes_per_s, _burst(spec))
                for name, spec in specs.items()
            }
            self._at = time.monotonic()

    def names(self) -> list[str]:
        return sorted(self._specs)

    def spec(self, name: str) -> TierSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise NotFound(f"no tier {name!r}") from None

    async def backend(self, name: str) -> ObjectBackend:
        backend = self._backends.get(name)
        if backend is None:
            spec = self.spec(name)
            backend = await trio.to_thread.run_sync(open_backend, spec)
            self._backends[name] = backend
        return backend

    async def _throttle(self, name: str, nbytes: int) -> None:
        bucket = self._buckets.get(name)
        if bucket is not None:
            delay = bucket.delay_s(time.monotonic(), nbytes)
            if delay > 0:
                await trio.sleep(delay)

    async def put(self, name: str, chunk_id: bytes, blob: bytes) -> None:
        backend = await self.backend(name)
        await self._throttle(name, len(blob))
        key = chunk_key(backend.spec, chunk_id)
        await trio.to_thread.run_sync(backend.put, key, blob, limiter=self.limiter)

    async def get(self, name: str, chunk_id: bytes) -> bytes:
        """The verified blob of ``chunk_id`` from tier ``name`` (ChunkMissing, CorruptChunk,
        Unavailable)."""
        backend = await self.backend(name)
        key = chunk_key(backend.spec, chunk_id)
        blob: bytes = await trio.to_thread.run_sync(backend.get, key, limiter=self.limiter)
        await self._throttle(name, len(blob))
        codec.verify(blob)
        return blob

    async def fetch(self, chunk_id: bytes, order: list[str] | None = None) -> bytes:
        """A chunk from the first tier that has a sound copy (ChunkMissing: none has it;
        Unavailable: a tier that may have it could not be asked)."""
        await self.refresh()
        started = time.monotonic()
        cache = self.cache
        if cache is not None:
            cached = await trio.to_thread.run_sync(cache.get, chunk_id, limiter=self.limiter)
            if cached is not None:
                return cached
        errors: list[str] = []
        outage = False
        for name in order or self.names():
            try:
                blob = await self.get(name, chunk_id)
            except ChunkMissing:
                continue
            except CorruptChunk as exc:
                errors.append(f"{name}: {exc.message}")
                continue
            except DfsError as exc:
                outage = True
                errors.append(f"{name}: {exc.message}")
                continue
            self.cold_reads += 1
            self.cold_read_bytes += len(blob)
            self.cold_read_seconds += time.monotonic() - started
            if cache is not None:
                await trio.to_thread.run_sync(cache.put, chunk_id, blob, limiter=self.limiter)
            return blob
        self.cold_read_failures += 1
        detail = "; ".join(errors)[:400]
        if outage:
            raise Unavailable(f"chunk {chunk_id.hex()} could not be read from a tier: {detail}")
        raise ChunkMissing(f"chunk {chunk_id.hex()} is in no tier{': ' + detail if detail else ''}")

    async def delete(self, name: str, chunk_ids: list[bytes]) -> None:
        backend = await self.backend(name)
        keys = [chunk_key(backend.spec, cid) for cid in chunk_ids]
        await trio.to_thread.run_sync(backend.delete, keys, limiter=self.limiter)

    async def listing(self, name: str) -> dict[bytes, int]:
        """Every chunk object in tier ``name``: id -> size (objects that are not chunks skipped)."""
        backend = await self.backend(name)
        spec = backend.spec

        def collect() -> dict[bytes, int]:
            out: dict[bytes, int] = {}
            prefix = chunk_key(spec, bytes(32)).rsplit("/", 3)[0]
            for key, size in backend.list(prefix):
                cid = chunk_id_of_key(spec, key)
                if cid is not None:
                    out[cid] = size
            return out

        listed: dict[bytes, int] = await trio.to_thread.run_sync(collect, limiter=self.limiter)
        return listed

    def read_stats(self) -> dict[str, Any]:
        cache = self.cache
        return {
            "cache_bytes": 0 if cache is None else cache.size_bytes,
            "cache_hits": 0 if cache is None else cache.hits,
            "cache_misses": 0 if cache is None else cache.misses,
            "cold_reads": self.cold_reads,
            "cold_read_bytes": self.cold_read_bytes,
            "cold_read_seconds": round(self.cold_read_seconds, 3),
            "cold_read_failures": self.cold_read_failures,
        }

    async def aclose(self) -> None:
        for backend in self._backends.values():
            await trio.to_thread.run_sync(backend.close)
        self._backends.clear()


def _burst(spec: TierSpec) -> int:
    # A second's worth, and never less than one chunk of the largest size we store.
    return max(int(spec.bandwidth_bytes_per_s or 0), 8 * 1024 * 1024)


class _Pass:
    """One pass's progress (`dfs tier status`) and summary (`dfs tier run`)."""

    def __init__(self, verify: bool) -> None:
        self.started = time.time()
        self.verify = verify
        self.planned_bytes = 0
        self.moved_bytes = 0
        self.copies = 0
        self.cold = 0
        self.local_deleted = 0
        self.deleted = 0
        self.warmed = 0
        self.missing_found = 0
        self.strays_deleted = 0
        self.strays_found = 0
        self.scrubbed = 0
        self.corrupt_found = 0
        self.lost: list[str] = []
        self.errors: list[str] = []
        self.down: set[str] = set()
        self.finished: float | None = None

    def doc(self) -> dict[str, Any]:
        elapsed = (self.finished or time.time()) - self.started
        rate = self.moved_bytes / elapsed if elapsed > 0 else 0.0
        left = max(0, self.planned_bytes - self.moved_bytes)
        return {
            "started": self.started,
            "finished": self.finished,
            "verify": self.verify,
            "planned_bytes": self.planned_bytes,
            "moved_bytes": self.moved_bytes,
            "rate_bytes_per_s": round(rate, 1),
            "eta_s": None if self.finished or not rate else round(left / rate, 1),
            "copies_stored": self.copies,
            "chunks_made_cold": self.cold,
            "local_copies_deleted": self.local_deleted,
            "objects_deleted": self.deleted,
            "chunks_warmed": self.warmed,
            "missing_copies_found": self.missing_found,
            "stray_objects_deleted": self.strays_deleted,
            "copies_scrubbed": self.scrubbed,
            "corrupt_copies_found": self.corrupt_found,
            "lost_chunks": self.lost[:20],
            "tiers_down": sorted(self.down),
            "errors": self.errors[:20],
        }


class TierWorker:
    """The leader's tiering duty; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        metacalls: MetaCalls,
        tiers: TierSet,
        chunks: ChunkStore,
        threads: ChunkThreads,
        cluster: ClusterRunner,
    ) -> None:
        self.cfg = cfg
        self._metacalls = metacalls
        self._m = metacalls.run
        self.tiers = tiers
        self.chunks = chunks
        self._c = threads.run
        self._cluster = cluster
        self._lock = trio.Lock()
        self._verified_at = -math.inf
        self.current: _Pass | None = None
        self.last: _Pass | None = None
        # Totals over the passes since start (metrics).
        self.total_moved_bytes = 0
        self.total_made_cold = 0
        self.total_errors = 0
        # Set by the service: wraps metadata calls in the leader's fencing check.
        self.fence: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda fn: fn

    async def step(self) -> None:
        """The periodic duty: a pass, verifying when it is due."""
        every = self.cfg.tiers.verify_interval_s
        due = every > 0 and time.monotonic() - self._verified_at >= every
        await self.run_pass(verify=due)

    async def run_pass(self, verify: bool = False) -> dict[str, Any]:
        async with self._lock:
            await self.tiers.refresh(force=True)
            p = self.current = _Pass(verify)
            meta = self._metacalls.meta
            try:
                if verify:
                    for name in self.tiers.names():
                        await self._verify(p, name)
                    self._verified_at = time.monotonic()
                await self._deletions(p)
                await self._pins(p)
                for vol in await self._m(meta.tier_volume_policies):
                    if p.moved_bytes >= self.cfg.tiers.max_bytes_per_pass:
                        break
                    await self._volume(p, vol)
            finally:
                p.finished = time.time()
                self.current, self.last = None, p
                self.total_moved_bytes += p.moved_bytes
                self.total_made_cold += p.cold
                self.total_errors += len(p.errors)
            doc = p.doc()
            if p.copies or p.cold or p.deleted or p.errors or p.lost:
                log.info("tiering pass", extra={"ctx": {k: v for k, v in doc.items() if v}})
            for cid in p.lost:
                log.error("chunk %s: its only copies were in tiers that lost them", cid)
            return doc

    # -- pieces of a pass ------------------------------------------------------------------------
    async def _blob(self, chunk_id: bytes, p: _Pass) -> bytes:
        """A verified blob of ``chunk_id``: this node's disks, another node, or a tier."""
        try:
            blob: bytes = await self._c(self.chunks.get, chunk_id)
            return blob
        except (ChunkMissing, CorruptChunk):
            pass
        chunkio = self._cluster.chunkio
        if chunkio is not None and self._cluster.clustered():
            try:
                blob, _node = await chunkio.get(chunk_id)
                return blob
            except DfsError:
                pass
        order = [t for t in self.tiers.names() if t not in p.down]
        return await self.tiers.fetch(chunk_id, order)

    async def _store(
        self, p: _Pass, chunk_id: bytes, size: int, lacking: list[str]
    ) -> list[tuple[bytes, str, int]]:
        """Copies of ``chunk_id`` in the tiers it lacks (not those down); the rows to record."""
        todo = [t for t in lacking if t not in p.down]
        if not todo:
            return []
        try:
            blob = await self._blob(chunk_id, p)
        except DfsError as exc:
            p.errors.append(f"chunk {chunk_id.hex()[:16]}: {exc.message}")
            return []
        rows = []
        for name in todo:
            try:
                await self.tiers.put(name, chunk_id, blob)
            except DfsError as exc:
                p.down.add(name)
                p.errors.append(f"tier {name}: {exc.message}")
                continue
            rows.append((chunk_id, name, len(blob)))
            p.moved_bytes += len(blob)
        return rows

    async def _drop_local(self, p: _Pass, chunk_ids: list[bytes]) -> None:
        if not chunk_ids:
            return
        chunkio = self._cluster.chunkio
        if chunkio is not None and self._cluster.clustered():
            await chunkio.delete_everywhere(chunk_ids)
        else:
            await self._c(self.chunks.delete, chunk_ids)
        p.local_deleted += len(chunk_ids)

    async def _volume(self, p: _Pass, vol: dict[str, Any]) -> None:
        meta = self._metacalls.meta
        day_ns = self.cfg.tiers.day_s * 1e9
        older_than_ns = time.time_ns() - int(float(vol["after_days"]) * day_ns)
        tiers = [t for t in vol["tiers"] if t in self.tiers.names()]
        unknown = sorted(set(vol["tiers"]) - set(tiers))
        if unknown:
            p.errors.append(f"volume {vol['name']}: unknown tier(s) {', '.join(unknown)}")
        if not tiers:
            return
        cold = vol["mode"] in ("tiered", "cloud") and not unknown
        after = 0
        while True:
            nxt, work = await self._m(
                meta.tier_candidates,
                int(vol["ino"]),
                after,
                PAGE_FILES,
                older_than_ns,
                tiers,
                cold,
                vol["roots"],
            )
            p.planned_bytes += sum(size * max(1, len(lacking)) for _, size, lacking in work)
            for i in range(0, len(work), BATCH_CHUNKS):
                if p.moved_bytes >= self.cfg.tiers.max_bytes_per_pass:
                    return
                await self._batch(p, work[i : i + BATCH_CHUNKS], tiers, cold)
            if nxt is None:
                return
            after = nxt

    async def _batch(
        self, p: _Pass, work: list[tuple[bytes, int, list[str]]], tiers: list[str], cold: bool
    ) -> None:
        meta = self._metacalls.meta
        rows: list[tuple[bytes, str, int]] = []

        async def one(cid: bytes, size: int, lacking: list[str]) -> None:
            rows.extend(await self._store(p, cid, size, lacking))

        async with trio.open_nursery() as nursery:
            for cid, size, lacking in work:
                nursery.start_soon(one, cid, size, lacking)
        if rows:
            p.copies += await self._m(self.fence(meta.tier_copies_add), rows)
        if cold and not (set(tiers) & p.down):
            marked = await self._m(self.fence(meta.tier_make_cold), [cid for cid, _, _ in work], tiers)
            p.cold += len(marked)
            await self._drop_local(p, marked)

    async def _deletions(self, p: _Pass) -> None:
        meta = self._metacalls.meta
        while True:
            batch = await self._m(meta.tier_deletions_batch, DELETE_BATCH)
            by_tier: dict[str, list[bytes]] = {}
            for cid, tier in batch:
                by_tier.setdefault(tier, []).append(cid)
            done: list[tuple[bytes, str]] = []
            for tier, ids in by_tier.items():
                if tier not in self.tiers.names():
                    done += [(cid, tier) for cid in ids]  # the tier is gone: nothing to delete
                    continue
                if tier in p.down:
                    continue
                try:
                    await self.tiers.delete(tier, ids)
                except DfsError as exc:
                    p.down.add(tier)
                    p.errors.append(f"tier {tier}: {exc.message}")
                    continue
                p.deleted += len(ids)
                done += [(cid, tier) for cid in ids]
            if done:
                await self._m(self.fence(meta.tier_deletions_done), done)
            if len(batch) < DELETE_BATCH or not done:
                return

    async def _pins(self, p: _Pass) -> None:
        """Bring the cold chunks of pinned trees back to local disks (R copies), then warm."""
        meta = self._metacalls.meta
        for ino in await self._m(meta.tier_pins):
            ids = await self._m(meta.tier_pinned_chunks, ino, 1000)
            if ids:
                await self._warm(p, ids)

    async def _warm(self, p: _Pass, chunk_ids: list[bytes]) -> None:
        meta = self._metacalls.meta
        chunkio = self._cluster.chunkio
        warmed: list[bytes] = []
        for cid in chunk_ids:
            try:
                blob = await self._blob(cid, p)
                if chunkio is not None and self._cluster.clustered():
                    await chunkio.put(cid, blob, Policy(self.cfg.cluster.replicas, "strong"), force=True)
                else:
                    await self._c(self.chunks.put, cid, blob)
            except DfsError as exc:
                p.errors.append(f"warming chunk {cid.hex()[:16]}: {exc.message}")
                continue
            warmed.append(cid)
        if warmed:
            p.warmed += await self._m(self.fence(meta.tier_warm), warmed)

    async def _verify(self, p: _Pass, name: str, *, fix: bool = True) -> None:
        """List tier ``name`` and compare it with metadata (see the module docstring); without
        ``fix`` only count what differs (fsck)."""
        meta = self._metacalls.meta
        try:
            listed = await self.tiers.listing(name)
        except DfsError as exc:
            p.down.add(name)
            p.errors.append(f"tier {name}: {exc.message}")
            return
        after = b""
        known: set[bytes] = set()
        while True:
            ids = await self._m(meta.tier_rows, name, after, VERIFY_PAGE)
            known.update(ids)
            missing = [cid for cid in ids if cid not in listed]
            if missing:
                p.missing_found += len(missing)
                if fix:
                    lost = await self._m(self.fence(meta.tier_forget_copies), name, missing)
                    p.lost += [cid.hex() for cid in lost]
            if len(ids) < VERIFY_PAGE:
                break
            after = ids[-1]
        if fix:
            await self._scrub(p, name, [cid for cid in known if cid in listed])
        # Objects metadata does not know: an upload whose row was never written (a crash between
        # the two), or a copy of a chunk since collected.  Queued deletions are done in step 2.
        strays = [cid for cid in listed if cid not in known]
        if strays:
            still = await self._m(meta.tier_copies_of, strays)
            strays = [cid for cid in strays if name not in still.get(cid, ())]
        if strays and not fix:
            p.strays_found += len(strays)
        elif strays:
            try:
                await self.tiers.delete(name, strays)
                p.strays_deleted += len(strays)
            except DfsError as exc:
                p.errors.append(f"tier {name}: {exc.message}")

    async def _scrub(self, p: _Pass, name: str, ids: list[bytes]) -> None:
        """Read a random sample of tier ``name``'s copies back; a damaged one is deleted and
        forgotten, so the pass stores a sound copy again."""
        meta = self._metacalls.meta
        bad: list[bytes] = []
        for cid in _SAMPLER.sample(ids, min(SCRUB_SAMPLE, len(ids))):
            try:
                await self.tiers.get(name, cid)
            except CorruptChunk:
                bad.append(cid)
            except DfsError as exc:
                p.errors.append(f"tier {name}: {exc.message}")
                return
            p.scrubbed += 1
        if bad:
            log.warning("tier %s: %d damaged chunk copies found, stored again", name, len(bad))
            p.corrupt_found += len(bad)
            await self.tiers.delete(name, bad)
            p.lost += [c.hex() for c in await self._m(self.fence(meta.tier_forget_copies), name, bad)]

    async def fsck(self, repair: bool) -> list[str]:
        """`dfs fsck` over the tiers: every copy metadata records is in its tier, and every chunk
        object in a tier is one metadata records; ``repair`` does what a verify pass does."""
        await self.tiers.refresh(force=True)
        problems: list[str] = []
        if not self.tiers.names():
            return problems
        # A pass may run for hours: fsck waits a while for it, then checks what it can without
        # the tiers rather than hang (the next verify pass compares them anyway).
        acquired = False
        with trio.move_on_after(FSCK_WAIT_S):
            await self._lock.acquire()
            acquired = True
        if not acquired:
            log.warning("fsck: tiers not compared, a tiering pass is running (see dfs tier status)")
            return problems
        try:
            for name in self.tiers.names():
                p = _Pass(verify=True)
                await self._verify(p, name, fix=repair)
                if name in p.down:
                    problems.append(f"tier {name} could not be checked: {'; '.join(p.errors)[:300]}")
                    continue
                if p.missing_found:
                    problems.append(
                        f"{p.missing_found} chunk copies recorded in tier {name} are missing there"
                    )
                if p.strays_found or p.strays_deleted:
                    n = p.strays_found + p.strays_deleted
                    problems.append(f"{n} objects in tier {name} are copies no metadata records")
                problems += [f"LOST chunk {cid} (its tier copies are gone)" for cid in p.lost]
        finally:
            self._lock.release()
        return problems

    # -- status ----------------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        meta = self._metacalls.meta
        usage = await self._m(meta.tier_usage)
        specs = await self._m(meta.tier_specs)
        vols = await self._m(meta.tier_volume_policies)
        tiers = []
        for doc in specs:
            spec = doc["spec"]
            held = usage["tiers"].get(doc["name"], {"copies": 0, "bytes": 0})
            tiers.append(
                {
                    "name": doc["name"],
                    "kind": spec.get("kind"),
                    "bucket": spec.get("bucket"),
                    "prefix": spec.get("prefix", ""),
                    "copies": held["copies"],
                    "bytes": held["bytes"],
                    "cost_per_gib_month": spec.get("cost_per_gib_month"),
                    "monthly_cost": (
                        None
                        if spec.get("cost_per_gib_month") is None
                        else round(held["bytes"] / 1024**3 * float(spec["cost_per_gib_month"]), 4)
                    ),
                    "volumes": [v["name"] for v in vols if doc["name"] in v["tiers"]],
                }
            )
        return {
            "tiers": tiers,
            "volumes": vols,
            "cold_chunks": usage["cold_chunks"],
            "cold_bytes": usage["cold_bytes"],
            "deletions_pending": usage["deletions_pending"],
            "pins": usage["pins"],
            "running": None if self.current is None else self.current.doc(),
            "last_pass": None if self.last is None else self.last.doc(),
            "reads": self.tiers.read_stats(),
        }


class TierHandlers:
    """The ``tier.*`` endpoints (the metadata primary answers them)."""

    def __init__(self, metacalls: MetaCalls, tiers: TierSet, worker: TierWorker) -> None:
        self._metacalls = metacalls
        self._tiers = tiers
        self._worker = worker

    async def put(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Define (or change) a tier once its store answers with the credentials given."""
        parsed = TierSpec.from_dict({**spec, "name": name})

        def check() -> None:
            backend = open_backend(parsed)
            try:
                backend.check()
            finally:
                backend.close()

        await trio.to_thread.run_sync(check)
        doc: dict[str, Any] = await self._metacalls.run(self._metacalls.meta.tier_put, name, parsed.to_dict())
        await self._tiers.refresh(force=True)
        return doc

    async def delete(self, name: str) -> None:
        await self._metacalls.run(self._metacalls.meta.tier_delete, name)
        await self._tiers.refresh(force=True)

    async def specs(self) -> list[dict[str, Any]]:
        specs: list[dict[str, Any]] = await self._metacalls.run(self._metacalls.meta.tier_specs)
        return specs

    async def status(self) -> dict[str, Any]:
        return await self._worker.status()

    async def pin(self, path: str, pinned: bool) -> dict[str, Any]:
        ino = await self._metacalls.run(self._metacalls.meta.tier_pin, path, pinned)
        return {"path": path, "ino": ino, "pinned": pinned}

    async def run(self, verify: bool = False) -> dict[str, Any]:
        return await self._worker.run_pass(verify=bool(verify))

    async def warm(self, chunk_ids: list[bytes]) -> int:
        n: int = await self._metacalls.run(self._metacalls.meta.tier_warm, list(chunk_ids))
        return n
