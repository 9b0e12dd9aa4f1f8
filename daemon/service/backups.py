"""Metadata backups: consistent dumps of the namespace, kept on every node.

The metadata primary dumps its database (:mod:`daemon.meta.dump`: one read snapshot, in a worker
thread, the metadata thread never waits) into ``<data_dir>/backups/<id>.dfsmeta`` every
``[meta] backup_interval_s``, and sends the file to every other active node of the layout, which
keeps it the same way.  So losing the metadata host loses only the changes made since the last
backup: ``dfs meta restore`` rebuilds ``meta.db`` on a fresh host from any surviving copy.  With
``[meta] engine = "postgresql"`` the dump reads the database ``[meta] dsn`` names, and a restore
or load fills that database (which must be empty: a load never overwrites metadata); see
:class:`MetaDb`.

Each backup is two files: the dump, and ``<id>.json`` beside it, written last, which makes the
backup complete (a dump without it is an interrupted one, removed by the next prune).  The JSON
says what the dump holds, the SHA-256 of the file's bytes (checked on every copy received), and
the cluster key sealed under the cluster secret: a fresh metadata host must name chunks as before.
Each node keeps the ``[meta] backup_keep`` newest backups.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daemon.meta.dump import DumpInfo, load_dump, write_dump
from daemon.meta.store import describe_dsn
from daemon.service.cluster_runner import ClusterRunner
from dfs.core import endpoints
from dfs.core.auth import CallerClass, derive_key
from dfs.core.config import MetaConfig
from dfs.core.errors import ConfigError, DfsError, Exists, InvalidArgument, NotFound, NotSupported
from dfs.core.placement import NodeState
from dfs.files import write_private
from dfs.net import credentials

log = logging.getLogger("dfs.backups")

__all__ = [
    "PIECE_BYTES",
    "BackupHandlers",
    "Backups",
    "MetaDb",
    "backup_dir",
    "load_offline",
    "new_backup_id",
    "unseal_cluster_key",
]

DUMP_SUFFIX = ".dfsmeta"
INFO_SUFFIX = ".json"
PART_SUFFIX = ".part"
#: One backup_read / backup_put carries at most this much of a dump (well under a frame).
PIECE_BYTES = 8 << 20
_ID = re.compile(r"^\d{8}T\d{6}\.\d{3}Z$")
_KEY_PURPOSE = "backup-cluster-key"


def backup_dir(data_dir: Path) -> Path:
    return data_dir / "backups"


def new_backup_id(now_s: float | None = None) -> str:
    """A name that sorts by time: ``20261204T233100.123Z`` (UTC)."""
    t = time.time() if now_s is None else now_s
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def check_id(backup_id: Any) -> str:
    """``backup_id`` if it is one (it names files: nothing else may pass)."""
    if not isinstance(backup_id, str) or not _ID.match(backup_id):
        raise InvalidArgument(f"not a backup id: {str(backup_id)[:40]!r}")
    return backup_id


def seal_cluster_key(secret: bytes, cluster_key: bytes, backup_id: str) -> str:
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(derive_key(secret, _KEY_PURPOSE)).encrypt(nonce, cluster_key, backup_id.encode())
    return base64.b64encode(nonce + sealed).decode()


def unseal_cluster_key(secret: bytes, info: dict[str, Any]) -> bytes:
    """The cluster key a backup's JSON carries; ConfigError if the secret is not the cluster's."""
    try:
        raw = base64.b64decode(info["cluster_key"], validate=True)
        key: bytes = AESGCM(derive_key(secret, _KEY_PURPOSE)).decrypt(
            raw[:12], raw[12:], str(info["id"]).encode()
        )
    except (InvalidTag, KeyError, ValueError, TypeError):
        raise ConfigError(
            f"backup {info.get('id')!r} was not made by this cluster (another secret)"
        ) from None
    return key


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class MetaDb:
    """Where a node's metadata lives: ``meta.db`` in its data directory (SQLite), or the
    PostgreSQL database of ``[meta] dsn``.  Its messages name it by :meth:`describe`, which never
    shows a password."""

    engine: str
    #: The SQLite file, or the libpq connection string (kept out of repr: it may hold a password).
    location: str = field(repr=False)

    @classmethod
    def sqlite(cls, data_dir: Path) -> MetaDb:
        return cls("sqlite", str(data_dir / "meta.db"))

    @classmethod
    def of(cls, data_dir: Path, meta: MetaConfig) -> MetaDb:
        """The metadata database a node with this data directory and ``[meta]`` section uses."""
        if meta.engine == "postgresql":
            return cls("postgresql", meta.dsn)
        return cls.sqlite(data_dir)

    def describe(self) -> str:
        return self.location if self.engine == "sqlite" else describe_dsn(self.location)


def _meta_db(db: MetaDb | Path) -> MetaDb:
    """A bare path is a SQLite file."""
    return db if isinstance(db, MetaDb) else MetaDb("sqlite", str(db))


@dataclass
class Backups:
    """One node's backup directory.  Blocking: call from a worker thread."""

    data_dir: Path
    secret: bytes
    node_id: str
    keep: int

    @property
    def dir(self) -> Path:
        return backup_dir(self.data_dir)

    def make(self, db: MetaDb | Path, cluster_key: bytes) -> dict[str, Any]:
        """Dump the metadata database ``db`` (a path: a SQLite file) into a new backup; its JSON
        (see the module docstring)."""
        source = _meta_db(db)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        backup_id = new_backup_id()
        final = self.dir / (backup_id + DUMP_SUFFIX)
        part = final.with_name(final.name + PART_SUFFIX)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as out:
                dumped: DumpInfo = write_dump(source.location, out, secret=self.secret, engine=source.engine)
            os.fsync(fd)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        os.rename(part, final)
        info = {
            "id": backup_id,
            "created_ns": dumped.created_ns,
            "origin": self.node_id,
            "dump_bytes": final.stat().st_size,
            "file_sha256": file_sha256(final),
            "rows": dumped.total_rows,
            "schema_version": dumped.schema_version,
            "cluster_key": seal_cluster_key(self.secret, cluster_key, backup_id),
        }
        self._finish(backup_id, info)
        return info

    def _finish(self, backup_id: str, info: dict[str, Any]) -> None:
        write_private(self.dir / (backup_id + INFO_SUFFIX), json.dumps(info, sort_keys=True).encode())
        self.prune()

    def list(self) -> list[dict[str, Any]]:
        """The complete backups here, newest first."""
        out: list[dict[str, Any]] = []
        if not self.dir.is_dir():
            return out
        for path in sorted(self.dir.glob("*" + INFO_SUFFIX), reverse=True):
            if not _ID.match(path.name.removesuffix(INFO_SUFFIX)):
                continue
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # damaged: not offered (prune leaves it to the operator)
            if (self.dir / (info["id"] + DUMP_SUFFIX)).exists():
                out.append(info)
        return out

    def info(self, backup_id: str) -> dict[str, Any]:
        for info in self.list():
            if info["id"] == backup_id:
                return info
        raise NotFound(f"no backup {backup_id} on {self.node_id}")

    def read(self, backup_id: str, offset: int, size: int) -> bytes:
        check_id(backup_id)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidArgument("backup read: bad offset")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= PIECE_BYTES:
            raise InvalidArgument(f"backup read: size must be 1..{PIECE_BYTES}")
        self.info(backup_id)  # complete backups only
        with (self.dir / (backup_id + DUMP_SUFFIX)).open("rb") as f:
            f.seek(offset)
            return f.read(size)

    def put(self, backup_id: str, offset: int, data: bytes, info: dict[str, Any] | None) -> None:
        """Receive one piece of another node's backup, in order; ``info`` with the last piece
        completes it once the file's SHA-256 matches."""
        check_id(backup_id)
        if not isinstance(data, bytes) or len(data) > PIECE_BYTES:
            raise InvalidArgument("backup put: bad piece")
        self.dir.mkdir(mode=0o700, exist_ok=True)
        part = self.dir / (backup_id + DUMP_SUFFIX + PART_SUFFIX)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if offset == 0 else 0)
        fd = os.open(part, flags, 0o600)
        try:
            if os.fstat(fd).st_size != offset:
                raise InvalidArgument(f"backup put: piece at {offset}, expected {os.fstat(fd).st_size}")
            os.lseek(fd, offset, os.SEEK_SET)
            os.write(fd, data)
            if info is not None:
                os.fsync(fd)
        finally:
            os.close(fd)
        if info is None:
            return
        if not isinstance(info, dict) or info.get("id") != backup_id:
            raise InvalidArgument("backup put: the description names another backup")
        if file_sha256(part) != info.get("file_sha256"):
            part.unlink(missing_ok=True)
            raise InvalidArgument(f"backup put: {backup_id} arrived damaged (checksum differs)")
        os.rename(part, self.dir / (backup_id + DUMP_SUFFIX))
        self._finish(backup_id, dict(info))

    def prune(self) -> None:
        """Keep the ``keep`` newest complete backups; drop older ones and stale pieces."""
        complete = [info["id"] for info in self.list()]
        doomed = set(complete[self.keep :])
        now = time.time()
        for path in self.dir.iterdir():
            name = path.name
            backup_id = name.split(DUMP_SUFFIX)[0].removesuffix(INFO_SUFFIX)
            stale_part = name.endswith(PART_SUFFIX) and now - path.stat().st_mtime > 3600
            if backup_id in doomed or stale_part:
                path.unlink(missing_ok=True)


