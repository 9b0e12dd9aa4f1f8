"""Re-marking existing chunks after a replication policy change, in bounded resumable steps.

``chunks.replicas`` (see daemon/meta/schema.py) is what repair reads to know
how many copies a chunk needs; writes raise it.  When the replication factor of
a subtree changes (a volume's ``replication``, a ``user.dfs.replicas`` xattr set
or removed), the chunks already written there must be marked again, or the
change would only reach new writes.  The change enqueues a job (a row of
``policy_remarks`` keyed by the subtree's root inode, in the same transaction
as the change); the metadata primary's re-mark worker then calls
:meth:`Remarks.remark_step` until no job is left.  Each step is one short
transaction over at most ``max_chunks`` block references, and saves where it
stopped in the row, so a restart (or a failover to another daemon sharing the
database) continues there.

A job walks its subtree twice: first counting the block references (so
progress can show marked/total and an ETA), then marking.  Marking resolves
each file's replication factor as :meth:`daemon.meta.policy.Policy.policy`
does (the nearest ``user.dfs.replicas``, else the volume's ``replication``,
else None: the cluster default) and sets each of its chunks' ``replicas``:

- a chunk only this file references gets exactly the file's factor (NULL for
  the cluster default), so lowering R lowers it and repair trims the surplus
  copies (they become misplaced copies, deleted once the remaining replicas
  hold the chunk);
- a chunk other inodes reference too (deduplicated data, a snapshot, a copy)
  is only ever raised: it keeps "the highest R any write asked" (finding the
  factor of every other referencing file would mean a parent walk per
  reference).  Such a chunk keeps its extra copies after lowering.

The walk is idempotent (it recomputes the policy in effect now), so jobs on
nested subtrees may run in any order.  At most :data:`MAX_JOBS` jobs are kept:
past that they collapse into one job over the whole namespace.  A file met
through two hard links in directories of different factors ends with whichever
the walk met last; a subtree moved by rename keeps its marks until a later
policy change there (renames do not enqueue jobs).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgpack

from daemon.meta.base import _IN_BATCH, _api, _unpack_dict
from daemon.meta.engine import Db
from daemon.meta.inodes import _is_dir
from daemon.meta.policy import _REPLICAS_VALUES, REPLICAS_XATTR, Policy, _replicas_or_none
from dfs.core.errors import NotFound
from dfs.core.namespace import ROOT_INO

# More pending jobs than this (a script setting the xattr on every directory of a big tree)
# collapse into one whole-namespace job: the queue stays bounded, the outcome is the same.
MAX_JOBS = 10_000
# Block references one step marks at most by default (one transaction).
STEP_CHUNKS = 2000
# Directories one counting step visits at most.
_COUNT_DIRS = 256
# Directory entries read per query while marking.
_ENTRIES = 256


def _pack(state: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(state, use_bin_type=True)
    return packed


def queue_remark(db: Db, root: int, now: int) -> None:
    """Enqueue (or restart) the re-mark job of the subtree at ``root``, in the caller's transaction."""
    state = _pack({"stack": [[root, None]], "cur": None})
    db.execute(
        "INSERT INTO policy_remarks VALUES (?, ?, 1, 0, 0, ?) ON CONFLICT (root) DO UPDATE SET "
        "created_ns = excluded.created_ns, counting = 1, total = 0, marked = 0, state = excluded.state",
        (root, now, state),
    )
    (count,) = db.execute("SELECT COUNT(*) FROM policy_remarks").fetchone()
    if count > MAX_JOBS:
        db.execute("DELETE FROM policy_remarks")
        queue_remark(db, ROOT_INO, now)


