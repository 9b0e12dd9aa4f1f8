"""Volume data keys, stored wrapped (dfs/core/keys.py), and what a client needs to encode a volume's chunks.

The store never sees a master key or an unwrapped data key: callers pass in
functions that wrap (they run inside the write transaction, so a key id is
allocated and its wrapped key stored atomically).  The oplog names key ids and
volumes, never a wrapped key.

The ``config`` row ``master_fingerprint`` names the cluster's current master key
(its fingerprint, never the key): set with the first data key and moved by each
rotation, in their transactions, and only from the value the caller expects
(compare and set), so a daemon holding another master key can neither wrap a
new data key under it nor rotate from it.  Daemons sharing the metadata follow
it (daemon/service/master_key_sync.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from daemon.meta.base import _api, _unpack_dict
from daemon.meta.inodes import Inodes, _is_dir
from dfs.core.errors import Exists, NotFound, Unavailable
from dfs.core.keys import MAX_KEY_ID, fingerprint_from_int, fingerprint_to_int
from dfs.core.namespace import ROOT_INO

# (key_id, volume_ino, wrapped, master_fingerprint, created_ns)
KeyRow = tuple[int, int, bytes, str, int]
_MAX_DEPTH = 10_000
MASTER_FINGERPRINT_KEY = "master_fingerprint"


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
            recorded = self._recorded_master()
            if recorded is None:
                self._record_master(master_fp)
            elif recorded != master_fp:
                raise Unavailable(
                    f"this daemon's master key {master_fp} is not the cluster's current one "
                    f"{recorded}: it takes that one from a peer within seconds; try again"
                )
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
    def volume_keys_rewrap(
        self,
        rewrap: Callable[[KeyRow], tuple[bytes, str]],
        new_master: str | None = None,
        expect_master: str | None = None,
    ) -> int:
        """Replace every wrapped key by ``rewrap(row)`` in one transaction (a master key rotation);
        answers how many.  ``new_master``: the recorded current master key becomes it, only if
        the record is ``expect_master`` (or absent): two daemons rotating at once, or one that
        has not yet followed the last rotation, cannot both win."""
        with self._write() as now:
            if new_master is not None:
                recorded = self._recorded_master()
                if recorded is not None and recorded != expect_master:
                    raise Unavailable(
                        f"the cluster's master key is {recorded}, not this daemon's {expect_master}: "
                        "another rotation came first, or this daemon has not followed it yet; try again"
                    )
                self._record_master(new_master)
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
    def master_state(self) -> tuple[str | None, list[str]]:
        """The recorded current master key's fingerprint (None: not recorded yet), and every
        fingerprint the wrapped data keys name."""
        with self._read():
            rows = self._db.execute("SELECT DISTINCT master_fingerprint FROM volume_keys").fetchall()
            return self._recorded_master(), sorted(str(r[0]) for r in rows)

    def _recorded_master(self) -> str | None:
        row = self._db.execute("SELECT value FROM config WHERE key = ?", (MASTER_FINGERPRINT_KEY,)).fetchone()
        return None if row is None else fingerprint_from_int(int(row[0]))

    def _record_master(self, fingerprint: str) -> None:
        self._db.execute(
            "INSERT INTO config (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (MASTER_FINGERPRINT_KEY, fingerprint_to_int(fingerprint)),
        )

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
