"""S3 access keys and their secrets (the oplog names the key, never the secret), the buckets
each key owns and the grants it holds on others (see dfs/core/s3grants.py).

Owners and grants name a bucket by its directory's inode (never reused): a
bucket removed and made again starts without an owner, a renamed one keeps
its owner and grants.  Rows of removed buckets are dropped when keys or
owners change next.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from daemon.meta.base import MetaBase, _api
from dfs.core.errors import Exists, InvalidArgument, NotFound
from dfs.core.namespace import ROOT_INO
from dfs.core.s3grants import parse_perm, perm_name

# A key's buckets by current name: those it owns, then those it was granted.
_ACCESS_SQL = f"""
    SELECT d.name, 'owner' FROM s3_bucket_owners o
        JOIN dentries d ON d.ino = o.ino AND d.is_dir = 1 AND d.parent = {ROOT_INO}
        WHERE o.access_key = ?
    UNION ALL
    SELECT d.name, g.perm FROM s3_grants g
        JOIN dentries d ON d.ino = g.ino AND d.is_dir = 1 AND d.parent = {ROOT_INO}
        WHERE g.access_key = ?"""


class Keys(MetaBase):
    """Adding, looking up, listing and revoking S3 access keys; bucket owners and grants."""

    @_api
    def s3_key_put(
        self, access_key: str, secret: str, description: str, grants: Sequence[Sequence[str]] = ()
    ) -> None:
        """Add a key, with ``grants`` (``[bucket, perm]`` pairs, the buckets existing) at once."""
        if not access_key or not secret:
            raise InvalidArgument("S3 access key and secret must not be empty")
        with self._write() as now:
            if self._db.execute("SELECT 1 FROM s3_keys WHERE access_key = ?", (access_key,)).fetchone():
                raise Exists(f"S3 access key {access_key!r} exists")
            self._db.execute(
                "INSERT INTO s3_keys VALUES (?, ?, ?, ?)", (access_key, secret, now, description)
            )
            for bucket, perm in grants:
                self._grant(access_key, bucket, perm)
            self._log(now, "s3_key_put", [access_key])  # never the secret: the oplog is not secret

    @_api
    def s3_key_get(self, access_key: str) -> str | None:
        """The secret of ``access_key``, or None."""
        row = self._db.execute("SELECT secret FROM s3_keys WHERE access_key = ?", (access_key,)).fetchone()
        return None if row is None else str(row[0])

    @_api
    def s3_key_list(self) -> list[dict[str, Any]]:
        """Every key's ``access_key``, ``created_ns``, ``description`` and ``grants`` (``{bucket:
        perm}``, owned buckets as ``owner``), never the secret."""
        rows = self._db.execute(
            "SELECT access_key, created_ns, description FROM s3_keys ORDER BY access_key"
        ).fetchall()
        return [
            {"access_key": a, "created_ns": c, "description": d, "grants": self.s3_access(a)}
            for a, c, d in rows
        ]

    @_api
    def s3_key_delete(self, access_key: str) -> None:
        with self._write() as now:
            if self._db.execute("DELETE FROM s3_keys WHERE access_key = ?", (access_key,)).rowcount == 0:
                raise NotFound(f"no S3 access key {access_key!r}")
            self._db.execute("DELETE FROM s3_grants WHERE access_key = ?", (access_key,))
            self._drop_stale()
            self._log(now, "s3_key_delete", [access_key])

    # -- owners and grants ----------
    @_api
    def s3_access(self, access_key: str) -> dict[str, str]:
        """``{bucket: perm}`` of the buckets ``access_key`` owns (``owner``) or was granted."""
        out: dict[str, str] = {}
        for name, perm in self._db.execute(_ACCESS_SQL, (access_key, access_key)).fetchall():
            bucket = bytes(name).decode("utf-8", "replace")
            if out.get(bucket) != "owner":
                out[bucket] = str(perm)
        return out

    @_api
    def s3_bucket_own(self, bucket: str, access_key: str) -> None:
        """Record ``access_key`` as the owner of the bucket it just created."""
        with self._write() as now:
            ino = self._bucket_ino(bucket)
            row = self._db.execute("SELECT access_key FROM s3_bucket_owners WHERE ino = ?", (ino,)).fetchone()
            if row is not None:
                if row[0] != access_key:
                    raise Exists(f"bucket {bucket!r} has an owner")
                return
            self._drop_stale()
            self._db.execute("INSERT INTO s3_bucket_owners VALUES (?, ?, ?)", (ino, access_key, now))
            self._log(now, "s3_bucket_own", [bucket, access_key])

    @_api
    def s3_grant(self, access_key: str, bucket: str, perm: str) -> dict[str, str]:
        """Grant ``perm`` (r, w, rw or owner) on ``bucket`` to ``access_key``; answers its grants."""
        with self._write() as now:
            if not self._db.execute("SELECT 1 FROM s3_keys WHERE access_key = ?", (access_key,)).fetchone():
                raise NotFound(f"no S3 access key {access_key!r}")
            self._grant(access_key, bucket, perm)
            self._log(now, "s3_grant", [access_key, bucket, perm])
        return self.s3_access(access_key)

    @_api
    def s3_revoke_grant(self, access_key: str, bucket: str) -> dict[str, str]:
        """Take back the grant ``access_key`` holds on ``bucket``; answers its grants."""
        with self._write() as now:
            ino = self._bucket_ino(bucket)
            sql = "DELETE FROM s3_grants WHERE access_key = ? AND ino = ?"
            if self._db.execute(sql, (access_key, ino)).rowcount == 0:
                raise NotFound(f"S3 access key {access_key!r} holds no grant on bucket {bucket!r}")
            self._log(now, "s3_revoke_grant", [access_key, bucket])
        return self.s3_access(access_key)

    def _grant(self, access_key: str, bucket: str, perm: str) -> None:
        try:
            name = perm_name(parse_perm(str(perm)))
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        ino = self._bucket_ino(bucket)
        self._db.execute(
            "INSERT INTO s3_grants VALUES (?, ?, ?) "
            "ON CONFLICT (access_key, ino) DO UPDATE SET perm = excluded.perm",
            (access_key, ino, name),
        )

    def _bucket_ino(self, bucket: str) -> int:
        if not isinstance(bucket, str) or not bucket:
            raise InvalidArgument("a bucket name must be a non-empty string")
        row = self._db.execute(
            "SELECT ino FROM dentries WHERE parent = ? AND name = ? AND is_dir = 1",
            (ROOT_INO, bucket.encode()),
        ).fetchone()
        if row is None:
            raise NotFound(f"no bucket {bucket!r}")
        return int(row[0])

    def _drop_stale(self) -> None:
        """Forget owners and grants of removed buckets (the tables are small)."""
        self._db.execute("DELETE FROM s3_grants WHERE ino NOT IN (SELECT ino FROM inodes)")
        self._db.execute("DELETE FROM s3_bucket_owners WHERE ino NOT IN (SELECT ino FROM inodes)")
