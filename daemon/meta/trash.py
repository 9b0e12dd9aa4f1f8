"""Per-volume trash: a file's last name removed in a volume with ``trash_days`` > 0 keeps its inode.

Instead of dropping the inode, a removal (unlink, the file a rename or an S3
put replaces) re-links it under the internal ``trash`` root as
``trash/<volume ino>/<ino>`` and records a ``trash`` row (inode = entry id,
volume, original parent and name, deleted_ns, size).  Block maps and chunk
refcounts are untouched, so GC keeps its chunks and an open handle keeps
working.  The inode leaves its quota domain (``inodes.quota`` -> NULL: the
accounting triggers give its usage back, daemon/meta/quotas.py) and takes it
again on restore, where the trigger refuses a restore over the limit.

Only regular files and symlinks go to trash: an empty directory removed by
rmdir, and the implied directories S3 removes with their last object, are
gone for good (they hold no data).  Hard-linked files go to trash only when
their last name goes.

The volume is found from the inode's quota domain (every volume is a domain
and domains nest inside it: one indexed join, no walk).  Its retention is the
policy's ``trash_days``, else the cluster default (``[storage] trash_days``).
A volume whose retention is 0 (trash off, or turned off later) keeps nothing:
its leftover entries expire at the next :meth:`Trash.trash_expire`.
"""

from __future__ import annotations

import stat
from typing import Any

from daemon.meta.base import _api, _unpack_dict
from daemon.meta.inodes import _IFDIR, _IFMT, DIR_SIZE, _check_writable, _is_dir
from daemon.meta.schema import _INTERNAL_KEY
from daemon.meta.volumes import Volumes
from dfs.core.config import MAX_TRASH_DAYS
from dfs.core.errors import Exists, InvalidArgument, NotFound
from dfs.core.namespace import ROOT_INO, check_name

DAY_NS = 86_400 * 10**9
# Entries purged per transaction (expiry and `dfs trash empty`): bounded work per call.
PURGE_BATCH = 500
# Entries `dfs trash list` shows at most.
LIST_MAX = 10_000
_TRASH_KEY = _INTERNAL_KEY + "trash"


def trash_days_of(policy: dict[str, Any], default: float) -> float:
    """The retention of a volume with ``policy``: its ``trash_days``, else the cluster default."""
    days = policy.get("trash_days")
    if isinstance(days, bool) or not isinstance(days, int | float) or not 0 <= days <= MAX_TRASH_DAYS:
        return default
    return float(days)


# (volume directory ino, its packed policy, the file's st_size, the volume's S3 versioning status
# or None: daemon/meta/versions.py); None for a file in no volume.
_VolumeRow = tuple[int | None, bytes | None, int, str | None]


