"""The inode and dentry primitives the concerns share: rows, names, links, chunk references, internal roots.

Creating an inode under a name (with setgid and default-ACL inheritance),
dropping a name and purging an inode that nothing holds (its chunks lose one
reference per block), cutting a block map, and walking up the tree are used
by the namespace, the object store, volumes, sessions and fsck alike, so they
live once here, inside the caller's transaction.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Sequence

from daemon.meta.base import MetaBase
from daemon.meta.schema import _ATTR, _INTERNAL_KEY, _INTERNAL_KEYS_SQL
from dfs.core import acl
from dfs.core.errors import (
    ChunkMissing,
    Exists,
    InvalidArgument,
    NameTooLong,
    NotADirectory,
    NotFound,
    RangeError,
    ReadOnly,
    TooManyLinks,
)
from dfs.core.namespace import NAME_MAX, ROOT_INO, XATTR_NAME_MAX, Attr, check_name

LINK_MAX = 65000
DIR_SIZE = 4096  # st_size reported for every directory: stable and what tools expect
_IFMT = 0o170000
_IFDIR = stat.S_IFDIR
_IFREG = stat.S_IFREG
_PERM_BITS = 0o7777
# A flag bit of ``inodes.mode`` above S_IFMT: the inode belongs to a read-only snapshot tree.
# Kept in the row every changing operation reads anyway, so refusing costs no statement (on
# PostgreSQL every statement is a round trip); masked out of every Attr (schema._attr_cols).
READ_ONLY = 1 << 24
MODE_BITS = 0o177777  # file type and permission bits: what stat(2) shows of ``mode``


def _is_dir(mode: int) -> bool:
    return mode & _IFMT == _IFDIR


def _check_writable(ino: int, mode: int) -> None:
    """ReadOnly if the (raw) ``mode`` of inode ``ino`` carries :data:`READ_ONLY`."""
    if mode & READ_ONLY:
        raise ReadOnly(f"inode {ino} is in a read-only snapshot")


def _check_lookup_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes exceeds {NAME_MAX}")


def _check_xattr_name(name: bytes) -> None:
    if not name:
        raise RangeError("empty xattr name")
    if len(name) > XATTR_NAME_MAX:
        raise NameTooLong(f"xattr name of {len(name)} bytes exceeds {XATTR_NAME_MAX}")


def _inherit_acl(default_acl: bytes, mode: int) -> tuple[int, list[tuple[bytes, bytes]]]:
    """A new inode's mode and ACL xattrs under its parent's default ACL ``default_acl``."""
    mode, access, default = acl.inherit(default_acl, mode)
    xattrs = [(acl.ACCESS, access)] if access is not None else []
    if default is not None:
        xattrs.append((acl.DEFAULT, default))
    return mode, xattrs


class Inodes(MetaBase):
    """Row-level helpers over inodes, dentries and chunk references (all inside the caller's transaction)."""

    # -- rows -------------------------------------------------------------------------------

    def _inode(self, ino: int) -> tuple[int, int]:
        """(mode, nlink) of an existing inode."""
        row: tuple[int, int] | None = self._db.execute(
            "SELECT mode, nlink FROM inodes WHERE ino = ?", (ino,)
        ).fetchone()
        if row is None:
            raise NotFound(f"inode {ino} not found")
        return row

    def _dir(self, ino: int, *, live: bool) -> tuple[int, int, int]:
        """(mode, nlink, gid) of a directory; ``live`` also rejects a removed (nlink 0) one."""
        row: tuple[int, int, int, int] | None = self._db.execute(
            "SELECT mode, nlink, gid, ctime_ns FROM inodes WHERE ino = ?", (ino,)
        ).fetchone()
        if row is not None:
            self._seen(ino, row[3])
        return self._check_dir(ino, row, live=live)

    @staticmethod
    def _check_dir(ino: int, row: Sequence[int] | None, *, live: bool) -> tuple[int, int, int]:
        """``row`` (mode, nlink, gid of inode ``ino``, None if there is none) if it is a directory."""
        if row is None:
            raise NotFound(f"inode {ino} not found")
        if not _is_dir(row[0]):
            raise NotADirectory(f"inode {ino} is not a directory")
        if live and row[1] == 0:
            raise NotFound(f"directory {ino} was removed")
        return row[0], row[1], row[2]

    def _dentry(self, parent: int, name: bytes) -> tuple[int, int, int, int] | None:
        """(dentry id, ino, mode, nlink) of ``name`` in ``parent``, if present."""
        row: tuple[int, int, int, int] | None = self._db.execute(
            "SELECT d.id, d.ino, i.mode, i.nlink FROM dentries d JOIN inodes i ON i.ino = d.ino "
            "WHERE d.parent = ? AND d.name = ?",
            (parent, name),
        ).fetchone()
        return row

    def _attr(self, ino: int) -> Attr:
        row = self._db.execute(f"SELECT {_ATTR} FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if row is None:
            raise NotFound(f"inode {ino} not found")
        return Attr(*row)

    def _attrs(self, inos: Sequence[int]) -> list[Attr]:
        """The attributes of ``inos`` (a few), in one statement."""
        if len(inos) == 1:
            return [self._attr(inos[0])]
        marks = ", ".join("?" * len(inos))
        rows = self._db.execute(f"SELECT {_ATTR} FROM inodes WHERE ino IN ({marks})", tuple(inos)).fetchall()
        found = {row[0]: Attr(*row) for row in rows}
        missing = [ino for ino in inos if ino not in found]
        if missing:
            raise NotFound(f"inode {missing[0]} not found")
        return [found[ino] for ino in inos]

    def _has_children(self, ino: int) -> bool:
        return (
            self._db.execute("SELECT 1 FROM dentries WHERE parent = ? LIMIT 1", (ino,)).fetchone() is not None
        )

    def _is_open(self, ino: int) -> bool:
        return self._db.execute("SELECT 1 FROM opens WHERE ino = ? LIMIT 1", (ino,)).fetchone() is not None

    # -- names and links ----------------------------------------------------------------

    def _make(
        self,
        now: int,
        parent: int,
        name: bytes,
        mode: int,
        uid: int,
        gid: int,
        *,
        rdev: int = 0,
        size: int = 0,
        symlink: bytes | None = None,
    ) -> Attr:
        """Insert a new inode named ``name`` in ``parent`` (inside the caller's transaction)."""
        check_name(name)
        # The parent, whether the name is taken and the parent's default ACL in one statement:
        # on PostgreSQL each statement is a round trip, and this is the hottest path there is.
        row = self._db.execute(
            "SELECT mode, nlink, gid, EXISTS (SELECT 1 FROM dentries WHERE parent = ?1 AND name = ?2), "
            "(SELECT value FROM xattrs WHERE ino = ?1 AND name = ?3), ctime_ns, quota "
            "FROM inodes WHERE ino = ?1",
            (parent, name, acl.DEFAULT),
        ).fetchone()
        if row is not None:
            self._seen(parent, row[5])
        pmode, pnlink, pgid = self._check_dir(parent, row[:3] if row is not None else None, live=True)
        _check_writable(parent, pmode)
        if row[3]:
            raise Exists(f"{name!r} exists in directory {parent}")
        is_dir = _is_dir(mode)
        if is_dir and pnlink >= LINK_MAX:
            raise TooManyLinks(f"directory {parent} has {pnlink} links")
        if pmode & stat.S_ISGID:  # BSD group semantics for setgid directories
            gid = pgid
            if is_dir:
                mode |= stat.S_ISGID
        inherited: list[tuple[bytes, bytes]] = []
        if symlink is None and row[4] is not None:
            mode, inherited = _inherit_acl(bytes(row[4]), mode)
        nlink = 2 if is_dir else 1
        ino: int = self._db.execute(
            # The new inode is charged to its parent's quota domain (daemon/meta/quotas.py); the
            # accounting trigger refuses it there if the domain is at its inode limit.
            "INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, stored, atime_ns, mtime_ns, ctime_ns, "
            "generation, symlink, inline, quota) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, 0, ?, NULL, ?) "
            "RETURNING ino",
            (mode, nlink, uid, gid, rdev, size, now, now, now, symlink, row[6]),
        ).fetchone()[0]
        if inherited:
            self._db.executemany("INSERT INTO xattrs VALUES (?, ?, ?)", [(ino, k, v) for k, v in inherited])
        self._add_dentry(parent, name, ino, is_dir)
        self._touch_dir(parent, now, 1 if is_dir else 0)
        return Attr(ino, mode, nlink, uid, gid, rdev, size, 0, now, now, now, 0)

    @staticmethod
    def _dir_mode(mode: int) -> int:
        if mode & _IFMT not in (0, _IFDIR):
            raise InvalidArgument(f"directory mode with file type {mode & _IFMT:o}")
        return _IFDIR | (mode & _PERM_BITS)

    def _touch_dir(self, ino: int, now: int, nlink_delta: int = 0) -> None:
        self._db.execute_later(
            "UPDATE inodes SET nlink = nlink + ?, mtime_ns = ?, ctime_ns = ? WHERE ino = ?",
            (nlink_delta, now, now, ino),
        )

    def _add_dentry(self, parent: int, name: bytes, ino: int, is_dir: bool) -> None:
        # Later: every caller checked first that the name is free (a concurrent taker of it
        # conflicts, and the whole operation runs again).
        self._db.execute_later(
            "INSERT INTO dentries (parent, name, ino, is_dir) VALUES (?, ?, ?, ?)",
            (parent, name, ino, is_dir),
        )

    def _del_dentry(self, dentry_id: int) -> None:
        self._db.execute_later("DELETE FROM dentries WHERE id = ?", (dentry_id,))

    def _set_nlink(self, ino: int, nlink: int, now: int) -> None:
        """Give ``ino`` a new link count after losing a name; purge it when nothing holds it."""
        if nlink == 0 and not self._is_open(ino):
            self._purge(ino, now)
        else:
            self._db.execute_later(
                "UPDATE inodes SET nlink = ?, ctime_ns = ? WHERE ino = ?", (nlink, now, ino)
            )

    def _purge_if_unused(self, ino: int, now: int) -> None:
        row = self._db.execute("SELECT nlink FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if row is not None and row[0] == 0 and not self._is_open(ino):
            self._purge(ino, now)

    def _before_truncate(self, ino: int, now: int) -> None:
        """Called by open(O_TRUNC) before a regular file in a bucket with versioning Enabled loses
        its data: daemon/meta/versions.py keeps a copy."""

    def _purge(self, ino: int, now: int) -> None:
        """Delete an inode and everything it owns; its chunks lose one reference per block."""
        self._drop_blocks(ino, 0, now, adjust_inode=False)
        self._db.execute_later("DELETE FROM xattrs WHERE ino = ?", (ino,))
        self._db.execute_later("DELETE FROM s3_object_locks WHERE ino = ?", (ino,))  # objlock.py
        self._db.execute_later("DELETE FROM inodes WHERE ino = ?", (ino,))

    def _is_ancestor(self, dir_ino: int, start: int) -> bool:
        """Whether ``dir_ino`` is ``start`` or one of its ancestors."""
        # UNION (not UNION ALL) makes the walk terminate even on a corrupted, cyclic tree.
        hit = self._db.execute(
            "WITH RECURSIVE up(ino) AS "
            "(SELECT ? UNION SELECT d.parent FROM dentries d JOIN up ON d.is_dir = 1 AND d.ino = up.ino) "
            "SELECT 1 FROM up WHERE ino = ? LIMIT 1",
            (start, dir_ino),
        ).fetchone()
        return hit is not None

    # -- chunk references ---------------------------------------------------------------

    def _incref(self, chunk_id: bytes, stored_bytes: int, chunk_exists: Callable[[bytes], bool]) -> None:
        row = self._db.execute("SELECT refcount FROM chunks WHERE chunk_id = ?", (chunk_id,)).fetchone()
        # A chunk nobody references may have been (or be about to be) collected: confirm it is stored.
        if (row is None or row[0] <= 0) and not chunk_exists(chunk_id):
            raise ChunkMissing(f"chunk {chunk_id.hex()} is not stored")
        if row is None:
            self._db.execute(
                "INSERT INTO chunks (chunk_id, refcount, stored_bytes) VALUES (?, 1, ?)",
                (chunk_id, stored_bytes),
            )
        else:
            self._db.execute(
                "UPDATE chunks SET refcount = refcount + 1, zero_since_ns = NULL WHERE chunk_id = ?",
                (chunk_id,),
            )

    def _decref(self, chunk_ids: list[bytes], now: int) -> None:
        self._db.executemany(
            "UPDATE chunks SET refcount = refcount - 1, "
            "zero_since_ns = CASE WHEN refcount <= 1 THEN ? ELSE zero_since_ns END WHERE chunk_id = ?",
            [(now, chunk_id) for chunk_id in chunk_ids],
        )

    def _drop_blocks(self, ino: int, first_idx: int, now: int, *, adjust_inode: bool = True) -> None:
        """Delete the entries at ``idx >= first_idx``, decref'ing their chunks in bulk."""
        db = self._db
        # Changes nothing reads the result of: they go with the next statement (execute_later).
        db.execute_later(
            "UPDATE chunks SET refcount = chunks.refcount - d.n, "
            "zero_since_ns = CASE WHEN chunks.refcount - d.n <= 0 THEN ? ELSE chunks.zero_since_ns END "
            "FROM (SELECT chunk_id, COUNT(*) AS n FROM blocks WHERE ino = ? AND idx >= ? "
            "GROUP BY chunk_id) d "
            "WHERE chunks.chunk_id = d.chunk_id",
            (now, ino, first_idx),
        )
        if adjust_inode:
            db.execute_later(
                "UPDATE inodes SET stored = stored - (SELECT COALESCE(SUM(stored_bytes), 0) FROM blocks "
                "WHERE ino = ?1 AND idx >= ?2) WHERE ino = ?1",
                (ino, first_idx),
            )
        db.execute_later("DELETE FROM blocks WHERE ino = ? AND idx >= ?", (ino, first_idx))

    def _drop_block(self, ino: int, idx: int, now: int) -> None:
        row = self._db.execute(
            "DELETE FROM blocks WHERE ino = ? AND idx = ? RETURNING chunk_id, stored_bytes", (ino, idx)
        ).fetchone()
        if row is not None:
            self._decref([row[0]], now)
            self._db.execute("UPDATE inodes SET stored = stored - ? WHERE ino = ?", (row[1], ino))

    def _shrink(self, ino: int, size: int, now: int) -> None:
        """Cut block map and inline data to ``size``; bytes past a block's ``length`` read as zeros."""
        bs = self._block_size
        self._drop_blocks(ino, -(-size // bs), now)
        if size % bs:
            self._db.execute(
                "UPDATE blocks SET length = CASE WHEN length < ?1 THEN length ELSE ?1 END "
                "WHERE ino = ?2 AND idx = ?3",
                (size % bs, ino, size // bs),
            )
        self._db.execute(
            "UPDATE inodes SET stored = stored - (length(inline) - ?1), "
            "inline = CASE WHEN ?1 = 0 THEN NULL ELSE substr(inline, 1, CAST(?1 AS INT)) END "
            "WHERE ino = ?2 AND length(inline) > ?1",
            (size, ino),
        )

    # -- internal roots -----------------------------------------------------------------

    def _create_root(self, now: int) -> None:
        self._db.execute(
            "INSERT INTO inodes (ino, mode, nlink, uid, gid, rdev, size, stored, atime_ns, mtime_ns, "
            "ctime_ns, generation, symlink, inline) VALUES (?, ?, 2, 0, 0, 0, ?, 0, ?, ?, ?, 0, NULL, NULL)",
            (ROOT_INO, _IFDIR | 0o755, DIR_SIZE, now, now, now),
        )

    def _create_internal(self, name: str, now: int) -> int:
        """A new, empty internal root ``name`` (no dentry), recorded in config."""
        ino: int = self._db.execute(
            "INSERT INTO inodes (mode, nlink, uid, gid, rdev, size, stored, atime_ns, mtime_ns, ctime_ns, "
            "generation, symlink, inline) VALUES (?, 2, 0, 0, 0, ?, 0, ?, ?, ?, 0, NULL, NULL) RETURNING ino",
            (_IFDIR | 0o700, DIR_SIZE, now, now, now),
        ).fetchone()[0]
        self._db.execute(
            "INSERT INTO config VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_INTERNAL_KEY + name, ino),
        )
        return ino

    def _internal_inos(self) -> dict[int, str]:
        """ino -> name of the internal roots as recorded (fsck checks that they are sound)."""
        prefix = len(_INTERNAL_KEY)
        return {
            ino: key[prefix:]
            for key, ino in self._db.execute(
                f"SELECT key, value FROM config WHERE key IN ({_INTERNAL_KEYS_SQL})"
            )
        }
