"""Copy-on-write snapshots of directory trees: inodes, names, xattrs and block maps copied, chunks shared.

Volume snapshots are registered in the ``snapshots`` table (volume, name, top
inode, created, origin: ``manual`` or the schedule tier that took it, file
count and bytes at creation) and visible at ``/.snapshots/VOLUME/NAME``.  Every
inode of a snapshot tree, ``/.snapshots`` and ``/.snapshots/VOLUME`` carries
the :data:`~daemon.meta.inodes.READ_ONLY` mode flag, so every namespace, data
and xattr operation refuses to change them (EROFS); only the operations here
add and remove them.  Restores and clones copy a tree back out without the flag.
"""

from __future__ import annotations

import stat
from typing import Any

from daemon.meta.base import _api, _pack_dict, _unpack_dict
from daemon.meta.inodes import _IFDIR, DIR_SIZE, LINK_MAX, READ_ONLY, _check_writable, _is_dir
from daemon.meta.objects import Objects
from dfs.core.errors import Exists, InvalidArgument, IsADirectory, NotADirectory, NotFound, TooManyLinks
from dfs.core.namespace import ROOT_INO, Attr, check_name
from dfs.core.snapshot_schedule import NAME_RE, ORIGINS, format_schedule, parse_schedule

SNAPSHOTS_DIR = b".snapshots"
_SNAPSHOT_COLS = "volume, name, ino, created_ns, origin, files, bytes"


def _snapshot_doc(row: tuple[Any, ...]) -> dict[str, Any]:
    volume, name, ino, created_ns, origin, files, size = row
    return {
        "volume": volume,
        "name": name,
        "ino": ino,
        "created_ns": created_ns,
        "origin": origin,
        "files": files,
        "bytes": size,
    }


def _check_snapshot_name(name: str) -> None:
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise InvalidArgument(
            f"snapshot name {name!r:.60} is not 1-255 characters of A-Z a-z 0-9 . _ + -, "
            "starting alphanumeric"
        )


