"""The re-mark worker: after a replication policy change, the metadata primary (with PostgreSQL:
the leader) marks the existing chunks of the subtree again (daemon/meta/remark.py), one bounded
metadata-thread step at a time, then has every node's repair look, so copies are added (R raised)
or surplus ones removed (R lowered).  Its progress feeds ``dfs status`` and the metrics.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from daemon.meta.remark import STEP_CHUNKS
from daemon.service.cluster_runner import ClusterRunner
from daemon.service.meta_calls import MetaCalls
from dfs.core.endpoints import SYS_REPAIR_NOW
from dfs.core.errors import DfsError
from dfs.core.placement import NodeState

log = logging.getLogger("dfs.daemon")

# One run of the worker steps for at most this long, then lets the next periodic run go on:
# every step is its own metadata-thread call, so clients' calls interleave between steps.
SLICE_S = 2.0
# Repair rounds are whole passes over a node's chunks: ask for one at most this often while
# re-marking changes rows, and once more when the jobs are done.
KICK_EVERY_S = 10.0
# Rate window for the ETA.
_RATE_WINDOW_S = 60.0
_SAMPLES = 256


class Remarker:
    """Runs the pending re-mark jobs; :meth:`step` is a periodic duty of the metadata leader."""

    def __init__(
        self,
        metacalls: MetaCalls,
        cluster: ClusterRunner,
        fence: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda fn: fn,
    ) -> None:
        self._metacalls = metacalls
        self._cluster = cluster
        self._fence = fence
        self.progress: dict[str, int] = {"jobs": 0, "counting": 0, "total": 0, "marked": 0}
        self.marked = 0  # block references marked since start (a counter, for the metrics)
        self.changed = 0  # chunk rows changed since start
        self.active = False  # has this daemon run the duty (it leads)?
        self._samples: deque[tuple[float, int]] = deque(maxlen=_SAMPLES)
        self._kicked_at = 0.0
        self._owed_kick = False

    async def step(self) -> None:
        store = self._metacalls.meta
        self.active = True
        # A read first: an idle worker takes no write lock every second.
        self.progress = await self._metacalls.run(store.remark_progress)
        if not self.progress["jobs"] and not self._owed_kick:
            return
        end = time.monotonic() + SLICE_S
        jobs = self.progress["jobs"]
        while jobs and time.monotonic() < end:
            done: dict[str, int] = await self._metacalls.run(self._fence(store.remark_step), STEP_CHUNKS)
            jobs = done["jobs"]
            self.marked += done["marked"]
            self.changed += done["changed"]
            self._owed_kick = self._owed_kick or done["changed"] > 0
            if not done["marked"] and not done["changed"] and not jobs:
                break
        self._samples.append((time.monotonic(), self.marked))
        self.progress = await self._metacalls.run(store.remark_progress)
        now = time.monotonic()
        if self._owed_kick and (not jobs or now - self._kicked_at >= KICK_EVERY_S):
            self._owed_kick = False
            self._kicked_at = now
            await self._kick_repair()

    async def _kick_repair(self) -> None:
        """Ask every node's repair for a round now (each repairs the chunks it holds)."""
        cluster = self._cluster
        if cluster.repair is not None:
            cluster.repair.kick()
        chunkio = cluster.chunkio
        if chunkio is None:
            return
        view = await chunkio.view()
        me = cluster.cfg.node_id

        async def kick(node_id: str) -> None:
            try:
                await chunkio.call_node(node_id, SYS_REPAIR_NOW, view=view)
            except DfsError as exc:  # it runs its own round on its interval anyway
                log.info("re-mark: repair kick to %s: %s", node_id, exc.message)

        async with trio.open_nursery() as nursery:
            for node in view.layout.nodes:
                if node.node_id != me and node.state is not NodeState.OUT and not view.is_down(node.node_id):
                    nursery.start_soon(kick, node.node_id)

    def rate_chunks_s(self) -> float:
        """Block references marked per second over the last minute (0: none, or no samples)."""
        now = time.monotonic()
        recent = [(t, n) for t, n in self._samples if now - t <= _RATE_WINDOW_S]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return 0.0
        return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])

    def status(self) -> dict[str, Any] | None:
        """Progress for ``dfs status`` (None on a daemon that does not run the duty)."""
        if not self.active:
            return None
        p = self.progress
        rate = self.rate_chunks_s()
        left = max(0, p["total"] - p["marked"])
        eta = round(left / rate, 1) if p["jobs"] and not p["counting"] and rate > 0 else None
        return {**p, "rate_chunks_s": round(rate, 1), "eta_s": eta}
