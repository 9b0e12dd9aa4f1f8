"""Volume data keys, stored wrapped (dfs/core/keys.py), and what a client needs to encode a volume's chunks.

The store never sees a master key or an unwrapped data key: callers pass in
functions that wrap (they run inside the write transaction, so a key id is
allocated and its wrapped key stored atomically).  The oplog names key ids and
volumes, never a wrapped key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from daemon.meta.base import _api, _unpack_dict
from daemon.meta.inodes import Inodes, _is_dir
from dfs.core.errors import Exists, NotFound
from dfs.core.keys import MAX_KEY_ID
from dfs.core.namespace import ROOT_INO

# (key_id, volume_ino, wrapped, master_fingerprint, created_ns)
KeyRow = tuple[int, int, bytes, str, int]
_MAX_DEPTH = 10_000


class VolumeKeys(Inodes):
    """The ``volume_keys`` table; which volume a file is in; the volumes' codec settings."""

    @_api
    def volume_key_create(self, volume_ino: int, seal: Callable[[int], tuple[bytes, str]]) -> int:
        """A new data key for the volume directory ``volume_ino``: ``seal(key_id)`` answers
        (wrapped key, master fingerprint).  Answers the new key id (1..65535, never reused)."""
        with self._write() as now:
            if self._db.execute("SELECT 1 FROM volumes WHERE ino = ?", (volume_ino,)).fetchone() is None:
                raise NotFound(f"inode {volume_ino} is not a volume")
            row = self._db.execute("SELECT MAX(key_id) FROM volume_keys").fetchone()
            key_id = (row[0] or 0) + 1
            if key_id > MAX_KEY_ID:
                raise Exists(f"all {MAX_KEY_ID} volume key ids are used")
            wrapped, master_fp = seal(key_id)
            self._db.execute(
                "INSERT INTO volume_keys (key_id, volume_ino, wrapped, master_fingerprint, created_ns) "
                "VALUES (?, ?, ?, ?, ?)",
                (key_id, volume_ino, wrapped, master_fp, now),
            )
            self._log(now, "volume_key_create", [key_id, volume_ino, master_fp])
        return key_id

    @_api
    def volume_keys(self) -> list[KeyRow]:
        """Every data key, wrapped, oldest first."""
        rows = self._db.execute(
            "SELECT key_id, volume_ino, wrapped, master_fingerprint, created_ns FROM volume_keys "
            "ORDER BY key_id"
        ).fetchall()
        return [(int(k), int(v), bytes(w), str(f), int(c)) for k, v, w, f, c in rows]

    @_api
    def volume_keys_rewrap(self, rewrap: Callable[[KeyRow], tuple[bytes, str]]) -> int:
        """Replace every wrapped key by ``rewrap(row)`` in one transaction (a master key rotation);
        answers how many."""
        with self._write() as now:
            rows = self._db.execute(
                "SELECT key_id, volume_ino, wrapped, master_fingerprint, created_ns FROM volume_keys"
            ).fetchall()
            for k, v, w, f, c in rows:
                wrapped, master_fp = rewrap((int(k), int(v), bytes(w), str(f), int(c)))
                self._db.execute(
                    "UPDATE volume_keys SET wrapped = ?, master_fingerprint = ? WHERE key_id = ?",
                    (wrapped, master_fp, k),
                )
            fps = sorted({str(f) for *_, f, _c in rows})
            self._log(now, "volume_keys_rewrap", [len(rows), fps])
        return len(rows)

    @_api
    def volume_codecs(self) -> list[tuple[int, dict[str, Any], int | None]]:
        """Every volume's (directory ino, policy, newest data key id or None)."""
        rows = self._db.execute(
            "SELECT v.ino, v.policy, (SELECT MAX(k.key_id) FROM volume_keys k WHERE k.volume_ino = v.ino) "
            "FROM volumes v"
        ).fetchall()
        return [
            (int(ino), _unpack_dict(policy), None if key is None else int(key)) for ino, policy, key in rows
        ]

    @_api
    def volume_of(self, ino: int, parent: int | None = None) -> int | None:
        """The top-level directory above ``ino`` (itself if it is one), or None (the root, or a
        file with no name left).  ``parent``: a directory a file was reached through."""
        with self._read():
            mode = self._inode(ino)[0]
            start = ino
            if not _is_dir(mode):
                if parent is None:
                    row = self._db.execute(
                        "SELECT parent FROM dentries WHERE ino = ? LIMIT 1", (ino,)
                    ).fetchone()
                    if row is None:
                        return None
                    parent = int(row[0])
                start = parent
            if start == ROOT_INO:
                return None
            rows = self._db.execute(
                "WITH RECURSIVE chain(ino, depth) AS (SELECT CAST(?1 AS BIGINT), 0 "
                "UNION SELECT d.parent, c.depth + 1 FROM chain c "
                "JOIN dentries d ON d.ino = c.ino AND d.is_dir = 1 WHERE c.ino != ?2 AND c.depth < ?3) "
                "SELECT ino FROM chain ORDER BY depth",
                (start, ROOT_INO, _MAX_DEPTH),
            ).fetchall()
            chain = [int(r[0]) for r in rows]
            if len(chain) >= 2 and chain[-1] == ROOT_INO:
                return chain[-2]
            return None
