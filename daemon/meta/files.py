"""File data: block maps, inline data, and the chunk references and replication factors they record."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from daemon.meta.base import _IN_BATCH, _api
from daemon.meta.inodes import _IFMT, _IFREG, Inodes, _check_writable, _is_dir
from daemon.meta.objlock import check_unlocked
from daemon.meta.policy import _check_replicas
from daemon.meta.schema import _ATTR
from dfs.core.errors import InvalidArgument, IsADirectory
from dfs.core.namespace import Attr, BlockRef, FileMap


class Files(Inodes):
    """Reading and committing block maps; each chunk's recorded replication factor."""

    def _regular(self, ino: int, *, write: bool = False) -> None:
        mode = self._inode(ino)[0]
        if write:
            _check_writable(ino, mode)
            now = self._txn_now if self._txn_now is not None else self._now()
            check_unlocked(self._db, ino, mode, now)  # S3 object lock (daemon/meta/objlock.py)
        if _is_dir(mode):
            raise IsADirectory(f"inode {ino} is a directory")
        if mode & _IFMT != _IFREG:
            raise InvalidArgument(f"inode {ino} is not a regular file")

    @_api
    def read_map(self, ino: int) -> FileMap:
        self._regular(ino)
        row = self._db.execute(f"SELECT {_ATTR}, inline FROM inodes WHERE ino = ?", (ino,)).fetchone()
        blocks = self._db.execute(
            "SELECT idx, chunk_id, length, stored_bytes FROM blocks WHERE ino = ? ORDER BY idx", (ino,)
        ).fetchall()
        return FileMap(Attr(*row[:-1]), row[-1], [BlockRef(*b) for b in blocks])

    @_api
    def commit_write(
        self,
        ino: int,
        *,
        size: int,
        mtime_ns: int,
        blocks: list[BlockRef],
        inline: bytes | None,
        chunk_exists: Callable[[bytes], bool],
        replicas: int | None = None,
    ) -> Attr:
        """Point the file at new data; ``replicas`` (its policy) raises its chunks' factor to at least it."""
        if inline is not None and blocks:
            raise InvalidArgument("commit_write got both inline data and blocks")
        _check_replicas(replicas)
        if inline is not None and len(inline) > self._inline_limit:
            raise InvalidArgument(f"inline data of {len(inline)} bytes exceeds {self._inline_limit}")
        if size < 0:
            raise InvalidArgument(f"negative size {size}")
        refs = [self._check_ref(ref) for ref in blocks]
        with self._write() as now:
            self._regular(ino, write=True)
            if inline is not None:
                self._drop_blocks(ino, 0, now, adjust_inode=False)
                size = len(inline)
                self._db.execute(
                    "UPDATE inodes SET inline = ?, stored = ? WHERE ino = ?", (inline, size, ino)
                )
            else:
                self._db.execute(
                    "UPDATE inodes SET stored = stored - length(inline), inline = NULL "
                    "WHERE ino = ? AND inline IS NOT NULL",
                    (ino,),
                )
                self._apply_refs(ino, refs, chunk_exists, now)
                self._raise_replicas([r.chunk_id for r in refs if r.chunk_id], replicas)
                self._shrink(ino, size, now)
            row = self._db.execute(
                f"UPDATE inodes SET size = ?, mtime_ns = ?, ctime_ns = ? WHERE ino = ? RETURNING {_ATTR}",
                (size, mtime_ns, mtime_ns, ino),
            ).fetchone()
            self._log(now, "commit_write", [ino, size, mtime_ns, [list(r) for r in refs], inline, replicas])
        return Attr(*row)

    def _check_ref(self, ref: Sequence[Any]) -> BlockRef:
        index, chunk_id, length, stored_bytes = ref
        if not (
            isinstance(index, int)
            and isinstance(chunk_id, bytes)
            and isinstance(length, int)
            and isinstance(stored_bytes, int)
        ):
            raise InvalidArgument(f"malformed block ref {ref!r:.200}")
        if index < 0 or not 0 <= length <= self._block_size or stored_bytes < 0:
            raise InvalidArgument(f"block ref out of range: {ref!r:.200}")
        return BlockRef(index, chunk_id, length, stored_bytes)

    def _apply_refs(
        self, ino: int, refs: list[BlockRef], chunk_exists: Callable[[bytes], bool], now: int
    ) -> None:
        """Point each block index at its new chunk (or a hole), increfs first so no row dips to 0."""
        db = self._db
        dropped: list[bytes] = []
        delta = 0
        for index, chunk_id, length, stored_bytes in refs:
            old = db.execute(
                "DELETE FROM blocks WHERE ino = ? AND idx = ? RETURNING chunk_id, stored_bytes", (ino, index)
            ).fetchone()
            if old is not None:
                dropped.append(old[0])
                delta -= old[1]
            if chunk_id:
                self._incref(chunk_id, stored_bytes, chunk_exists)
                db.execute(
                    "INSERT INTO blocks VALUES (?, ?, ?, ?, ?)", (ino, index, chunk_id, length, stored_bytes)
                )
                delta += stored_bytes
        self._decref(dropped, now)
        if delta:
            db.execute("UPDATE inodes SET stored = stored + ? WHERE ino = ?", (delta, ino))

    def _raise_replicas(self, chunk_ids: list[bytes], replicas: int | None) -> None:
        """Record that ``chunk_ids`` need at least ``replicas`` copies (a chunk shared by two policies
        needs the larger); rows already that high are not rewritten."""
        if replicas is None or not chunk_ids:
            return
        self._db.executemany(
            "UPDATE chunks SET replicas = ? WHERE chunk_id = ? AND (replicas IS NULL OR replicas < ?)",
            [(replicas, chunk_id, replicas) for chunk_id in dict.fromkeys(chunk_ids)],
        )

    @_api
    def chunk_replicas(self, chunk_ids: list[bytes]) -> list[int | None]:
        """The recorded replication factor of each of ``chunk_ids`` (None: unset, or no such chunk)."""
        found: dict[bytes, int | None] = {}
        for i in range(0, len(chunk_ids), _IN_BATCH):
            batch = chunk_ids[i : i + _IN_BATCH]
            marks = ",".join("?" * len(batch))
            found.update(
                self._db.execute(f"SELECT chunk_id, replicas FROM chunks WHERE chunk_id IN ({marks})", batch)
            )
        return [found.get(chunk_id) for chunk_id in chunk_ids]

    @_api
    def chunk_factors(self, chunk_ids: list[bytes]) -> list[int | None]:
        """For repair: each chunk's replication factor, 0 when metadata knows the chunk but
        recorded none (the default applies), None when it does not know it at all (an
        uncommitted write, or collected: repair must leave such a copy alone, or it would
        bring back what garbage collection or the orphan sweep removed)."""
        found: dict[bytes, int] = {}
        for i in range(0, len(chunk_ids), _IN_BATCH):
            batch = chunk_ids[i : i + _IN_BATCH]
            marks = ",".join("?" * len(batch))
            found.update(
                self._db.execute(
                    # Cold chunks (daemon/meta/tiers.py) are not repair's: their copies are cloud
                    # copies, and a local one left over or fetched back is a cache.
                    f"SELECT chunk_id, coalesce(replicas, 0) FROM chunks c WHERE chunk_id IN ({marks}) "
                    "AND NOT EXISTS (SELECT 1 FROM tier_cold t WHERE t.chunk_id = c.chunk_id)",
                    batch,
                )
            )
        return [found.get(chunk_id) for chunk_id in chunk_ids]
