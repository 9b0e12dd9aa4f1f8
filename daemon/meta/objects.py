"""The object store's (S3's) view of the namespace: whole-object writes, key-ordered listing, implied
directories, recursive removal and the internal roots."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from daemon.meta.base import _api
from daemon.meta.files import Files
from daemon.meta.inodes import (
    _IFMT,
    _IFREG,
    _PERM_BITS,
    DIR_SIZE,
    READ_ONLY,
    _check_lookup_name,
    _check_writable,
    _check_xattr_name,
    _is_dir,
)
from daemon.meta.objlock import LOCKED, ObjectLocks, check_unlocked
from daemon.meta.policy import _check_policy_xattr, _check_replicas
from daemon.meta.schema import _ATTR_I, _INTERNAL_KEY, INTERNAL_DIRS
from daemon.meta.versions import ENABLED, Versions
from dfs.core.errors import (
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    PreconditionFailed,
    RangeError,
)
from dfs.core.namespace import NAME_MAX, ROOT_INO, XATTR_SIZE_MAX, Attr, BlockRef, DirEntry, check_name
from dfs.core.s3objlock import XA_LOCK, XA_LOCK_REQUEST

# Marks a directory put_object created only to hold an object (see MetaStore.remove_empty_parents).
IMPLICIT_XATTR = b"user.s3.implicit"
_SLASH = 0x2F
# list_dir reads this many rows beyond its limit per batch: directories whose keys are still open
# (prefixes of the last name read) cannot be emitted yet, and there are rarely more than a few.
_LIST_DIR_SLACK = 16


class Objects(Files, Versions, ObjectLocks):
    """Path-level operations for the S3 shim, each in one transaction."""

    @_api
    def resolve(self, parent: int, names: list[bytes]) -> Attr:
        """The inode at path ``names`` below ``parent`` (``parent`` itself for an empty path)."""
        for name in names:
            _check_lookup_name(name)
        with self._read():
            attr = self._attr(parent)
            for name in names:
                if not attr.is_dir:
                    raise NotADirectory(f"inode {attr.ino} is not a directory")
                row = self._db.execute(
                    f"SELECT {_ATTR_I} FROM dentries d JOIN inodes i ON i.ino = d.ino "
                    "WHERE d.parent = ? AND d.name = ?",
                    (attr.ino, name),
                ).fetchone()
                if row is None:
                    raise NotFound(f"{name!r} not found in directory {attr.ino}")
                attr = Attr(*row)
            return attr

    @_api
    def list_dir(self, ino: int, after: bytes, limit: int) -> list[DirEntry]:
        """Up to ``limit`` entries of directory ``ino`` whose sort key is greater than ``after``, in
        sort-key order; the key is ``name + b"/"`` for a directory and ``name`` otherwise.

        A depth-first walk that lists directory ``d`` where its key ``d/`` falls
        yields full paths in byte order, which is S3's key order ("a-b" < "a/x").
        Cookies are 0: the caller resumes with the last key it saw.
        """
        with self._read():
            self._dir(ino, live=False)
            if limit <= 0:
                return []
            return self._list_dir(ino, after, limit)

    def _list_dir(self, ino: int, after: bytes, limit: int) -> list[DirEntry]:
        # Key order is name order except that a directory d sorts as d/, i.e. after the names that
        # extend d with a byte below '/' (d-x, d.y) and so after names the index yields later.
        # A key above ``after`` belongs to a name >= ``after`` or to a directory named by a proper
        # prefix p of ``after`` whose next byte is below '/': those are looked up exactly, the rest
        # is scanned in name order.  After scanning up to name n, every unscanned key exceeds n, so
        # candidates with keys <= n are final; the others (at most one per prefix of n) wait.
        db = self._db
        select = f"SELECT d.name, {_ATTR_I} FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent = ?"
        found: list[tuple[bytes, DirEntry]] = []

        def add(rows: Iterable[tuple[Any, ...]]) -> None:
            for name, *attr in rows:
                key = name + b"/" if _is_dir(attr[1]) else name
                if key > after:
                    found.append((key, DirEntry(name, Attr(*attr), 0)))

        prefixes = [after[:n] for n in range(1, min(len(after), NAME_MAX + 1)) if after[n] < _SLASH]
        if prefixes:
            marks = ", ".join("?" * len(prefixes))
            add(db.execute(f"{select} AND d.is_dir = 1 AND d.name IN ({marks})", (ino, *prefixes)))
        batch = limit + _LIST_DIR_SLACK
        rows = db.execute(f"{select} AND d.name >= ? ORDER BY d.name LIMIT ?", (ino, after, batch)).fetchall()
        while True:
            add(rows)
            found.sort(key=lambda item: item[0])
            if len(rows) < batch:  # the directory is exhausted: every candidate is final
                return [entry for _, entry in found[:limit]]
            last: bytes = rows[-1][0]
            final = bisect.bisect_right(found, last, key=lambda item: item[0])
            if final >= limit:
                return [entry for _, entry in found[:limit]]
            batch *= 2
            rows = db.execute(
                f"{select} AND d.name > ? ORDER BY d.name LIMIT ?", (ino, last, batch)
            ).fetchall()

    def _make_dirs(
        self, now: int, parent: int, dirs: Sequence[bytes], mode: int, uid: int, gid: int, *, implicit: bool
    ) -> int:
        """mkdir -p ``dirs`` below ``parent`` inside the caller's transaction; the last directory's ino.

        ``implicit`` marks the directories it creates with :data:`IMPLICIT_XATTR`:
        made only to hold an object, they go again with their last entry
        (:meth:`remove_empty_parents`); directories made any other way stay.
        """
        self._dir(parent, live=True)
        cur = parent
        for name in dirs:
            check_name(name)
            entry = self._dentry(cur, name)
            if entry is None:
                cur = self._make(now, cur, name, mode, uid, gid, size=DIR_SIZE).ino
                if implicit:
                    self._db.execute("INSERT INTO xattrs VALUES (?, ?, ?)", (cur, IMPLICIT_XATTR, b"1"))
            elif _is_dir(entry[2]):
                cur = entry[1]
            else:
                raise NotADirectory(f"{name!r} in directory {cur} is not a directory")
        return cur

    @_api
    def make_dirs(self, parent: int, dirs: list[bytes], *, mode: int, uid: int, gid: int) -> Attr:
        """mkdir -p: create the missing directories of ``dirs`` below ``parent``; existing ones are kept."""
        mode = self._dir_mode(mode)
        with self._write() as now:
            ino = self._make_dirs(now, parent, dirs, mode, uid, gid, implicit=False)
            _check_writable(ino, self._inode(ino)[0])  # would lose its implicit mark
            # Asked for by name: no longer an implied directory that vanishes when emptied.
            self._db.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, IMPLICIT_XATTR))
            self._log(now, "make_dirs", [parent, dirs, mode, uid, gid, ino])
            return self._attr(ino)

    @_api
    def put_object(
        self,
        parent: int,
        dirs: list[bytes],
        name: bytes,
        *,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        mtime_ns: int,
        blocks: list[BlockRef],
        inline: bytes | None,
        xattrs: dict[bytes, bytes],
        chunk_exists: Callable[[bytes], bool],
        if_none_match: bool = False,
        if_match: tuple[bytes, bytes] | None = None,
        dir_mode: int = 0o755,
        replicas: int | None = None,
    ) -> Attr:
        """Write a whole object atomically: a new regular file ``dirs/name`` below ``parent``.

        Missing directories are created (mkdir -p with ``dir_mode``); an existing
        non-directory there is replaced (like rename over it, so an open old
        inode lives on until released).  ``if_none_match`` requires that nothing
        is at the name; ``if_match=(xattr, value)`` requires an existing entry
        whose xattr has that value (NotFound / PreconditionFailed otherwise).
        Readers never see a partial object: the inode, its data and xattrs and
        its name appear in one transaction.  ``replicas`` as for :meth:`commit_write`.

        The pseudo-xattr ``dfs.object-lock-request`` (dfs/core/s3objlock.py) is not stored: it
        asks for the new inode's S3 object lock, ``parent`` being the bucket
        (daemon/meta/objlock.py); a locked file is replaced only where it is kept as a version.
        """
        lock_request = xattrs.get(XA_LOCK_REQUEST)
        xattrs = {k: v for k, v in xattrs.items() if k not in (XA_LOCK, XA_LOCK_REQUEST)}
        if mode & _IFMT not in (0, _IFREG):
            raise InvalidArgument(f"put_object with file type {mode & _IFMT:o}")
        mode = _IFREG | (mode & _PERM_BITS)
        dir_mode = self._dir_mode(dir_mode)
        check_name(name)
        _check_replicas(replicas)
        refs = self._object_refs(size, blocks, inline)
        for key, value in xattrs.items():
            _check_xattr_name(key)
            if len(value) > XATTR_SIZE_MAX:
                raise RangeError(f"xattr value of {len(value)} bytes exceeds {XATTR_SIZE_MAX}")
            _check_policy_xattr(key, value)
        with self._write() as now:
            final = self._make_dirs(now, parent, dirs, dir_mode, uid, gid, implicit=True)
            old = self._dentry(final, name)
            if old is not None and _is_dir(old[2]):
                raise IsADirectory(f"{name!r} in directory {final} is a directory")
            if if_none_match and old is not None:
                raise PreconditionFailed(f"{name!r} exists in directory {final}")
            if if_match is not None:
                if old is None:
                    raise NotFound(f"{name!r} not found in directory {final}")
                row = self._db.execute(
                    "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (old[1], if_match[0])
                ).fetchone()
                if row is None or row[0] != if_match[1]:
                    raise PreconditionFailed(f"{name!r} in directory {final} does not match {if_match[0]!r}")
            if old is not None:
                if old[2] & LOCKED and self._volume_of_inode(old[1])[3] != ENABLED:
                    check_unlocked(self._db, old[1], old[2], now)  # it would not be kept
                self._del_dentry(old[0])
            # The new data takes its references before the old inode drops its own, so a chunk both
            # share never passes through refcount 0 (which would demand chunk_exists).
            for ref in refs:
                self._incref(ref.chunk_id, ref.stored_bytes, chunk_exists)
            if old is not None:
                # Before the new inode is charged: replacing an object in a full quota domain
                # frees the old one's bytes and inode first (daemon/meta/quotas.py).
                self._drop_name(old[1], old[2], old[3] - 1, (final, name), now)  # maybe to trash
            ino = self._make(now, final, name, mode, uid, gid).ino
            self._db.executemany(
                "INSERT INTO blocks VALUES (?, ?, ?, ?, ?)",
                [(ino, r.index, r.chunk_id, r.length, r.stored_bytes) for r in refs],
            )
            self._raise_replicas([r.chunk_id for r in refs], replicas)
            stored = len(inline) if inline is not None else sum(r.stored_bytes for r in refs)
            self._db.execute(
                "UPDATE inodes SET size = ?, stored = ?, inline = ?, atime_ns = ?, mtime_ns = ? "
                "WHERE ino = ?",
                (size, stored, inline, mtime_ns, mtime_ns, ino),
            )
            self._db.executemany(
                "INSERT INTO xattrs VALUES (?, ?, ?)", [(ino, k, v) for k, v in xattrs.items()]
            )
            if lock_request is not None:
                self._apply_lock_request(parent, ino, lock_request, now)
            self._log(
                now,
                "put_object",
                [
                    parent,
                    dirs,
                    name,
                    mode,
                    uid,
                    gid,
                    size,
                    mtime_ns,
                    [list(r) for r in refs],
                    inline,
                    sorted(xattrs.items())
                    + ([] if lock_request is None else [(XA_LOCK_REQUEST, lock_request)]),
                    if_none_match,
                    None if if_match is None else list(if_match),
                    dir_mode,
                    ino,
                    replicas,
                ],
            )
            return self._attr(ino)

    def _object_refs(self, size: int, blocks: list[BlockRef], inline: bytes | None) -> list[BlockRef]:
        """Validate a whole object's data; its block refs (holes left out, lengths cut at ``size``)."""
        if size < 0:
            raise InvalidArgument(f"negative size {size}")
        if inline is not None:
            if blocks:
                raise InvalidArgument("put_object got both inline data and blocks")
            if len(inline) > self._inline_limit:
                raise InvalidArgument(f"inline data of {len(inline)} bytes exceeds {self._inline_limit}")
            if len(inline) != size:
                raise InvalidArgument(f"inline data of {len(inline)} bytes for size {size}")
            return []
        bs = self._block_size
        refs: list[BlockRef] = []
        seen: set[int] = set()
        for raw in blocks:
            ref = self._check_ref(raw)
            if ref.index * bs >= size:
                raise InvalidArgument(f"block {ref.index} lies beyond size {size}")
            if ref.index in seen:
                raise InvalidArgument(f"block {ref.index} given twice")
            seen.add(ref.index)
            if ref.chunk_id:  # an empty chunk id is a hole, as in commit_write
                # Bytes past ``size`` are not the file's: cut them as a truncate would.
                refs.append(ref._replace(length=min(ref.length, size - ref.index * bs)))
        return refs

    @_api
    def remove_tree(self, parent: int, name: bytes) -> int:
        """rm -r ``name`` in ``parent``; the number of inodes that lost names (or, for a file, 1).

        Inodes still open keep living unlinked (nlink 0) until released, and files
        with names outside the tree keep those.
        """
        _check_lookup_name(name)
        with self._write() as now:
            _check_writable(parent, self._dir(parent, live=False)[0])
            entry = self._dentry(parent, name)
            if entry is None:
                raise NotFound(f"{name!r} not found in directory {parent}")
            dentry_id, ino, mode, nlink = entry
            _check_writable(ino, mode)
            check_unlocked(self._db, ino, mode, now)
            self._del_dentry(dentry_id)
            if _is_dir(mode):
                removed = self._remove_subtree(ino, now)
                self._touch_dir(parent, now, -1)
                if parent == ROOT_INO:
                    self._follow_volumes([ino])
            else:
                self._touch_dir(parent, now)
                self._set_nlink(ino, nlink - 1, now)
                removed = 1
            self._log(now, "remove_tree", [parent, name])
        return removed

    def _remove_subtree(self, top: int, now: int, *, keep_top: bool = False) -> int:
        """Unlink everything below directory ``top`` (whose own dentry is already gone) and ``top``
        (or with ``keep_top`` empty ``top`` and keep it: a snapshot restore).

        Set-based over scratch tables rather than a Python recursion: a whole
        bucket is a handful of statements, and no depth limit applies.  Joins
        name the scratch table first with CROSS JOIN, which SQLite keeps as the
        outer loop: without statistics on the TEMP tables the planner would
        otherwise scan the whole dentries or blocks table to remove a tiny tree.
        """
        db = self._db
        dirs, links, purge = self._scratch("dirs"), self._scratch("links"), self._scratch("purge")
        db.execute(
            "WITH RECURSIVE sub(ino) AS "
            "(SELECT ? UNION SELECT d.ino FROM dentries d JOIN sub ON d.parent = sub.ino WHERE d.is_dir = 1) "
            f"INSERT INTO {dirs} SELECT ino FROM sub",
            (top,),
        )
        # A file may have several names inside the tree, and others outside it.
        db.execute(
            f"INSERT INTO {links} SELECT d.ino, COUNT(*) FROM {dirs} s "
            "CROSS JOIN dentries d ON d.parent = s.ino WHERE d.is_dir = 0 GROUP BY d.ino"
        )
        self._check_tree_unlocked(links, now)  # a locked file refuses to go (daemon/meta/objlock.py)
        db.execute(f"DELETE FROM dentries WHERE parent IN (SELECT ino FROM {dirs})")
        db.execute(
            f"UPDATE inodes SET nlink = nlink - (SELECT l.n FROM {links} l WHERE l.ino = inodes.ino), "
            f"ctime_ns = ? WHERE ino IN (SELECT ino FROM {links})",
            (now,),
        )
        if keep_top:
            db.execute(f"DELETE FROM {dirs} WHERE ino = ?", (top,))
        db.execute(f"UPDATE inodes SET nlink = 0, ctime_ns = ? WHERE ino IN (SELECT ino FROM {dirs})", (now,))
        db.execute(
            f"INSERT INTO {purge} SELECT i.ino FROM inodes i "
            f"WHERE i.ino IN (SELECT ino FROM {dirs} UNION ALL SELECT ino FROM {links}) AND i.nlink = 0 "
            "AND NOT EXISTS (SELECT 1 FROM opens o WHERE o.ino = i.ino)"
        )
        self._purge_set(purge, now)
        count: int = db.execute(
            f"SELECT (SELECT COUNT(*) FROM {dirs}) + (SELECT COUNT(*) FROM {links})"
        ).fetchone()[0]
        return count

    def _purge_set(self, table: str, now: int) -> None:
        """:meth:`_purge` for every inode listed in scratch table ``table``, in bulk."""
        db = self._db
        db.execute(
            "UPDATE chunks SET refcount = chunks.refcount - d.n, "
            "zero_since_ns = CASE WHEN chunks.refcount - d.n <= 0 THEN ? ELSE chunks.zero_since_ns END "
            f"FROM (SELECT b.chunk_id, COUNT(*) AS n FROM {table} p CROSS JOIN blocks b ON b.ino = p.ino "
            "GROUP BY b.chunk_id) d WHERE chunks.chunk_id = d.chunk_id",
            (now,),
        )
        for owned in ("blocks", "xattrs", "s3_object_locks", "inodes"):
            db.execute(f"DELETE FROM {owned} WHERE ino IN (SELECT ino FROM {table})")

    @_api
    def remove_empty_parents(self, parent: int, dirs: list[bytes], keep_depth: int = 0) -> int:
        """rmdir ``dirs`` below ``parent`` from the deepest up while empty; how many went.

        S3 has no directories: once its last object goes, an implied parent must
        vanish too.  Only directories :meth:`put_object` created (marked with
        :data:`IMPLICIT_XATTR`) count as implied; one made by mkdir, by
        :meth:`make_dirs` (an S3 ``dir/`` marker) or by the mount stays.  The walk
        stops there, at the first non-empty directory, at depth
        ``keep_depth`` (``dirs[:keep_depth]`` stay) or where the path ends early
        (a missing or non-directory component is no error).
        """
        for name in dirs:
            _check_lookup_name(name)
        with self._write() as now:
            self._dir(parent, live=False)
            chain = [parent]  # chain[i]: the directory at depth i
            for name in dirs:
                entry = self._dentry(chain[-1], name)
                if entry is None or not _is_dir(entry[2]) or entry[2] & READ_ONLY:
                    break  # a snapshot's directories stay, implied or not
                chain.append(entry[1])
            removed = 0
            for depth in range(len(chain) - 1, max(keep_depth, 0), -1):
                ino, up = chain[depth], chain[depth - 1]
                if self._has_children(ino) or not self._is_implicit(ino):
                    break
                self._db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (up, dirs[depth - 1]))
                self._touch_dir(up, now, -1)
                self._set_nlink(ino, 0, now)
                if up == ROOT_INO:
                    self._follow_volumes([ino])
                removed += 1
            self._log(now, "remove_empty_parents", [parent, dirs, keep_depth])
        return removed

    def _is_implicit(self, ino: int) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM xattrs WHERE ino = ? AND name = ?", (ino, IMPLICIT_XATTR)
        ).fetchone()
        return row is not None

    @_api
    def internal_dir(self, name: str) -> int:
        """The inode of internal root ``name`` (one of :data:`INTERNAL_DIRS`)."""
        if name not in INTERNAL_DIRS:
            raise InvalidArgument(f"unknown internal directory {name!r}")
        row = self._db.execute("SELECT value FROM config WHERE key = ?", (_INTERNAL_KEY + name,)).fetchone()
        if row is None:
            raise NotFound(f"internal directory {name!r} is missing")
        ino: int = row[0]
        return ino