def load_offline(
    data_dir: Path,
    dump_path: Path,
    info: dict[str, Any] | None,
    *,
    inline_max: int,
    block_size: int,
    meta: MetaDb | None = None,
) -> str:
    """Load a dump into this node's metadata database (``dfsd --load-meta``; the daemon is
    stopped and holds no lock on the directory): ``<data_dir>/meta.db``, which must not exist,
    or ``meta`` (:meth:`MetaDb.of` the node's config), e.g. an empty PostgreSQL database, which
    a load refuses unless it is empty.  ``info`` (a backup's JSON) also restores the cluster key,
    which names chunks, when this host has none.  What was done, in one line."""
    target = meta if meta is not None else MetaDb.sqlite(data_dir)
    if target.engine == "sqlite" and Path(target.location).exists():
        raise Exists(f"{target.location} exists: move it away first (a load never overwrites metadata)")
    node_file = data_dir / credentials.FILE_NAMES[CallerClass.NODE]
    if not node_file.exists():
        raise ConfigError(
            f"{node_file} is missing: copy node.credential from any member of the cluster first"
        )
    secret = credentials.load(node_file).secret
    assert secret is not None
    key_file = data_dir / "cluster.key"
    cluster_key = unseal_cluster_key(secret, info) if info is not None else None
    if cluster_key is not None and key_file.exists() and key_file.read_bytes() != cluster_key:
        raise ConfigError(f"{key_file} differs from the backup's: this host belongs to another cluster")
    with dump_path.open("rb") as f:
        loaded = load_dump(
            f,
            target.location,
            secret=secret,
            inline_max=inline_max,
            block_size=block_size,
            engine=target.engine,
        )
    if cluster_key is not None and not key_file.exists():
        write_private(key_file, cluster_key)
    source = f"backup {info['id']}" if info is not None else str(dump_path)
    return f"loaded {loaded.total_rows} rows from {source} into {target.describe()}"


