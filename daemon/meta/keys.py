"""S3 access keys and their secrets (the oplog names the key, never the secret)."""

from __future__ import annotations

from typing import Any

from daemon.meta.base import MetaBase, _api
from dfs.core.errors import Exists, InvalidArgument, NotFound


class Keys(MetaBase):
    """Adding, looking up, listing and revoking S3 access keys."""

    @_api
    def s3_key_put(self, access_key: str, secret: str, description: str) -> None:
        if not access_key or not secret:
            raise InvalidArgument("S3 access key and secret must not be empty")
        with self._write() as now:
            if self._db.execute("SELECT 1 FROM s3_keys WHERE access_key = ?", (access_key,)).fetchone():
                raise Exists(f"S3 access key {access_key!r} exists")
            self._db.execute(
                "INSERT INTO s3_keys VALUES (?, ?, ?, ?)", (access_key, secret, now, description)
            )
            self._log(now, "s3_key_put", [access_key])  # never the secret: the oplog is not secret

    @_api
    def s3_key_get(self, access_key: str) -> str | None:
        """The secret of ``access_key``, or None."""
        row = self._db.execute("SELECT secret FROM s3_keys WHERE access_key = ?", (access_key,)).fetchone()
        return None if row is None else str(row[0])

    @_api
    def s3_key_list(self) -> list[dict[str, Any]]:
        """Every key's ``access_key``, ``created_ns`` and ``description`` (never the secret)."""
        rows = self._db.execute(
            "SELECT access_key, created_ns, description FROM s3_keys ORDER BY access_key"
        ).fetchall()
        return [{"access_key": a, "created_ns": c, "description": d} for a, c, d in rows]

    @_api
    def s3_key_delete(self, access_key: str) -> None:
        with self._write() as now:
            if self._db.execute("DELETE FROM s3_keys WHERE access_key = ?", (access_key,)).rowcount == 0:
                raise NotFound(f"no S3 access key {access_key!r}")
            self._log(now, "s3_key_delete", [access_key])
