"""The scheduled-snapshot duty: take and expire the volumes' automatic snapshots.

A cluster-wide duty (the metadata leader runs it, every ``[snapshots]
check_interval_s``).  Each run reads the volumes' schedules and snapshots in
one metadata call, asks the pure planner (dfs/core/snapshot_schedule.py) what
to do, and applies each action as its own metadata call (a snapshot of a big
tree is one transaction of its own; expiring one is another), at most
:data:`MAX_ACTIONS` per run: what is left waits for the next.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from daemon.service.meta_calls import MetaCalls
from dfs.core.errors import DfsError, Exists, NotFound
from dfs.core.snapshot_schedule import Snap, parse_schedule, plan

log = logging.getLogger("dfs.daemon")

MAX_ACTIONS = 64  # snapshots taken or expired per run, across all volumes


class SnapshotDuty:
    """One run per period; ``fence`` wraps each metadata call in the leader's epoch check."""

    def __init__(self, metacalls: MetaCalls, *, now_ns: Callable[[], int] = time.time_ns) -> None:
        self._metacalls = metacalls
        self._now_ns = now_ns
        self.fence: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda fn: fn
        self.last_run_ns: int | None = None  # the end of the last run that failed nothing
        self.taken = 0
        self.expired = 0

    async def step(self) -> None:
        meta = self._metacalls.meta
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
                    await self._metacalls.run(self.fence(meta.create_snapshot), volume, name, origin=tier)
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
