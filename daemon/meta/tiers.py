"""Cloud tiers in metadata: their definitions, the copies each holds, cold chunks, pins.

A tier (dfs/core/tiers.py ``TierSpec``) is an object store that holds copies of
chunks under their ids.  Metadata is the truth about those copies:

- ``tier_copies`` (chunk, tier): the object was stored whole (the put returned)
  before the row was written, so a row never names an object that was not
  there.  An object found missing later (a provider lost it) loses its row
  (:meth:`Tiers.tier_forget_copies`) and the tiering worker stores it again.
- ``tier_cold``: chunks whose local copies are given up.  A chunk is marked cold
  only while it has a copy in every tier its volume's policy names
  (:meth:`Tiers.tier_make_cold`), and only then are its local copies deleted, so a
  cold chunk always has a cloud copy.  Repair leaves cold chunks alone
  (``chunk_factors`` answers None for them): a local copy left over, or fetched
  back by a read, is a cache, not a replica.
- ``tier_deletions``: copies of chunks garbage collection collected, moved there
  in the collecting transaction; the worker deletes the objects, skipping any
  (chunk, tier) stored again since.
- ``tier_pins``: directories and files whose trees stay on local disks.

The copies are counted per tier for ``dfs tier status``; fsck checks that every
cold chunk has a copy and every copy names a defined tier.
"""

from __future__ import annotations

from typing import Any

from daemon.meta.base import _IN_BATCH, _api, _pack_dict, _unpack_dict
from daemon.meta.inodes import Inodes
from dfs.core.errors import InvalidArgument, NotEmpty, NotFound
from dfs.core.namespace import ROOT_INO

_IFMT, _IFREG = 0o170000, 0o100000
# A parent walk longer than any real path only happens on a cycle (a corrupt database).
_MAX_DEPTH = 10_000
TIER_MODES = ("copy", "tiered", "cloud")


def _marks(n: int) -> str:
    return ",".join("?" * n)


