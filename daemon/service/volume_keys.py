"""The master key and the volumes' data keys on a daemon that serves metadata (dfs/core/keys.py).

The master key comes from ``DFS_MASTER_KEY`` (hex or base64; it wins) or from
``[storage] master_key_file`` (default ``<data dir>/master.key``, 32 raw bytes,
mode 0600, made on the founder's first start; a file readable by group or
others is refused).  ``master.key.old`` (the key before the last rotation) and
``master.key.new`` (a rotation cut short) are loaded too, so every row opens
whichever of them wrapped it.

Only daemons serving metadata hold it: mounts and secondaries get the data keys
they need from the primary (``keys.volumes``).  Daemons sharing PostgreSQL
metadata take it from each other (daemon/service/master_key_sync.py).  A new
master key is made only for metadata that names none (no recorded fingerprint,
no wrapped row): a daemon never makes one over data keys wrapped under a key it
lacks, and with SQLite (no peer to take it from) it refuses to start instead.
Key bytes are never logged, only fingerprints.  Every method here that touches
metadata runs in the metadata thread; the key files change only in the event
loop's tasks holding the sync's lock (rotation, following a peer's rotation).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.meta import MetaStore
from daemon.meta.volume_keys import KeyRow
from dfs.core import keys
from dfs.core.errors import ConfigError, Unavailable
from dfs.files import fsync_dir, write_private

log = logging.getLogger(__name__)

_LOSS_WARNING = (
    "Losing the master key loses every encrypted volume's data: keep a copy of it "
    "(and of master.key.old until older metadata backups expire) somewhere safe."
)


def _read_key_file(path: Path) -> bytes | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(
            f"{path}: readable by group or others (mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it"
        )
    data = path.read_bytes()
    return data if len(data) == keys.KEY_BYTES else keys.parse_master_key(data)


class MasterKeys:
    """The master key (``current``) and the older/newer ones rows may still be wrapped with."""

    def __init__(self, path: Path, *, create: bool, env: Mapping[str, str] | None = None) -> None:
        self.path = path
        env = os.environ if env is None else env
        self.from_env = bool(env.get(keys.MASTER_KEY_ENV))
        self.by_fp: dict[str, bytes] = {}
        self.current: bytes | None = None
        # The key before the last rotation (master.key.old), which peers copy along.
        self.previous: bytes | None = None
        for extra in (self._old, self._new):
            key = _read_key_file(extra)
            if key is not None:
                self.by_fp[keys.fingerprint(key)] = key
                if extra == self._old:
                    self.previous = key
        if self.from_env:
            self.current = keys.parse_master_key(env[keys.MASTER_KEY_ENV])
        else:
            self.current = _read_key_file(path)
            if self.current is None and create:
                self.current = keys.new_key()
                path.parent.mkdir(parents=True, exist_ok=True)
                write_private(path, self.current)
        if self.current is not None:
            self.by_fp[keys.fingerprint(self.current)] = self.current

    @classmethod
    def none(cls) -> MasterKeys:
        """No master key (a daemon that serves no metadata: it forwards keys.* to the primary)."""
        self = cls.__new__(cls)
        self.path = Path("/nonexistent/master.key")
        self.from_env = False
        self.by_fp = {}
        self.current = None
        self.previous = None
        return self

    @property
    def fingerprint(self) -> str | None:
        return keys.fingerprint(self.current) if self.current is not None else None

    @property
    def source(self) -> str:
        if self.from_env:
            return "environment"
        return str(self.path) if self.current is not None else "none"

    def adopt(self, key: bytes, previous: bytes | None) -> None:
        """Make ``key`` (a peer's current master key) this daemon's, in its key files: the key
        it replaces (else the peer's ``previous``) becomes master.key.old, as after a rotation
        here.  Each file is replaced atomically (tmp file, fsync, rename, directory fsync),
        master.key.old first: a crash in between leaves the old key current, and the next
        check adopts again.  Blocking: run it in a thread."""
        if self.from_env:
            raise ConfigError(f"the master key comes from ${keys.MASTER_KEY_ENV}: not replacing it")
        if len(key) != keys.KEY_BYTES:
            raise ConfigError("a peer's master key is malformed")
        if key == self.current:
            return
        old = self.current if self.current is not None else previous
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if old is not None and old != key:
            write_private(self._old, old)
            self.by_fp[keys.fingerprint(old)] = old
            self.previous = old
        write_private(self.path, key)
        self.by_fp[keys.fingerprint(key)] = key
        self.current = key

    def promote_new(self) -> None:
        """A rotation's last step, once its transaction committed: master.key -> .old,
        master.key.new -> master.key.  Blocking: run it in a thread."""
        os.replace(self.path, self._old)
        os.replace(self._new, self.path)
        fsync_dir(self.path.parent)

    @property
    def _old(self) -> Path:
        return self.path.with_name(self.path.name + ".old")

    @property
    def _new(self) -> Path:
        return self.path.with_name(self.path.name + ".new")

    def require(self) -> bytes:
        if self.current is None:
            raise Unavailable(
                f"this daemon has no master key ({self.path} or ${keys.MASTER_KEY_ENV}) to serve "
                "encrypted volumes: a daemon sharing the metadata takes it from a peer; otherwise "
                "put the founder's master.key there"
            )
        return self.current

    def __repr__(self) -> str:  # never the key bytes
        return f"MasterKeys({self.path}, fingerprints={sorted(self.by_fp)})"


def open_master_keys(
    path: Path, store: MetaStore | None, *, founder: bool, shared: bool, env: Mapping[str, str] | None = None
) -> MasterKeys:
    """The master keys of a daemon that serves ``store`` (None: it serves no metadata).

    The founder makes a key only when the metadata names none.  Metadata naming keys this
    daemon lacks: with SQLite it refuses to start (nobody could give it the key); a daemon
    sharing the metadata starts and takes it from a peer (master_key_sync.py)."""
    if store is None:
        return MasterKeys.none()
    recorded, row_fps = store.master_state()
    named = set(row_fps) | ({recorded} if recorded is not None else set())
    master = MasterKeys(path, create=founder and not named, env=env)
    missing = sorted(named - set(master.by_fp))
    if missing and not shared:
        raise ConfigError(
            f"the metadata holds volume data keys wrapped under master key {', '.join(missing)}, "
            f"which this daemon lacks ({path} or ${keys.MASTER_KEY_ENV} holds "
            f"{master.fingerprint or 'none'}): put that master.key back (mode 0600) or set "
            f"${keys.MASTER_KEY_ENV}; refusing to start rather than serve encrypted volumes "
            "without their keys or make a new master key over them"
        )
    if missing:
        log.warning(
            "the shared metadata names master key %s, which this daemon lacks (it has %s): "
            "taking it from a peer",
            ", ".join(missing),
            master.fingerprint or "none",
        )
    return master


class VolumeKeyService:
    """The ``keys.*`` endpoints and the admin API's key creation (metadata thread only)."""

    def __init__(self, master: MasterKeys, default_level: int, meta: Any) -> None:
        self.master = master
        self.default_level = default_level
        self._meta = meta  # () -> MetaStore: the primary's store (the metadata thread's)
        # key_id -> (fingerprint it was unwrapped with, data key): unwrapping is cheap, but
        # keys.volumes is asked by every mount every few seconds.
        self._plain: dict[int, tuple[str, bytes]] = {}
        self._warned: set[int] = set()

    def seal_new(self, volume_ino: int) -> Any:
        """A sealer for MetaStore.volume_key_create: a fresh data key wrapped for ``key_id``."""
        master = self.master.require()
        master_fp = keys.fingerprint(master)

        def seal(key_id: int) -> tuple[bytes, str]:
            return keys.wrap(master, key_id, volume_ino, keys.new_key()), master_fp

        return seal

    def ensure(self, meta: MetaStore, volume_ino: int) -> int:
        """The volume's newest data key id, made now if it has none."""
        for ino, _policy, key_id in meta.volume_codecs():
            if ino == volume_ino and key_id is not None:
                return key_id
        return meta.volume_key_create(volume_ino, self.seal_new(volume_ino))

    def volume_key(self, volume: int) -> int:
        """keys.volume_key: the volume's newest data key id, made now if it has none (S3 SSE-S3;
        the volume's encryption policy is left alone)."""
        return self.ensure(self._meta(), volume)

    def _unwrap(self, row: KeyRow) -> bytes:
        key_id, volume_ino, wrapped, master_fp, _created = row
        cached = self._plain.get(key_id)
        if cached is not None and cached[0] == master_fp:
            return cached[1]
        master = self.master.by_fp.get(master_fp)
        if master is None:
            raise Unavailable(
                f"volume key {key_id} is wrapped with master key {master_fp}, which this daemon lacks"
            )
        plain = keys.unwrap(master, key_id, volume_ino, wrapped)
        self._plain[key_id] = (master_fp, plain)
        return plain

    # -- endpoints (metadata thread) -----------------------------------------------------------
    def volumes(self) -> dict[str, Any]:
        """keys.volumes: every volume's [ino, zstd level, key id to encrypt with (0: none)] and
        every data key [key id, key]; an encrypted volume without a key gets one now."""
        meta: MetaStore = self._meta()
        codecs = meta.volume_codecs()
        if any(p.get("encryption") is True and k is None for _, p, k in codecs) and self.master.current:
            for ino, policy, key_id in codecs:
                if policy.get("encryption") is True and key_id is None:
                    try:
                        self.ensure(meta, ino)
                    except Unavailable as exc:
                        # This daemon's master key is not the cluster's current one (it is
                        # following it, or its $DFS_MASTER_KEY differs): the volume stays
                        # without a key here (writes fail closed) rather than fail the answer.
                        log.warning("no data key made for volume %d: %s", ino, exc.message)
            codecs = meta.volume_codecs()
        volumes = []
        for ino, policy, key_id in codecs:
            codec = keys.codec_of_policy(policy, self.default_level, key_id)
            volumes.append([ino, codec.level, codec.key_id])
        opened = []
        for row in meta.volume_keys():
            try:
                opened.append([row[0], self._unwrap(row)])
            except (Unavailable, ConfigError) as exc:
                # Left out, not fatal: plain volumes keep working; writes and reads under this
                # key fail closed (the client knows the key id but not the key).
                if row[0] not in self._warned:  # once per key: mounts ask every few seconds
                    self._warned.add(row[0])
                    log.warning("volume key %d not served: %s", row[0], exc.message)
        return {"default_level": self.default_level, "volumes": volumes, "keys": opened}

    def status(self) -> dict[str, Any]:
        """keys.status: the master key's fingerprint and source, the cluster's current one (as
        the metadata records it), and every data key (no bytes)."""
        meta: MetaStore = self._meta()
        names = {v["ino"]: v["name"] for v in meta.list_volumes()}
        current = self.master.current
        recorded, row_fps = meta.master_state()
        return {
            "master_fingerprint": keys.fingerprint(current) if current else None,
            "cluster_fingerprint": keys.wanted_fingerprint(recorded, row_fps),
            "source": "environment" if self.master.from_env else str(self.master.path),
            "old_key_file": str(self.master._old) if self.master._old.exists() else None,
            "keys": [
                {
                    "key_id": key_id,
                    "volume_ino": ino,
                    "volume": names.get(ino),
                    "master_fingerprint": fp,
                    "created_ns": created,
                    "opens": fp in self.master.by_fp,
                }
                for key_id, ino, _w, fp, created in meta.volume_keys()
            ],
            "warning": _LOSS_WARNING,
        }

    def rotate(self) -> dict[str, Any]:
        """keys.rotate in one go (the steps below; the daemon runs them from the event loop,
        master_key_sync.py)."""
        old, new = self.rotate_begin()
        count = self.rotate_commit(old, new)
        self.master.promote_new()
        return self.rotate_finish(old, new, count)

    def rotate_begin(self) -> tuple[bytes, bytes]:
        """A rotation's first step: a new master key, written to master.key.new first (a crash
        after the commit below leaves it loadable, see MasterKeys).  Blocking (a file write).
        Kept, file and all, if the commit fails: its outcome may be unknown (a lost connection)
        and the key must then survive; an unused master.key.new is harmless."""
        if self.master.from_env:
            raise ConfigError(
                f"the master key comes from ${keys.MASTER_KEY_ENV}: rotate by unsetting it "
                "(the file then serves) or rewrap offline; refusing to rotate"
            )
        old = self.master.require()
        new = keys.new_key()
        write_private(self.master._new, new)
        self.master.by_fp[keys.fingerprint(new)] = new
        return old, new

    def rotate_commit(self, old: bytes, new: bytes) -> int:
        """Metadata thread: every data key rewrapped under ``new`` and the cluster's current
        master key moved from ``old`` to ``new``, in one transaction; answers how many.  The
        key files change only after it committed (:meth:`MasterKeys.promote_new`)."""
        meta: MetaStore = self._meta()
        new_fp = keys.fingerprint(new)

        def rewrap(row: KeyRow) -> tuple[bytes, str]:
            return keys.wrap(new, row[0], row[1], self._unwrap(row)), new_fp

        return meta.volume_keys_rewrap(rewrap, new_fp, keys.fingerprint(old))

    def rotate_finish(self, old: bytes, new: bytes, count: int) -> dict[str, Any]:
        """After :meth:`MasterKeys.promote_new`: the new key serves."""
        new_fp = keys.fingerprint(new)
        self.master.current = new
        self.master.previous = old
        self._plain.clear()
        log.info(
            "master key rotated: %s -> %s, %d data key(s) rewrapped", keys.fingerprint(old), new_fp, count
        )
        return {
            "old_fingerprint": keys.fingerprint(old),
            "master_fingerprint": new_fp,
            "rewrapped": count,
            "old_key_file": str(self.master._old),
            "warning": _LOSS_WARNING,
        }
