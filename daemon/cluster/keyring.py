"""The gossip keyring on disk: ``<data_dir>/gossip.keyring``.

Until an operator first changes the keyring (``dfs cluster keyring ...``), there is no file and
the keyring is one key derived from the cluster secret (:func:`dfs.core.auth.derive_key` with
purpose ``"gossip"``), so a new node needs nothing besides the secret.  Once changed, the file
holds every key and which one is the primary::

    {"version": 1, "primary": "<base64>", "keys": ["<base64>", ...]}

It is written mode 0600 under a temporary name, fsynced, renamed into place and the directory
fsynced, so a crash leaves either the old keyring or the new one, never half of one.  A node
added after a rotation needs a copy of this file (with the secret's, the derived key is gone).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from pathlib import Path
from typing import Any

from dfs.core.auth import derive_key
from dfs.core.errors import ConfigError, DfsError
from dfs.core.gossip.seal import Keyring

__all__ = ["KEYRING_FILE", "keyring_path", "load_keyring", "save_keyring"]

KEYRING_FILE = "gossip.keyring"
_FORMAT_VERSION = 1
#: A keyring file is a few hundred bytes; anything much larger is not one.
_MAX_FILE_BYTES = 64 * 1024


def keyring_path(data_dir: Path) -> Path:
    return data_dir / KEYRING_FILE


def load_keyring(data_dir: Path, secret: bytes) -> Keyring:
    """This node's gossip keyring: the file's, else the one key derived from ``secret``.

    Raises :class:`ConfigError` for a file that is not a keyring (the daemon must not start
    with keys an operator did not mean)."""
    path = keyring_path(data_dir)
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return Keyring.of(derive_key(secret, "gossip"))
    except OSError as exc:
        raise ConfigError(f"cannot read the gossip keyring {path}: {exc}") from None
    if len(raw) > _MAX_FILE_BYTES:
        raise ConfigError(f"{path}: not a gossip keyring (over {_MAX_FILE_BYTES} bytes)")
    try:
        return _from_json(json.loads(raw))
    except (ValueError, TypeError, KeyError, binascii.Error, DfsError) as exc:
        why = exc.message if isinstance(exc, DfsError) else str(exc) or type(exc).__name__
        raise ConfigError(f"{path}: not a usable gossip keyring: {why}") from None


def save_keyring(data_dir: Path, keyring: Keyring) -> None:
    """Write ``keyring`` to ``<data_dir>/gossip.keyring`` atomically, mode 0600."""
    path = keyring_path(data_dir)
    text = json.dumps(_to_json(keyring), indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def _to_json(keyring: Keyring) -> dict[str, Any]:
    return {
        "version": _FORMAT_VERSION,
        "primary": base64.b64encode(keyring.primary).decode(),
        "keys": [base64.b64encode(k).decode() for k in keyring.keys],
    }


def _from_json(doc: Any) -> Keyring:
    if not isinstance(doc, dict) or doc.get("version") != _FORMAT_VERSION:
        raise ValueError(f"expected a JSON object with version {_FORMAT_VERSION}")
    keys = doc["keys"]
    if not isinstance(keys, list):
        raise ValueError("keys must be a list")
    return Keyring([_key(k) for k in keys], _key(doc["primary"]))


def _key(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("a key must be a base64 string")
    return base64.b64decode(text, validate=True)
