"""The POSIX namespace the mount drives: lookups, creation, links, removal, rename and setattr."""

from __future__ import annotations

import stat
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from daemon.meta.base import _api
from daemon.meta.inodes import (
    _IFDIR,
    _IFMT,
    _IFREG,
    _PERM_BITS,
    DIR_SIZE,
    LINK_MAX,
    _check_lookup_name,
    _check_writable,
    _is_dir,
)
from daemon.meta.objlock import check_unlocked
from daemon.meta.schema import _ATTR, _ATTR_I
from daemon.meta.sessions import Sessions
from daemon.meta.versions import Versions
from daemon.meta.xattrs import Xattrs
from dfs.core.errors import (
    Exists,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    TooManyLinks,
)
from dfs.core.namespace import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    ROOT_INO,
    Attr,
    DirEntry,
    check_name,
    chown_clears,
)

T = TypeVar("T")


class Namespace(Sessions, Versions, Xattrs):
    """Name-level operations; ``create`` registers its open, removals in the root keep volumes in step."""

    # -- lookups -------------------------------------------------------------------------

    @_api
    def lookup(self, parent: int, name: bytes) -> Attr:
        _check_lookup_name(name)
        row = self._db.execute(
            f"SELECT {_ATTR_I} FROM dentries d JOIN inodes i ON i.ino = d.ino "
            "WHERE d.parent = ? AND d.name = ?",
            (parent, name),
        ).fetchone()
        if row is not None:
            return Attr(*row)
        self._dir(parent, live=False)  # the right error for a bad parent
        if name == b".":
            return self._attr(parent)
        if name == b"..":
            return self._attr(self._parent_of(parent))
        raise NotFound(f"{name!r} not found in directory {parent}")

    @_api
    def lookup_versioned(self, parent: int, name: bytes) -> tuple[Attr | None, int]:
        """``lookup`` that reports absence as None, plus the directory's ctime.

        Both come from one read snapshot, so a caller that knew the directory's
        names at that ctime knows they are still exactly its names.
        """
        self._db.execute("BEGIN")
        try:
            try:
                attr: Attr | None = self.lookup(parent, name)
            except NotFound:
                attr = None
            return attr, self._attr(parent).ctime_ns
        finally:
            self._db.execute("COMMIT")

    @_api
    def parent(self, ino: int) -> int:
        """The directory containing directory ``ino`` (the root is its own parent)."""
        self._dir(ino, live=False)
        return self._parent_of(ino)

    def _parent_of(self, ino: int) -> int:
        if ino == ROOT_INO:
            return ROOT_INO
        row = self._db.execute(
            "SELECT parent FROM dentries WHERE is_dir = 1 AND ino = ? LIMIT 1", (ino,)
        ).fetchone()
        if row is None:
            if ino in self._internal_inos():
                return ino  # an internal root is its own parent, like the root
            raise NotFound(f"directory {ino} was removed")
        parent: int = row[0]
        return parent

    @_api
    def getattr(self, ino: int) -> Attr:
        return self._attr(ino)

    @_api
    def stamped(self, dirs: Sequence[int], fn: Callable[..., T], *args: Any) -> list[Any]:
        """``fn(*args)`` (an operation changing the directories ``dirs``) and the directories'
        stamps, in one transaction: ``[result, [[dir, ctime_before, attr_after], ...]]``.

        "Before" is the ctime the operation saw when it first read the directory, before
        changing anything (every operation reads the directories it changes first: see
        ``_seen``), so it costs no statement of its own; -1 if it did not read it (a
        mount then takes the directory as changed by someone else).  The "after"
        attributes of all of ``dirs`` are one statement."""
        with self._write():
            seen: dict[int, int] = {}
            self._ctime_seen = seen
            try:
                result = fn(*args)
            finally:
                self._ctime_seen = None
            after = self._attrs(dirs)
        return [result, [[d, seen.get(d, -1), a] for d, a in zip(dirs, after, strict=True)]]

    @_api
    def readlink(self, ino: int) -> bytes:
        row = self._db.execute("SELECT mode, symlink FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if row is None:
            raise NotFound(f"inode {ino} not found")
        if not stat.S_ISLNK(row[0]):
            raise InvalidArgument(f"inode {ino} is not a symlink")
        target: bytes = row[1]
        return target

    @_api
    def readdir(self, ino: int, cookie: int, limit: int) -> list[DirEntry]:
        self._dir(ino, live=False)
        rows = self._db.execute(
            f"SELECT d.name, d.id, {_ATTR_I} FROM dentries d JOIN inodes i ON i.ino = d.ino "
            "WHERE d.parent = ? AND d.id > ? ORDER BY d.id LIMIT ?",
            (ino, cookie, max(limit, 0)),
        ).fetchall()
        return [DirEntry(row[0], Attr(*row[2:]), row[1]) for row in rows]

    # -- namespace changes ---------------------------------------------------------------

    @_api
    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Attr:
        kind = mode & _IFMT or _IFREG  # mknod(2): a zero file type means a regular file
        if kind not in (_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise InvalidArgument(f"mknod cannot create file type {kind:o}")
        mode = kind | (mode & _PERM_BITS)
        if kind not in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = 0
        with self._write() as now:
            attr = self._make(now, parent, name, mode, uid, gid, rdev=rdev)
            self._log(now, "mknod", [parent, name, mode, rdev, uid, gid, attr.ino])
        return attr

    @_api
    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        if mode & _IFMT not in (0, _IFDIR):
            raise InvalidArgument(f"mkdir with file type {mode & _IFMT:o}")
        mode = _IFDIR | (mode & _PERM_BITS)
        with self._write() as now:
            attr = self._make(now, parent, name, mode, uid, gid, size=DIR_SIZE)
            self._log(now, "mkdir", [parent, name, mode, uid, gid, attr.ino])
        return attr

    @_api
    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        if not target or b"\0" in target or len(target) > 4096:
            raise InvalidArgument("symlink target must be 1..4096 bytes without NUL")
        mode = stat.S_IFLNK | 0o777
        with self._write() as now:
            attr = self._make(now, parent, name, mode, uid, gid, size=len(target), symlink=target)
            self._log(now, "symlink", [parent, name, target, uid, gid, attr.ino])
        return attr

    @_api
    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int, session: str) -> Attr:
        if mode & _IFMT not in (0, _IFREG):
            raise InvalidArgument(f"create with file type {mode & _IFMT:o}")
        mode = _IFREG | (mode & _PERM_BITS)
        with self._write() as now:
            attr = self._make(now, parent, name, mode, uid, gid)
            self._add_open(session, attr.ino, now)
            self._log(now, "create", [parent, name, mode, uid, gid, session, attr.ino])
        return attr

    @_api
    def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        check_name(new_name)
        with self._write() as now:
            mode, nlink = self._inode(ino)
            _check_writable(ino, mode)  # a new name raises the snapshot inode's nlink
            check_unlocked(self._db, ino, mode, now)  # an S3-locked file is immutable (objlock.py)
            if _is_dir(mode):
                raise NotPermitted(f"cannot hard-link directory {ino}")
            if nlink == 0:
                raise NotFound(f"inode {ino} was unlinked")
            if nlink >= LINK_MAX:
                raise TooManyLinks(f"inode {ino} has {nlink} links")
            _check_writable(new_parent, self._dir(new_parent, live=True)[0])
            if self._dentry(new_parent, new_name) is not None:
                raise Exists(f"{new_name!r} exists in directory {new_parent}")
            self._check_same_domain(ino, new_parent)  # one inode is charged to one quota domain
            self._add_dentry(new_parent, new_name, ino, False)
            row = self._db.execute(
                f"UPDATE inodes SET nlink = nlink + 1, ctime_ns = ? WHERE ino = ? RETURNING {_ATTR}",
                (now, ino),
            ).fetchone()
            self._touch_dir(new_parent, now)
            self._log(now, "link", [ino, new_parent, new_name])
        return Attr(*row)

    @_api
    def unlink(self, parent: int, name: bytes) -> None:
        _check_lookup_name(name)
        with self._write() as now:
            _check_writable(parent, self._dir(parent, live=False)[0])
            found = self._removal_entry(parent, name)
            if found is None:
                raise NotFound(f"{name!r} not found in directory {parent}")
            (dentry_id, ino, mode, nlink), volume = found
            if _is_dir(mode):
                raise IsADirectory(f"{name!r} is a directory")
            check_unlocked(self._db, ino, mode, now)
            self._del_dentry(dentry_id)
            self._touch_dir(parent, now)
            # The last name: maybe to its volume's trash, or a version (and a delete marker).
            self._drop_name(ino, mode, nlink - 1, (parent, name), now, volume, marker=True)
            self._log(now, "unlink", [parent, name])

    @_api
    def rmdir(self, parent: int, name: bytes) -> None:
        _check_lookup_name(name)
        if name == b".":
            raise InvalidArgument("cannot remove '.'")
        if name == b"..":
            raise NotEmpty("cannot remove '..'")
        with self._write() as now:
            _check_writable(parent, self._dir(parent, live=False)[0])
            entry = self._dentry(parent, name)
            if entry is None:
                raise NotFound(f"{name!r} not found in directory {parent}")
            dentry_id, ino, mode, _ = entry
            _check_writable(ino, mode)
            if not _is_dir(mode):
                raise NotADirectory(f"{name!r} is not a directory")
            if self._has_children(ino):
                raise NotEmpty(f"directory {name!r} is not empty")
            self._del_dentry(dentry_id)
            self._touch_dir(parent, now, -1)
            self._set_nlink(ino, 0, now)
            if parent == ROOT_INO:
                self._follow_volumes([ino])
            self._log(now, "rmdir", [parent, name])

    @_api
    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        if flags & RENAME_WHITEOUT:
            raise NotSupported("RENAME_WHITEOUT is not supported")
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise InvalidArgument(f"bad rename flags {flags:#x}")
        _check_lookup_name(name)
        check_name(new_name)
        with self._write() as now:
            pmode, pnlink = self._dir(parent, live=False)[:2]
            _check_writable(parent, pmode)
            src = self._dentry(parent, name)
            if src is None:
                raise NotFound(f"{name!r} not found in directory {parent}")
            _check_writable(src[1], src[2])  # a snapshot's top (or /.snapshots) moved away
            check_unlocked(self._db, src[1], src[2], now)
            new_pmode, new_pnlink = self._dir(new_parent, live=True)[:2]
            _check_writable(new_parent, new_pmode)
            dst = self._dentry(new_parent, new_name)
            if dst is not None:
                _check_writable(dst[1], dst[2])
                check_unlocked(self._db, dst[1], dst[2], now)
            if flags & RENAME_NOREPLACE and dst is not None:
                raise Exists(f"{new_name!r} exists in directory {new_parent}")
            if flags & RENAME_EXCHANGE:
                if dst is None:
                    raise NotFound(f"{new_name!r} not found in directory {new_parent}")
                changed = self._exchange(
                    src, dst, (parent, name, pnlink), (new_parent, new_name, new_pnlink), now
                )
            else:
                changed = self._move(src, dst, parent, (new_parent, new_name, new_pnlink), now)
            if changed:
                if ROOT_INO in (parent, new_parent):  # only top-level directories can be volumes
                    self._follow_volumes(e[1] for e in (src, dst) if e is not None and _is_dir(e[2]))
                self._log(now, "rename", [parent, name, new_parent, new_name, flags])

    def _check_not_ancestor(self, dir_ino: int, start: int) -> None:
        """InvalidArgument if ``dir_ino`` is ``start`` or one of its ancestors."""
        if self._is_ancestor(dir_ino, start):
            raise InvalidArgument(f"cannot move directory {dir_ino} into its own subtree")

    def _move(
        self,
        src: tuple[int, int, int, int],
        dst: tuple[int, int, int, int] | None,
        parent: int,
        target: tuple[int, bytes, int],
        now: int,
    ) -> bool:
        """Plain rename (optionally replacing ``dst``); False when it is a no-op."""
        src_id, src_ino, src_mode, _ = src
        new_parent, new_name, new_pnlink = target
        src_dir = _is_dir(src_mode)
        if dst is not None and dst[1] == src_ino:
            return False  # both names are links to the same inode: POSIX says do nothing
        if src_dir and parent != new_parent:
            self._check_not_ancestor(src_ino, new_parent)
        dst_dir = False
        if dst is not None:
            dst_dir = _is_dir(dst[2])
            if src_dir and not dst_dir:
                raise NotADirectory(f"{new_name!r} is not a directory")
            if dst_dir and not src_dir:
                raise IsADirectory(f"{new_name!r} is a directory")
            if dst_dir and self._has_children(dst[1]):
                raise NotEmpty(f"directory {new_name!r} is not empty")
        elif src_dir and parent != new_parent and new_pnlink >= LINK_MAX:
            raise TooManyLinks(f"directory {new_parent} has {new_pnlink} links")
        if parent != new_parent:  # a move between quota domains is EXDEV (daemon/meta/quotas.py)
            self._check_same_domain(src_ino, new_parent)
        if dst is not None:
            self._del_dentry(dst[0])
            if dst_dir:
                self._set_nlink(dst[1], 0, now)
            else:  # a replaced file's last name: maybe to its volume's trash
                self._drop_name(dst[1], dst[2], dst[3] - 1, (new_parent, new_name), now)
        self._del_dentry(src_id)
        self._add_dentry(new_parent, new_name, src_ino, src_dir)  # a fresh id: the entry's new cookie
        self._db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, src_ino))
        if parent == new_parent:
            self._touch_dir(parent, now, -int(dst_dir))
        else:
            self._touch_dir(parent, now, -int(src_dir))
            self._touch_dir(new_parent, now, int(src_dir) - int(dst_dir))
        return True

    def _exchange(
        self,
        src: tuple[int, int, int, int],
        dst: tuple[int, int, int, int],
        origin: tuple[int, bytes, int],
        target: tuple[int, bytes, int],
        now: int,
    ) -> bool:
        """RENAME_EXCHANGE: swap two existing names atomically; False when it is a no-op."""
        parent, name, pnlink = origin
        new_parent, new_name, new_pnlink = target
        if src[1] == dst[1]:
            return False
        src_dir, dst_dir = _is_dir(src[2]), _is_dir(dst[2])
        moved = parent != new_parent
        if moved and src_dir:
            self._check_not_ancestor(src[1], new_parent)
        if moved and dst_dir:
            self._check_not_ancestor(dst[1], parent)
        gain = int(src_dir) - int(dst_dir)  # subdirectories new_parent gains (parent loses as many)
        if moved and ((gain > 0 and new_pnlink >= LINK_MAX) or (gain < 0 and pnlink >= LINK_MAX)):
            raise TooManyLinks("rename exchange would exceed the directory link limit")
        if moved:  # either side moving between quota domains is EXDEV (daemon/meta/quotas.py)
            self._check_same_domain(src[1], new_parent)
            self._check_same_domain(dst[1], parent)
        self._del_dentry(src[0])
        self._del_dentry(dst[0])
        self._add_dentry(parent, name, dst[1], dst_dir)
        self._add_dentry(new_parent, new_name, src[1], src_dir)
        self._db.executemany("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", [(now, src[1]), (now, dst[1])])
        if moved:
            self._touch_dir(parent, now, -gain)
            self._touch_dir(new_parent, now, gain)
        else:
            self._touch_dir(parent, now)
        return True

    # -- attributes -----------------------------------------------------------------------

    @_api
    def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Attr:
        with self._write() as now:
            row = self._db.execute("SELECT mode, size, ctime_ns FROM inodes WHERE ino = ?", (ino,)).fetchone()
            if row is None:
                raise NotFound(f"inode {ino} not found")
            cur_mode, cur_size, ctime_ns = row
            _check_writable(ino, cur_mode)
            check_unlocked(self._db, ino, cur_mode, now)  # truncate, chmod, chown, utimes alike
            self._seen(ino, ctime_ns)
            new_mode = cur_mode if mode is None else (cur_mode & _IFMT) | (mode & _PERM_BITS)
            if (uid is not None or gid is not None) and mode is None and not _is_dir(cur_mode):
                new_mode = chown_clears(new_mode)
            if size is not None:
                self._check_truncate(ino, cur_mode, size)
                if size != cur_size:
                    self._shrink(ino, size, now)
                    if mtime_ns is None:
                        mtime_ns = now
            if mode is not None:
                self._chmod_acl(ino, new_mode)
            result = self._db.execute(
                "UPDATE inodes SET mode = ?, uid = COALESCE(?, uid), gid = COALESCE(?, gid), "
                "size = COALESCE(?, size), atime_ns = COALESCE(?, atime_ns), "
                "mtime_ns = COALESCE(?, mtime_ns), "
                f"ctime_ns = ? WHERE ino = ? RETURNING {_ATTR}",
                (new_mode, uid, gid, size, atime_ns, mtime_ns, now, ino),
            ).fetchone()
            self._log(now, "setattr", [ino, mode, uid, gid, size, atime_ns, mtime_ns])
        return Attr(*result)

    @staticmethod
    def _check_truncate(ino: int, mode: int, size: int) -> None:
        if _is_dir(mode):
            raise IsADirectory(f"inode {ino} is a directory")
        if mode & _IFMT != _IFREG:
            raise InvalidArgument(f"inode {ino} is not a regular file")
        if size < 0:
            raise InvalidArgument(f"negative size {size}")
