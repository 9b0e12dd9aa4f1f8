"""Metadata backups: consistent dumps of the namespace, stored as replicated chunks in the cluster.

Making one.  The metadata primary (with ``[meta] engine = "postgresql"``, the daemon leading the
cluster duties) dumps its database every ``[meta] backup_interval_s`` (:mod:`daemon.meta.dump`: one
read snapshot, in a worker thread, the metadata thread never waits) into a temporary file, cuts the
dump into pieces of ``[storage] block_size`` bytes and stores each piece as a chunk with the
cluster's default R copies, every copy durable before the backup counts (a single host: in its
own chunk store).  Then it writes the backup's *manifest* into ``<data_dir>/backups/<id>.json``,
sends it to every other active node of the layout (``sys.backup_manifest``) and deletes the
temporary file: no node keeps a dump file, and a backup costs R copies of the dump however many
nodes the cluster has.  So losing the metadata host loses only the changes made since the last
backup: ``dfs meta restore`` rebuilds the metadata on a fresh host from the chunks.

The manifest says what the dump holds (rows, schema version, size, the SHA-256 of the whole
dump), the ids of its chunks in order, the piece size, the copies each chunk was stored with, and
the cluster key sealed under the cluster secret: a fresh metadata host must name chunks as
before.  Every node keeps the newest ``[meta] backup_keep`` manifests (the same number on every
node: the maker deletes the chunks of the backups it prunes, everywhere, except those a backup it
keeps still lists; two backups of a namespace that changed little share pieces).  A backup that
fails (a copy could not be made durable) deletes the pieces it stored, wherever it can reach.

Backup chunks.  Their ids are keyed by a key derived from the cluster secret for them alone
(:data:`CHUNK_KEY_PURPOSE`), not by the cluster key that names files' chunks: a backup chunk
never shares an id with a file's chunk, so garbage collection, which deletes only chunks metadata
referenced, never takes one.  No metadata references them either, so fsck, its repair and the
orphan sweep (daemon/service/upkeep.py) count every chunk a manifest on this node lists, or a
backup being made has stored, as referenced (:meth:`Backups.chunk_ids`).  The repair loop knows
only metadata's chunks: a backup chunk that lost copies (a node lost its disk) is not copied
again; the next backup, ``backup_interval_s`` later, is stored whole anew.

Using one.  ``sys.backup_read`` serves a backup's dump piece by piece (``dfs meta dump``, ``dfs
meta restore --from``): each chunk from this node's store, else from any node holding it, checked
against its id.  ``dfs meta restore`` without ``--from`` (the daemon stopped) reassembles the
dump from this host's own chunk files (dfs/cli/meta.py, which derives the same chunk-id key).
``dfsd --load-meta`` then loads it (:func:`load_offline`) into ``meta.db`` or, with PostgreSQL,
into the empty database ``[meta] dsn`` names (a load never overwrites metadata); see
:class:`MetaDb`.

Backups made before backups were chunks are a dump file, ``<id>.dfsmeta``, beside a JSON without
``chunks``: they are still listed, read, restored and pruned.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daemon.chunks import ChunkStore
from daemon.meta.dump import DumpInfo, load_dump, write_dump
from daemon.meta.store import describe_dsn
from daemon.service.cluster_runner import ClusterRunner
from daemon.service.threads import ChunkThreads
from dfs.client.chunks import ChunkIO
from dfs.core import codec, endpoints
from dfs.core.auth import CallerClass, derive_key
from dfs.core.backup_format import (
    CHUNK_KEY_PURPOSE,
    check_id,
    check_manifest,
    chunk_key,
    open_piece,
    piece_bytes_of,
)
from dfs.core.config import MetaConfig
from dfs.core.errors import (
    ChunkMissing,
    ConfigError,
    CorruptChunk,
    DfsError,
    Exists,
    InvalidArgument,
    NotFound,
    NotSupported,
    Unavailable,
)
from dfs.core.placement import NodeState
from dfs.core.replicas import Policy
from dfs.files import write_private
from dfs.net import credentials

log = logging.getLogger("dfs.backups")

__all__ = [
    "CHUNK_KEY_PURPOSE",
    "PIECE_BYTES",
    "BackupHandlers",
    "Backups",
    "Dumped",
    "MetaDb",
    "backup_dir",
    "check_manifest",
    "load_offline",
    "new_backup_id",
    "unseal_cluster_key",
]

DUMP_SUFFIX = ".dfsmeta"
INFO_SUFFIX = ".json"
PART_SUFFIX = ".part"
#: One backup_read carries at most this much of a dump (well under a frame).
PIECE_BYTES = 8 << 20
#: Plain bytes per backup chunk when none are given: the default ``[storage] block_size``.
DEFAULT_PIECE_BYTES = 4 << 20
_KEY_PURPOSE = "backup-cluster-key"
# A temporary dump older than this was left by a crash (a dump takes minutes, not hours).
_STALE_PART_S = 3600.0
#: How long a backup whose caller went away still spends sending its manifest and deleting the
#: pruned backups' chunks on other nodes; what is left then goes to their orphan sweeps.
_AFTER_PRUNE_S = 60.0
# Chunk ids per chunk.delete call when the maker deletes pruned backups' chunks.
_DELETE_BATCH = 1000
# Times the manifests are read again when a prune removed one while they were read.
_LIST_TRIES = 20


def backup_dir(data_dir: Path) -> Path:
    return data_dir / "backups"


def new_backup_id(now_s: float | None = None) -> str:
    """A name that sorts by time: ``20261204T233100.123Z`` (UTC)."""
    t = time.time() if now_s is None else now_s
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def check_read(backup_id: Any, offset: Any, size: Any) -> None:
    """The arguments of ``sys.backup_read``, checked before any file or chunk is touched."""
    check_id(backup_id)
    if type(offset) is not int or offset < 0:
        raise InvalidArgument("backup read: bad offset")
    if type(size) is not int or not 0 < size <= PIECE_BYTES:
        raise InvalidArgument(f"backup read: size must be 1..{PIECE_BYTES}")


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


@dataclass(frozen=True)
class Dumped:
    """The dump of a backup being made, in a temporary file, and its manifest so far."""

    path: Path
    #: The manifest without what storing the pieces decides (chunks, piece_bytes, replicas).
    info: dict[str, Any]
    piece_bytes: int

    @property
    def pieces(self) -> int:
        return -(-int(self.info["dump_bytes"]) // self.piece_bytes)

    def piece_range(self, index: int) -> tuple[int, int]:
        """(offset, bytes) of piece ``index`` in the dump."""
        start = index * self.piece_bytes
        return start, min(self.piece_bytes, int(self.info["dump_bytes"]) - start)

    def manifest(self, chunk_ids: list[bytes], replicas: int) -> dict[str, Any]:
        return {
            **self.info,
            "piece_bytes": self.piece_bytes,
            "chunks": [cid.hex() for cid in chunk_ids],
            "replicas": replicas,
        }


@dataclass
class Backups:
    """One node's backup manifests (and old backups' dump files), and the pieces of a backup
    being made.  Blocking: call from a worker thread (thread-safe)."""

    data_dir: Path
    secret: bytes
    node_id: str
    keep: int
    #: Plain bytes per chunk of a new backup: the cluster's ``[storage] block_size``.
    piece_bytes: int = DEFAULT_PIECE_BYTES
    chunk_key: bytes = field(init=False, repr=False)
    # Chunks a backup being made has stored (or is storing) before its manifest exists here.
    _pending: set[bytes] = field(init=False, repr=False, default_factory=set)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.chunk_key = chunk_key(self.secret)

    @property
    def dir(self) -> Path:
        return backup_dir(self.data_dir)

    # -- making a backup -------------------------------------------------------------------------
    def dump(self, db: MetaDb | Path, cluster_key: bytes) -> Dumped:
        """Dump the metadata database ``db`` (a path: a SQLite file) into a temporary file: the
        first step of a new backup (then :meth:`piece` each piece, store it, :meth:`add`)."""
        source = _meta_db(db)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        backup_id = new_backup_id()
        part = self.dir / (backup_id + DUMP_SUFFIX + PART_SUFFIX)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # Not fsynced: the file only feeds the chunks, which the chunk stores make durable,
            # and a crash leaves no backup to use it (prune removes it).
            with os.fdopen(fd, "wb", closefd=False) as out:
                dumped: DumpInfo = write_dump(source.location, out, secret=self.secret, engine=source.engine)
            info = {
                "id": backup_id,
                "created_ns": dumped.created_ns,
                "origin": self.node_id,
                "dump_bytes": os.fstat(fd).st_size,
                "file_sha256": file_sha256(part),
                "rows": dumped.total_rows,
                "schema_version": dumped.schema_version,
                "cluster_key": seal_cluster_key(self.secret, cluster_key, backup_id),
            }
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        return Dumped(part, info, self.piece_bytes)

    def piece(self, dumped: Dumped, index: int) -> tuple[bytes, bytes]:
        """Piece ``index`` of a new backup's dump as a chunk: (its id, its blob)."""
        start, size = dumped.piece_range(index)
        with dumped.path.open("rb") as f:
            f.seek(start)
            plain = f.read(size)
        if len(plain) != size:
            raise InvalidArgument(f"backup {dumped.info['id']}: the dump shrank while it was stored")
        # Not compressed again: the dump is zstd already.
        return codec.chunk_id(self.chunk_key, plain), codec.encode(plain, level=0)

    @staticmethod
    def discard(dumped: Dumped) -> None:
        """Delete a new backup's temporary dump (its pieces are chunks, or the backup failed)."""
        dumped.path.unlink(missing_ok=True)

    def hold(self, chunk_ids: Iterable[bytes]) -> None:
        """Count ``chunk_ids`` as a backup's (:meth:`chunk_ids`) until :meth:`release`: they are
        stored before the manifest that lists them is written."""
        with self._lock:
            self._pending.update(chunk_ids)

    def release(self, chunk_ids: Iterable[bytes]) -> None:
        with self._lock:
            self._pending.difference_update(chunk_ids)

    def abandon(self, chunk_ids: list[bytes]) -> list[bytes]:
        """Release the pieces of a backup that failed; those of them no manifest here lists, which
        its maker deletes.  Pieces are named by content, so one may be a kept backup's too; and
        a failure after its own manifest was written leaves that backup listed, pieces and all."""
        self.release(chunk_ids)
        listed = self.chunk_ids()
        return [cid for cid in dict.fromkeys(chunk_ids) if cid not in listed]

    def make(self, db: MetaDb | Path, cluster_key: bytes, chunks: ChunkStore) -> dict[str, Any]:
        """A new backup of ``db`` stored in ``chunks``, this host's store (a single host: one copy
        of each piece); its manifest.  The chunks only the backups pruned listed are deleted, and
        of a backup that failed, the pieces it stored."""
        dumped = self.dump(db, cluster_key)
        ids: list[bytes] = []
        try:
            for index in range(dumped.pieces):
                chunk_id, blob = self.piece(dumped, index)
                self.hold([chunk_id])
                ids.append(chunk_id)
                chunks.put(chunk_id, blob)
            info = dumped.manifest(ids, replicas=1)
            chunks.delete(self.add(info))
        except BaseException:
            try:
                chunks.delete(self.abandon(ids))
            except DfsError as exc:  # the original error is the one to report
                log.warning("pieces of a failed backup left to the orphan sweep: %s", exc.message)
            raise
        finally:
            self.discard(dumped)
            self.release(ids)
        return info

    # -- manifests -------------------------------------------------------------------------------
    def add(self, info: dict[str, Any]) -> list[bytes]:
        """Keep the manifest ``info`` (checked: it may come from another node), then prune; the
        chunk ids the pruned backups listed and no kept one does (the maker deletes them)."""
        info = check_manifest(info)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        write_private(self.dir / (info["id"] + INFO_SUFFIX), json.dumps(info, sort_keys=True).encode())
        return self.prune()

    def prune(self) -> list[bytes]:
        """Keep the ``keep`` newest complete backups; drop older ones and stale temporary files.
        The chunk ids the dropped backups listed and no kept one does."""
        complete = self.list()
        kept, dropped = complete[: self.keep], complete[self.keep :]
        doomed = {info["id"] for info in dropped}
        still = {h for info in kept for h in info.get("chunks", ())}
        freed = {h for info in dropped for h in info.get("chunks", ())} - still
        now = time.time()
        for path in self.dir.iterdir():
            name = path.name
            backup_id = name.split(DUMP_SUFFIX)[0].removesuffix(INFO_SUFFIX)
            try:
                stale_part = name.endswith(PART_SUFFIX) and now - path.stat().st_mtime > _STALE_PART_S
            except FileNotFoundError:
                continue
            if backup_id in doomed or stale_part:
                path.unlink(missing_ok=True)
        return sorted(bytes.fromhex(h) for h in freed)

    def _read(self) -> tuple[list[dict[str, Any]], bool]:
        """The complete backups here, newest first, and whether a manifest vanished while they
        were read (a prune ran).  Complete: a manifest listing its chunks, or an old backup's
        JSON beside its dump file (the JSON was written last)."""
        out: list[dict[str, Any]] = []
        vanished = False
        if not self.dir.is_dir():
            return out, vanished
        for path in sorted(self.dir.glob("*" + INFO_SUFFIX), reverse=True):
            backup_id = path.name.removesuffix(INFO_SUFFIX)
            try:
                check_id(backup_id)
            except InvalidArgument:
                continue
            try:
                info = json.loads(path.read_bytes())
            except FileNotFoundError:
                vanished = True
                continue
            except (OSError, ValueError):
                continue  # damaged: not offered (prune leaves it to the operator)
            if not isinstance(info, dict) or info.get("id") != backup_id:
                continue
            if "chunks" in info:
                try:
                    out.append(check_manifest(info))
                except InvalidArgument:
                    continue  # as damaged
            elif (self.dir / (backup_id + DUMP_SUFFIX)).exists():
                out.append(info)
        return out, vanished

    def list(self) -> list[dict[str, Any]]:
        """The complete backups here, newest first."""
        return self._read()[0]

    def info(self, backup_id: str) -> dict[str, Any]:
        for info in self.list():
            if info["id"] == backup_id:
                return info
        raise NotFound(f"no backup {backup_id} on {self.node_id}")

    def chunk_ids(self) -> set[bytes]:
        """Every chunk a backup here lists or a backup being made has stored: referenced by no
        metadata, yet no orphan (fsck and the orphan sweep keep them)."""
        # Pending ones first: a backup releases its chunks only once its manifest is written,
        # so read in this order no chunk of it falls between the two.
        with self._lock:
            ids = set(self._pending)
        for _ in range(_LIST_TRIES):
            found, vanished = self._read()
            # A prune writes the new manifest before it removes an old one: when one vanished
            # while read, the newer one (which may list the same chunks) is found on a new look.
            if not vanished:
                return ids | {bytes.fromhex(h) for info in found for h in info.get("chunks", ())}
        raise Unavailable(f"the backup manifests in {self.dir} kept changing while read")

    # -- reading a backup ------------------------------------------------------------------------
    def read_file(self, backup_id: str, offset: int, size: int) -> bytes:
        """Bytes of an old backup's dump file."""
        with (self.dir / (check_id(backup_id) + DUMP_SUFFIX)).open("rb") as f:
            f.seek(offset)
            return f.read(size)

    def open_piece(self, chunk_id: bytes, blob: bytes, plain_bytes: int) -> bytes:
        """The piece a backup chunk holds, checked (CorruptChunk if it is not that piece)."""
        return open_piece(self.chunk_key, chunk_id, blob, plain_bytes)

    def local_piece(self, chunks: ChunkStore, chunk_id: bytes, plain_bytes: int) -> bytes:
        """The piece from this node's store; ChunkMissing or CorruptChunk if it has no good copy."""
        return self.open_piece(chunk_id, chunks.get(chunk_id), plain_bytes)


