"""Credential files: where a daemon keeps them, and where a mount or the CLI finds one.

A daemon's data directory holds three, each one line (:meth:`Credential.to_text`), mode 0600:

- ``node.credential``: the cluster secret.  The first daemon of a cluster makes it; a host
  joining the cluster gets it by copying this one file (the README's cluster recipe).
- ``admin.credential`` and ``client.credential``: derived from it and rewritten by the
  daemon at every start, for the CLI and for mounts.

Callers look in ``[rpc] credential_file`` when it is set, else in the daemon's data
directory and then ``/etc/dfs`` (a service install), taking the first file they can read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from dfs.core.auth import CallerClass, Credential, new_cluster_secret
from dfs.core.config import Config
from dfs.core.errors import AuthFailed, ConfigError
from dfs.files import write_private

__all__ = ["FILE_NAMES", "SERVICE_DIR", "daemon_secret", "find", "load", "write"]

FILE_NAMES: dict[CallerClass, str] = {cls: f"{cls.value}.credential" for cls in CallerClass}
SERVICE_DIR = Path("/etc/dfs")


def load(path: Path) -> Credential:
    """The credential in ``path``; refuses a file others may read (as ssh does with keys)."""
    try:
        with path.open() as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read(4096)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such credential file") from None
    except PermissionError:
        raise AuthFailed(f"{path}: not readable by this user") from None
    if stat.S_IMODE(mode) & 0o077:
        raise AuthFailed(f"{path}: readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    return Credential.from_text(text, str(path))


def write(path: Path, credential: Credential) -> None:
    """Write ``credential`` to ``path``, mode 0600, atomically (dfs/files.py)."""
    write_private(path, credential.to_text().encode())


def daemon_secret(data_dir: Path, *, joining: bool) -> bytes:
    """The cluster secret of the daemon on ``data_dir``, writing the derived credentials.

    The first daemon of a cluster makes the secret.  One ``joining`` a cluster must be given
    it: making its own would only lock it out, so it refuses to start and says how."""
    node_file = data_dir / FILE_NAMES[CallerClass.NODE]
    if node_file.exists():
        node = load(node_file)
    elif joining:
        raise ConfigError(
            f"{node_file} is missing: this daemon joins a cluster ([cluster] meta is set), so it"
            " needs the cluster secret.  Copy node.credential from the data"
            f" directory of any member to {node_file} (mode 0600)."
        )
    else:
        node = Credential.of_secret(new_cluster_secret())
        write(node_file, node)
    assert node.secret is not None
    if node.caller is not CallerClass.NODE:
        raise ConfigError(f"{node_file} holds a {node.caller.value} credential, not the cluster secret")
    for cls in (CallerClass.ADMIN, CallerClass.CLIENT):
        derived = Credential.derived(node.secret, cls)
        path = data_dir / FILE_NAMES[cls]
        try:
            if load(path) == derived:
                continue
        except (ConfigError, AuthFailed):
            pass  # missing, unreadable or stale: write it afresh
        write(path, derived)
    return node.secret


def find(
    cfg: Config, classes: Sequence[CallerClass] = (CallerClass.ADMIN, CallerClass.CLIENT)
) -> Credential | None:
    """The credential a mount or CLI command on this host proves itself with (None: none found).

    ``[rpc] credential_file`` wins when set (and must load).  Otherwise the first readable file
    of ``classes`` in the daemon's data directory, then in /etc/dfs; a node credential is used
    only when nothing else is there (it opens every door)."""
    if cfg.rpc.credential_file:
        return load(Path(cfg.rpc.credential_file).expanduser())
    names = [FILE_NAMES[cls] for cls in (*classes, CallerClass.NODE)]
    for directory in (cfg.data_path, SERVICE_DIR):
        for name in names:
            path = directory / name
            if os.access(path, os.R_OK):  # missing or another user's: try the next
                return load(path)  # a loosened mode is an error, not a reason to look further
    return None
