"""S3 object lock in the metadata: what a locked file refuses, on every path.

A bucket with object lock has a row in ``s3_object_lock_config`` (its default
retention, if any); object lock needs versioning Enabled there, which can then
never be suspended.  An object version (an inode: the file at the key's path,
or a version at ``versions/<ino>``, which keeps its inode) with a retention or
a legal hold has a row in ``s3_object_locks`` and carries :data:`LOCKED` in
``inodes.mode``, like ``READ_ONLY`` (daemon/meta/inodes.py): every changing
operation reads the mode anyway, so an unlocked file pays nothing; only a
flagged one costs the statement that reads its row.  The row decides: a flag
without a row (a copy made after the retention ended) locks nothing.

A file is locked while its legal hold is on or its retention runs (its
retain-until date is after the transaction's time: the metadata's clock, not
the caller's).  A locked file refuses, whoever asks (a mount, S3, the admin
API, a lifecycle run, a snapshot restore): unlink, rename away or over it,
hard links, setattr (truncate, chmod, chown, utimes: it is immutable as with
``chattr +i``), opening it for writing, committing data to it, ACL xattrs, and
removal of a tree holding it.  The refusal is NotPermitted: EPERM on a mount,
403 AccessDenied from S3.  A GOVERNANCE retention is lifted by callers that
pass ``bypass`` (S3's ``x-amz-bypass-governance-retention`` with the
permission); COMPLIANCE and legal holds never.  What S3 allows on a locked
object stays allowed: a new version put over it (the locked one becomes a
non-current version, keeping its lock), a delete marker, tags.

The lock is mirrored into the xattr ``user.s3.object-lock`` in the same
transaction (GET and HEAD read it with the other xattrs); nothing else may
set or remove that xattr.
"""

from __future__ import annotations

from typing import Any

from daemon.meta.base import _api
from daemon.meta.engine import Db
from daemon.meta.inodes import _IFMT, _IFREG, Inodes
from dfs.core import acl, s3objlock
from dfs.core.errors import InvalidArgument, NotPermitted
from dfs.core.s3objlock import COMPLIANCE, GOVERNANCE, XA_LOCK, LockConfig, ObjectLock

# A flag bit of ``inodes.mode`` above S_IFMT (and above inodes.READ_ONLY): the inode has (or had)
# an ``s3_object_locks`` row.  Masked out of every Attr (schema._attr_cols).
LOCKED = 1 << 25
_ENABLED = "Enabled"


def lock_row(db: Db, ino: int) -> ObjectLock | None:
    """The lock row of inode ``ino`` (None: none)."""
    row = db.execute(
        "SELECT mode, retain_until_ns, legal_hold FROM s3_object_locks WHERE ino = ?", (ino,)
    ).fetchone()
    if row is None:
        return None
    return ObjectLock(
        None if row[0] is None else str(row[0]), None if row[1] is None else int(row[1]), bool(row[2])
    )


def lock_config(db: Db, bucket: int) -> LockConfig | None:
    """Bucket ``bucket``'s object lock configuration (None: object lock is not enabled)."""
    row = db.execute(
        "SELECT mode, days, years FROM s3_object_lock_config WHERE ino = ?", (bucket,)
    ).fetchone()
    if row is None:
        return None
    return LockConfig(
        None if row[0] is None else str(row[0]),
        None if row[1] is None else int(row[1]),
        None if row[2] is None else int(row[2]),
    )


def check_unlocked(db: Db, ino: int, mode: int, now: int, *, bypass: bool = False) -> None:
    """NotPermitted if inode ``ino`` (whose raw ``mode`` was read) is locked at ``now``;
    ``bypass`` lifts a GOVERNANCE retention (never a COMPLIANCE one or a legal hold)."""
    if not mode & LOCKED:
        return
    lock = lock_row(db, ino)
    if lock is None or not lock.active(now):
        return
    if lock.hold:
        raise NotPermitted(f"inode {ino} is under an S3 object lock legal hold")
    assert lock.until_ns is not None
    if lock.mode == GOVERNANCE and bypass:
        return
    until = s3objlock.format_date(lock.until_ns)
    raise NotPermitted(f"inode {ino} is under S3 object lock {lock.mode} retention until {until}")


