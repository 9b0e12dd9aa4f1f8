"""Scoped admin tokens: id, name, scope and the SHA-256 of the token (never the token itself).

The token's shape, scopes and digest are :mod:`daemon.admin.tokens`'s; this
table only stores what a check needs.  The oplog names the token id, never the
digest.
"""

from __future__ import annotations

from typing import Any

from daemon.meta.base import MetaBase, _api
from dfs.core.errors import Exists, InvalidArgument, NotFound


class Tokens(MetaBase):
    """Adding, looking up, listing and revoking scoped admin tokens."""

    @_api
    def admin_token_put(self, token_id: str, name: str, scope: str, digest: bytes) -> dict[str, Any]:
        if not token_id or len(digest) != 32:
            raise InvalidArgument("admin token id must not be empty and its digest 32 bytes")
        with self._write() as now:
            if self._db.execute("SELECT 1 FROM admin_tokens WHERE id = ?", (token_id,)).fetchone():
                raise Exists(f"admin token {token_id!r} exists")
            self._db.execute(
                "INSERT INTO admin_tokens VALUES (?, ?, ?, ?, ?)", (token_id, name, scope, digest, now)
            )
            self._log(now, "admin_token_put", [token_id, scope])
        return {"id": token_id, "name": name, "scope": scope, "created_ns": now}

    @_api
    def admin_token_get(self, token_id: str) -> tuple[str, bytes] | None:
        """(scope, digest) of token ``token_id``, or None."""
        row = self._db.execute("SELECT scope, digest FROM admin_tokens WHERE id = ?", (token_id,)).fetchone()
        return None if row is None else (str(row[0]), bytes(row[1]))

    @_api
    def admin_token_list(self) -> list[dict[str, Any]]:
        """Every token's ``id``, ``name``, ``scope`` and ``created_ns`` (never the digest)."""
        rows = self._db.execute(
            "SELECT id, name, scope, created_ns FROM admin_tokens ORDER BY created_ns, id"
        ).fetchall()
        return [{"id": i, "name": n, "scope": s, "created_ns": c} for i, n, s, c in rows]

    @_api
    def admin_token_delete(self, token_id: str) -> None:
        with self._write() as now:
            if self._db.execute("DELETE FROM admin_tokens WHERE id = ?", (token_id,)).rowcount == 0:
                raise NotFound(f"no admin token {token_id!r}")
            self._log(now, "admin_token_delete", [token_id])