class Remarks(Policy):
    """The re-mark jobs: one bounded step at a time, and their progress."""

    @_api
    def remark_progress(self) -> dict[str, int]:
        """``{"jobs", "counting", "total", "marked"}`` over the pending jobs (``total`` is final
        only once no job is ``counting``)."""
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(counting), 0), COALESCE(SUM(total), 0), COALESCE(SUM(marked), 0) "
            "FROM policy_remarks"
        ).fetchone()
        return {"jobs": int(row[0]), "counting": int(row[1]), "total": int(row[2]), "marked": int(row[3])}

    @_api
    def remark_step(self, max_chunks: int = STEP_CHUNKS) -> dict[str, int]:
        """Advance the oldest job by one bounded step.  Returns ``{"marked", "changed", "jobs"}``:
        block references marked, chunk rows changed (repair has work) and jobs still pending."""
        max_chunks = max(1, max_chunks)
        with self._write() as now:
            row = self._db.execute(
                "SELECT root, counting, total, marked, state FROM policy_remarks "
                "ORDER BY created_ns, root LIMIT 1"
            ).fetchone()
            if row is None:
                return {"marked": 0, "changed": 0, "jobs": 0}
            root, counting, total, marked = (int(v) for v in row[:4])
            state = msgpack.unpackb(row[4], raw=False, strict_map_key=False)
            done = False
            n = changed = 0
            try:
                if counting:
                    total, done = self._count_step(root, state, total)
                    if done:
                        # Counted: mark from the top, starting from the factor in effect at the root.
                        counting, done = 0, False
                        state = {"stack": [[root, self._root_replicas(root)]], "cur": None}
                else:
                    n, changed, done = self._mark_step(root, state, max_chunks)
                    marked += n
            except NotFound:
                done = True  # the subtree is gone: nothing left to mark
            if done:
                self._db.execute("DELETE FROM policy_remarks WHERE root = ?", (root,))
            else:
                self._db.execute(
                    "UPDATE policy_remarks SET counting = ?, total = ?, marked = ?, state = ? WHERE root = ?",
                    (counting, total, marked, _pack(state), root),
                )
            self._log(now, "remark_step", [root, n, changed])
            (jobs,) = self._db.execute("SELECT COUNT(*) FROM policy_remarks").fetchone()
        return {"marked": n, "changed": changed, "jobs": int(jobs)}

    # -- the walk -------------------------------------------------------------------------
    def _root_replicas(self, root: int) -> int | None:
        if root == ROOT_INO:  # policy() gives the root nothing; only its own xattr applies there
            return self._own_replicas([root]).get(root)
        replicas: int | None = self.policy(root)["replicas"]
        return replicas

    def _own_replicas(self, inos: list[int]) -> dict[int, int]:
        """The parseable ``user.dfs.replicas`` set on each of ``inos`` (absent: none)."""
        out: dict[int, int] = {}
        for i in range(0, len(inos), _IN_BATCH):
            batch = inos[i : i + _IN_BATCH]
            marks = ",".join("?" * len(batch))
            for ino, value in self._db.execute(
                f"SELECT ino, value FROM xattrs WHERE name = ? AND ino IN ({marks})", (REPLICAS_XATTR, *batch)
            ):
                r = _REPLICAS_VALUES.get(bytes(value))
                if r is not None:
                    out[int(ino)] = r
        return out

    def _volume_replicas(self, ino: int) -> int | None:
        row = self._db.execute("SELECT policy FROM volumes WHERE ino = ?", (ino,)).fetchone()
        return None if row is None else _replicas_or_none(_unpack_dict(row[0]).get("replication"))

    def _count_step(self, root: int, state: dict[str, Any], total: int) -> tuple[int, bool]:
        """Count the block references under up to _COUNT_DIRS directories; (total, finished)."""
        stack: list[list[Any]] = state["stack"]
        if not _is_dir(self._inode(root)[0]):
            (n,) = self._db.execute("SELECT COUNT(*) FROM blocks WHERE ino = ?", (root,)).fetchone()
            return int(n), True
        for _ in range(_COUNT_DIRS):
            if not stack:
                return total, True
            d = int(stack.pop()[0])
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM dentries e JOIN blocks b ON b.ino = e.ino "
                "WHERE e.parent = ? AND e.is_dir = 0",
                (d,),
            ).fetchone()
            total += int(n)
            stack.extend(
                [int(c), None]
                for (c,) in self._db.execute("SELECT ino FROM dentries WHERE parent = ? AND is_dir = 1", (d,))
            )
        return total, not stack

    def _mark_step(self, root: int, state: dict[str, Any], max_chunks: int) -> tuple[int, int, bool]:
        """Mark files until ``max_chunks`` block references are done; (marked, changed, finished)."""
        stack: list[list[Any]] = state["stack"]
        if not _is_dir(self._inode(root)[0]):
            n, changed = self._mark_file(root, stack[0][1] if stack else self._root_replicas(root))
            return n, changed, True
        spent = changed = 0
        while spent < max_chunks:
            cur: list[Any] | None = state["cur"]
            if cur is None:
                if not stack:
                    return spent, changed, True
                d, r = stack.pop()
                cur = state["cur"] = [int(d), r, 0]
            d, r, after = cur
            rows = self._db.execute(
                "SELECT id, ino, is_dir FROM dentries WHERE parent = ? AND id > ? ORDER BY id LIMIT ?",
                (d, after, _ENTRIES),
            ).fetchall()
            if not rows:
                state["cur"] = None
                continue
            own = self._own_replicas([int(row[1]) for row in rows])
            for entry_id, ino, is_dir in rows:
                rr = own.get(ino)
                if rr is None:
                    rr = r
                    if rr is None and d == ROOT_INO and is_dir:
                        rr = self._volume_replicas(ino)
                if is_dir:
                    stack.append([int(ino), rr])
                else:
                    n, c = self._mark_file(int(ino), rr)
                    spent += n
                    changed += c
                cur[2] = int(entry_id)
                if spent >= max_chunks:
                    break
        return spent, changed, False

    def _mark_file(self, ino: int, replicas: int | None) -> tuple[int, int]:
        """Set the factor of ``ino``'s chunks (see the module docstring); (references, rows changed)."""
        refs = Counter(
            bytes(c) for (c,) in self._db.execute("SELECT chunk_id FROM blocks WHERE ino = ?", (ino,))
        )
        ids = list(refs)
        updates: list[tuple[int | None, bytes]] = []
        for i in range(0, len(ids), _IN_BATCH):
            batch = ids[i : i + _IN_BATCH]
            marks = ",".join("?" * len(batch))
            for chunk_id, refcount, current in self._db.execute(
                f"SELECT chunk_id, refcount, replicas FROM chunks WHERE chunk_id IN ({marks})", batch
            ):
                chunk_id = bytes(chunk_id)
                if refcount <= refs[chunk_id]:
                    if current != replicas:
                        updates.append((replicas, chunk_id))
                elif replicas is not None and (current is None or current < replicas):
                    updates.append((replicas, chunk_id))
        if updates:
            self._db.executemany("UPDATE chunks SET replicas = ? WHERE chunk_id = ?", updates)
        return sum(refs.values()), len(updates)