class BackupHandlers:
    """The ``sys.backup_*`` endpoints, and the primary's periodic backup."""

    def __init__(
        self,
        backups: Backups,
        runner: ClusterRunner,
        db: MetaDb | Path | None,
        cluster_key: Callable[[], bytes],
    ) -> None:
        """``db``: the metadata database this node dumps (a path: a SQLite file); None: this
        node makes no backups (not the metadata primary)."""
        self._backups = backups
        self._runner = runner
        self._db = None if db is None else _meta_db(db)
        self._cluster_key = cluster_key
        self._lock = trio.Lock()  # one backup at a time

    async def backup_now(self) -> dict[str, Any]:
        """Make a backup (the primary) and copy it to every other active node."""
        if self._db is None:
            raise NotSupported("backups are made by the metadata primary")
        async with self._lock:
            info = await trio.to_thread.run_sync(self._backups.make, self._db, self._cluster_key())
            copies = await self._push(info)
        log.info("metadata backup made", extra={"ctx": {"id": info["id"], "rows": info["rows"], **copies}})
        return {"backup": info, "copies": copies}

    async def periodic(self) -> None:
        await self.backup_now()

    async def _push(self, info: dict[str, Any]) -> dict[str, str]:
        """Send backup ``info`` to every other active node; each node's outcome in a word or line."""
        chunkio = self._runner.chunkio
        if chunkio is None:
            return {}
        view = await self._runner.view()
        outcome: dict[str, str] = {}
        me = self._backups.node_id
        for node in view.layout.nodes:
            if node.node_id == me or node.state is not NodeState.ACTIVE:
                continue
            try:
                offset = 0
                while True:
                    piece = await trio.to_thread.run_sync(self._backups.read, info["id"], offset, PIECE_BYTES)
                    last = offset + len(piece) >= info["dump_bytes"]
                    await chunkio.call_node(
                        node.node_id,
                        endpoints.SYS_BACKUP_PUT,
                        info["id"],
                        offset,
                        piece,
                        info if last else None,
                    )
                    offset += len(piece)
                    if last:
                        break
                outcome[node.node_id] = "copied"
            except DfsError as exc:
                outcome[node.node_id] = f"not copied: {exc.message}"
        return outcome

    async def backup_list(self) -> list[dict[str, Any]]:
        return await trio.to_thread.run_sync(self._backups.list)

    async def backup_read(self, backup_id: str, offset: int, size: int) -> bytes:
        return await trio.to_thread.run_sync(self._backups.read, backup_id, offset, size)

    async def backup_put(
        self, backup_id: str, offset: int, data: bytes, info: dict[str, Any] | None = None
    ) -> None:
        await trio.to_thread.run_sync(self._backups.put, backup_id, offset, data, info)
