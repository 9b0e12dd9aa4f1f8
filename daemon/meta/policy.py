"""Replication and consistency policy: the policy xattrs, their accepted values, and which policy applies.

A policy comes from the nearest of an inode and its ancestors carrying
:data:`REPLICAS_XATTR` / :data:`CONSISTENCY_XATTR`, else from the volume the
path goes through (see :meth:`Policy.policy`).  The validators here keep
stored policy xattrs parseable: a typo must fail, not be ignored.
"""

from __future__ import annotations

from typing import Any

from daemon.meta.base import _api, _unpack_dict
from daemon.meta.inodes import Inodes, _is_dir
from dfs.core.errors import InvalidArgument
from dfs.core.namespace import ROOT_INO

# Per-directory (or per-file) overrides of the volume's policy, see MetaStore.policy.
REPLICAS_XATTR = b"user.dfs.replicas"
CONSISTENCY_XATTR = b"user.dfs.consistency"
MAX_REPLICAS = 7  # PlacementTable's default bound: more copies than this is a bug, not a policy
CONSISTENCY_LEVELS = ("strong", "quorum", "eventual")
_REPLICAS_VALUES = {str(n).encode(): n for n in range(1, MAX_REPLICAS + 1)}
_CONSISTENCY_VALUES = {level.encode(): level for level in CONSISTENCY_LEVELS}
# A parent walk longer than any real path only happens on a cycle (a corrupt database): stop there.
_MAX_DEPTH = 10_000


def _replicas_or_none(value: object) -> int | None:
    """``value`` if it is a replication factor (an int 1..MAX_REPLICAS, never a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_REPLICAS:
        return value
    return None


def _check_replicas(replicas: int | None) -> None:
    if replicas is not None and _replicas_or_none(replicas) is None:
        raise InvalidArgument(f"replicas must be 1..{MAX_REPLICAS}, not {replicas!r:.40}")


def _check_policy_xattr(name: bytes, value: bytes) -> None:
    """Policy xattrs hold exactly what :meth:`MetaStore.policy` parses: a typo must fail, not be ignored."""
    if name == REPLICAS_XATTR and value not in _REPLICAS_VALUES:
        raise InvalidArgument(f"{name.decode()} must be one of 1..{MAX_REPLICAS}, not {value!r:.40}")
    if name == CONSISTENCY_XATTR and value not in _CONSISTENCY_VALUES:
        raise InvalidArgument(
            f"{name.decode()} must be one of {', '.join(CONSISTENCY_LEVELS)}, not {value!r:.40}"
        )


class Policy(Inodes):
    """Resolving the policy that applies to an inode."""

    @_api
    def policy(self, ino: int, parent: int | None = None) -> dict[str, Any]:
        """``{"replicas", "consistency"}`` that apply to ``ino`` (None: nothing set; use the defaults).

        Each comes from the nearest of ``ino`` and its ancestors carrying
        :data:`REPLICAS_XATTR` / :data:`CONSISTENCY_XATTR`, else from the policy
        (``replication``, ``consistency``) of the volume the path goes through.
        Stored values that do not parse are skipped, as if absent.  A file has
        no parent pointer: pass ``parent`` (the directory it was opened through,
        which the caller knows); without it finding one costs a scan of all
        names.  A file with no name left (open, unlinked) has only its own xattrs.
        """
        with self._read():
            mode = self._inode(ino)[0]
            if parent is not None:
                self._dir(parent, live=False)
            elif not _is_dir(mode):
                row = self._db.execute("SELECT parent FROM dentries WHERE ino = ? LIMIT 1", (ino,)).fetchone()
                parent = None if row is None else row[0]
            # The chain ino, its parent, ... up to the root (or an internal root, or a removed directory);
            # a file's parent is seeded (directories are found by the partial index dentries_dirs).
            rows = self._db.execute(
                "WITH RECURSIVE chain(ino, depth) AS ("
                "SELECT ?1, 0 UNION ALL SELECT CAST(?2 AS BIGINT), 1 WHERE ?2 IS NOT NULL "
                "UNION SELECT d.parent, c.depth + 1 FROM chain c "
                "JOIN dentries d ON d.ino = c.ino AND d.is_dir = 1 WHERE c.ino != ?3 AND c.depth < ?4) "
                "SELECT c.ino, x.name, x.value FROM chain c "
                "LEFT JOIN xattrs x ON x.ino = c.ino AND x.name IN (?5, ?6) ORDER BY c.depth",
                (
                    ino,
                    parent if not _is_dir(mode) else None,
                    ROOT_INO,
                    _MAX_DEPTH,
                    REPLICAS_XATTR,
                    CONSISTENCY_XATTR,
                ),
            ).fetchall()
            replicas: int | None = None
            consistency: str | None = None
            chain: list[int] = []
            for node, name, value in rows:
                if not chain or chain[-1] != node:
                    chain.append(node)
                if name == REPLICAS_XATTR and replicas is None:
                    replicas = _REPLICAS_VALUES.get(value)
                elif name == CONSISTENCY_XATTR and consistency is None:
                    consistency = _CONSISTENCY_VALUES.get(value)
            if (replicas is None or consistency is None) and len(chain) >= 2 and chain[-1] == ROOT_INO:
                row = self._db.execute("SELECT policy FROM volumes WHERE ino = ?", (chain[-2],)).fetchone()
                if row is not None:
                    volume = _unpack_dict(row[0])
                    if replicas is None:
                        replicas = _replicas_or_none(volume.get("replication"))
                    if consistency is None and volume.get("consistency") in CONSISTENCY_LEVELS:
                        consistency = volume["consistency"]
            return {"replicas": replicas, "consistency": consistency}