class Trash(Volumes):
    """Moving removed files to their volume's trash, listing, restoring and purging them."""

    # The cluster default retention in days (MetaStore sets it from [storage] trash_days).
    _trash_days_default: float = 0.0

    def _drop_name(
        self,
        ino: int,
        mode: int,
        nlink: int,
        origin: tuple[int, bytes],
        now: int,
        volume: _VolumeRow | None = None,
    ) -> None:
        """``ino`` lost a name in ``origin`` (parent, name) and has ``nlink`` left: to its
        volume's trash if that was its last name and trash is on there, else as before.
        ``volume``: the file's volume row as :meth:`_removal_entry` found it (else looked up)."""
        if nlink == 0 and mode & _IFMT in (stat.S_IFREG, stat.S_IFLNK):
            found = self._trash_of(volume if volume is not None else self._volume_of_inode(ino))
            if found is not None:
                self._to_trash(ino, found, origin, now)
                return
        self._set_nlink(ino, nlink, now)

    def _removal_entry(self, parent: int, name: bytes) -> tuple[tuple[int, int, int, int], _VolumeRow] | None:
        """:meth:`_dentry` of ``name`` in ``parent`` together with its inode's volume row, in
        one statement: an unlink pays nothing for the trash lookup (a round trip on PostgreSQL)."""
        row = self._db.execute(
            "SELECT d.id, d.ino, i.mode, i.nlink, v.ino, v.policy, i.size, sv.status FROM dentries d "
            "JOIN inodes i ON i.ino = d.ino LEFT JOIN quota_chain c ON c.q = i.quota "
            "LEFT JOIN volumes v ON v.ino = c.a LEFT JOIN s3_versioning sv ON sv.ino = v.ino "
            "WHERE d.parent = ? AND d.name = ? "
            "ORDER BY v.ino IS NULL LIMIT 1",
            (parent, name),
        ).fetchone()
        if row is None:
            return None
        return (row[0], row[1], row[2], row[3]), (row[4], row[5], row[6], row[7])

    def _volume_of_inode(self, ino: int) -> _VolumeRow:
        row = self._db.execute(
            "SELECT v.ino, v.policy, i.size, sv.status FROM inodes i "
            "LEFT JOIN quota_chain c ON c.q = i.quota LEFT JOIN volumes v ON v.ino = c.a "
            "LEFT JOIN s3_versioning sv ON sv.ino = v.ino WHERE i.ino = ? ORDER BY v.ino IS NULL LIMIT 1",
            (ino,),
        ).fetchone()
        return (None, None, 0, None) if row is None else (row[0], row[1], row[2], row[3])

    def _trash_of(self, volume: _VolumeRow) -> tuple[int, int] | None:
        """(volume directory, st_size) if the file's volume keeps a trash, else None."""
        vol, policy, size, _ = volume
        if vol is None or policy is None:
            return None
        if trash_days_of(_unpack_dict(policy), self._trash_days_default) > 0:
            return int(vol), int(size)
        return None

    def _trash_root(self) -> int:
        row = self._db.execute("SELECT value FROM config WHERE key = ?", (_TRASH_KEY,)).fetchone()
        if row is None:
            raise NotFound("internal directory 'trash' is missing")
        return int(row[0])

    def _trash_dir(self, volume: int, now: int) -> int:
        """trash/<volume ino>, made on first use."""
        name = str(volume).encode()
        row = self._db.execute(
            "SELECT d.ino FROM config c JOIN dentries d ON d.parent = c.value AND d.name = ? WHERE c.key = ?",
            (name, _TRASH_KEY),
        ).fetchone()
        if row is not None:
            return int(row[0])
        return self._make(now, self._trash_root(), name, _IFDIR | 0o700, 0, 0, size=DIR_SIZE).ino

    def _to_trash(self, ino: int, found: tuple[int, int], origin: tuple[int, bytes], now: int) -> None:
        volume, size = found
        parent, name = origin
        where = self._trash_dir(volume, now)
        # Upsert: a stale row of this inode (fsck's to report) must not block the move.
        self._db.execute_later(
            "INSERT INTO trash (ino, volume, parent, name, deleted_ns, size) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (ino) DO UPDATE SET volume = excluded.volume, parent = excluded.parent, "
            "name = excluded.name, deleted_ns = excluded.deleted_ns, size = excluded.size",
            (ino, volume, parent, name, now, size),
        )
        self._add_dentry(where, str(ino).encode(), ino, False)
        self._touch_dir(where, now)
        # Out of its quota domain: the accounting trigger gives the volume its usage back.
        self._db.execute_later(
            "UPDATE inodes SET nlink = 1, quota = NULL, ctime_ns = ? WHERE ino = ?", (now, ino)
        )

    # -- the trash.* endpoints ------------------------------------------------------------

    def _volume_ino(self, volume: str) -> int:
        row = self._volume_row(volume)
        if row is None:
            raise NotFound(f"no volume {volume!r}")
        return int(row[1])

    def _entry_doc(self, row: tuple[Any, ...], names: dict[int, str]) -> dict[str, Any]:
        ino, vol, parent, name, deleted_ns, size = row
        try:
            directory = self._path_of(int(parent)) if int(parent) else ""
        except NotFound:
            directory = ""
        text = bytes(name).decode("utf-8", "surrogateescape")
        return {
            "id": int(ino),
            "volume": names.get(int(vol), f"<inode {vol}>"),
            "volume_ino": int(vol),
            "parent": int(parent),
            "name": text,
            "path": f"{directory.rstrip('/')}/{text}" if directory.startswith("/") else None,
            "deleted_ns": int(deleted_ns),
            "size": int(size),
        }

    def _volume_names(self) -> dict[int, str]:
        return {int(ino): str(name) for name, ino in self._db.execute("SELECT name, ino FROM volumes")}

    @_api
    def trash_list(self, volume: str | None = None) -> list[dict[str, Any]]:
        """Trash entries (of ``volume``, else of every volume), oldest first, at most LIST_MAX."""
        with self._read():
            names = self._volume_names()
            cols = "ino, volume, parent, name, deleted_ns, size"
            if volume is None:
                rows = self._db.execute(
                    f"SELECT {cols} FROM trash ORDER BY deleted_ns, ino LIMIT ?", (LIST_MAX,)
                ).fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {cols} FROM trash WHERE volume = ? ORDER BY deleted_ns, ino LIMIT ?",
                    (self._volume_ino(volume), LIST_MAX),
                ).fetchall()
            return [self._entry_doc(tuple(r), names) for r in rows]

    @_api
    def trash_usage(self) -> list[dict[str, Any]]:
        """Per volume with trash entries: {volume, volume_ino, entries, bytes, stored_bytes}."""
        with self._read():
            names = self._volume_names()
            rows = self._db.execute(
                "SELECT t.volume, COUNT(*), COALESCE(SUM(i.size), 0), COALESCE(SUM(i.stored), 0) "
                "FROM trash t JOIN inodes i ON i.ino = t.ino GROUP BY t.volume ORDER BY t.volume"
            ).fetchall()
            return [
                {
                    "volume": names.get(int(v), f"<inode {v}>"),
                    "volume_ino": int(v),
                    "entries": int(n),
                    "bytes": int(b),
                    "stored_bytes": int(s),
                }
                for v, n, b, s in rows
            ]

    @_api
    def trash_restore(self, volume: str, entry_id: int, to: str | None = None) -> dict[str, Any]:
        """Put entry ``entry_id`` of ``volume``'s trash back at its original parent and name, or
        at namespace path ``to``.  Refused when the name is taken or the parent is gone (Exists,
        NotFound), or when the file would take its quota domain past a limit (QuotaExceeded)."""
        if isinstance(entry_id, bool) or not isinstance(entry_id, int):
            raise InvalidArgument("a trash entry id is an integer")
        with self._write() as now:
            vol = self._volume_ino(volume)
            row = self._db.execute(
                "SELECT ino, volume, parent, name, deleted_ns, size FROM trash WHERE ino = ? AND volume = ?",
                (entry_id, vol),
            ).fetchone()
            if row is None:
                raise NotFound(f"no entry {entry_id} in the trash of volume {volume!r}")
            doc = self._entry_doc(tuple(row), {vol: volume})
            if to is None:
                parent, name = int(row[2]), bytes(row[3])
                prow = self._db.execute("SELECT mode, nlink FROM inodes WHERE ino = ?", (parent,)).fetchone()
                if prow is None or not _is_dir(prow[0]) or prow[1] == 0:
                    raise NotFound(
                        f"the directory {name.decode('utf-8', 'replace')!r} was deleted from is gone; "
                        "restore it elsewhere with --to PATH"
                    )
                where = doc["path"] or f"{name!r} in directory {parent}"
            else:
                if not isinstance(to, str) or not to.startswith("/") or to.rstrip("/") == "":
                    raise InvalidArgument("--to must be an absolute path such as /volume/dir/name")
                head, _, tail = to.rstrip("/").rpartition("/")
                parent = self._resolve_path(head or "/")
                name = tail.encode("utf-8", "surrogateescape")
                check_name(name)
                where = to
            if parent == ROOT_INO:
                raise InvalidArgument("a file cannot be restored into the root (only volumes live there)")
            pmode = self._dir(parent, live=True)[0]
            _check_writable(parent, pmode)
            if self._dentry(parent, name) is not None:
                raise Exists(f"{where} exists; restore it elsewhere with --to PATH")
            tdir = self._trash_dir(vol, now)
            self._db.execute("DELETE FROM dentries WHERE parent = ? AND ino = ?", (tdir, entry_id))
            self._db.execute("DELETE FROM trash WHERE ino = ?", (entry_id,))
            self._touch_dir(tdir, now)
            self._add_dentry(parent, name, entry_id, False)
            self._touch_dir(parent, now)
            # Back into the parent's domain: the trigger charges it, or refuses past a limit.
            self._db.execute(
                "UPDATE inodes SET quota = (SELECT quota FROM inodes WHERE ino = ?), ctime_ns = ? "
                "WHERE ino = ?",
                (parent, now, entry_id),
            )
            self._log(now, "trash_restore", [volume, entry_id, parent, name, entry_id])
            return {
                **doc,
                "restored_to": self._path_of(parent).rstrip("/") + "/" + name.decode("utf-8", "replace"),
            }

    def _purge_entries(self, rows: list[tuple[int, int]], now: int) -> None:
        """Drop trash entries (ino, volume): their inodes lose their last name and are purged
        (once closed); their chunks lose their references and go through normal GC."""
        root = self._trash_root()
        dirs: dict[int, int | None] = {}
        for ino, vol in rows:
            if vol not in dirs:
                found = self._db.execute(
                    "SELECT ino FROM dentries WHERE parent = ? AND name = ?", (root, str(vol).encode())
                ).fetchone()
                dirs[vol] = None if found is None else int(found[0])
            self._db.execute("DELETE FROM trash WHERE ino = ?", (ino,))
            tdir = dirs[vol]
            gone = (
                self._db.execute(
                    "DELETE FROM dentries WHERE parent = ? AND ino = ? RETURNING id", (tdir, ino)
                ).fetchall()
                if tdir is not None
                else []
            )
            if gone:
                self._touch_dir(int(tdir or 0), now)
                self._set_nlink(ino, 0, now)

    @_api
    def trash_empty(self, volume: str | None = None, older_than_days: float | None = None) -> dict[str, Any]:
        """Purge (up to PURGE_BATCH) trash entries of ``volume`` (else every volume) deleted more
        than ``older_than_days`` ago (else all): ``{"purged": n, "more": bool}``; call again
        while ``more``."""
        if older_than_days is not None and (
            isinstance(older_than_days, bool)
            or not isinstance(older_than_days, int | float)
            or not 0 <= older_than_days <= MAX_TRASH_DAYS
        ):
            raise InvalidArgument(f"older_than_days must be 0..{MAX_TRASH_DAYS}")
        with self._write() as now:
            cutoff = now if older_than_days is None else now - int(older_than_days * DAY_NS)
            if volume is None:
                rows = self._db.execute(
                    "SELECT ino, volume FROM trash WHERE deleted_ns <= ? ORDER BY deleted_ns LIMIT ?",
                    (cutoff, PURGE_BATCH + 1),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT ino, volume FROM trash WHERE volume = ? AND deleted_ns <= ? "
                    "ORDER BY deleted_ns LIMIT ?",
                    (self._volume_ino(volume), cutoff, PURGE_BATCH + 1),
                ).fetchall()
            batch = [(int(a), int(b)) for a, b in rows[:PURGE_BATCH]]
            self._purge_entries(batch, now)
            self._log(now, "trash_empty", [volume, older_than_days, len(batch)])
            return {"purged": len(batch), "more": len(rows) > PURGE_BATCH}

    @_api
    def trash_expire(self, limit: int = PURGE_BATCH) -> int:
        """Purge up to ``limit`` entries older than their volume's retention (the leader's
        periodic duty); the number purged (``limit`` of them: call again)."""
        with self._write() as now:
            policies = {
                int(ino): _unpack_dict(p) for ino, p in self._db.execute("SELECT ino, policy FROM volumes")
            }
            vols = [int(r[0]) for r in self._db.execute("SELECT DISTINCT volume FROM trash").fetchall()]
            batch: list[tuple[int, int]] = []
            for vol in vols:
                if len(batch) >= limit:
                    break
                days = trash_days_of(policies.get(vol, {}), self._trash_days_default)
                rows = self._db.execute(
                    "SELECT ino, volume FROM trash WHERE volume = ? AND deleted_ns <= ? "
                    "ORDER BY deleted_ns LIMIT ?",
                    (vol, now - int(days * DAY_NS), limit - len(batch)),
                ).fetchall()
                batch += [(int(a), int(b)) for a, b in rows]
            if batch:
                self._purge_entries(batch, now)
                self._log(now, "trash_expire", [len(batch)])
            return len(batch)