def check_lock_xattr(db: Db, ino: int, mode: int, name: bytes, now: int) -> None:
    """setxattr/removexattr: the mirror xattr is the lock operations' alone; an ACL xattr would
    change a locked file's mode."""
    if name == XA_LOCK:
        raise NotPermitted(f"{name!r} is the read-only view of an S3 object lock: use the S3 API")
    if name in acl.NAMES:
        check_unlocked(db, ino, mode, now)


class ObjectLocks(Inodes):
    """Bucket lock configurations, object retention and legal holds (the s3.objlock_* endpoints)."""

    # -- inside other operations' transactions ----------

    def _lock_config(self, bucket: int) -> LockConfig | None:
        return lock_config(self._db, bucket)

    def _apply_lock_request(self, bucket: int, ino: int, raw: bytes, now: int) -> None:
        """put_object's new inode ``ino`` gets the lock a write asked for (the S3 shim's request,
        dfs/core/s3objlock.py), or bucket ``bucket``'s default retention."""
        try:
            mode, until, hold, day_s = s3objlock.decode_request(raw)
        except ValueError as exc:
            raise InvalidArgument(f"object lock request: {exc}") from None
        cfg = self._lock_config(bucket)
        if cfg is None:
            if mode is not None or hold:
                raise InvalidArgument(f"bucket {bucket} has no object lock configuration")
            return
        if mode is None:
            days = cfg.default_days()
            if days is not None:
                mode, until = cfg.mode, now + int(days * day_s * 1e9)
        if mode is None and not hold:
            return
        self._write_lock(ino, ObjectLock(mode, until, bool(hold)), now)

    def _write_lock(self, ino: int, lock: ObjectLock | None, now: int) -> None:
        """Store ``lock`` (None: none) as ``ino``'s row, flag and mirror xattr."""
        db = self._db
        if lock is None or (lock.mode is None and not lock.hold):
            db.execute("DELETE FROM s3_object_locks WHERE ino = ?", (ino,))
            db.execute("DELETE FROM xattrs WHERE ino = ? AND name = ?", (ino, XA_LOCK))
            db.execute("UPDATE inodes SET mode = mode & ?, ctime_ns = ? WHERE ino = ?", (~LOCKED, now, ino))
            return
        db.execute(
            "INSERT INTO s3_object_locks (ino, mode, retain_until_ns, legal_hold, changed_ns) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (ino) DO UPDATE SET mode = excluded.mode, "
            "retain_until_ns = excluded.retain_until_ns, legal_hold = excluded.legal_hold, "
            "changed_ns = excluded.changed_ns",
            (ino, lock.mode, lock.until_ns, int(lock.hold), now),
        )
        db.execute(
            "INSERT INTO xattrs VALUES (?, ?, ?) "
            "ON CONFLICT (ino, name) DO UPDATE SET value = excluded.value",
            (ino, XA_LOCK, s3objlock.encode_lock(lock)),
        )
        db.execute("UPDATE inodes SET mode = mode | ?, ctime_ns = ? WHERE ino = ?", (LOCKED, now, ino))

    def _lock_target(self, bucket: int, ino: int) -> ObjectLock | None:
        """Checks for a lock change on version ``ino`` of ``bucket``; its current lock."""
        if self._lock_config(bucket) is None:
            raise InvalidArgument(f"bucket {bucket} has no object lock configuration")
        mode = self._inode(ino)[0]
        if mode & _IFMT != _IFREG:
            raise InvalidArgument(f"inode {ino} is not a regular file")
        return lock_row(self._db, ino)

    # -- the s3.objlock_* endpoints ----------

    @_api
    def objlock_config_set(self, bucket: int, config: dict[str, Any]) -> None:
        """Enable object lock on bucket ``bucket`` (versioning must be Enabled) with this default
        retention ({"mode", "days", "years"}, dfs/core/s3objlock.py LockConfig)."""
        try:
            cfg = LockConfig.from_wire(config)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"object lock configuration: {exc}") from None
        if cfg.mode is not None and cfg.mode not in s3objlock.MODES:
            raise InvalidArgument(f"unknown object lock mode {cfg.mode!r:.40}")
        if cfg.mode is not None and (cfg.days is None) == (cfg.years is None):
            raise InvalidArgument("a default retention takes either days or years")
        if cfg.mode is None and (cfg.days is not None or cfg.years is not None):
            raise InvalidArgument("a default retention period needs a mode")
        with self._write() as now:
            row = self._db.execute("SELECT status FROM s3_versioning WHERE ino = ?", (bucket,)).fetchone()
            if row is None or row[0] != _ENABLED:
                raise InvalidArgument(f"object lock needs versioning Enabled on bucket {bucket}")
            self._db.execute(
                "INSERT INTO s3_object_lock_config (ino, mode, days, years, changed_ns) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (ino) DO UPDATE SET mode = excluded.mode, days = excluded.days, "
                "years = excluded.years, changed_ns = excluded.changed_ns",
                (bucket, cfg.mode, cfg.days, cfg.years, now),
            )
            self._log(now, "objlock_config_set", [bucket, cfg.to_wire()])

    @_api
    def objlock_config_get(self, bucket: int) -> dict[str, Any] | None:
        """Bucket ``bucket``'s object lock configuration; None: object lock is not enabled."""
        with self._read():
            cfg = self._lock_config(bucket)
        return None if cfg is None else cfg.to_wire()

    @_api
    def objlock_get(self, ino: int) -> dict[str, Any] | None:
        """The lock of version ``ino``: {"mode", "until_ns", "hold"}; None: it has none."""
        with self._read():
            self._inode(ino)
            lock = lock_row(self._db, ino)
        return None if lock is None else {"mode": lock.mode, "until_ns": lock.until_ns, "hold": lock.hold}

    @_api
    def objlock_retention_set(
        self, bucket: int, ino: int, mode: str | None, until_ns: int | None, bypass: bool
    ) -> None:
        """PutObjectRetention on version ``ino`` of ``bucket`` (mode None: remove it).  Extending
        is always allowed, and GOVERNANCE may become COMPLIANCE; shortening or removing a running
        GOVERNANCE retention needs ``bypass``; a running COMPLIANCE one never changes but longer."""
        if (mode is None) != (until_ns is None):
            raise InvalidArgument("a retention takes both a mode and a date, or neither")
        if mode is not None and mode not in s3objlock.MODES:
            raise InvalidArgument(f"unknown object lock mode {mode!r:.40}")
        with self._write() as now:
            cur = self._lock_target(bucket, ino)
            running = cur is not None and cur.mode is not None and (cur.until_ns or 0) > now
            if running:
                assert cur is not None and cur.until_ns is not None
                weaker = (
                    mode is None
                    or until_ns is None
                    or until_ns < cur.until_ns
                    or (cur.mode == COMPLIANCE and mode != COMPLIANCE)
                )
                if weaker and (cur.mode == COMPLIANCE or not bypass):
                    raise NotPermitted(
                        f"inode {ino}: a running {cur.mode} retention can only be extended"
                        + ("" if cur.mode == COMPLIANCE else " without bypassing governance")
                    )
            hold = cur.hold if cur is not None else False
            self._write_lock(ino, ObjectLock(mode, until_ns, hold), now)
            self._log(now, "objlock_retention_set", [bucket, ino, mode, until_ns, bypass])

    @_api
    def objlock_hold_set(self, bucket: int, ino: int, hold: bool) -> None:
        """PutObjectLegalHold on version ``ino`` of ``bucket``."""
        with self._write() as now:
            cur = self._lock_target(bucket, ino)
            mode, until = (cur.mode, cur.until_ns) if cur is not None else (None, None)
            self._write_lock(ino, ObjectLock(mode, until, bool(hold)), now)
            self._log(now, "objlock_hold_set", [bucket, ino, bool(hold)])

    def _check_tree_unlocked(self, links_table: str, now: int) -> None:
        """NotPermitted if a file listed in scratch table ``links_table`` (a tree being removed) is
        locked."""
        row = self._db.execute(
            f"SELECT o.ino FROM {links_table} l CROSS JOIN s3_object_locks o ON o.ino = l.ino "
            "WHERE o.legal_hold != 0 OR (o.mode IS NOT NULL AND o.retain_until_ns > ?) LIMIT 1",
            (now,),
        ).fetchone()
        if row is not None:
            raise NotPermitted(f"inode {row[0]} in the tree is under an S3 object lock")