class Snapshots(Objects):
    """``snapshot`` (a writable tree copy), volume snapshots and the set-based tree clone behind both."""

    @_api
    def snapshot(self, src_dir: int, dst_parent: int, name: bytes, *, uid: int, gid: int) -> Attr:
        """Copy-on-write clone of the tree at ``src_dir`` as new directory ``name`` in ``dst_parent``.

        Every inode is copied with its attributes, xattrs and block map; chunks
        are shared (their refcounts rise), never copied.  Hard links within the
        tree stay hard links.  The new top directory is owned by ``uid``/``gid``
        (setgid rules as mkdir); everything below keeps its owner.
        """
        check_name(name)
        with self._write() as now:
            self._dir(src_dir, live=True)
            pmode, pnlink, pgid = self._dir(dst_parent, live=True)
            _check_writable(dst_parent, pmode)
            if self._dentry(dst_parent, name) is not None:
                raise Exists(f"{name!r} exists in directory {dst_parent}")
            if self._is_ancestor(src_dir, dst_parent):
                raise InvalidArgument(f"cannot snapshot directory {src_dir} into its own subtree")
            if pnlink >= LINK_MAX:
                raise TooManyLinks(f"directory {dst_parent} has {pnlink} links")
            setgid = 0
            if pmode & stat.S_ISGID:
                gid, setgid = pgid, stat.S_ISGID
            top = self._clone_tree(src_dir)
            self._db.execute(
                "UPDATE inodes SET uid = ?, gid = ?, mode = mode | ?, ctime_ns = ? WHERE ino = ?",
                (uid, gid, setgid, now, top),
            )
            self._add_dentry(dst_parent, name, top, True)
            self._quota_adopt_clone(dst_parent)  # charged to dst_parent's quota domain
            self._touch_dir(dst_parent, now, 1)
            self._log(now, "snapshot", [src_dir, dst_parent, name, uid, gid, top])
            return self._attr(top)

    def _clone_tree(self, src: int, read_only: bool = False) -> int:
        """Copy the tree at ``src`` (inodes, names, xattrs, block maps); the copy's nameless top.

        The copies carry :data:`READ_ONLY` if ``read_only``, else none (a copy out of a
        snapshot is writable).  ``src`` may be a file: its copy has one link (the caller's).
        """
        db = self._db
        dirs, inos, mapping = self._scratch("dirs"), self._scratch("inos"), self._scratch("map")
        db.execute(
            "WITH RECURSIVE sub(ino) AS "
            "(SELECT ? UNION SELECT d.ino FROM dentries d JOIN sub ON d.parent = sub.ino WHERE d.is_dir = 1) "
            f"INSERT INTO {dirs} SELECT ino FROM sub",
            (src,),
        )
        db.execute(
            f"INSERT INTO {inos} SELECT ino FROM {dirs} "
            f"UNION SELECT d.ino FROM {dirs} s CROSS JOIN dentries d ON d.parent = s.ino"
        )
        # Every new inode number exceeds every existing one (AUTOINCREMENT), and the copies carry
        # their original's number (negated) in ``generation`` until the mapping is read back.
        base: int = db.execute("SELECT COALESCE(MAX(ino), 0) FROM inodes").fetchone()[0]
        db.execute(
            "INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, stored, atime_ns, mtime_ns, ctime_ns, "
            "generation, symlink, inline) SELECT (mode & 65535) | ?, nlink, uid, gid, rdev, size, stored, "
            "atime_ns, mtime_ns, ctime_ns, -ino, symlink, inline FROM inodes "
            f"WHERE ino IN (SELECT ino FROM {inos}) ORDER BY ino",
            (READ_ONLY if read_only else 0,),
        )
        db.execute(f"INSERT INTO {mapping} SELECT -generation, ino FROM inodes WHERE ino > ?", (base,))
        db.execute(
            f"UPDATE inodes SET generation = o.generation FROM {mapping} m "
            "CROSS JOIN inodes o ON o.ino = m.old WHERE inodes.ino = m.new"
        )
        db.execute(
            "INSERT INTO dentries (parent, name, ino, is_dir) "
            f"SELECT mp.new, d.name, mi.new, d.is_dir FROM {dirs} s "
            f"CROSS JOIN dentries d ON d.parent = s.ino CROSS JOIN {mapping} mp ON mp.old = d.parent "
            f"CROSS JOIN {mapping} mi ON mi.old = d.ino ORDER BY d.id"
        )
        # A file's copy has only the names the copied tree gives it (its other names stay with the original).
        db.execute(
            "UPDATE inodes SET nlink = c.n FROM (SELECT d.ino, COUNT(*) AS n FROM dentries d "
            f"WHERE d.parent IN (SELECT new FROM {mapping}) AND d.is_dir = 0 GROUP BY d.ino) c "
            "WHERE inodes.ino = c.ino"
        )
        db.execute(
            f"INSERT INTO xattrs SELECT m.new, x.name, x.value FROM {mapping} m "
            "CROSS JOIN xattrs x ON x.ino = m.old"
        )
        db.execute(
            "INSERT INTO blocks SELECT m.new, b.idx, b.chunk_id, b.length, b.stored_bytes "
            f"FROM {mapping} m CROSS JOIN blocks b ON b.ino = m.old"
        )
        # The originals hold these chunks, so their refcounts are positive: no chunk_exists check.
        db.execute(
            "UPDATE chunks SET refcount = chunks.refcount + c.n, zero_since_ns = NULL "
            f"FROM (SELECT b.chunk_id, COUNT(*) AS n FROM {mapping} m CROSS JOIN blocks b ON b.ino = m.new "
            "GROUP BY b.chunk_id) c WHERE chunks.chunk_id = c.chunk_id"
        )
        top: int = db.execute(f"SELECT new FROM {mapping} WHERE old = ?", (src,)).fetchone()[0]
        return top

    # -- volume snapshots ---------------------------------------------------------------

    def _snapshot_row(self, volume: str, name: str) -> tuple[Any, ...]:
        row: tuple[Any, ...] | None = self._db.execute(
            f"SELECT {_SNAPSHOT_COLS} FROM snapshots WHERE volume = ? AND name = ?", (volume, name)
        ).fetchone()
        if row is None:
            raise NotFound(f"no snapshot {name!r} of volume {volume!r}")
        return row

    def _read_only_dir(self, now: int, parent: int, name: bytes, *, adopt: str | None = None) -> int:
        """Directory ``name`` in ``parent``, made (root-owned, 0755) if missing, flagged read-only.

        With ``adopt`` (a volume name), an existing directory's subdirectories (snapshots
        taken before snapshots were read-only and registered) become read-only snapshots
        of that volume, so they can be listed and deleted like the others."""
        entry = self._dentry(parent, name)
        if entry is not None:
            ino, mode = entry[1], entry[2]
            if not _is_dir(mode):
                raise NotADirectory(f"{name!r} in directory {parent} is not a directory")
            if not mode & READ_ONLY:  # made before snapshots were read-only: from now on it is
                if adopt is not None:
                    self._adopt_snapshots(adopt, ino)
                self._db.execute("UPDATE inodes SET mode = mode | ? WHERE ino = ?", (READ_ONLY, ino))
            return ino
        pnlink = self._dir(parent, live=True)[1]
        if pnlink >= LINK_MAX:
            raise TooManyLinks(f"directory {parent} has {pnlink} links")
        ino = self._db.execute(
            "INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, stored, atime_ns, mtime_ns, ctime_ns, "
            "generation, symlink, inline) VALUES (?, 2, 0, 0, 0, ?, 0, ?, ?, ?, 0, NULL, NULL) RETURNING ino",
            (_IFDIR | 0o755 | READ_ONLY, DIR_SIZE, now, now, now),
        ).fetchone()[0]
        self._add_dentry(parent, name, ino, True)
        self._touch_dir(parent, now, 1)
        return int(ino)

    def _adopt_snapshots(self, volume: str, vol_dir: int) -> None:
        db = self._db
        for name, top, created_ns in db.execute(
            "SELECT d.name, d.ino, i.ctime_ns FROM dentries d JOIN inodes i ON i.ino = d.ino "
            "WHERE d.parent = ? AND d.is_dir = 1",
            (vol_dir,),
        ).fetchall():
            try:
                text = bytes(name).decode()
            except UnicodeDecodeError:
                continue  # not a name a snapshot can have: left as it is
            if NAME_RE.fullmatch(text) is None:
                continue
            db.execute(
                "WITH RECURSIVE sub(ino) AS (SELECT ? UNION SELECT d.ino FROM dentries d JOIN sub "
                "ON d.parent = sub.ino) UPDATE inodes SET mode = mode | ? WHERE ino IN (SELECT ino FROM sub)",
                (top, READ_ONLY),
            )
            files, size = db.execute(
                "WITH RECURSIVE sub(ino) AS (SELECT ? UNION SELECT d.ino FROM dentries d JOIN sub "
                "ON d.parent = sub.ino) SELECT COUNT(*), COALESCE(SUM(i.size), 0) FROM inodes i "
                "WHERE i.ino IN (SELECT ino FROM sub) AND i.mode & ? != ?",
                (top, 0o170000, _IFDIR),
            ).fetchone()
            db.execute(
                f"INSERT INTO snapshots ({_SNAPSHOT_COLS}) VALUES (?, ?, ?, ?, 'manual', ?, ?) "
                "ON CONFLICT (volume, name) DO NOTHING",
                (volume, text, top, created_ns, int(files), int(size)),
            )

    def _volume_of(self, volume: str) -> tuple[int, bytes]:
        row = self._volume_row(volume)
        if row is None:
            raise NotFound(f"no volume {volume!r}")
        return row[1], row[2]

    @_api
    def create_snapshot(self, volume: str, name: str, *, origin: str = "manual") -> dict[str, Any]:
        """Read-only copy-on-write snapshot ``name`` of ``volume`` at /.snapshots/VOLUME/NAME.

        One transaction: a consistent point-in-time image (see README: a tree of 100k
        files takes about a second on SQLite, during which other writers wait).
        """
        _check_snapshot_name(name)
        if origin not in ORIGINS:
            raise InvalidArgument(f"snapshot origin must be one of {', '.join(ORIGINS)}, not {origin!r:.40}")
        with self._write() as now:
            vol_ino = self._volume_of(volume)[0]
            if self._db.execute(
                "SELECT 1 FROM snapshots WHERE volume = ? AND name = ?", (volume, name)
            ).fetchone():
                raise Exists(f"snapshot {name!r} of volume {volume!r} exists")
            top_dir = self._read_only_dir(now, ROOT_INO, SNAPSHOTS_DIR)
            vol_dir = self._read_only_dir(now, top_dir, volume.encode(), adopt=volume)
            if self._dentry(vol_dir, name.encode()) is not None:
                raise Exists(f"{name!r} exists in /.snapshots/{volume}")
            vol_nlink = self._dir(vol_dir, live=True)[1]
            if vol_nlink >= LINK_MAX:
                raise TooManyLinks(f"/.snapshots/{volume} has {vol_nlink} snapshots")
            top = self._clone_tree(vol_ino, read_only=True)
            self._db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, top))
            files, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(i.size), 0) FROM temp.scratch_map m "
                "CROSS JOIN inodes i ON i.ino = m.new WHERE i.mode & ? != ?",
                (0o170000, _IFDIR),
            ).fetchone()
            self._add_dentry(vol_dir, name.encode(), top, True)
            self._touch_dir(vol_dir, now, 1)
            row = (volume, name, top, now, origin, int(files), int(size))
            self._db.execute(f"INSERT INTO snapshots ({_SNAPSHOT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            self._log(now, "snapshot_create", [volume, name, origin, top_dir, vol_dir, top])
        return _snapshot_doc(row)

    @_api
    def list_snapshots(self, volume: str | None = None) -> list[dict[str, Any]]:
        """The registered snapshots (of ``volume``, or all), by volume and creation."""
        if volume is None:
            rows = self._db.execute(
                f"SELECT {_SNAPSHOT_COLS} FROM snapshots ORDER BY volume, created_ns, name"
            ).fetchall()
        else:
            rows = self._db.execute(
                f"SELECT {_SNAPSHOT_COLS} FROM snapshots WHERE volume = ? ORDER BY created_ns, name",
                (volume,),
            ).fetchall()
        return [_snapshot_doc(tuple(r)) for r in rows]

    @_api
    def delete_snapshot(self, volume: str, name: str) -> int:
        """Remove snapshot ``name`` of ``volume`` (its tree; its chunks lose their references and
        GC collects those left unreferenced); how many inodes lost names."""
        with self._write() as now:
            top = self._snapshot_row(volume, name)[2]
            self._db.execute("DELETE FROM snapshots WHERE volume = ? AND name = ?", (volume, name))
            removed = 0
            entry = self._db.execute(
                "SELECT d.id, d.parent FROM dentries d WHERE d.is_dir = 1 AND d.ino = ?", (top,)
            ).fetchone()
            if entry is not None:  # the internal removal: read-only is for everybody else
                self._del_dentry(entry[0])
                self._touch_dir(entry[1], now, -1)
                removed = self._remove_subtree(top, now)
            self._log(now, "snapshot_delete", [volume, name, None if entry is None else entry[1], top])
        return removed

    @_api
    def restore_snapshot(self, volume: str, name: str) -> Attr:
        """Roll ``volume`` back to snapshot ``name``: its contents become a writable copy of the
        snapshot's tree.  The volume directory keeps its inode (volume row, mounts' handles)
        and takes the snapshot top's attributes and xattrs; the snapshot stays."""
        with self._write() as now:
            vol_ino = self._volume_of(volume)[0]
            snap_top = self._snapshot_row(volume, name)[2]
            self._dir(snap_top, live=True)
            self._remove_subtree(vol_ino, now, keep_top=True)
            copy = self._clone_tree(snap_top)
            db = self._db
            db.execute("UPDATE dentries SET parent = ? WHERE parent = ?", (vol_ino, copy))
            db.execute("DELETE FROM xattrs WHERE ino = ?", (vol_ino,))
            db.execute("UPDATE xattrs SET ino = ? WHERE ino = ?", (vol_ino, copy))
            db.execute(
                "UPDATE inodes SET mode = c.mode, nlink = c.nlink, uid = c.uid, gid = c.gid, "
                "atime_ns = c.atime_ns, mtime_ns = ?, ctime_ns = ? FROM inodes c "
                "WHERE inodes.ino = ? AND c.ino = ?",
                (now, now, vol_ino, copy),
            )
            db.execute("DELETE FROM inodes WHERE ino = ?", (copy,))
            self._quota_adopt_clone(vol_ino)  # charged to the volume's quota domain
            self._log(now, "snapshot_restore", [volume, name, vol_ino])
            return self._attr(vol_ino)

    @_api
    def restore_snapshot_path(
        self, volume: str, name: str, path: list[bytes], dst_parent: int, dst_name: bytes
    ) -> Attr:
        """Copy file or directory ``path`` (below the snapshot's top; empty: all of it) out of
        snapshot ``name`` of ``volume`` as a new writable ``dst_name`` in ``dst_parent``."""
        check_name(dst_name)
        for part in path:
            check_name(part)
        with self._write() as now:
            ino = self._snapshot_row(volume, name)[2]
            for part in path:
                entry = self._dentry(ino, part)
                if entry is None:
                    raise NotFound(f"{part!r} not found in snapshot {name!r} of volume {volume!r}")
                ino = entry[1]
            mode = self._inode(ino)[0]
            if not (_is_dir(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                raise InvalidArgument(f"{b'/'.join(path)!r} is neither a file, a symlink nor a directory")
            pmode, pnlink, pgid = self._dir(dst_parent, live=True)
            _check_writable(dst_parent, pmode)
            existing = self._dentry(dst_parent, dst_name)
            if existing is not None:
                if _is_dir(existing[2]):
                    raise IsADirectory(f"{dst_name!r} exists in directory {dst_parent}")
                raise Exists(f"{dst_name!r} exists in directory {dst_parent}")
            if _is_dir(mode) and pnlink >= LINK_MAX:
                raise TooManyLinks(f"directory {dst_parent} has {pnlink} links")
            top = self._clone_tree(ino)
            if not _is_dir(mode):
                self._db.execute("UPDATE inodes SET nlink = 1 WHERE ino = ?", (top,))
            self._db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, top))
            self._add_dentry(dst_parent, dst_name, top, _is_dir(mode))
            self._quota_adopt_clone(dst_parent)  # charged to dst_parent's quota domain
            self._touch_dir(dst_parent, now, 1 if _is_dir(mode) else 0)
            self._log(now, "snapshot_restore_path", [volume, name, path, dst_parent, dst_name, top])
            return self._attr(top)

    @_api
    def clone_snapshot(self, volume: str, name: str, new_volume: str) -> dict[str, Any]:
        """A new writable volume ``new_volume`` whose tree is a copy of snapshot ``name`` (sharing
        its chunks), with ``volume``'s policy (none if that volume is gone)."""
        encoded = self._volume_name(new_volume)
        with self._write() as now:
            snap_top = self._snapshot_row(volume, name)[2]
            row = self._volume_row(volume)
            policy = row[2] if row is not None else _pack_dict({}, "volume policy")
            if self._dentry(ROOT_INO, encoded) is not None:
                raise Exists(f"{new_volume!r} exists in the root directory")
            rnlink = self._dir(ROOT_INO, live=True)[1]
            if rnlink >= LINK_MAX:
                raise TooManyLinks(f"the root directory has {rnlink} links")
            top = self._clone_tree(snap_top)
            self._db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, top))
            self._add_dentry(ROOT_INO, encoded, top, True)
            self._touch_dir(ROOT_INO, now, 1)
            self._db.execute(
                "INSERT INTO volumes VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE "
                "SET ino = excluded.ino, policy = excluded.policy, created_ns = excluded.created_ns",
                (new_volume, top, policy, now),
            )
            self._volume_quota(top, _unpack_dict(policy))  # a new volume: its own quota domain
            self._log(now, "snapshot_clone", [volume, name, new_volume, top])
            return self._volume((new_volume, top, policy, now))

    @_api
    def snapshot_restore(
        self, volume: str, name: str, path: str | None = None, to: str | None = None
    ) -> dict[str, Any]:
        """:meth:`restore_snapshot` (no ``path``/``to``) or :meth:`restore_snapshot_path` of
        ``path`` (in the snapshot) to the new absolute path ``to``, by names (`dfs snapshot restore`)."""
        if path is None and to is None:
            ino = self.restore_snapshot(volume, name).ino
            return {"volume": volume, "name": name, "path": f"/{volume}", "ino": ino}
        if path is None or to is None:
            raise InvalidArgument("restore of one path needs both path (in the snapshot) and to (a new path)")
        parts = [p.encode() for p in path.split("/") if p]
        dest = [p.encode() for p in to.split("/") if p]
        if not dest or any(p in (b".", b"..") for p in parts + dest):
            raise InvalidArgument("to must be a new path below the root, without . or .. steps")
        with self._write():
            parent = self.resolve(ROOT_INO, dest[:-1]).ino
            ino = self.restore_snapshot_path(volume, name, parts, parent, dest[-1]).ino
        return {"volume": volume, "name": name, "path": "/" + b"/".join(dest).decode(), "ino": ino}

    @_api
    def set_snapshot_schedule(self, volume: str, schedule: str | None) -> str | None:
        """Set ``volume``'s ``snapshot_schedule`` policy field (checked; stored canonical)."""
        canonical = None
        if schedule is not None:
            try:
                canonical = format_schedule(parse_schedule(schedule))
            except ValueError as exc:
                raise InvalidArgument(f"snapshot_schedule: {exc}") from None
        with self._write():
            row = self._volume_row(volume)
            if row is None:
                raise NotFound(f"no volume {volume!r}")
            policy = self._volume(row)["policy"]
            policy["snapshot_schedule"] = canonical
            self.update_volume(volume, policy)
        return canonical
