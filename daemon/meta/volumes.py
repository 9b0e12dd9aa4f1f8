"""Volumes: top-level directories registered with a policy, and their rows following namespace changes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from daemon.meta.base import _api, _pack_dict, _unpack_dict
from daemon.meta.inodes import DIR_SIZE, _is_dir
from daemon.meta.quotas import Quotas
from daemon.meta.remark import queue_remark
from dfs.core.errors import Exists, InvalidArgument, NotADirectory, NotEmpty, NotFound
from dfs.core.namespace import ROOT_INO, Attr, check_name

_PUT_VOLUME = (
    "INSERT INTO volumes VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE "
    "SET ino = excluded.ino, policy = excluded.policy, created_ns = excluded.created_ns"
)


class Volumes(Quotas):
    """The volumes table; ``_follow_volumes`` keeps it on its directories after renames and removals."""

    # daemon/meta/tiers.py: a policy names only defined tiers (declared, not defined, here: the
    # Tiers concern comes later in MetaStore's bases).
    _check_tier_policy: Callable[[dict[str, Any]], None]

    def _volume_policy(self, policy: dict[str, Any]) -> bytes:
        """A volume policy checked and packed for its row."""
        packed = _pack_dict(policy, "volume policy")  # refuses what is not a dict first
        self._check_tier_policy(policy)
        return packed

    def _follow_volumes(self, inos: Iterable[int]) -> None:
        """Keep the volume rows of directories ``inos`` on their directories after a namespace change.

        A directory still named in the root keeps its row under that name; one
        removed or moved out of the root (or renamed to a non-UTF-8 name) loses it.
        """
        rows: list[tuple[int, bytes, int]] = []
        for ino in inos:
            rows += self._db.execute(
                "DELETE FROM volumes WHERE ino = ? RETURNING ino, policy, created_ns", (ino,)
            ).fetchall()
        for ino, policy, created_ns in rows:
            entry = self._db.execute(
                "SELECT name FROM dentries WHERE is_dir = 1 AND ino = ? AND parent = ?", (ino, ROOT_INO)
            ).fetchone()
            if entry is None:
                continue
            try:
                name = entry[0].decode()
            except UnicodeDecodeError:
                continue
            # OR REPLACE: a row already under the new name named the directory this one replaced.
            self._db.execute(_PUT_VOLUME, (name, ino, policy, created_ns))

    @staticmethod
    def _volume_name(name: str) -> bytes:
        if not isinstance(name, str):
            raise InvalidArgument(f"volume name must be a string, not {type(name).__name__}")
        encoded = name.encode()
        check_name(encoded)
        return encoded

    @staticmethod
    def _volume(row: tuple[str, int, bytes, int]) -> dict[str, Any]:
        name, ino, policy, created_ns = row
        return {"name": name, "ino": ino, "policy": _unpack_dict(policy), "created_ns": created_ns}

    def _volume_row(self, name: str) -> tuple[str, int, bytes, int] | None:
        row: tuple[str, int, bytes, int] | None = self._db.execute(
            "SELECT name, ino, policy, created_ns FROM volumes WHERE name = ?", (name,)
        ).fetchone()
        return row

    @_api
    def create_volume(self, name: str, policy: dict[str, Any], *, mode: int, uid: int, gid: int) -> Attr:
        """A new top-level directory ``name`` registered as a volume with ``policy``."""
        encoded = self._volume_name(name)
        packed = self._volume_policy(policy)
        mode = self._dir_mode(mode)
        with self._write() as now:
            attr = self._make(now, ROOT_INO, encoded, mode, uid, gid, size=DIR_SIZE)
            # A row without a directory is stale by definition: the name was free.
            self._db.execute(_PUT_VOLUME, (name, attr.ino, packed, now))
            self._volume_quota(attr.ino, policy)  # its quota domain, limits from the policy
            self._log(now, "create_volume", [name, policy, mode, uid, gid, attr.ino])
        return attr

    @_api
    def adopt_volume(self, name: str, policy: dict[str, Any]) -> dict[str, Any]:
        """Register the existing top-level directory ``name`` as a volume with ``policy``."""
        encoded = self._volume_name(name)
        packed = self._volume_policy(policy)
        with self._write() as now:
            entry = self._dentry(ROOT_INO, encoded)
            if entry is None:
                raise NotFound(f"no top-level directory {name!r}")
            if not _is_dir(entry[2]):
                raise NotADirectory(f"{name!r} is not a directory")
            row = self._volume_row(name)
            if row is not None and row[1] == entry[1]:
                raise Exists(f"{name!r} is already a volume")
            self._db.execute(_PUT_VOLUME, (name, entry[1], packed, now))
            if policy.get("replication") is not None:
                queue_remark(self._db, entry[1], now)  # its existing files take the volume's factor
            self._volume_quota(entry[1], policy)  # walks the tree once to count its usage
            self._log(now, "adopt_volume", [name, policy, entry[1]])
            return self._volume((name, entry[1], packed, now))

    @_api
    def get_volume(self, name: str) -> dict[str, Any] | None:
        """``{"name", "ino", "policy", "created_ns"}`` of a registered volume, else None."""
        row = self._volume_row(name)
        return None if row is None else self._volume(row)

    @_api
    def list_volumes(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT name, ino, policy, created_ns FROM volumes ORDER BY name").fetchall()
        return [self._volume(row) for row in rows]

    @_api
    def update_volume(self, name: str, policy: dict[str, Any]) -> dict[str, Any]:
        packed = self._volume_policy(policy)
        with self._write() as now:
            old = self._volume_row(name)
            row = self._db.execute(
                "UPDATE volumes SET policy = ? WHERE name = ? RETURNING name, ino, policy, created_ns",
                (packed, name),
            ).fetchone()
            if row is None or old is None:
                raise NotFound(f"no volume {name!r}")
            if _unpack_dict(old[2]).get("replication") != policy.get("replication"):
                # The chunks already written there need the new factor (daemon/meta/remark.py).
                queue_remark(self._db, row[1], now)
            self._volume_quota(row[1], policy)  # the quota row follows the policy, same transaction
            self._log(now, "update_volume", [name, policy])
            return self._volume(row)

    @_api
    def delete_volume(self, name: str, *, remove_dir: bool) -> None:
        """Unregister volume ``name``; ``remove_dir`` also removes its (empty) directory."""
        with self._write() as now:
            row = self._volume_row(name)
            if row is None:
                raise NotFound(f"no volume {name!r}")
            self._db.execute("DELETE FROM volumes WHERE name = ?", (name,))
            entry = self._dentry(ROOT_INO, name.encode())
            if remove_dir and entry is not None and entry[1] == row[1]:
                if self._has_children(entry[1]):
                    raise NotEmpty(f"volume {name!r} is not empty")
                self._del_dentry(entry[0])
                self._touch_dir(ROOT_INO, now, -1)
                self._set_nlink(entry[1], 0, now)
            elif entry is not None and _unpack_dict(row[2]).get("replication") is not None:
                queue_remark(self._db, entry[1], now)  # a kept directory falls back to the default
            self._log(now, "delete_volume", [name, remove_dir])
