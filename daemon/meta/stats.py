"""Totals over the namespace and the chunks table, for status and metrics."""

from __future__ import annotations

from daemon.meta.base import MetaBase, _api
from daemon.meta.inodes import _IFDIR, _IFMT, _IFREG
from daemon.meta.schema import _INTERNAL_INOS_SQL


class Stats(MetaBase):
    """``counts``: inodes, files, directories, bytes, chunks and open handles."""

    @_api
    def counts(self) -> dict[str, int]:
        """Totals over inodes and the chunks table.

        ``files`` counts regular files and ``logical_bytes`` sums their sizes.
        ``chunks`` and ``stored_bytes`` cover every chunks row, including the
        ``unreferenced_chunks`` still awaiting garbage collection; ``chunk_refs``
        is the sum of refcounts (block-map entries).
        """
        # The internal roots are bookkeeping, not part of the filesystem (their contents are).
        inodes, files, dirs, logical = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN mode & ?1 = ?2 THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN mode & ?1 = ?3 THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN mode & ?1 = ?2 THEN size ELSE 0 END), 0) FROM inodes "
            f"WHERE ino NOT IN ({_INTERNAL_INOS_SQL})",
            (_IFMT, _IFREG, _IFDIR),
        ).fetchone()
        chunks, refs, stored, unreferenced = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(refcount), 0), COALESCE(SUM(stored_bytes), 0), "
            "COALESCE(SUM(CASE WHEN refcount = 0 THEN 1 ELSE 0 END), 0) FROM chunks"
        ).fetchone()
        values = {
            "inodes": inodes,
            "files": files,
            "dirs": dirs,
            "logical_bytes": logical,
            "chunks": chunks,
            "chunk_refs": refs,
            "stored_bytes": stored,
            "unreferenced_chunks": unreferenced,
            # Open handles over all client sessions (the opens table holds only open files).
            "open_files": self._db.execute("SELECT COALESCE(SUM(count), 0) FROM opens").fetchone()[0],
        }
        return {key: int(value) for key, value in values.items()}
