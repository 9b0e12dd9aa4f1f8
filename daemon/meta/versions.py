"""S3 bucket versioning: the versions of a key that are not the file at its path.

A bucket (a volume directory) has a versioning status in ``s3_versioning``:
no row (never enabled), ``Enabled`` or ``Suspended``.  The *current* version
of a key is the file at its path; its version id is its ``user.s3.version-id``
xattr (set by the S3 shim at commit; refused to setxattr and removexattr,
daemon/meta/xattrs.py, so a mount cannot forge it), or ``null`` without one.  Every other
version is a row of ``s3_versions``: (bucket, key, version id, inode, seq),
where a NULL inode is a delete marker and ``seq`` orders the rows of one key
(higher: newer; the current file, when there is one, is newer than all).

Like the trash (daemon/meta/trash.py), a version keeps its inode: when a
file's last name goes in a versioned bucket (unlink through a mount or S3, the
file a rename, put_object, copy or multipart completion replaces), the inode
is re-linked as ``versions/<ino>`` under the internal ``versions`` root, taken
out of its quota domain, and given a row, in the removal's own transaction.
The bucket and its status come from the statement that finds the removed name
(:meth:`Trash._removal_entry`); versioning wins over the trash.

- Enabled: the replaced file becomes a non-current version under its id.  A
  file without an id (written through a mount) is ``null``, unless a ``null``
  row exists already: then it gets an id made from its mtime and inode.  An
  unlink adds a delete marker with a new id.
- Suspended: the ``null`` version goes for good (a current ``null`` file goes
  the ordinary way: trash or purge); a current file with an id is kept as a
  version.  An unlink adds a ``null`` delete marker.

Removing a version for good that was the latest (the current file, or the
newest row while no file is at the path) makes the next one current: a
version's inode is put back at the key's path (its directories made as
implied ones), a delete marker leaves the key deleted.
"""

from __future__ import annotations

import secrets
import stat
from typing import Any

from daemon.meta.base import _api
from daemon.meta.inodes import _IFMT, _is_dir
from daemon.meta.objlock import check_unlocked, lock_config
from daemon.meta.schema import _ATTR_I, _INTERNAL_KEY
from daemon.meta.trash import Trash, _VolumeRow
from dfs.core.errors import InvalidArgument, NotFound
from dfs.core.namespace import ROOT_INO, check_name

ENABLED = "Enabled"
SUSPENDED = "Suspended"
STATES = (ENABLED, SUSPENDED)
NULL_VERSION = "null"
XA_VERSION_ID = b"user.s3.version-id"
XA_ETAG = b"user.s3.etag"
# Rows one versions_list call answers at most.
LIST_MAX = 1000
# Directory levels a key's path may have when walking up to its bucket (a key is at most 1024 bytes).
_KEY_DEPTH_MAX = 1024
# A seq above every real one: "all versions of the marker key" when resuming a listing.
SEQ_ALL = 2**62
_VERSIONS_KEY = _INTERNAL_KEY + "versions"


def new_version_id(now_ns: int) -> str:
    """32 hex digits: the time first (ids of one key sort by age), then 64 random bits."""
    return f"{now_ns & (2**64 - 1):016x}{secrets.randbits(64):016x}"


def _derived_version_id(mtime_ns: int, ino: int) -> str:
    """The id of a mount-written file that cannot be ``null`` (one exists): stable, time-first."""
    return f"{mtime_ns & (2**64 - 1):016x}{ino & (2**64 - 1):016x}"


def key_names(key: bytes) -> list[bytes]:
    """The path names of an object key (``a/b/c`` -> a, b, c); InvalidArgument for a bad one."""
    if not isinstance(key, bytes) or not key or key.endswith(b"/"):
        raise InvalidArgument("a versioned key names a file: non-empty, not ending in '/'")
    names = key.split(b"/")
    for name in names:
        check_name(name)
    return names