class Tiers(Inodes):
    """Tier definitions and the bookkeeping of cloud copies."""

    # -- definitions -----------------------------------------------------------------------------
    @_api
    def tier_put(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Define tier ``name`` (or change it).  Where the objects live (kind, bucket, prefix,
        endpoint) cannot change while the tier holds copies: they would all be lost."""
        packed = _pack_dict(spec, "tier spec")
        with self._write() as now:
            row = self._db.execute("SELECT spec, created_ns FROM tiers WHERE name = ?", (name,)).fetchone()
            if row is not None:
                old = _unpack_dict(row[0])
                moved = [k for k in ("kind", "bucket", "prefix", "endpoint") if old.get(k) != spec.get(k)]
                if moved and self._tier_count(name):
                    raise NotEmpty(
                        f"tier {name!r} holds copies: its {', '.join(moved)} cannot change "
                        "(define a new tier and move the volumes to it)"
                    )
                self._db.execute("UPDATE tiers SET spec = ? WHERE name = ?", (packed, name))
                created = int(row[1])
            else:
                self._db.execute(
                    "INSERT INTO tiers (name, spec, created_ns) VALUES (?, ?, ?)", (name, packed, now)
                )
                created = now
        return {"name": name, "spec": spec, "created_ns": created}

    def _tier_count(self, name: str) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM tier_copies WHERE tier = ?", (name,)).fetchone()
        return int(row[0])

    def _check_tier_policy(self, policy: dict[str, Any]) -> None:
        """A volume policy may name only defined tiers, and a mode only with tiers."""
        names = policy.get("tiers") or []
        known = {r[0] for r in self._db.execute("SELECT name FROM tiers")}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InvalidArgument(f"no tier {unknown[0]!r} (define it with `dfs tier add`)")
        if policy.get("tier_mode") not in (None, *TIER_MODES):
            raise InvalidArgument(f"tier_mode must be one of {', '.join(TIER_MODES)}")
        if policy.get("tier_mode") in ("tiered", "cloud") and not names:
            raise InvalidArgument(f"tier_mode {policy['tier_mode']!r} needs tiers to move the chunks to")

    @_api
    def tier_delete(self, name: str) -> None:
        """Forget tier ``name``: only when no volume names it and it holds no copies."""
        with self._write():
            if self._db.execute("SELECT 1 FROM tiers WHERE name = ?", (name,)).fetchone() is None:
                raise NotFound(f"no tier {name!r}")
            users = [
                vol
                for vol, packed in self._db.execute("SELECT name, policy FROM volumes ORDER BY name")
                if name in (_unpack_dict(packed).get("tiers") or ())
            ]
            if users:
                raise NotEmpty(f"tier {name!r} is in the policy of volume(s) {', '.join(users)}")
            copies = self._tier_count(name)
            if copies:
                raise NotEmpty(
                    f"tier {name!r} still holds {copies} chunk copies (give them time to be deleted)"
                )
            self._db.execute("DELETE FROM tiers WHERE name = ?", (name,))

    @_api
    def tier_specs(self) -> list[dict[str, Any]]:
        """Every tier: ``{"name", "spec", "created_ns"}``, by name."""
        rows = self._db.execute("SELECT name, spec, created_ns FROM tiers ORDER BY name").fetchall()
        return [{"name": n, "spec": _unpack_dict(s), "created_ns": int(c)} for n, s, c in rows]

    @_api
    def tier_usage(self) -> dict[str, Any]:
        """Copies and bytes per tier, cold chunks, and deletions still to do."""
        with self._read():
            per = {
                tier: {"copies": int(n), "bytes": int(b or 0)}
                for tier, n, b in self._db.execute(
                    "SELECT tier, COUNT(*), SUM(stored_bytes) FROM tier_copies GROUP BY tier"
                )
            }
            cold = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(c.stored_bytes), 0) FROM tier_cold t "
                "JOIN chunks c ON c.chunk_id = t.chunk_id"
            ).fetchone()
            pending = self._db.execute("SELECT COUNT(*) FROM tier_deletions").fetchone()
            pins = self._db.execute("SELECT COUNT(*) FROM tier_pins").fetchone()
        return {
            "tiers": per,
            "cold_chunks": int(cold[0]),
            "cold_bytes": int(cold[1]),
            "deletions_pending": int(pending[0]),
            "pins": int(pins[0]),
        }

    @_api
    def tier_volume_policies(self) -> list[dict[str, Any]]:
        """The volumes whose policy names tiers: ``{"name", "ino", "tiers", "mode", "after_days",
        "paths", "roots"}``; ``roots``: the inodes of ``tier_paths`` that exist (None: the whole
        volume)."""
        out = []
        rows = self._db.execute("SELECT name, ino, policy FROM volumes ORDER BY name").fetchall()
        for name, ino, packed in rows:
            policy = _unpack_dict(packed)
            tiers = policy.get("tiers") or []
            paths = policy.get("tier_paths") or None
            roots: list[int] | None = None
            if paths:
                roots = []
                for path in paths:
                    try:
                        roots.append(self._resolve_path(f"/{name}/{path.strip('/')}".rstrip("/")))
                    except (NotFound, InvalidArgument):
                        continue  # not there (yet): nothing under it to tier
            if tiers:
                out.append(
                    {
                        "name": name,
                        "ino": int(ino),
                        "tiers": list(tiers),
                        "mode": policy.get("tier_mode") or "copy",
                        # cloud: the object stores are the volume's home, local disks a cache.
                        "after_days": (
                            0.0
                            if policy.get("tier_mode") == "cloud"
                            else float(policy.get("tier_after_days") or 0.0)
                        ),
                        "paths": paths,
                        "roots": roots,
                    }
                )
        return out

    # -- what to move ----------------------------------------------------------------------------
    @_api
    def tier_candidates(
        self,
        volume_ino: int,
        after_ino: int,
        limit: int,
        older_than_ns: int,
        tiers: list[str],
        cold: bool,
        roots: list[int] | None = None,
    ) -> tuple[int | None, list[tuple[bytes, int, list[str]]]]:
        """One page of the volume's regular files after ``after_ino`` (by inode number, at most
        ``limit``): the next page's start (None: the scan is done) and the chunks of its files
        untouched since ``older_than_ns``, under one of ``roots`` (None: anywhere) and not
        pinned that still need work, as (chunk id,
        stored bytes, tiers lacking a copy); with ``cold``, chunks not yet cold are listed even
        when no copy is lacking (they are to be made cold)."""
        with self._read():
            rows = self._db.execute(
                "SELECT ino, atime_ns, mtime_ns FROM inodes WHERE ino > ? AND (mode & ?) = ? "
                "AND quota IN (SELECT q FROM quota_chain WHERE a = ?) ORDER BY ino LIMIT ?",
                (after_ino, _IFMT, _IFREG, volume_ino, limit),
            ).fetchall()
            nxt = int(rows[-1][0]) if len(rows) == limit else None
            old = [int(ino) for ino, atime, mtime in rows if max(int(atime), int(mtime)) < older_than_ns]
            if roots is not None:
                inside: dict[int, bool] = {}
                old = [ino for ino in old if self._below(ino, set(roots), inside)]
            pins = {int(r[0]) for r in self._db.execute("SELECT ino FROM tier_pins")}
            if old and pins:
                pinned: dict[int, bool] = {}
                old = [ino for ino in old if not self._below(ino, pins, pinned)]
            sizes: dict[bytes, int] = {}
            for i in range(0, len(old), _IN_BATCH):
                batch = old[i : i + _IN_BATCH]
                for cid, stored in self._db.execute(
                    f"SELECT chunk_id, MAX(stored_bytes) FROM blocks WHERE ino IN ({_marks(len(batch))}) "
                    "GROUP BY chunk_id",
                    batch,
                ):
                    sizes[bytes(cid)] = int(stored)
            ids = sorted(sizes)
            have: dict[bytes, set[str]] = {}
            is_cold: set[bytes] = set()
            for i in range(0, len(ids), _IN_BATCH):
                some = ids[i : i + _IN_BATCH]
                for cid, tier in self._db.execute(
                    f"SELECT chunk_id, tier FROM tier_copies WHERE chunk_id IN ({_marks(len(some))})", some
                ):
                    have.setdefault(bytes(cid), set()).add(tier)
                is_cold.update(
                    bytes(r[0])
                    for r in self._db.execute(
                        f"SELECT chunk_id FROM tier_cold WHERE chunk_id IN ({_marks(len(some))})", some
                    )
                )
        out: list[tuple[bytes, int, list[str]]] = []
        for cid in ids:
            lacking = [t for t in tiers if t not in have.get(cid, ())]
            if lacking or (cold and cid not in is_cold):
                out.append((cid, sizes[cid], lacking))
        return nxt, out

    def _below(self, ino: int, tops: set[int], memo: dict[int, bool]) -> bool:
        """Whether ``ino`` or a directory above it is one of ``tops`` (``memo``: per call site)."""
        path: list[int] = []
        cur: int | None = ino
        result = False
        for _ in range(_MAX_DEPTH):
            if cur is None or cur == ROOT_INO:
                break
            if cur in memo:
                result = memo[cur]
                break
            path.append(cur)
            if cur in tops:
                result = True
                break
            row = self._db.execute("SELECT parent FROM dentries WHERE ino = ? LIMIT 1", (cur,)).fetchone()
            cur = None if row is None else int(row[0])
        for p in path:
            memo[p] = result
        return result

    # -- copies ----------------------------------------------------------------------------------
    @_api
    def tier_copies_add(self, rows: list[tuple[bytes, str, int]]) -> int:
        """Record objects stored whole: (chunk id, tier, stored bytes).  A chunk collected while
        it was being stored gets its object queued for deletion instead.  How many recorded."""
        recorded = 0
        with self._write() as now:
            for cid, tier, size in rows:
                if self._db.execute("SELECT 1 FROM chunks WHERE chunk_id = ?", (cid,)).fetchone() is None:
                    self._db.execute(
                        "INSERT INTO tier_deletions (chunk_id, tier, queued_ns) VALUES (?, ?, ?) "
                        "ON CONFLICT (chunk_id, tier) DO NOTHING",
                        (cid, tier, now),
                    )
                    continue
                self._db.execute(
                    "INSERT INTO tier_copies (chunk_id, tier, stored_bytes, stored_ns) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (chunk_id, tier) DO NOTHING",
                    (cid, tier, size, now),
                )
                self._db.execute("DELETE FROM tier_deletions WHERE chunk_id = ? AND tier = ?", (cid, tier))
                recorded += 1
        return recorded

    @_api
    def tier_copies_of(self, chunk_ids: list[bytes]) -> dict[bytes, list[str]]:
        """The tiers holding a copy of each of ``chunk_ids`` (absent: none)."""
        out: dict[bytes, list[str]] = {}
        for i in range(0, len(chunk_ids), _IN_BATCH):
            batch = chunk_ids[i : i + _IN_BATCH]
            for cid, tier in self._db.execute(
                f"SELECT chunk_id, tier FROM tier_copies WHERE chunk_id IN ({_marks(len(batch))}) "
                "ORDER BY tier",
                batch,
            ):
                out.setdefault(bytes(cid), []).append(tier)
        return out

    @_api
    def tier_rows(self, tier: str, after: bytes, limit: int) -> list[bytes]:
        """The chunk ids ``tier`` holds copies of, after ``after``, in id order (a page)."""
        return [
            bytes(r[0])
            for r in self._db.execute(
                "SELECT chunk_id FROM tier_copies WHERE tier = ? AND chunk_id > ? ORDER BY chunk_id LIMIT ?",
                (tier, after, limit),
            )
        ]

    @_api
    def tier_forget_copies(self, tier: str, chunk_ids: list[bytes]) -> list[bytes]:
        """Forget copies found missing from ``tier``.  The cold chunks among them left with no
        copy anywhere (lost, unless a local copy survives): they are made warm again, so repair
        and fsck look at them as ordinary chunks."""
        lost: list[bytes] = []
        with self._write():
            for cid in chunk_ids:
                self._db.execute("DELETE FROM tier_copies WHERE chunk_id = ? AND tier = ?", (cid, tier))
                if (
                    self._db.execute("SELECT 1 FROM tier_cold WHERE chunk_id = ?", (cid,)).fetchone()
                    is not None
                    and self._db.execute("SELECT 1 FROM tier_copies WHERE chunk_id = ?", (cid,)).fetchone()
                    is None
                ):
                    self._db.execute("DELETE FROM tier_cold WHERE chunk_id = ?", (cid,))
                    lost.append(cid)
        return lost

    @_api
    def tier_make_cold(self, chunk_ids: list[bytes], tiers: list[str]) -> list[bytes]:
        """Mark cold those of ``chunk_ids`` that are referenced and have a copy in each of
        ``tiers``; the ids marked (their local copies may now be deleted)."""
        if not tiers:
            raise InvalidArgument("a chunk is made cold only with a copy in at least one tier")
        marked: list[bytes] = []
        with self._write() as now:
            for cid in chunk_ids:
                row = self._db.execute("SELECT refcount FROM chunks WHERE chunk_id = ?", (cid,)).fetchone()
                if row is None or int(row[0]) <= 0:
                    continue
                held = {
                    r[0] for r in self._db.execute("SELECT tier FROM tier_copies WHERE chunk_id = ?", (cid,))
                }
                if not set(tiers) <= held:
                    continue
                self._db.execute(
                    "INSERT INTO tier_cold (chunk_id, since_ns) VALUES (?, ?) "
                    "ON CONFLICT (chunk_id) DO NOTHING",
                    (cid, now),
                )
                marked.append(cid)
        return marked

    @_api
    def tier_warm(self, chunk_ids: list[bytes]) -> int:
        """Make chunks warm again (a local copy holds them now; repair brings them to R)."""
        with self._write():
            n = 0
            for cid in chunk_ids:
                n += self._db.execute("DELETE FROM tier_cold WHERE chunk_id = ?", (cid,)).rowcount or 0
        return n

    @_api
    def tier_cold_of(self, chunk_ids: list[bytes]) -> list[bytes]:
        """The cold ones among ``chunk_ids``."""
        out: list[bytes] = []
        for i in range(0, len(chunk_ids), _IN_BATCH):
            batch = chunk_ids[i : i + _IN_BATCH]
            out += [
                bytes(r[0])
                for r in self._db.execute(
                    f"SELECT chunk_id FROM tier_cold WHERE chunk_id IN ({_marks(len(batch))})", batch
                )
            ]
        return out

    # -- deletions -------------------------------------------------------------------------------
    def _tier_forget(self, chunk_ids: list[bytes]) -> None:
        """In garbage collection's transaction: the collected chunks' copies are queued for
        deletion from their tiers, and they are no longer cold."""
        for i in range(0, len(chunk_ids), _IN_BATCH):
            batch = chunk_ids[i : i + _IN_BATCH]
            marks = _marks(len(batch))
            self._db.execute(
                "INSERT INTO tier_deletions (chunk_id, tier, queued_ns) "
                f"SELECT chunk_id, tier, ? FROM tier_copies WHERE chunk_id IN ({marks}) "
                "ON CONFLICT (chunk_id, tier) DO NOTHING",
                [self._txn_now or 0, *batch],
            )
            self._db.execute(f"DELETE FROM tier_copies WHERE chunk_id IN ({marks})", batch)
            self._db.execute(f"DELETE FROM tier_cold WHERE chunk_id IN ({marks})", batch)

    @_api
    def tier_deletions_batch(self, limit: int) -> list[tuple[bytes, str]]:
        """Up to ``limit`` (chunk, tier) objects to delete, oldest first."""
        return [
            (bytes(c), t)
            for c, t in self._db.execute(
                "SELECT chunk_id, tier FROM tier_deletions ORDER BY queued_ns, chunk_id LIMIT ?", (limit,)
            )
        ]

    @_api
    def tier_deletions_done(self, rows: list[tuple[bytes, str]]) -> None:
        with self._write():
            self._db.executemany("DELETE FROM tier_deletions WHERE chunk_id = ? AND tier = ?", rows)

    # -- pins ------------------------------------------------------------------------------------
    def _resolve_path(self, path: str) -> int:
        raise NotImplementedError  # daemon/meta/quotas.py

    @_api
    def tier_pin(self, path: str, pinned: bool) -> int:
        """Keep the tree at ``path`` on local disks (``pinned``), or let it tier again; its inode."""
        with self._write() as now:
            ino = self._resolve_path(path)
            if pinned:
                self._db.execute(
                    "INSERT INTO tier_pins (ino, pinned_ns) VALUES (?, ?) ON CONFLICT (ino) DO NOTHING",
                    (ino, now),
                )
            else:
                self._db.execute("DELETE FROM tier_pins WHERE ino = ?", (ino,))
        return ino

    @_api
    def tier_pins(self) -> list[int]:
        return [int(r[0]) for r in self._db.execute("SELECT ino FROM tier_pins ORDER BY ino")]

    @_api
    def tier_pinned_chunks(self, ino: int, limit: int) -> list[bytes]:
        """Cold chunks of the files at or under ``ino`` (at most ``limit``): what pinning brings
        back to local disks."""
        with self._read():
            files: list[int] = []
            stack = [ino]
            seen = 0
            while stack and len(files) < 100_000 and seen < 1_000_000:
                cur = stack.pop()
                seen += 1
                mode = self._db.execute("SELECT mode FROM inodes WHERE ino = ?", (cur,)).fetchone()
                if mode is None:
                    continue
                if int(mode[0]) & _IFMT == _IFREG:
                    files.append(cur)
                stack += [
                    int(r[0]) for r in self._db.execute("SELECT ino FROM dentries WHERE parent = ?", (cur,))
                ]
            out: list[bytes] = []
            for i in range(0, len(files), _IN_BATCH):
                batch = files[i : i + _IN_BATCH]
                out += [
                    bytes(r[0])
                    for r in self._db.execute(
                        "SELECT DISTINCT b.chunk_id FROM blocks b "
                        f"JOIN tier_cold t ON t.chunk_id = b.chunk_id WHERE b.ino IN ({_marks(len(batch))})",
                        batch,
                    )
                ]
                if len(out) >= limit:
                    break
        return out[:limit]
