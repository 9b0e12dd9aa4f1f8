"""Extended attributes, with POSIX ACLs kept in step with the mode (see dfs.core.acl)."""

from __future__ import annotations

from daemon.meta.base import _api
from daemon.meta.inodes import _check_writable, _check_xattr_name, _is_dir
from daemon.meta.objlock import check_lock_xattr
from daemon.meta.policy import REPLICAS_XATTR, _check_policy_xattr
from daemon.meta.quotas import Quotas
from daemon.meta.remark import queue_remark
from daemon.meta.versions import XA_VERSION_ID
from dfs.core import acl
from dfs.core.errors import Exists, InvalidArgument, NoAttribute, NotPermitted, PermissionDenied, RangeError
from dfs.core.namespace import XATTR_CREATE, XATTR_REPLACE, XATTR_SIZE_MAX
from dfs.core.quotas import QUOTA_XATTR_PREFIX, QUOTA_XATTRS

_PUT_XATTR = (
    "INSERT INTO xattrs VALUES (?, ?, ?) ON CONFLICT (ino, name) DO UPDATE SET value = excluded.value"
)


def _check_quota_xattr(name: bytes) -> None:
    if name.startswith(QUOTA_XATTR_PREFIX):
        raise NotPermitted(f"{name!r} is a read-only view of a directory quota: use `dfs quota set`")


def _check_version_xattr(name: bytes) -> None:
    """The version id names which version of a key is current (daemon/meta/versions.py): only
    the S3 write path (put_object's xattrs) and the versioning code set it, in their own
    transactions; a mount or an xattr call could otherwise forge or drop it."""
    if name == XA_VERSION_ID:
        raise NotPermitted(f"{name!r} is the read-only S3 version id of the file: use the S3 API")


class Xattrs(Quotas):
    """get/list/set/removexattr; ACL xattrs also change the mode, and chmod changes the access ACL."""

    @_api
    def getxattr(self, ino: int, name: bytes) -> bytes:
        _check_xattr_name(name)
        row = self._db.execute("SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, name)).fetchone()
        if row is None:
            self._inode(ino)
            if name.startswith(QUOTA_XATTR_PREFIX):  # the read-only view of a quota domain
                virtual = self.quota_xattr(ino, name)
                if virtual is not None:
                    return virtual
            raise NoAttribute(f"no xattr {name!r} on inode {ino}")
        value: bytes = row[0]
        return value

    @_api
    def listxattr(self, ino: int) -> list[bytes]:
        self._inode(ino)
        names = [
            r[0] for r in self._db.execute("SELECT name FROM xattrs WHERE ino = ? ORDER BY name", (ino,))
        ]
        if self._quota_row(ino) is not None:
            names += sorted(QUOTA_XATTRS)
        return names

    @_api
    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        _check_xattr_name(name)
        if len(value) > XATTR_SIZE_MAX:
            raise RangeError(f"xattr value of {len(value)} bytes exceeds {XATTR_SIZE_MAX}")
        if flags & ~(XATTR_CREATE | XATTR_REPLACE):
            raise InvalidArgument(f"bad xattr flags {flags:#x}")
        _check_policy_xattr(name, value)
        _check_quota_xattr(name)
        _check_version_xattr(name)
        with self._write() as now:
            mode = self._inode(ino)[0]
            _check_writable(ino, mode)
            check_lock_xattr(self._db, ino, mode, name, now)
            exists = self._db.execute(
                "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, name)
            ).fetchone()
            if exists and flags & XATTR_CREATE:
                raise Exists(f"xattr {name!r} exists on inode {ino}")
            if not exists and flags & XATTR_REPLACE:
                raise NoAttribute(f"no xattr {name!r} on inode {ino}")
            if name in acl.NAMES:
                self._set_acl(ino, name, value, now)
            else:
                self._db.execute(_PUT_XATTR, (ino, name, value))
                self._db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, ino))
            if name == REPLICAS_XATTR and (exists is None or exists[0] != value):
                # The data already under ``ino`` needs the new factor (daemon/meta/remark.py).
                queue_remark(self._db, ino, now)
            self._log(now, "setxattr", [ino, name, value, flags])

    def _set_acl(self, ino: int, name: bytes, value: bytes, now: int) -> None:
        """Store an ACL xattr and keep the mode in step (see dfs.core.acl), in the caller's transaction."""
        mode = self._inode(ino)[0]
        if name == acl.ACCESS:
            mode, stored = acl.after_set(value, mode)
        elif _is_dir(mode):
            stored = acl.check_default(value)
        else:
            raise PermissionDenied(f"inode {ino} is not a directory: it cannot have a default ACL")
        if stored is None:
            self._db.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, name))
        else:
            self._db.execute(_PUT_XATTR, (ino, name, stored))
        self._db.execute("UPDATE inodes SET mode = ?, ctime_ns = ? WHERE ino = ?", (mode, now, ino))

    @_api
    def removexattr(self, ino: int, name: bytes) -> None:
        _check_xattr_name(name)
        _check_quota_xattr(name)
        _check_version_xattr(name)
        with self._write() as now:
            mode = self._inode(ino)[0]
            _check_writable(ino, mode)
            check_lock_xattr(self._db, ino, mode, name, now)
            if self._db.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, name)).rowcount == 0:
                raise NoAttribute(f"no xattr {name!r} on inode {ino}")
            self._db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, ino))
            if name == REPLICAS_XATTR:
                queue_remark(self._db, ino, now)  # its data falls back to the inherited factor
            self._log(now, "removexattr", [ino, name])

    def _chmod_acl(self, ino: int, mode: int) -> None:
        row = self._db.execute(
            "SELECT value FROM xattrs WHERE ino = ? AND name = ?", (ino, acl.ACCESS)
        ).fetchone()
        if row is not None:
            self._db.execute(
                "UPDATE xattrs SET value = ? WHERE ino = ? AND name = ?",
                (acl.chmod(row[0], mode), ino, acl.ACCESS),
            )
