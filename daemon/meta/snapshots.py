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

import contextlib
import stat
from typing import Any

from daemon.meta.base import _IN_BATCH, _api, _pack_dict, _unpack_dict
from daemon.meta.inodes import _IFDIR, DIR_SIZE, LINK_MAX, READ_ONLY, _check_writable, _is_dir
from daemon.meta.objects import Objects
from daemon.meta.schema import _INTERNAL_KEY
from dfs.core.errors import (
    Exists,
    InternalError,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    TooManyLinks,
    Unavailable,
)
from dfs.core.namespace import ROOT_INO, Attr, check_name
from dfs.core.snapshot_schedule import NAME_RE, ORIGINS, format_schedule, parse_schedule

SNAPSHOTS_DIR = b".snapshots"
_SNAPSHOT_COLS = "volume, name, ino, created_ns, origin, files, bytes"
_BUILDS_KEY = _INTERNAL_KEY + "snapshot-builds"
# A build with no batch for this long is given up: GC runs again, and the snapshot duty removes
# its partial copy (daemon/service/snapshots.py).  A batch takes milliseconds.
BUILD_STALE_NS = 600 * 10**9
# The src_* scratch tables a batch fills, and their widths.
_SRC_KINDS = ("inodes", "dentries", "xattrs", "blocks")
_SRC_WIDTH = {"inodes": 14, "dentries": 5, "xattrs": 3, "blocks": 5}
_SRC_INODE_COLS = (
    "i.ino, i.mode, i.nlink, i.uid, i.gid, i.rdev, i.size, i.stored, i.atime_ns, i.mtime_ns, i.ctime_ns, "
    "i.generation, i.symlink, i.inline"
)


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
        One transaction, from the live tables: a volume snapshot copies in bounded batches
        instead (:meth:`snapshot_build_batch`).
        """
        db = self._db
        dirs, ino_map = self._scratch("dirs"), self._scratch("map")
        src_inodes, src_dentries = self._scratch("src_inodes"), self._scratch("src_dentries")
        src_xattrs, src_blocks = self._scratch("src_xattrs"), self._scratch("src_blocks")
        db.execute(
            "WITH RECURSIVE sub(ino) AS "
            "(SELECT ? UNION SELECT d.ino FROM dentries d JOIN sub ON d.parent = sub.ino WHERE d.is_dir = 1) "
            f"INSERT INTO {dirs} SELECT ino FROM sub",
            (src,),
        )
        db.execute(
            f"INSERT INTO {src_dentries} SELECT d.id, d.parent, d.name, d.ino, d.is_dir FROM {dirs} s "
            "CROSS JOIN dentries d ON d.parent = s.ino"
        )
        db.execute(
            f"INSERT INTO {src_inodes} SELECT {_SRC_INODE_COLS} FROM (SELECT ino FROM {dirs} "
            f"UNION SELECT ino FROM {src_dentries}) s CROSS JOIN inodes i ON i.ino = s.ino"
        )
        db.execute(
            f"INSERT INTO {src_xattrs} SELECT x.ino, x.name, x.value FROM {src_inodes} s "
            "CROSS JOIN xattrs x ON x.ino = s.ino"
        )
        db.execute(
            f"INSERT INTO {src_blocks} SELECT b.ino, b.idx, b.chunk_id, b.length, b.stored_bytes "
            f"FROM {src_inodes} s CROSS JOIN blocks b ON b.ino = s.ino"
        )
        self._copy_staged(read_only)
        top: int = db.execute(f"SELECT new FROM {ino_map} WHERE old = ?", (src,)).fetchone()[0]
        if not _is_dir(db.execute(f"SELECT mode FROM {src_inodes} WHERE ino = ?", (src,)).fetchone()[0]):
            db.execute("UPDATE inodes SET nlink = 1 WHERE ino = ?", (top,))
        return top

    def _copy_staged(self, read_only: bool) -> None:
        """Create copies of the rows staged in the ``src_*`` scratch tables.

        Every staged inode gets a new copy (flagged :data:`READ_ONLY` if ``read_only``); every
        staged dentry becomes a name in the copy of its parent, for its inode's copy.  The
        ``map`` scratch table may already map inodes copied earlier (a batch's parents, files
        with several names): their names are added, they are not copied again.  Afterwards
        ``map`` maps every staged and pre-mapped inode to its copy.  Chunks are shared: their
        refcounts rise, and a chunk that is gone (collected) fails the whole copy.
        """
        db = self._db
        ino_map = "temp.scratch_map"
        src_inodes, src_dentries = "temp.scratch_src_inodes", "temp.scratch_src_dentries"
        src_xattrs, src_blocks = "temp.scratch_src_xattrs", "temp.scratch_src_blocks"
        # Every new inode number exceeds every existing one (AUTOINCREMENT), and the copies carry
        # their original's number (negated) in ``generation`` until the mapping is read back.
        base: int = db.execute("SELECT COALESCE(MAX(ino), 0) FROM inodes").fetchone()[0]
        db.execute(
            "INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, stored, atime_ns, mtime_ns, ctime_ns, "
            "generation, symlink, inline) SELECT (mode & 65535) | ?, CASE WHEN mode & ? = ? THEN 2 "
            "ELSE 0 END, uid, gid, rdev, size, stored, atime_ns, mtime_ns, ctime_ns, -ino, symlink, inline "
            f"FROM {src_inodes} ORDER BY ino",
            (READ_ONLY if read_only else 0, 0o170000, _IFDIR),
        )
        db.execute(
            f"INSERT INTO {ino_map} SELECT -generation, ino FROM inodes WHERE ino > ? AND generation < 0",
            (base,),
        )
        db.execute(
            f"UPDATE inodes SET generation = s.generation FROM {ino_map} m "
            f"CROSS JOIN {src_inodes} s ON s.ino = m.old WHERE inodes.ino = m.new AND inodes.ino > ?",
            (base,),
        )
        named = db.execute(
            "INSERT INTO dentries (parent, name, ino, is_dir) "
            f"SELECT mp.new, d.name, mi.new, d.is_dir FROM {src_dentries} d "
            f"CROSS JOIN {ino_map} mp ON mp.old = d.parent CROSS JOIN {ino_map} mi ON mi.old = d.ino "
            "ORDER BY d.id"
        ).rowcount
        staged = db.execute(f"SELECT COUNT(*) FROM {src_dentries}").fetchone()[0]
        if named != staged:  # a parent or inode neither staged nor mapped: a caller's bug
            raise InternalError(
                f"tree copy: {staged - named} of {staged} names have no copied parent or inode"
            )
        # Link counts follow the names made so far, so a partial copy is sound at every step:
        # a file's copy has only the names the copied tree gives it (its other names stay with
        # the original), a directory's 2 plus its subdirectories copied.
        db.execute(
            "UPDATE inodes SET nlink = inodes.nlink + c.n FROM (SELECT CASE WHEN d.is_dir = 0 "
            "THEN mi.new ELSE mp.new END AS ino, COUNT(*) AS n "
            f"FROM {src_dentries} d CROSS JOIN {ino_map} mi ON mi.old = d.ino "
            f"CROSS JOIN {ino_map} mp ON mp.old = d.parent GROUP BY 1) c WHERE inodes.ino = c.ino"
        )
        db.execute(
            f"INSERT INTO xattrs SELECT m.new, x.name, x.value FROM {src_xattrs} x "
            f"CROSS JOIN {ino_map} m ON m.old = x.ino"
        )
        db.execute(
            "INSERT INTO blocks SELECT m.new, b.idx, b.chunk_id, b.length, b.stored_bytes "
            f"FROM {src_blocks} b CROSS JOIN {ino_map} m ON m.old = b.ino"
        )
        # A batch's source rows come from a read snapshot: a chunk the live tree has since let go
        # of is still there (GC waits while a snapshot is being built), but say so if it is not.
        missing = db.execute(
            f"SELECT COUNT(*) FROM (SELECT DISTINCT chunk_id FROM {src_blocks}) s "
            "WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.chunk_id = s.chunk_id)"
        ).fetchone()[0]
        if missing:
            raise InternalError(f"tree copy: {missing} chunks of the source are gone (collected meanwhile)")
        db.execute(
            "UPDATE chunks SET refcount = chunks.refcount + c.n, zero_since_ns = NULL "
            f"FROM (SELECT chunk_id, COUNT(*) AS n FROM {src_blocks} GROUP BY chunk_id) c "
            "WHERE chunks.chunk_id = c.chunk_id"
        )

    # -- volume snapshots in bounded batches ------------------------------------------------------

    def _new_snapshot_dirs(self, now: int, volume: str, name: str, *, building: bool) -> tuple[int, int, int]:
        """(the volume's directory, /.snapshots, /.snapshots/VOLUME) for a new snapshot ``name``,
        after checking that neither the snapshot nor (unless ``building``: its own) a build of it
        exists."""
        vol_ino = self._volume_of(volume)[0]
        if self._db.execute(
            "SELECT 1 FROM snapshots WHERE volume = ? AND name = ?", (volume, name)
        ).fetchone():
            raise Exists(f"snapshot {name!r} of volume {volume!r} exists")
        if not building and self._build_row(volume, name) is not None:
            raise Exists(f"snapshot {name!r} of volume {volume!r} is being taken")
        top_dir = self._read_only_dir(now, ROOT_INO, SNAPSHOTS_DIR)
        vol_dir = self._read_only_dir(now, top_dir, volume.encode(), adopt=volume)
        if self._dentry(vol_dir, name.encode()) is not None:
            raise Exists(f"{name!r} exists in /.snapshots/{volume}")
        vol_nlink = self._dir(vol_dir, live=True)[1]
        if vol_nlink >= LINK_MAX:
            raise TooManyLinks(f"/.snapshots/{volume} has {vol_nlink} snapshots")
        return vol_ino, top_dir, vol_dir

    def _build_row(self, volume: str, name: str) -> tuple[Any, ...] | None:
        """(origin, src, top, progress_ns, files, bytes) of the build of snapshot ``name``."""
        row: tuple[Any, ...] | None = self._db.execute(
            "SELECT origin, src, top, progress_ns, files, bytes FROM snapshot_builds "
            "WHERE volume = ? AND name = ?",
            (volume, name),
        ).fetchone()
        return row

    def _builds_dir(self) -> int:
        row = self._db.execute("SELECT value FROM config WHERE key = ?", (_BUILDS_KEY,)).fetchone()
        if row is None:
            raise NotFound("internal directory 'snapshot-builds' is missing")
        return int(row[0])

    @_api
    def snapshot_build_begin(self, volume: str, name: str, *, origin: str = "manual") -> int:
        """Start snapshot ``name`` of ``volume`` copied in batches (:meth:`snapshot_build_batch`
        with rows read in one read snapshot taken after this returns, then
        :meth:`snapshot_build_finish`); the volume directory's inode (the tree to read).

        Until the build finishes or is abandoned (no batch for :data:`BUILD_STALE_NS`), chunk GC
        waits (:meth:`builds_hold_gc`), so every chunk the read snapshot names stays."""
        _check_snapshot_name(name)
        if origin not in ORIGINS:
            raise InvalidArgument(f"snapshot origin must be one of {', '.join(ORIGINS)}, not {origin!r:.40}")
        with self._write() as now:
            vol_ino, top_dir, vol_dir = self._new_snapshot_dirs(now, volume, name, building=False)
            self._db.execute(
                "INSERT INTO snapshot_builds (volume, name, origin, src, top, started_ns, progress_ns, "
                "files, bytes) VALUES (?, ?, ?, ?, NULL, ?, ?, 0, 0)",
                (volume, name, origin, vol_ino, now, now),
            )
            self._log(now, "snapshot_build", [volume, name, origin, top_dir, vol_dir])
        return vol_ino

    @_api
    def snapshot_build_batch(
        self,
        volume: str,
        name: str,
        rows: dict[str, list[tuple[Any, ...]]],
        mapped: list[tuple[int, int]],
    ) -> list[tuple[int, int]]:
        """Copy one batch of the build of snapshot ``name``: ``rows`` as read in the build's read
        snapshot (``inodes``, ``dentries``, ``xattrs``, ``blocks``: the columns of the ``src_*``
        scratch tables), ``mapped`` the (source, copy) inodes of earlier batches that its dentries
        name (their parents; files with several names).  The first batch's inodes include the
        source top (which no dentry names): its copy becomes the build's top.  Returns (source,
        copy) of the batch's directories and of its files with more than one link."""
        with self._write() as now:
            build = self._build_row(volume, name)
            if build is None:
                raise NotFound(f"snapshot {name!r} of volume {volume!r} is not being taken (abandoned?)")
            src, top, progress_ns = build[1], build[2], build[3]
            if progress_ns < now - BUILD_STALE_NS:  # GC may have run meanwhile: start again
                raise Unavailable(
                    f"snapshot {name!r} of volume {volume!r}: its build stalled and was given up"
                )
            db = self._db
            ino_map = self._scratch("map")
            tables = {kind: self._scratch("src_" + kind) for kind in _SRC_KINDS}
            for kind, table in tables.items():
                if rows.get(kind):
                    marks = ", ".join("?" * _SRC_WIDTH[kind])
                    db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows[kind])
            if mapped:
                db.executemany(f"INSERT INTO {ino_map} VALUES (?, ?)", mapped)
            self._copy_staged(read_only=True)
            if top is None:
                found = db.execute(f"SELECT new FROM {ino_map} WHERE old = ?", (src,)).fetchone()
                if found is None:
                    raise InvalidArgument("a snapshot build's first batch must hold the source top")
                top = int(found[0])
                builds = self._builds_dir()
                self._add_dentry(builds, str(top).encode(), top, True)
                self._touch_dir(builds, now, 1)
            files, size = db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM {tables['inodes']} WHERE mode & ? != ?",
                (0o170000, _IFDIR),
            ).fetchone()
            db.execute(
                "UPDATE snapshot_builds SET top = ?, progress_ns = ?, files = files + ?, bytes = bytes + ? "
                "WHERE volume = ? AND name = ?",
                (top, now, int(files), int(size), volume, name),
            )
            out: list[tuple[int, int]] = [
                (int(old), int(new))
                for old, new in db.execute(
                    f"SELECT m.old, m.new FROM {tables['inodes']} s CROSS JOIN {ino_map} m ON m.old = s.ino "
                    "WHERE s.mode & ? = ? OR s.nlink > 1",
                    (0o170000, _IFDIR),
                )
            ]
            self._log(now, "snapshot_build_batch", [volume, name, len(rows.get("inodes", ()))])
        return out

    @_api
    def snapshot_build_finish(self, volume: str, name: str) -> dict[str, Any]:
        """Publish the completed build of snapshot ``name`` at /.snapshots/VOLUME/NAME."""
        with self._write() as now:
            build = self._build_row(volume, name)
            if build is None:
                raise NotFound(f"snapshot {name!r} of volume {volume!r} is not being taken (abandoned?)")
            origin, top, files, size = build[0], build[2], build[4], build[5]
            if top is None:
                raise InvalidArgument(f"snapshot {name!r} of volume {volume!r}: nothing copied yet")
            _, top_dir, vol_dir = self._new_snapshot_dirs(now, volume, name, building=True)
            builds = self._builds_dir()
            entry = self._dentry(builds, str(top).encode())
            if entry is None or entry[1] != top:
                raise InternalError(
                    f"snapshot build {volume}@{name}: its copy {top} is not in snapshot-builds"
                )
            self._del_dentry(entry[0])
            self._touch_dir(builds, now, -1)
            self._db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, top))
            self._add_dentry(vol_dir, name.encode(), top, True)
            self._touch_dir(vol_dir, now, 1)
            row = (volume, name, top, now, origin, int(files), int(size))
            self._db.execute(f"INSERT INTO snapshots ({_SNAPSHOT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            self._db.execute("DELETE FROM snapshot_builds WHERE volume = ? AND name = ?", (volume, name))
            self._log(now, "snapshot_create", [volume, name, origin, top_dir, vol_dir, top])
        return _snapshot_doc(row)

    @_api
    def snapshot_build_abort(self, volume: str, name: str) -> bool:
        """Give up the build of snapshot ``name`` and remove its partial copy; False: none."""
        with self._write() as now:
            build = self._build_row(volume, name)
            if build is None:
                return False
            top = build[2]
            if top is not None:
                builds = self._builds_dir()
                entry = self._dentry(builds, str(top).encode())
                if entry is not None and entry[1] == top:
                    self._del_dentry(entry[0])
                    self._touch_dir(builds, now, -1)
                    self._remove_subtree(top, now)
            self._db.execute("DELETE FROM snapshot_builds WHERE volume = ? AND name = ?", (volume, name))
            self._log(now, "snapshot_build_abort", [volume, name, top])
        return True

    @_api
    def snapshot_build_expire(self) -> list[tuple[str, str]]:
        """Abort the builds that made no progress for :data:`BUILD_STALE_NS` (their builder died);
        (volume, name) of each."""
        with self._write() as now:
            stale = [
                (str(v), str(n))
                for v, n in self._db.execute(
                    "SELECT volume, name FROM snapshot_builds WHERE progress_ns < ?", (now - BUILD_STALE_NS,)
                ).fetchall()
            ]
            for volume, name in stale:
                self.snapshot_build_abort(volume, name)
        return stale

    @_api
    def snapshot_builds(self) -> list[dict[str, Any]]:
        """The builds under way: volume, name, origin, started_ns, progress_ns, files, bytes."""
        return [
            {
                "volume": v,
                "name": n,
                "origin": o,
                "started_ns": s,
                "progress_ns": p,
                "files": f,
                "bytes": b,
            }
            for v, n, o, s, p, f, b in self._db.execute(
                "SELECT volume, name, origin, started_ns, progress_ns, files, bytes FROM snapshot_builds "
                "ORDER BY started_ns"
            ).fetchall()
        ]

    def _snapshot_building(self, now: int) -> bool:
        """Inside a transaction: a snapshot build is under way (not stalled), so no chunk may go."""
        return (
            self._db.execute(
                "SELECT 1 FROM snapshot_builds WHERE progress_ns >= ? LIMIT 1", (now - BUILD_STALE_NS,)
            ).fetchone()
            is not None
        )

    # -- the read side of a build (on a reader connection, in one read snapshot) ------------------

    def snapshot_read_open(self) -> None:
        """Start the read snapshot a build copies from (this reader connection holds it until
        :meth:`snapshot_read_close`; SQLite's WAL and PostgreSQL's REPEATABLE READ keep it
        consistent without holding up writers)."""
        self._db.begin_read()
        self._db.execute("SELECT 1 FROM inodes WHERE ino = ?", (ROOT_INO,)).fetchone()  # takes it now

    def snapshot_read_close(self) -> None:
        with contextlib.suppress(*self._db.errors):
            self._db.commit()

    def snapshot_read_page(self, parent: int, after_id: int, limit: int) -> list[tuple[Any, ...]]:
        """Up to ``limit`` dentries (id, parent, name, ino, is_dir) of ``parent`` after ``after_id``."""
        return [
            tuple(r)
            for r in self._db.execute(
                "SELECT id, parent, name, ino, is_dir FROM dentries WHERE parent = ? AND id > ? "
                "ORDER BY id LIMIT ?",
                (parent, after_id, limit),
            ).fetchall()
        ]

    def snapshot_read_rows(self, inos: list[int]) -> dict[str, list[tuple[Any, ...]]]:
        """The inodes, xattrs and block maps of ``inos`` (``src_*`` columns)."""
        out: dict[str, list[tuple[Any, ...]]] = {"inodes": [], "xattrs": [], "blocks": []}
        db = self._db
        for i in range(0, len(inos), _IN_BATCH):
            part = inos[i : i + _IN_BATCH]
            marks = ",".join("?" * len(part))
            out["inodes"] += [
                tuple(r)
                for r in db.execute(f"SELECT {_SRC_INODE_COLS} FROM inodes i WHERE i.ino IN ({marks})", part)
            ]
            out["xattrs"] += [
                tuple(r)
                for r in db.execute(f"SELECT ino, name, value FROM xattrs WHERE ino IN ({marks})", part)
            ]
            out["blocks"] += [
                tuple(r)
                for r in db.execute(
                    f"SELECT ino, idx, chunk_id, length, stored_bytes FROM blocks WHERE ino IN ({marks})",
                    part,
                )
            ]
        return out

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
        """Read-only copy-on-write snapshot ``name`` of ``volume`` at /.snapshots/VOLUME/NAME, in
        one transaction (other writers wait for it: about a second per 100k files on SQLite).
        The daemon takes snapshots in bounded batches instead (daemon/service/snapshots.py)."""
        _check_snapshot_name(name)
        if origin not in ORIGINS:
            raise InvalidArgument(f"snapshot origin must be one of {', '.join(ORIGINS)}, not {origin!r:.40}")
        with self._write() as now:
            vol_ino, top_dir, vol_dir = self._new_snapshot_dirs(now, volume, name, building=False)
            top = self._clone_tree(vol_ino, read_only=True)
            self._db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, top))
            files, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM temp.scratch_src_inodes WHERE mode & ? != ?",
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
