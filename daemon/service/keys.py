"""The secrets a data directory keeps in files: the cluster key and the root S3 key pair.

Each is made once, on first start, and written mode 0600 under a temporary
name, fsynced, then renamed into place, so a crash never leaves half a key.
(The admin API's bearer token is made the same way by daemon/admin, which owns
its format.)
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from dfs.core.errors import DfsError
from dfs.files import write_private


class ClusterKey:
    """The cluster key that keys chunk ids (``cluster.key``, 32 bytes).

    The metadata primary creates it.  A secondary takes the primary's (chunk ids
    must agree across the cluster): on first start it has none (``value`` is
    empty) until :meth:`adopt`; later starts check it still matches.
    """

    def __init__(self, path: Path, *, create: bool) -> None:
        self.path = path
        self.value = _load_or_create_secret(path) if create else (_load_secret(path) or b"")

    def adopt(self, key: bytes) -> None:
        """Take the primary's key; refuse one that differs from the key this directory has."""
        if self.value and self.value != key:
            raise DfsError(
                f"{self.path} differs from the primary's: this data directory belongs to another cluster"
            )
        if not self.value:
            write_private(self.path, key)
            self.value = key


def _load_or_create_secret(path: Path) -> bytes:
    key = _load_secret(path)
    if key is None:
        key = secrets.token_bytes(32)
        write_private(path, key)
    return key


def _load_secret(path: Path) -> bytes | None:
    """The cluster key if this data directory has one (a secondary gets it from the primary)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) != 32:
        raise DfsError(f"{path} is corrupt: expected 32 bytes, found {len(data)}")
    return data


def load_or_create_root_key(path: Path) -> tuple[str, str]:
    """The root S3 key pair (``s3-root.json``: access_key, secret_key), created once, mode 0600."""
    try:
        raw = json.loads(path.read_text())
        return str(raw["access_key"]), str(raw["secret_key"])
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as exc:
        raise DfsError(f"{path} is corrupt: {exc}") from None
    access_key, secret_key = new_s3_key()
    write_private(
        path, (json.dumps({"access_key": access_key, "secret_key": secret_key}, indent=2) + "\n").encode()
    )
    return access_key, secret_key


def new_s3_key() -> tuple[str, str]:
    """A fresh (access key, secret key) pair in AWS's shapes: 20 upper-case characters, 40 base64."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    access_key = "DFS" + "".join(secrets.choice(alphabet) for _ in range(17))
    return access_key, secrets.token_urlsafe(30)[:40]