def load_offline(
    data_dir: Path,
    dump_path: Path,
    info: dict[str, Any] | None,
    *,
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
        *,
        chunks: ChunkStore,
        threads: ChunkThreads,
        replicas: int,
    ) -> None:
        """``db``: the metadata database this node dumps (a path: a SQLite file); None: this
        node makes no backups (not the metadata primary).  ``replicas``: the copies each backup
        chunk gets in a cluster (``[cluster] replicas``, the default R)."""
        self._backups = backups
        self._runner = runner
        self._db = None if db is None else _meta_db(db)
        self._cluster_key = cluster_key
        self._chunks = chunks
        self._c = threads.run
        self._replicas = replicas
        self._lock = trio.Lock()  # one backup at a time
        # The piece read last, (chunk id, plain bytes): a reader asks for a piece in several
        # reads when it asks for less than a piece at a time, and must not fetch it each time.
        self._cached: tuple[bytes, bytes] | None = None

    async def backup_now(self) -> dict[str, Any]:
        """Make a backup (the primary): its chunks stored with R copies, its manifest sent to
        every other active node; then the chunks of the backups pruned deleted."""
        if self._db is None:
            raise NotSupported("backups are made by the metadata primary")
        async with self._lock:
            chunkio = self._runner.chunkio
            if chunkio is not None:
                # Where the pieces go: the layout as it is now, not as last cached.
                chunkio.set_view(await self._runner.view())
            if chunkio is None or not self._runner.clustered():
                # Not in a chunk thread: a dump may take minutes, chunk I/O must not wait for it.
                make = self._backups.make
                info = await trio.to_thread.run_sync(make, self._db, self._cluster_key(), self._chunks)
                copies: dict[str, str] = {}
            else:
                info, freed = await self._make_replicated(chunkio)
                copies = {}
                # Shielded (and bounded): the pruned manifests are gone, so copies left behind by
                # a cancelled request would wait for the orphan sweep on every node.
                with trio.CancelScope(shield=True), trio.move_on_after(_AFTER_PRUNE_S):
                    copies = await self._push(info)
                    await self._delete_everywhere(chunkio, freed)
        ctx = {"id": info["id"], "rows": info["rows"], "chunks": len(info["chunks"]), **copies}
        log.info("metadata backup made", extra={"ctx": ctx})
        return {"backup": info, "copies": copies}

    async def periodic(self) -> None:
        await self.backup_now()

    async def _make_replicated(self, chunkio: ChunkIO) -> tuple[dict[str, Any], list[bytes]]:
        """A new backup whose pieces are chunks on R nodes each; its manifest (kept here) and the
        chunk ids only the backups pruned here listed."""
        assert self._db is not None
        view = await chunkio.view()
        # Strong: every copy durable before the backup is listed anywhere.  These copies are all
        # it gets: repair knows only metadata's chunks and never copies a lost one again.
        policy = Policy(self._replicas, "strong")
        # Not in a chunk thread: a dump may take minutes, chunk I/O must not wait for it.
        dumped = await trio.to_thread.run_sync(self._backups.dump, self._db, self._cluster_key())
        ids: list[bytes] = []
        try:
            for index in range(dumped.pieces):
                chunk_id, blob = await self._c(self._backups.piece, dumped, index)
                self._backups.hold([chunk_id])
                ids.append(chunk_id)
                await chunkio.put(chunk_id, blob, policy)
            info = dumped.manifest(ids, view.replica_count(self._replicas))
            # From here on no manifest lists the pruned backups' chunks: this node's copies go in
            # the same thread call, so a cancelled request (its caller gone) cannot leak them.
            freed = await self._c(self._add_and_free, info)
        except BaseException:
            # The pieces stored so far (some copies of a put that failed too) are deleted where
            # they can be, now: the orphan sweep would keep them for a whole orphan_delay_s.
            with trio.CancelScope(shield=True), trio.move_on_after(_AFTER_PRUNE_S):
                try:
                    await self._delete_everywhere(chunkio, await self._c(self._backups.abandon, ids))
                except DfsError as exc:  # the original error is the one to report
                    log.warning("pieces of a failed backup left to the orphan sweep: %s", exc.message)
            raise
        finally:
            with trio.CancelScope(shield=True):
                await self._c(self._backups.discard, dumped)
            self._backups.release(ids)
        return info, freed

    def _add_and_free(self, info: dict[str, Any]) -> list[bytes]:
        freed = self._backups.add(info)
        self._chunks.delete(freed)
        return freed

    async def _push(self, info: dict[str, Any]) -> dict[str, str]:
        """Send manifest ``info`` to every other active node; each node's outcome in a word or line."""
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
                await chunkio.call_node(node.node_id, endpoints.SYS_BACKUP_MANIFEST, info)
                outcome[node.node_id] = "copied"
            except DfsError as exc:
                outcome[node.node_id] = f"not copied: {exc.message}"
        return outcome

    async def _delete_everywhere(self, chunkio: ChunkIO, chunk_ids: list[bytes]) -> None:
        """Delete the chunks only pruned backups listed on every reachable layout node.  A node
        that misses it sweeps them as orphans later: no manifest lists them any more."""
        for i in range(0, len(chunk_ids), _DELETE_BATCH):
            await chunkio.delete_everywhere(chunk_ids[i : i + _DELETE_BATCH])

    async def backup_list(self) -> list[dict[str, Any]]:
        return await self._c(self._backups.list)

    async def backup_read(self, backup_id: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of backup ``backup_id``'s dump from ``offset``; of a chunked
        backup never past the end of the piece ``offset`` is in (a reader reads on)."""
        check_read(backup_id, offset, size)
        info = await self._c(self._backups.info, backup_id)
        if "chunks" not in info:
            return await self._c(self._backups.read_file, backup_id, offset, size)
        if offset >= info["dump_bytes"]:
            return b""
        index = offset // info["piece_bytes"]
        plain = await self._piece(bytes.fromhex(info["chunks"][index]), piece_bytes_of(info, index))
        start = offset - index * info["piece_bytes"]
        return plain[start : start + size]

    async def _piece(self, chunk_id: bytes, plain_bytes: int) -> bytes:
        """A backup chunk's piece: from this node's store, else from any node holding a copy."""
        cached = self._cached
        if cached is not None and cached[0] == chunk_id:
            return cached[1]
        plain: bytes
        try:
            plain = await self._c(self._backups.local_piece, self._chunks, chunk_id, plain_bytes)
        except (ChunkMissing, CorruptChunk):
            chunkio = self._runner.chunkio
            if chunkio is None or not self._runner.clustered():
                raise

            async def check(blob: bytes) -> bytes:
                piece: bytes = await self._c(self._backups.open_piece, chunk_id, blob, plain_bytes)
                return piece

            # A copy that fails the check is skipped and the next node asked.
            plain = await chunkio.get_plain(chunk_id, check)
        self._cached = (chunk_id, plain)
        return plain

    async def backup_manifest(self, info: dict[str, Any]) -> None:
        """Keep the manifest of a backup another node made (and prune; the maker deletes the
        chunks of the backups pruned).

        The layout is read again too: it must name every node the backup's pieces went to, for
        a restore through this node after the primary is gone goes by the last layout read.
        """
        await self._c(self._backups.add, info)
        try:
            await self._runner.reread_layout()
        except DfsError as exc:
            log.warning("layout not read after a backup manifest: %s", exc.message)
