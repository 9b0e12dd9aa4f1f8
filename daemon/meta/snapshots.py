"""Copy-on-write snapshots of directory trees: inodes, names, xattrs and block maps copied, chunks shared."""

from __future__ import annotations

import stat

from daemon.meta.base import _api
from daemon.meta.inodes import LINK_MAX, Inodes
from dfs.core.errors import Exists, InvalidArgument, TooManyLinks
from dfs.core.namespace import Attr, check_name


class Snapshots(Inodes):
    """``snapshot`` and the set-based tree clone behind it."""

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
            self._touch_dir(dst_parent, now, 1)
            self._log(now, "snapshot", [src_dir, dst_parent, name, uid, gid, top])
            return self._attr(top)

    def _clone_tree(self, src: int) -> int:
        """Copy the tree at directory ``src`` (inodes, names, xattrs, block maps); the copy's nameless top."""
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
            "generation, symlink, inline) SELECT mode, nlink, uid, gid, rdev, size, stored, atime_ns, "
            f"mtime_ns, ctime_ns, -ino, symlink, inline FROM inodes WHERE ino IN (SELECT ino FROM {inos}) "
            "ORDER BY ino"
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