def _prefix_end(prefix: bytes) -> bytes | None:
    """The least byte string above every one that starts with ``prefix``; None: there is none."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class Versions(Trash):
    """Keeping replaced and removed files of versioned buckets as versions; the s3.version* endpoints."""

    # -- in the removal's transaction ------------------------------------------------------

    def _drop_name(
        self,
        ino: int,
        mode: int,
        nlink: int,
        origin: tuple[int, bytes],
        now: int,
        volume: _VolumeRow | None = None,
        *,
        marker: bool = False,
    ) -> None:
        """As :meth:`Trash._drop_name`, but in a versioned bucket the file becomes a version
        (and with ``marker``, an unlink, a delete marker is added)."""
        target: tuple[int, bytes, str] | None = None
        if mode & _IFMT == stat.S_IFREG:
            row = volume if volume is not None else self._volume_of_inode(ino)
            if row[0] is not None and row[3] in STATES:
                key = self._key_of(int(row[0]), origin)
                if key is not None:
                    target = (int(row[0]), key, str(row[3]))
        if target is None:
            super()._drop_name(ino, mode, nlink, origin, now, volume)
            return
        bucket, key, status = target
        if status == SUSPENDED:
            self._drop_version(bucket, key, NULL_VERSION, now)
        if nlink == 0:
            vid = self._version_of(ino)
            if status == SUSPENDED and vid == NULL_VERSION:
                super()._drop_name(ino, mode, nlink, origin, now, volume)
            else:
                self._to_versions(bucket, key, ino, self._current_id(bucket, key, ino), now)
        else:
            self._set_nlink(ino, nlink, now)
        if marker:
            self._add_row(bucket, key, new_version_id(now) if status == ENABLED else NULL_VERSION, None, now)

    def _before_truncate(self, ino: int, now: int) -> None:
        """open(O_TRUNC) of a non-empty file in an Enabled bucket (a mount overwriting it in place):
        the old content becomes a version, a copy of the inode sharing its chunks; the file
        itself goes on as the new current version (without an id of its own: ``null``)."""
        volume = self._volume_of_inode(ino)
        if volume[0] is None or volume[3] != ENABLED or volume[2] == 0:
            return
        # Files have no index by inode: a scan, paid only in Enabled buckets on a truncating open.
        named = self._db.execute(
            "SELECT parent, name FROM dentries WHERE ino = ? AND is_dir = 0 LIMIT 1", (ino,)
        ).fetchone()
        if named is None:
            return
        bucket = int(volume[0])
        key = self._key_of(bucket, (int(named[0]), bytes(named[1])))
        if key is None:
            return
        vid = self._current_id(bucket, key, ino)
        copy: int = self._db.execute(
            "INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, stored, atime_ns, mtime_ns, ctime_ns, "
            "generation, symlink, inline, quota) SELECT mode, 1, uid, gid, rdev, size, stored, atime_ns, "
            "mtime_ns, ?, generation, symlink, inline, NULL FROM inodes WHERE ino = ? RETURNING ino",
            (now, ino),
        ).fetchone()[0]
        self._db.execute(
            "INSERT INTO blocks SELECT ?, idx, chunk_id, length, stored_bytes FROM blocks WHERE ino = ?",
            (copy, ino),
        )
        # The copy's references: each chunk once more per block naming it (none is at 0 now).
        self._db.execute(
            "UPDATE chunks SET refcount = chunks.refcount + d.n FROM (SELECT chunk_id, COUNT(*) AS n "
            "FROM blocks WHERE ino = ? GROUP BY chunk_id) d WHERE chunks.chunk_id = d.chunk_id",
            (ino,),
        )
        self._db.execute("INSERT INTO xattrs SELECT ?, name, value FROM xattrs WHERE ino = ?", (copy, ino))
        self._to_versions(bucket, key, copy, vid, now)
        # The file is a new version now: the old id (and ETag) went with the copy.
        self._db.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, XA_VERSION_ID))

    def _key_of(self, bucket: int, origin: tuple[int, bytes]) -> bytes | None:
        """The key of name ``origin`` (parent, name) in ``bucket``; None if it is not below it."""
        parent, name = origin
        parts = [name]
        cur = parent
        for _ in range(_KEY_DEPTH_MAX):
            if cur == bucket:
                return b"/".join(reversed(parts))
            if cur == ROOT_INO:
                return None
            row = self._db.execute(
                "SELECT parent, name FROM dentries WHERE is_dir = 1 AND ino = ? LIMIT 1", (cur,)
            ).fetchone()
            if row is None:
                return None
            parts.append(bytes(row[1]))
            cur = int(row[0])
        return None

    def _version_of(self, ino: int) -> str:
        row = self._db.execute(
            "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, XA_VERSION_ID)
        ).fetchone()
        return NULL_VERSION if row is None else bytes(row[0]).decode("ascii", "replace")

    def _current_id(self, bucket: int, key: bytes, ino: int) -> str:
        """The version id of ``key``'s current file ``ino``: its xattr, else ``null`` unless a
        ``null`` row exists (a mount wrote it over a null version): then one made from it."""
        vid = self._version_of(ino)
        if vid == NULL_VERSION and self._row(bucket, key, NULL_VERSION) is not None:
            return _derived_version_id(self._attr(ino).mtime_ns, ino)
        return vid

    def _row(self, bucket: int, key: bytes, vid: str) -> tuple[int | None, int] | None:
        """(ino or None for a marker, seq) of version ``vid`` of ``key``, if it is a row."""
        row = self._db.execute(
            "SELECT ino, seq FROM s3_versions WHERE bucket = ? AND key = ? AND version_id = ?",
            (bucket, key, vid),
        ).fetchone()
        return None if row is None else (None if row[0] is None else int(row[0]), int(row[1]))

    def _newest(self, bucket: int, key: bytes) -> tuple[str, int | None, int] | None:
        row = self._db.execute(
            "SELECT version_id, ino, seq FROM s3_versions WHERE bucket = ? AND key = ? "
            "ORDER BY seq DESC LIMIT 1",
            (bucket, key),
        ).fetchone()
        return None if row is None else (str(row[0]), None if row[1] is None else int(row[1]), int(row[2]))

    def _versions_root(self) -> int:
        row = self._db.execute("SELECT value FROM config WHERE key = ?", (_VERSIONS_KEY,)).fetchone()
        if row is None:
            raise NotFound("internal directory 'versions' is missing")
        return int(row[0])

    def _add_row(self, bucket: int, key: bytes, vid: str, ino: int | None, now: int) -> None:
        self._db.execute(
            "INSERT INTO s3_versions (bucket, key, version_id, ino, seq, created_ns) VALUES (?, ?, ?, ?, "
            "(SELECT COALESCE(MAX(seq), 0) + 1 FROM s3_versions WHERE bucket = ? AND key = ?), ?)",
            (bucket, key, vid, ino, bucket, key, now),
        )

    def _to_versions(self, bucket: int, key: bytes, ino: int, vid: str, now: int) -> None:
        root = self._versions_root()
        self._add_row(bucket, key, vid, ino, now)
        self._add_dentry(root, str(ino).encode(), ino, False)
        self._touch_dir(root, now)
        # The id travels with the inode: it is the same version if it becomes current again.
        self._db.execute(
            "INSERT INTO xattrs VALUES (?, ?, ?) "
            "ON CONFLICT (ino, name) DO UPDATE SET value = excluded.value",
            (ino, XA_VERSION_ID, vid.encode()),
        )
        # Out of its quota domain, like a trash entry: the accounting trigger gives the usage back.
        self._db.execute_later(
            "UPDATE inodes SET nlink = 1, quota = NULL, ctime_ns = ? WHERE ino = ?", (now, ino)
        )

    def _drop_version(self, bucket: int, key: bytes, vid: str, now: int) -> tuple[int | None, int] | None:
        """Remove row ``vid`` of ``key`` for good (its inode is purged once closed); the row."""
        found = self._row(bucket, key, vid)
        if found is None:
            return None
        self._db.execute(
            "DELETE FROM s3_versions WHERE bucket = ? AND key = ? AND version_id = ?", (bucket, key, vid)
        )
        ino = found[0]
        if ino is not None:
            root = self._versions_root()
            gone = self._db.execute(
                "DELETE FROM dentries WHERE parent = ? AND name = ? RETURNING id", (root, str(ino).encode())
            ).fetchall()
            if gone:
                self._touch_dir(root, now)
                self._set_nlink(ino, 0, now)
        return found

    def _make_dirs(
        self, now: int, parent: int, dirs: list[bytes], mode: int, uid: int, gid: int, *, implicit: bool
    ) -> int:
        raise NotImplementedError  # daemon/meta/objects.py

    def _promote(self, bucket: int, names: list[bytes], now: int) -> None:
        """The newest row of the key becomes current: a version goes back to the key's path (a
        marker stays: the key remains deleted)."""
        key = b"/".join(names)
        newest = self._newest(bucket, key)
        if newest is None or newest[1] is None:
            return
        vid, ino = newest[0], newest[1]
        parent = self._make_dirs(now, bucket, names[:-1], stat.S_IFDIR | 0o755, 0, 0, implicit=True)
        if self._dentry(parent, names[-1]) is not None:
            return  # something else took the name (a directory made meanwhile): the row stays
        root = self._versions_root()
        self._db.execute(
            "DELETE FROM s3_versions WHERE bucket = ? AND key = ? AND version_id = ?", (bucket, key, vid)
        )
        self._db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (root, str(ino).encode()))
        self._touch_dir(root, now)
        self._add_dentry(parent, names[-1], ino, False)
        self._touch_dir(parent, now)
        # Back into the parent's domain: the trigger charges it, or refuses past a limit.
        self._db.execute(
            "UPDATE inodes SET quota = (SELECT quota FROM inodes WHERE ino = ?), ctime_ns = ? WHERE ino = ?",
            (parent, now, ino),
        )

    def _status(self, bucket: int) -> str | None:
        row = self._db.execute("SELECT status FROM s3_versioning WHERE ino = ?", (bucket,)).fetchone()
        return None if row is None else str(row[0])

    def _current(self, bucket: int, names: list[bytes]) -> tuple[int, tuple[int, int, int, int]] | None:
        """(parent, :meth:`_dentry` row) of the regular file at the key's path, if there is one."""
        cur = bucket
        for name in names[:-1]:
            entry = self._dentry(cur, name)
            if entry is None or not _is_dir(entry[2]):
                return None
            cur = entry[1]
        entry = self._dentry(cur, names[-1])
        if entry is None or entry[2] & _IFMT != stat.S_IFREG:
            return None
        return cur, entry

    # -- the s3.version* endpoints ---------------------------------------------------------

    @_api
    def versioning_set(self, bucket: int, status: str) -> None:
        """Set bucket (volume directory) ``bucket``'s versioning to Enabled or Suspended."""
        if status not in STATES:
            raise InvalidArgument(f"versioning status must be one of {', '.join(STATES)}")
        with self._write() as now:
            if self._db.execute("SELECT 1 FROM volumes WHERE ino = ?", (bucket,)).fetchone() is None:
                raise InvalidArgument(
                    "versioning needs the bucket to be a volume (a bucket made by mkdir is not one): "
                    "register it with `dfs volume adopt NAME` first"
                )
            if status != ENABLED and lock_config(self._db, bucket) is not None:
                raise InvalidArgument(f"bucket {bucket} has object lock: its versioning stays Enabled")
            self._db.execute(
                "INSERT INTO s3_versioning (ino, status, changed_ns) VALUES (?, ?, ?) "
                "ON CONFLICT (ino) DO UPDATE SET status = excluded.status, changed_ns = excluded.changed_ns",
                (bucket, status, now),
            )
            self._log(now, "versioning_set", [bucket, status])

    @_api
    def versioning_get(self, bucket: int) -> str | None:
        """Bucket ``bucket``'s versioning status; None if it was never enabled."""
        with self._read():
            return self._status(bucket)

    @_api
    def versions_get(self, bucket: int, key: bytes, version_id: str | None) -> dict[str, Any]:
        """Version ``version_id`` of ``key`` (None: the latest): {"ino" (None for a delete
        marker), "version_id", "delete_marker", "latest"}.  NotFound if there is none (for
        None: the key has no file and its newest row is no delete marker)."""
        names = key_names(key)
        with self._read():
            cur = self._current(bucket, names)
            cur_vid = None if cur is None else self._current_id(bucket, key, cur[1][1])
            if cur is not None and (version_id is None or version_id == cur_vid):
                return {"ino": cur[1][1], "version_id": cur_vid, "delete_marker": False, "latest": True}
            newest = self._newest(bucket, key)
            if version_id is None:
                if newest is None or newest[1] is not None:
                    raise NotFound(f"no current version of key {key!r}")
                return {"ino": None, "version_id": newest[0], "delete_marker": True, "latest": True}
            found = self._row(bucket, key, version_id)
            if found is None:
                raise NotFound(f"no version {version_id!r} of key {key!r}")
            latest = cur is None and newest is not None and newest[2] == found[1]
            marker = found[0] is None
            return {"ino": found[0], "version_id": version_id, "delete_marker": marker, "latest": latest}

    @_api
    def versions_delete(
        self, bucket: int, key: bytes, version_id: str | None, bypass: bool = False
    ) -> dict[str, Any]:
        """S3 DeleteObject in a bucket that has (had) versioning: without ``version_id``, the
        key gets a delete marker (the current file, if any, becomes a version); with one, that
        version goes for good, and if it was the latest the next one becomes current.
        {"version_id", "delete_marker": whether the id names a marker, "found"}.  A version
        under an S3 object lock refuses to go for good (NotPermitted); ``bypass`` lifts a
        GOVERNANCE retention (daemon/meta/objlock.py)."""
        names = key_names(key)
        with self._write() as now:
            status = self._status(bucket)
            cur = self._current(bucket, names)
            if version_id is None:
                if status is None:
                    raise InvalidArgument(f"bucket {bucket} has no versioning")
                if cur is not None:
                    parent, (dentry_id, ino, mode, nlink) = cur
                    volume = self._volume_of_inode(ino)
                    self._del_dentry(dentry_id)
                    self._touch_dir(parent, now)
                    self._drop_name(ino, mode, nlink - 1, (parent, names[-1]), now, volume, marker=True)
                else:
                    if status == SUSPENDED:
                        self._drop_version(bucket, key, NULL_VERSION, now)
                    vid = new_version_id(now) if status == ENABLED else NULL_VERSION
                    self._add_row(bucket, key, vid, None, now)
                newest = self._newest(bucket, key)
                assert newest is not None and newest[1] is None
                self._log(now, "versions_delete", [bucket, key, None])
                return {"version_id": newest[0], "delete_marker": True, "found": True}
            if cur is not None and self._current_id(bucket, key, cur[1][1]) == version_id:
                parent, (dentry_id, ino, mode, nlink) = cur
                check_unlocked(self._db, ino, mode, now, bypass=bypass)
                self._del_dentry(dentry_id)
                self._touch_dir(parent, now)
                self._set_nlink(ino, nlink - 1, now)  # for good: neither a version nor trash
                self._promote(bucket, names, now)
                self._log(now, "versions_delete", [bucket, key, version_id])
                return {"version_id": version_id, "delete_marker": False, "found": True}
            newest = self._newest(bucket, key)
            row = self._row(bucket, key, version_id)
            if row is not None and row[0] is not None:
                check_unlocked(self._db, row[0], self._inode(row[0])[0], now, bypass=bypass)
            found = self._drop_version(bucket, key, version_id, now)
            if found is not None and cur is None and newest is not None and newest[2] == found[1]:
                self._promote(bucket, names, now)  # the latest went: the next one is current
            self._log(now, "versions_delete", [bucket, key, version_id])
            return {
                "version_id": version_id,
                "delete_marker": found is not None and found[0] is None,
                "found": found is not None,
            }

    @_api
    def versions_list(
        self, bucket: int, prefix: bytes, after_key: bytes, after_seq: int, limit: int
    ) -> list[Any]:
        """Rows of ``bucket`` whose key starts with ``prefix``, after (``after_key``,
        ``after_seq``) in (key ascending, seq descending) order: [key, version_id, seq,
        created_ns, attr row or None (a marker), etag xattr or None]; at most ``limit``
        (<= LIST_MAX).  ``after_seq`` SEQ_ALL includes every row of ``after_key``, 0 none."""
        limit = max(0, min(int(limit), LIST_MAX))
        # The prefix as a key range (no substr: its argument types differ between the engines).
        upper = _prefix_end(prefix)
        below = "" if upper is None else "AND v.key < ? "
        with self._read():
            rows = self._db.execute(
                f"SELECT v.key, v.version_id, v.seq, v.created_ns, {_ATTR_I}, "
                "x.value FROM s3_versions v LEFT JOIN inodes i ON i.ino = v.ino "
                "LEFT JOIN xattrs x ON x.ino = v.ino AND x.name = ? "
                f"WHERE v.bucket = ? AND v.key >= ? {below}"
                "AND (v.key > ? OR (v.key = ? AND v.seq < ?)) "
                "ORDER BY v.key, v.seq DESC LIMIT ?",
                (
                    XA_ETAG,
                    bucket,
                    prefix,
                    *([] if upper is None else [upper]),
                    after_key,
                    after_key,
                    after_seq,
                    limit,
                ),
            ).fetchall()
        out: list[Any] = []
        for row in rows:
            attr = None if row[4] is None else list(row[4:16])
            etag = None if row[16] is None else bytes(row[16])
            out.append([bytes(row[0]), str(row[1]), int(row[2]), int(row[3]), attr, etag])
        return out

    @_api
    def versions_usage(self) -> list[dict[str, Any]]:
        """Per bucket with non-current versions: {bucket, bucket_ino, versions, delete_markers,
        bytes, stored_bytes}."""
        with self._read():
            names = {int(ino): str(name) for name, ino in self._db.execute("SELECT name, ino FROM volumes")}
            rows = self._db.execute(
                "SELECT v.bucket, COUNT(v.ino), COUNT(*) - COUNT(v.ino), COALESCE(SUM(i.size), 0), "
                "COALESCE(SUM(i.stored), 0) FROM s3_versions v LEFT JOIN inodes i ON i.ino = v.ino "
                "GROUP BY v.bucket ORDER BY v.bucket"
            ).fetchall()
            return [
                {
                    "bucket": names.get(int(b), f"<inode {b}>"),
                    "bucket_ino": int(b),
                    "versions": int(n),
                    "delete_markers": int(m),
                    "bytes": int(size),
                    "stored_bytes": int(stored),
                }
                for b, n, m, size, stored in rows
            ]
