"""Replicated chunk I/O: :class:`ChunkIO` puts and reads chunk copies on the nodes that hold them.

Used by every client of the cluster (the mount, the S3 shim, the CLI and the
daemons' own repair loops).  The trio adapter over the replica policy of
:mod:`dfs.core.replicas` (which nodes, in which order, how many copies must
be durable): one RPC connection per peer, parallel puts with the consistency
level's acknowledgement rule, hints for copies still owed, and reads that
fall back replica by replica.

A write is acknowledged once the level's copies are durable (each node
fsyncs before answering) *and* every copy still missing is recorded as a
hint on a node that holds the chunk, so a copy is never owed silently.
Copies still in flight when the write is acknowledged may finish in the
background within a memory budget; the hint covers them either way.  Every
node verifies a chunk's checksum before serving it (and quarantines a bad
copy for repair), and the client verifies again when it decodes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from dfs.core import wire
from dfs.core.endpoints import (
    CHUNK_DELETE,
    CHUNK_GET,
    CHUNK_HAS,
    CHUNK_HINT,
    CHUNK_PUT,
    CHUNK_VERIFY,
    Caller,
    Endpoint,
)
from dfs.core.errors import ChunkMissing, CorruptChunk, DfsError, Unavailable
from dfs.core.replicas import ClusterView, Policy, copies_needed, read_order, single_node_view, write_targets

log = logging.getLogger("dfs.chunkio")
R = TypeVar("R")

# After the needed copies are durable, wait this long (plus half the time taken) for the rest
# before leaving them to hints: in a healthy cluster they land within it and no hint is written.
_STRAGGLER_GRACE_S = 0.05
# A chunk smaller than this is sent without asking first whether the node holds it: the
# question costs a round trip and a handler, more than sending the bytes (a put of a chunk
# already held only checks that it exists).  Small files are most chunks in a source tree.
PROBE_MIN_BYTES = 64 * 1024
_STRAGGLER_GRACE_MAX_S = 1.0
# Bytes of chunk copies allowed to finish in the background after their write was acknowledged.
_BACKGROUND_BYTES = 256 * 1024 * 1024


@dataclass
class WriteStats:
    """Counters a ChunkIO keeps (exported as metrics by whoever owns it)."""

    puts: int = 0
    copies: int = 0
    skipped: int = 0  # copies a replica already held (dedup)
    hints: int = 0
    substitutes: int = 0
    read_fallbacks: int = 0


class ChunkIO:
    """Replicated puts and fallback reads over one RPC connection per peer.

    ``home`` is the caller for this client's own daemon (an RPC connection or
    the daemon's in-process dispatcher); ``connect`` opens a caller for
    another node's RPC address, and is called at most once per address.
    ``fetch_view`` returns the current :class:`ClusterView`; it is asked again
    every ``refresh_s`` and after a failure.
    """

    def __init__(
        self,
        home: Caller,
        home_node: str,
        nursery: trio.Nursery,
        *,
        fetch_view: Callable[[], Any],
        connect: Callable[[str], Caller] | None = None,
        refresh_s: float = 2.0,
        peer_timeout_s: float = 30.0,
    ) -> None:
        self.home = home
        self.home_node = home_node
        self._nursery = nursery
        self._fetch_view = fetch_view
        self._connect = connect
        self.refresh_s = refresh_s
        self.peer_timeout_s = peer_timeout_s
        self._peers: dict[str, Caller] = {}
        self._view: ClusterView = single_node_view(home_node)
        self._view_at = -math.inf
        self._view_lock = trio.Lock()
        self._background_bytes = 0
        self.stats = WriteStats()

    # -- view ------------------------------------------------------------------------
    async def view(self) -> ClusterView:
        if time.monotonic() - self._view_at < self.refresh_s:
            return self._view
        async with self._view_lock:
            if time.monotonic() - self._view_at >= self.refresh_s:
                try:
                    self._view = await self._fetch_view()
                    self._drop_stale_peers()
                except DfsError as exc:
                    log.warning("cluster view refresh failed: %s", exc.message)
                self._view_at = time.monotonic()
        return self._view

    def _drop_stale_peers(self) -> None:
        """Close the connections to addresses no node has any more (a node that came back at
        another address, one removed): kept, there was one per address ever seen."""
        view = self._view
        live = {n.address for n in view.layout.nodes} | {m.address for m in view.members.values()}
        for address in [a for a in self._peers if a not in live]:
            close = getattr(self._peers.pop(address), "aclose", None)
            if close is not None:
                self._nursery.start_soon(close)

    def set_view(self, view: ClusterView) -> None:
        self._view = view
        self._view_at = time.monotonic()

    def invalidate(self) -> None:
        self._view_at = -math.inf

    def caller(self, node_id: str, view: ClusterView | None = None) -> Caller:
        if node_id == self.home_node:
            return self.home
        address = (view or self._view).address(node_id)
        if not address or self._connect is None:
            raise Unavailable(f"no address known for node {node_id!r}")
        peer = self._peers.get(address)
        if peer is None:
            peer = self._peers[address] = self._connect(address)
        return peer

    async def call_node(
        self, node_id: str, endpoint: Endpoint[R], *args: Any, view: ClusterView | None = None
    ) -> R:
        """One call to one node, bounded by ``peer_timeout_s`` (Unavailable past it)."""
        caller = self.caller(node_id, view)
        with trio.move_on_after(self.peer_timeout_s) as scope:
            return await endpoint.call(caller, *args)
        assert scope.cancelled_caught
        raise Unavailable(f"node {node_id} did not answer {endpoint.name} within {self.peer_timeout_s:g}s")

    # -- writes ----------------------------------------------------------------------
    async def put(
        self, chunk_id: bytes, blob: bytes | wire.Pieces, policy: Policy, *, force: bool = False
    ) -> int:
        """Store ``blob`` durably on enough replicas for ``policy``; returns the copies made.

        ``force`` skips the "already held?" question (a retry after the metadata
        service found the chunk missing).  Raises Unavailable when fewer copies
        than the level requires could be made.
        """
        view = await self.view()
        targets, down, spares = write_targets(view, chunk_id, policy.replicas)
        # The chunk's copy count n, not len(targets): those include substitutes for down replicas.
        need = copies_needed(policy.consistency, view.replica_count(policy.replicas))
        self.stats.puts += 1
        self.stats.substitutes += len(targets) - (view.replica_count(policy.replicas) - len(down))
        started = time.monotonic()
        acked: list[str] = []
        failures: list[DfsError] = []
        owed: list[str] = list(down)
        pending: set[str] = set()
        scopes: dict[str, trio.CancelScope] = {}
        enough = trio.Event()
        finished = trio.Event()

        def settle() -> None:
            if len(acked) >= need:
                enough.set()
            if not pending:
                finished.set()
                enough.set()

        async def copy_to(node_id: str) -> None:
            # After a failure the task goes on to the next spare itself (hinted handoff).  No
            # closure here refers back to this one: with such a cycle (this calling a starter
            # that named it) the blob lived until Python's cycle collector ran, which under a
            # steady write was long after the copy; a mount kept up to 150 MiB of them.
            scope = scopes[node_id]
            with scope:
                while True:
                    error = await self._copy(node_id, chunk_id, blob, view, force=force)
                    if error is None:
                        acked.append(node_id)
                        break
                    failures.append(error)
                    owed.append(node_id)
                    if not spares:
                        break
                    self.stats.substitutes += 1
                    pending.discard(node_id)
                    node_id = spares.pop(0)
                    pending.add(node_id)
                    scopes[node_id] = scope
            pending.discard(node_id)
            settle()

        for node_id in targets:
            pending.add(node_id)
            scopes[node_id] = trio.CancelScope()
            self._nursery.start_soon(copy_to, node_id)
        settle()
        await enough.wait()
        if len(acked) < need:
            if not acked and failures and all(type(e) is type(failures[0]) for e in failures):
                raise failures[0]  # e.g. every replica is full: ENOSPC, not a vague EIO
            raise Unavailable(
                f"chunk {chunk_id.hex()[:16]}: {len(acked)} of {need} required copies durable "
                f"(level {policy.consistency})"
            )
        if pending:
            grace = min(_STRAGGLER_GRACE_MAX_S, _STRAGGLER_GRACE_S + (time.monotonic() - started) / 2)
            with trio.move_on_after(grace):
                await finished.wait()
        still = sorted(pending)
        missing = [x for x in dict.fromkeys([*owed, *still]) if x not in acked]
        if missing:
            await self._hint(acked, missing, chunk_id, view)
        if still:
            self._leave_in_background([scopes[x] for x in still], finished, len(blob))
        self.stats.copies += len(acked)
        return len(acked)

    async def _copy(
        self, node_id: str, chunk_id: bytes, blob: bytes | wire.Pieces, view: ClusterView, *, force: bool
    ) -> DfsError | None:
        """Put one copy on ``node_id``; the error if that failed, without its traceback or
        chained errors: their frames hold the blob, and the caller keeps the error a while."""
        try:
            held = False
            if not force and len(blob) >= PROBE_MIN_BYTES:
                (held,) = await self.call_node(node_id, CHUNK_HAS, [chunk_id], view=view)
                self.stats.skipped += bool(held)
            if not held:
                await self.call_node(node_id, CHUNK_PUT, chunk_id, blob, view=view)
            return None
        except Exception as exc:  # a bug here must not take down the caller's nursery
            error = exc if isinstance(exc, DfsError) else None
            if error is None:
                log.exception("copy of chunk %s to %s failed", chunk_id.hex()[:16], node_id)
                error = Unavailable(f"copy to {node_id} failed: {exc!r:.200}")
            log.info("copy of chunk %s to %s failed: %s", chunk_id.hex()[:16], node_id, error.message)
            error.__cause__ = error.__context__ = None
            return error.with_traceback(None)

    def _leave_in_background(self, scopes: list[trio.CancelScope], finished: trio.Event, size: int) -> None:
        """Let copies still in flight finish after the write returned, within a memory budget
        (each holds the blob); past it, or past ``peer_timeout_s``, they are cancelled: hints cover them."""
        if self._background_bytes + size > _BACKGROUND_BYTES:
            for scope in scopes:
                scope.cancel()
            return
        self._background_bytes += size

        async def wait_then_release() -> None:
            with trio.move_on_after(self.peer_timeout_s):
                await finished.wait()
            for scope in scopes:
                scope.cancel()
            self._background_bytes -= size

        self._nursery.start_soon(wait_then_release)

    async def _hint(self, holders: list[str], owed: list[str], chunk_id: bytes, view: ClusterView) -> None:
        """Record on one holder of the chunk that ``owed`` nodes still need a copy (durably)."""
        order = sorted(holders, key=lambda x: x != self.home_node)
        for holder in order:
            try:
                await self.call_node(holder, CHUNK_HINT, owed, [chunk_id], view=view)
                self.stats.hints += len(owed)
                return
            except DfsError as exc:
                log.warning("recording hints on %s failed: %s", holder, exc.message)
        raise Unavailable(f"chunk {chunk_id.hex()[:16]}: no holder could record the copies still owed")

    # -- reads -----------------------------------------------------------------------
    async def get_plain(self, chunk_id: bytes, decode: Callable[[bytes], Any]) -> Any:
        """Fetch and decode; a copy that fails to decode is skipped and the next node asked."""
        bad: list[str] = []
        while True:
            blob, node_id = await self.get(chunk_id, skip=bad)
            try:
                return await decode(blob)
            except CorruptChunk:
                log.warning("chunk %s from %s failed verification", chunk_id.hex()[:16], node_id)
                bad.append(node_id)
                self._nursery.start_soon(self._report_bad, node_id, chunk_id)

    async def _report_bad(self, node_id: str, chunk_id: bytes) -> None:
        """Ask ``node_id`` to check its copy again; a corrupt one is quarantined and replaced there."""
        try:
            await self.call_node(node_id, CHUNK_VERIFY, chunk_id)
        except CorruptChunk:
            log.warning("chunk %s: %s's copy is corrupt, it is being replaced", chunk_id.hex()[:16], node_id)
        except DfsError as exc:
            log.info(
                "chunk %s: reporting the bad copy to %s failed: %s", chunk_id.hex()[:16], node_id, exc.message
            )
        else:
            log.warning(
                "chunk %s: %s's copy is sound; it was damaged in transit", chunk_id.hex()[:16], node_id
            )

    async def get(self, chunk_id: bytes, *, skip: Sequence[str] = ()) -> tuple[bytes, str]:
        """The encoded blob of ``chunk_id`` and the node it came from: the best node with a copy.

        Every node verifies a chunk before serving it; the caller decodes, which verifies again.
        """
        view = await self.view()
        errors: list[str] = []
        missing = 0
        for node_id in read_order(view, chunk_id):
            if node_id in skip:
                continue
            try:
                blob = await self.call_node(node_id, CHUNK_GET, chunk_id, view=view)
            except (ChunkMissing, CorruptChunk) as exc:
                missing += 1
                errors.append(f"{node_id}: {exc.message}")
                self.stats.read_fallbacks += 1
                continue
            except Unavailable as exc:
                errors.append(f"{node_id}: {exc.message}")
                self.stats.read_fallbacks += 1
                continue
            assert isinstance(blob, bytes)
            return blob, node_id
        detail = "; ".join(errors)[:500]
        if errors and missing == len(errors):
            raise ChunkMissing(f"chunk {chunk_id.hex()} is on no node: {detail}")
        raise Unavailable(f"chunk {chunk_id.hex()} could not be read: {detail}")

    async def delete_everywhere(self, chunk_ids: list[bytes], nodes: Sequence[str] | None = None) -> None:
        """Delete the copies of ``chunk_ids`` on ``nodes`` (default: every layout node not known
        down), all at once; a node that fails is logged and skipped (its orphan sweep deletes
        its copies later)."""
        if not chunk_ids:
            return
        view = await self.view()
        targets = nodes or [n.node_id for n in view.layout.nodes if not view.is_down(n.node_id)]

        async def one(node_id: str) -> None:
            try:
                await self.call_node(node_id, CHUNK_DELETE, chunk_ids, view=view)
            except DfsError as exc:
                log.info("deleting %d chunk(s) on %s: %s", len(chunk_ids), node_id, exc.message)

        async with trio.open_nursery() as nursery:
            for node_id in targets:
                nursery.start_soon(one, node_id)

    async def has_any(self, chunk_ids: list[bytes]) -> set[bytes]:
        """The ids of ``chunk_ids`` that at least one reachable node holds.

        Asks every node that may hold them (skipping those gossip reports down)
        at once and stops as soon as every id is found: a frozen or dead node
        costs a timeout only when no other node has the answer.
        """
        view = await self.view()
        by_node: dict[str, list[bytes]] = {}
        for cid in chunk_ids:
            for node_id in read_order(view, cid):
                if not view.is_down(node_id):
                    by_node.setdefault(node_id, []).append(cid)
        wanted = set(chunk_ids)
        present: set[bytes] = set()

        async with trio.open_nursery() as nursery:

            async def ask(node_id: str, ids: list[bytes]) -> None:
                try:
                    held = await self.call_node(node_id, CHUNK_HAS, ids, view=view)
                except DfsError as exc:
                    log.info("has() on %s failed: %s", node_id, exc.message)
                    return
                present.update(cid for cid, h in zip(ids, held, strict=True) if h)
                if present >= wanted:
                    nursery.cancel_scope.cancel()

            for node_id, ids in by_node.items():
                nursery.start_soon(ask, node_id, ids)
        return present
