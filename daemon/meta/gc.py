"""Garbage collection of unreferenced chunks, and the chunk questions the orphan sweep asks."""

from __future__ import annotations

from collections.abc import Callable

from daemon.meta.base import _IN_BATCH, MetaBase, _api


class Gc(MetaBase):
    """Collecting chunks whose refcount stayed 0, and telling known chunks from unknown ones."""

    def _snapshot_building(self, now: int) -> bool:
        """Whether a volume snapshot is being copied in batches (daemon/meta/snapshots.py)."""
        raise NotImplementedError

    def _tier_forget(self, chunk_ids: list[bytes]) -> None:
        """Queue the collected chunks' cloud copies for deletion (daemon/meta/tiers.py)."""
        raise NotImplementedError

    @_api
    def gc_collect(
        self, older_than_ns: int, limit: int, delete: Callable[[list[bytes]], None]
    ) -> list[bytes]:
        with self._write() as now:
            if self._snapshot_building(now):
                # A snapshot copies block maps from a read snapshot in batches: every chunk that
                # snapshot names must stay until the copy holds its references.
                return []
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT chunk_id FROM chunks WHERE refcount = 0 AND zero_since_ns < ? "
                    "ORDER BY zero_since_ns LIMIT ?",
                    (older_than_ns, max(limit, 0)),
                )
            ]
            if not ids:
                return []
            # The rows go only after the files are gone, so a crash in between just retries.
            delete(ids)
            self._db.executemany(
                "DELETE FROM chunks WHERE chunk_id = ? AND refcount = 0", [(i,) for i in ids]
            )
            self._tier_forget(ids)
            self._log(now, "gc_collect", [ids])
        return ids

    @_api
    def unknown_chunks(self, chunk_ids: list[bytes]) -> list[bytes]:
        """The ids among ``chunk_ids`` that no chunks row names (never committed, or collected)."""
        known: set[bytes] = set()
        for i in range(0, len(chunk_ids), _IN_BATCH):
            batch = chunk_ids[i : i + _IN_BATCH]
            marks = ",".join("?" * len(batch))
            known.update(
                r[0]
                for r in self._db.execute(f"SELECT chunk_id FROM chunks WHERE chunk_id IN ({marks})", batch)
            )
        return [cid for cid in chunk_ids if cid not in known]

    @_api
    def referenced_chunks(self) -> dict[bytes, int]:
        return dict(self._db.execute("SELECT chunk_id, refcount FROM chunks WHERE refcount >= 0"))
