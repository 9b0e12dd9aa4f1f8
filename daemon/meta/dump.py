"""Portable, versioned, consistent dumps of the metadata database, and their loader.

:func:`write_dump` streams one read snapshot of the metadata database to a
file; :func:`load_dump` fills a new, empty database from one;
:func:`verify_dump` reads one through and checks everything without loading
it.  They are the core of ``dfs meta dump`` / ``dfs meta load`` and of the
automatic metadata backups.

Both engines (:mod:`daemon.meta.engine`) dump and load the same format: a
dump made from SQLite loads into PostgreSQL and the reverse, which is how a
single host moves its metadata to PostgreSQL.  What differs per engine (how
a snapshot is read, where the table and column lists and the counters come
from, how a target is prepared and its counters set) is in the small
functions of the last section; everything else is shared.

Format (version 1)::

    b"DFSMETA\x00"  u16 big-endian format version
    records, each a u32 big-endian length + that many bytes of one zstd frame (content size and
    checksum included) holding one msgpack map:
      {"kind": "header", "format": "dfs-meta-dump", "version": 1, "schema_version": N,
       "created_ns": t, "block_size": B, "tables": [name, ...]}
      per table, in the header's order:
        {"kind": "table", "table": name, "columns": [column, ...], "encrypted": {column: key column}}
        {"kind": "rows", "rows": [[value, ...], ...]}    (<= 1000 rows or about 1 MiB each)
        {"kind": "table_end", "table": name, "rows": count}
      {"kind": "sequences", "sequences": {"inodes": n, "dentries": n, "oplog": n}}
      {"kind": "end", "tables": {name: count}, "rows": total, "sha256": digest, "mac": mac}
    and nothing after the end record.

A frame per record (rather than one frame for the whole stream) lets a reader
see exactly where the input ends, even inside zstd's epilogue, and check a
record's size before decompressing it; each batch is large enough to compress
well alone.  Values are msgpack nil, integers, floats, str and bin (SQLite's
NULL, INTEGER, REAL, TEXT and BLOB), so nothing in a dump is SQLite's own and
a loader for another engine reads it as well (PostgreSQL's BIGINT, TEXT and
BYTEA map onto the same four).  ``sha256`` covers every record
before the end record, uncompressed, each as its u32 length + msgpack bytes;
``mac`` is HMAC-SHA256 of that digest under a key derived from the cluster
secret, so a truncated, corrupted or altered dump, or one made for another
cluster, is refused before anything is committed.  ``sequences`` holds the
highest value each counter ever handed out (inode numbers and readdir cookies
are never reused; nor are oplog sequence numbers, so the restored store's
fresh oplog continues after the dumped one's head): SQLite's
``sqlite_sequence``, PostgreSQL's identity sequences (never below the highest
row); a counter that never handed anything out is left out.

What a dump holds, table by table (:data:`DUMPED_TABLES`; a table of the
schema in neither that nor :data:`EXCLUDED_TABLES` makes :func:`write_dump`
refuse, and a test fail):

- every row of ``config``, ``dentries``, ``volumes``, ``snapshots``, ``volume_keys`` (wrapped
  data keys: the master key never enters a dump), ``nodes``, ``s3_keys``,
  ``s3_bucket_owners``, ``s3_grants``, ``admin_tokens``, ``policy_remarks``
  (a restored store continues its re-marks), ``trash`` (its files keep their names in
  the trash, so they are dumped too) and the cloud tiers' tables (``tiers``, ``tier_copies``,
  ``tier_cold``, ``tier_deletions``, ``tier_pins``: without them a restored store would not
  know which chunks live only in a tier) as it is, but for
  the engine's own bookkeeping in ``config`` (:data:`_ENGINE_CONFIG`:
  PostgreSQL's ``schema_version``, which SQLite keeps as ``PRAGMA
  user_version``; the header carries the version);
- ``inodes``, ``xattrs`` and ``blocks`` without the inodes that have no name
  left (nlink 0): they live only while a session holds them open, and
  sessions are not restored; ``chunks`` accordingly loses one reference per
  block of theirs (a chunk whose last reference that was is marked
  unreferenced at the dump's ``created_ns``).  A restored store is thus the
  store as it would be once every session ended, which is what fsck expects;
- not ``sessions``, ``opens`` (the mounts they belong to do not exist after a
  restore) nor ``oplog`` (a restored store starts a fresh one).

The ``s3_keys.secret`` column is sealed with AES-256-GCM under
``derive_key(secret, "meta-dump")``, a random nonce per value, the table,
column and access key as associated data (a sealed secret cannot be moved to
another key).  ``admin_tokens`` holds SHA-256 digests only and is dumped as is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import os
import secrets
import sqlite3
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import msgpack
import psycopg
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daemon.meta.base import _db_error
from daemon.meta.engine import ENGINES, Db, PgDb, SqliteDb, pg_sql
from daemon.meta.quotas import recompute_usage
from daemon.meta.schema import _INTERNAL_KEY, COUNTER_COLUMNS, INTERNAL_DIRS, SCHEMA_VERSION
from daemon.meta.store import (
    MetaStore,
    _connect,
    catch_up_sequences,
    describe_dsn,
    ensure_tables,
    schema_version,
)
from dfs.core.auth import derive_key
from dfs.core.config import MiB
from dfs.core.errors import (
    ConfigError,
    InternalError,
    InvalidArgument,
    NotEmpty,
    NotFound,
    from_oserror,
)
from dfs.core.namespace import ROOT_INO
from dfs.files import fsync_dir

__all__ = [
    "DUMPED_TABLES",
    "EXCLUDED_TABLES",
    "FORMAT_VERSION",
    "MAGIC",
    "DumpInfo",
    "load_dump",
    "verify_dump",
    "write_dump",
]

MAGIC = b"DFSMETA\x00"
FORMAT_VERSION = 1
_FORMAT = "dfs-meta-dump"
_PREAMBLE = struct.Struct(">8sH")
_LENGTH = struct.Struct(">I")
# Loaded in this order: config first, so a wrong block size is refused before the bulk of the rows.
DUMPED_TABLES = (
    "config",
    "inodes",
    "dentries",
    "xattrs",
    "blocks",
    "chunks",
    "volumes",
    "snapshots",
    # A build under way: its partial copy is in the dump too, and the loaded row lets the
    # snapshot duty give it up (its progress stamp is old by then).
    "snapshot_builds",
    "volume_keys",
    "nodes",
    "s3_keys",
    "s3_bucket_owners",
    "s3_grants",
    "admin_tokens",
    "policy_remarks",
    "trash",
    "s3_versioning",
    # Version inodes keep their names at versions/<ino>, so they are dumped with their rows.
    "s3_versions",
    # Object lock: the bucket configurations, and the locks of the (named) inodes they belong to.
    "s3_object_lock_config",
    "s3_object_locks",
    # After inodes: loading inodes charges no domain then, and the usage loaded is recomputed
    # at the end (the dump leaves out nameless inodes that were still charged).
    "quotas",
    "quota_chain",
    # Cloud tiers: which chunks live in which object store, and which are on no local disk.
    "tiers",
    "tier_copies",
    "tier_cold",
    "tier_deletions",
    "tier_pins",
)
EXCLUDED_TABLES = frozenset({"sessions", "opens", "oplog", "requests", "chunk_deletions"})
# The AUTOINCREMENT tables and their counted column (their sqlite_sequence rows, or on PostgreSQL
# their identity sequences, are dumped as "sequences").
_COUNTER_TABLES = tuple(COUNTER_COLUMNS)
# The oplog's counter (its head, config 'oplog_seq' when restored; see daemon/meta/oplog.py).
_OPLOG_COUNTER = "oplog"
# Config rows that are an engine's own bookkeeping, not metadata: never dumped, kept by a load.
_ENGINE_CONFIG: dict[str, tuple[str, ...]] = {"sqlite": (), "postgresql": ("schema_version",)}
# How each schema version's dump loads into this schema.  Rows go in by column name, so a
# column a dump lacks takes its default (NULL), just as ensure_tables's ALTER TABLE ADD COLUMN
# gives it; a version whose upgrade rewrites data needs its own step here.  A test fails when
# SCHEMA_VERSION moves without an entry, so the decision is never skipped.
_LOADABLE_SCHEMAS = {
    1: "chunks.replicas absent: NULL, as version 2's ALTER TABLE gives",
    2: "inodes.quota absent: NULL; the store gives each volume its quota domain at open",
    3: "current",
}
# Columns sealed in a dump: table -> {column: the key column bound into its associated data}.
_ENCRYPTED: dict[str, dict[str, str]] = {"s3_keys": {"secret": "access_key"}}
_SEAL_PURPOSE = "meta-dump"
_MAC_PURPOSE = "meta-dump-mac"
_AAD_LABEL = b"dfs-meta-dump-1\x00"
_NONCE_BYTES = 12
_ZSTD_LEVEL = 3
_BATCH_ROWS = 1000
_BATCH_BYTES = 1 << 20
# A record is one batch (<= 1 MiB plus its last row); a larger length is a corrupt prefix, refused
# before anything is allocated for it.
_MAX_RECORD_BYTES = 64 << 20
# zstd's worst case for an incompressible record, with room to spare.
_MAX_FRAME_BYTES = _MAX_RECORD_BYTES + (1 << 20)

# Nameless (nlink 0) inodes are left out, with everything they own; see the module docstring.
_DETACHED = "SELECT ino FROM inodes WHERE nlink = 0"
_SOURCES: dict[str, str] = {
    "inodes": "SELECT * FROM inodes WHERE nlink != 0",
    "xattrs": f"SELECT * FROM xattrs WHERE ino NOT IN ({_DETACHED})",
    "blocks": f"SELECT * FROM blocks WHERE ino NOT IN ({_DETACHED})",
    "s3_object_locks": f"SELECT * FROM s3_object_locks WHERE ino NOT IN ({_DETACHED})",
    "chunks": (
        "SELECT c.*, COALESCE(d.n, 0) AS dump_detached FROM chunks c LEFT JOIN "
        "(SELECT b.chunk_id, COUNT(*) AS n FROM blocks b JOIN inodes i ON i.ino = b.ino "
        "WHERE i.nlink = 0 GROUP BY b.chunk_id) d ON d.chunk_id = c.chunk_id"
    ),
}
# Column expressions over a source that differ from the column itself (what purging the
# detached inodes would have done: MetaStore._purge, Inodes._drop_blocks); ?1 is the dump's time.
_OVERRIDES: dict[str, dict[str, str]] = {
    "chunks": {
        "refcount": "refcount - dump_detached",
        "zero_since_ns": (
            "CASE WHEN dump_detached > 0 AND refcount - dump_detached <= 0 THEN ?1 ELSE zero_since_ns END"
        ),
    },
}


@dataclasses.dataclass(frozen=True)
class DumpInfo:
    """What a dump holds: rows per table, its size, the checksum of its records, its snapshot."""

    rows: Mapping[str, int]
    dump_bytes: int
    sha256: str
    created_ns: int
    schema_version: int

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


# -- writing ------------------------------------------------------------------------------------


def write_dump(
    source: Path | str,
    out: BinaryIO,
    *,
    secret: bytes,
    now_ns: int | None = None,
    engine: str = "sqlite",
) -> DumpInfo:
    """Stream one consistent snapshot of the metadata database to ``out``.

    ``source`` is the SQLite file, or with ``engine="postgresql"`` a libpq
    connection string (the tables in the schema its search_path names).
    Reads on its own read-only connection inside one read transaction: in
    SQLite's WAL mode that is one snapshot, on PostgreSQL a REPEATABLE READ
    one, and neither blocks the daemons' writers (SQLite only keeps
    checkpoints from recycling the WAL until it ends).  Memory stays bounded
    by one batch.  Blocking: call it in a worker thread.
    """
    _check_engine(engine)
    created_ns = time.time_ns() if now_ns is None else now_ns
    where = _where(source, engine)
    keys = _Keys(secret)
    db = _open_source(source, engine, where)
    try:
        return _write(db, out, keys, created_ns)
    except db.errors as exc:
        raise _db_error(db, exc, f"dump of {where}") from exc
    except OSError as exc:
        raise from_oserror(exc, f"metadata dump of {where}") from exc
    finally:
        db.close()  # ends the read transaction


def _write(db: Db, out: BinaryIO, keys: _Keys, created_ns: int) -> DumpInfo:
    db.begin_read()
    # The snapshot begins with the transaction's first read; every statement below reads inside it.
    version = schema_version(db)
    live = _live_tables(db)
    if "inodes" not in live or version == 0:
        raise ConfigError("not a dfs metadata database (no inodes table or schema version)")
    if version > SCHEMA_VERSION:
        raise ConfigError(f"metadata schema {version} is newer than this dfs ({SCHEMA_VERSION})")
    undecided = sorted(set(live) - set(DUMPED_TABLES) - EXCLUDED_TABLES)
    if undecided:
        raise InternalError(
            f"metadata tables {undecided} are neither dumped nor excluded: decide in daemon/meta/dump.py"
        )
    tables = [t for t in DUMPED_TABLES if t in live]
    sequences = _sequences(db)
    row = db.execute("SELECT value FROM config WHERE key = 'block_size'").fetchone()
    if row is None:
        raise ConfigError("the metadata database records no block size")
    writer = _RecordWriter(out)
    writer.record(
        {
            "kind": "header",
            "format": _FORMAT,
            "version": FORMAT_VERSION,
            "schema_version": version,
            "created_ns": created_ns,
            "block_size": int(row[0]),
            "tables": tables,
        }
    )
    counts: dict[str, int] = {}
    for table in tables:
        counts[table] = _write_table(db, writer, keys, table, created_ns)
    writer.record({"kind": "sequences", "sequences": sequences})
    digest = writer.digest()
    writer.finish(
        {
            "kind": "end",
            "tables": counts,
            "rows": sum(counts.values()),
            "sha256": digest,
            "mac": keys.mac(digest),
        }
    )
    return DumpInfo(counts, writer.written_bytes, digest.hex(), created_ns, version)


def _sequences(db: Db) -> dict[str, int]:
    """The counters: each AUTOINCREMENT table's highest value ever handed out, and the oplog's head."""
    found = _counters(db)
    head = db.execute(
        "SELECT COALESCE((SELECT MAX(seq) FROM oplog), (SELECT value FROM config WHERE key = 'oplog_seq'), 0)"
    ).fetchone()[0]
    found[_OPLOG_COUNTER] = int(head)
    return found


def _source(db: Db, table: str) -> str:
    """The query whose rows are the table's dumped rows."""
    if table == "config" and _ENGINE_CONFIG[db.engine]:
        keys = ", ".join(f"'{key}'" for key in _ENGINE_CONFIG[db.engine])
        return f"SELECT * FROM config WHERE key NOT IN ({keys})"
    return _SOURCES.get(table, f"SELECT * FROM {_quote(table)}")


def _write_table(db: Db, writer: _RecordWriter, keys: _Keys, table: str, now: int) -> int:
    columns = _columns(db, table)
    overrides = _OVERRIDES.get(table, {})
    sealed = _ENCRYPTED.get(table, {})
    missing = sorted((set(overrides) | set(sealed) | set(sealed.values())) - set(columns))
    if missing:
        raise InternalError(f"daemon/meta/dump.py names columns {missing} that table {table} lacks")
    select = ", ".join(f"{overrides[c]} AS {_quote(c)}" if c in overrides else _quote(c) for c in columns)
    writer.record({"kind": "table", "table": table, "columns": columns, "encrypted": sealed})
    seal = [(columns.index(c), columns.index(k), c) for c, k in sealed.items()]
    query = f"SELECT {select} FROM ({_source(db, table)}) AS dump_source"
    batch: list[Sequence[Any]] = []
    batch_bytes = 0
    count = 0
    for rows in _batches(db, query, (now,) if "?1" in select else ()):
        for row in rows:
            if seal:
                values = list(row)
                for at, key_at, column in seal:
                    values[at] = keys.seal(table, column, values[key_at], values[at])
                row = values
            batch.append(row)
            batch_bytes += _row_bytes(row)
            if len(batch) >= _BATCH_ROWS or batch_bytes >= _BATCH_BYTES:
                writer.record({"kind": "rows", "rows": batch})
                count += len(batch)
                batch, batch_bytes = [], 0
    if batch:
        writer.record({"kind": "rows", "rows": batch})
        count += len(batch)
    writer.record({"kind": "table_end", "table": table, "rows": count})
    return count


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _row_bytes(row: Sequence[Any]) -> int:
    """About the packed size of a row: what a batch's byte bound counts."""
    return sum(len(v) if isinstance(v, bytes | str) else 9 for v in row) + 1


class _RecordWriter:
    """Frames records: each msgpack body compressed as its own zstd frame, after a length prefix."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._zstd = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True, write_content_size=True)
        self._sha = hashlib.sha256()
        self.written_bytes = 0
        self._put(_PREAMBLE.pack(MAGIC, FORMAT_VERSION))

    def _put(self, data: bytes) -> None:
        self._out.write(data)
        self.written_bytes += len(data)

    def record(self, record: dict[str, Any], *, hashed: bool = True) -> None:
        body: bytes = msgpack.packb(record, use_bin_type=True)
        if len(body) > _MAX_RECORD_BYTES:
            raise InternalError(f"a metadata dump record of {len(body)} bytes exceeds {_MAX_RECORD_BYTES}")
        if hashed:
            self._sha.update(_LENGTH.pack(len(body)))
            self._sha.update(body)
        frame = self._zstd.compress(body)
        self._put(_LENGTH.pack(len(frame)))
        self._put(frame)

    def digest(self) -> bytes:
        return self._sha.digest()

    def finish(self, end: dict[str, Any]) -> None:
        """Write the end record (not part of the digest it carries)."""
        self.record(end, hashed=False)
        self._out.flush()


class _Keys:
    """Sealing of secret columns and the dump's MAC, both under keys derived from the cluster secret."""

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or not secret:
            raise InvalidArgument("a metadata dump needs the cluster secret")
        self._aead = AESGCM(derive_key(secret, _SEAL_PURPOSE))
        self._mac_key = derive_key(secret, _MAC_PURPOSE)

    @staticmethod
    def _aad(table: str, column: str, key: Any) -> bytes:
        packed_key: bytes = msgpack.packb(key, use_bin_type=True)
        return _AAD_LABEL + f"{table}\x00{column}\x00".encode() + packed_key

    def seal(self, table: str, column: str, key: Any, value: Any) -> bytes:
        # msgpack of the value keeps its type (TEXT stays str) without a case per type.
        nonce = secrets.token_bytes(_NONCE_BYTES)
        plain = msgpack.packb(value, use_bin_type=True)
        return nonce + self._aead.encrypt(nonce, plain, self._aad(table, column, key))

    def open(self, table: str, column: str, key: Any, sealed: Any) -> Any:
        if not isinstance(sealed, bytes) or len(sealed) < _NONCE_BYTES + 16:
            raise InvalidArgument(f"metadata dump: a sealed {table}.{column} value is malformed")
        try:
            plain = self._aead.decrypt(
                sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], self._aad(table, column, key)
            )
        except InvalidTag:
            raise _wrong_secret() from None
        return msgpack.unpackb(plain, raw=False)

    def mac(self, digest: bytes) -> bytes:
        return hmac.new(self._mac_key, _AAD_LABEL + digest, hashlib.sha256).digest()


def _wrong_secret() -> ConfigError:
    return ConfigError(
        "metadata dump: made with another cluster secret (or altered): use the cluster's node.credential"
    )


# -- reading ------------------------------------------------------------------------------------


class _Sink(Protocol):
    """Where a reader's tables go (the loader's inserts; nothing, when verifying)."""

    def begin_table(self, table: str, columns: list[str]) -> None: ...

    def rows(self, rows: list[list[Any]]) -> None: ...

    def sequences(self, sequences: dict[str, int]) -> None: ...


class _NullSink:
    def begin_table(self, table: str, columns: list[str]) -> None:
        pass

    def rows(self, rows: list[list[Any]]) -> None:
        pass

    def sequences(self, sequences: dict[str, int]) -> None:
        pass


def _bad(message: str) -> InvalidArgument:
    return InvalidArgument(f"metadata dump: {message}")


class _Reader:
    """Reads and checks a dump: preamble and header at construction, the rest in :meth:`read_body`.

    Everything is checked as it streams past; whatever a sink did with the
    rows stays provisional until :meth:`read_body` returns (the checksum and
    MAC come last).
    """

    def __init__(self, inp: BinaryIO, keys: _Keys) -> None:
        self._inp = inp
        self._read_bytes = 0
        self._keys = keys
        self._zstd = zstandard.ZstdDecompressor()
        self._sha = hashlib.sha256()
        preamble = self._exact(_PREAMBLE.size)
        if preamble is None or preamble[:8] != MAGIC:
            raise _bad("not a dfs metadata dump (bad magic, or empty)")
        _, version = _PREAMBLE.unpack(preamble)
        if version != FORMAT_VERSION:
            raise ConfigError(f"metadata dump format {version}; this dfs reads format {FORMAT_VERSION}")
        header = self._record("header")
        if header.get("format") != _FORMAT or header.get("version") != FORMAT_VERSION:
            raise _bad("the header names another format")
        self.schema_version = _int(header, "schema_version")
        if self.schema_version > SCHEMA_VERSION:
            raise ConfigError(
                f"metadata dump of schema {self.schema_version}, newer than this dfs ({SCHEMA_VERSION})"
            )
        if self.schema_version not in _LOADABLE_SCHEMAS:
            raise ConfigError(f"metadata dump of schema {self.schema_version}: this dfs cannot load it")
        self.created_ns = _int(header, "created_ns")
        self.block_size = _int(header, "block_size")
        tables = header.get("tables")
        if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
            raise _bad("the header's table list is malformed")
        if len(set(tables)) != len(tables):
            raise _bad("the header lists a table twice")
        unknown = [t for t in tables if t not in DUMPED_TABLES]
        if unknown:
            raise ConfigError(
                f"metadata dump holds tables {unknown} this dfs does not know (made by a newer dfs?)"
            )
        self.tables: list[str] = tables

    def _exact(self, size: int) -> bytes | None:
        """The next ``size`` bytes of input; None at its end, before the first of them."""
        parts: list[bytes] = []
        left = size
        while left:
            more = self._inp.read(left)
            if not more:
                if left == size:
                    return None
                raise _bad("truncated (the input ends inside a record)")
            parts.append(more)
            left -= len(more)
        self._read_bytes += size
        return b"".join(parts)

    def _record(self, *kinds: str, hashed: bool = True) -> dict[str, Any]:
        """The next record, which must be of one of ``kinds``; hashed unless it is the end record."""
        prefix = self._exact(_LENGTH.size)
        if prefix is None:
            raise _bad("truncated (the input ends before the end record)")
        (length,) = _LENGTH.unpack(prefix)
        if length > _MAX_FRAME_BYTES:
            raise _bad(f"a record of {length} bytes (corrupt length?)")
        frame = self._exact(length)
        if frame is None:
            raise _bad("truncated (the input ends inside a record)")
        try:
            # The frame states its size: checked before decompressing, so a corrupt or hostile
            # frame cannot make us allocate gigabytes.  zstd checks the frame's own checksum.
            size = zstandard.frame_content_size(frame)
            if not 0 <= size <= _MAX_RECORD_BYTES:
                raise _bad(f"a record of {size} bytes (corrupt frame?)")
            body: bytes = self._zstd.decompress(frame, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise _bad(f"a corrupt compressed record: {exc}") from None
        if len(body) != size:
            raise _bad("a record's size differs from its frame's")
        if hashed:
            self._sha.update(_LENGTH.pack(len(body)))
            self._sha.update(body)
        try:
            record = msgpack.unpackb(body, raw=False)
        except Exception as exc:  # msgpack raises a zoo of classes on garbage
            raise _bad(f"a record does not decode: {type(exc).__name__}") from None
        if not isinstance(record, dict) or record.get("kind") not in kinds:
            found = record.get("kind") if isinstance(record, dict) else type(record).__name__
            raise _bad(f"expected a {' or '.join(kinds)} record, found {found!r:.40}")
        return record

    def read_body(self, sink: _Sink) -> DumpInfo:
        counts: dict[str, int] = {}
        for table in self.tables:
            counts[table] = self._read_table(table, sink)
        sequences = self._record("sequences").get("sequences")
        if not isinstance(sequences, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in sequences.items()
        ):
            raise _bad("the sequences record is malformed")
        sink.sequences(sequences)
        digest = self._sha.digest()
        end = self._record("end", hashed=False)
        if end.get("tables") != counts or end.get("rows") != sum(counts.values()):
            raise _bad("the end record's row counts differ from the rows read")
        if not hmac.compare_digest(_bytes(end, "sha256"), digest):
            raise _bad("checksum mismatch (corrupt)")
        if not hmac.compare_digest(_bytes(end, "mac"), self._keys.mac(digest)):
            raise _wrong_secret()
        if self._inp.read(1):
            raise _bad("data after the end record")
        return DumpInfo(counts, self._read_bytes, digest.hex(), self.created_ns, self.schema_version)

    def _read_table(self, table: str, sink: _Sink) -> int:
        start = self._record("table")
        columns = start.get("columns")
        if start.get("table") != table:
            raise _bad(f"expected table {table}, found {start.get('table')!r:.40}")
        if (
            not isinstance(columns, list)
            or not columns
            or not all(isinstance(c, str) for c in columns)
            or len(set(columns)) != len(columns)
        ):
            raise _bad(f"table {table}: the column list is malformed")
        sealed = _ENCRYPTED.get(table, {})
        if start.get("encrypted") != sealed:
            # Never load a sealed value as if it were the secret, nor a plain one as if sealed.
            raise _bad(f"table {table}: sealed columns {start.get('encrypted')!r:.80}, expected {sealed}")
        seal = [(columns.index(c), columns.index(k), c) for c, k in sealed.items()]
        sink.begin_table(table, columns)
        count = 0
        while True:
            record = self._record("rows", "table_end")
            if record["kind"] == "table_end":
                if record.get("table") != table or record.get("rows") != count:
                    raise _bad(f"table {table}: the table end does not match its rows")
                return count
            rows = record.get("rows")
            if not isinstance(rows, list) or not all(
                isinstance(r, list) and len(r) == len(columns) for r in rows
            ):
                raise _bad(f"table {table}: a malformed batch of rows")
            for row in rows:
                for at, key_at, column in seal:
                    row[at] = self._keys.open(table, column, row[key_at], row[at])
            sink.rows(rows)
            count += len(rows)


def _int(record: dict[str, Any], key: str) -> int:
    value = record.get(key)
    if type(value) is not int or value < 0:
        raise _bad(f"{key} is not a count")
    return value


def _bytes(record: dict[str, Any], key: str) -> bytes:
    value = record.get(key)
    if not isinstance(value, bytes):
        raise _bad(f"{key} is missing")
    return value


def verify_dump(inp: BinaryIO, *, secret: bytes) -> DumpInfo:
    """Read a dump through and check it all (framing, sealed secrets, checksum, MAC); load nothing."""
    try:
        reader = _Reader(inp, _Keys(secret))
        return reader.read_body(_NullSink())
    except OSError as exc:
        raise from_oserror(exc, "reading a metadata dump") from exc


# -- loading ------------------------------------------------------------------------------------


def load_dump(
    inp: BinaryIO,
    target: Path | str,
    *,
    secret: bytes,
    block_size: int,
    engine: str = "sqlite",
) -> DumpInfo:
    """Load a dump into a new metadata database (or into a fresh, empty one).

    ``target`` is the SQLite file, or with ``engine="postgresql"`` a libpq
    connection string (the tables go into the schema its search_path names,
    created there if missing).  All rows go in in one transaction, committed
    only after the dump's end record, checksum and MAC check out.  A database
    holding anything beyond a fresh store's rows is refused (NotEmpty).  A
    new SQLite database is built under a temporary name and linked into place
    only when complete; on PostgreSQL the tables are created inside the load's
    own transaction.  So a failed or interrupted load never leaves an empty
    store behind for a daemon to start on (and its orphan sweep to empty the
    chunk stores against).  The target must not be in use.
    """
    _check_engine(engine)
    where = _where(target, engine)
    try:
        reader = _Reader(inp, _Keys(secret))
        if reader.block_size != block_size:
            raise ConfigError(
                f"metadata dump's block maps use block_size {reader.block_size}, configured {block_size}"
            )
        if engine == "postgresql":
            return _load_pg(reader, str(target), where, block_size=block_size)
        db_path = Path(target)
        if db_path.exists():
            return _load_sqlite(reader, db_path, block_size=block_size)
        return _load_new(reader, db_path, block_size=block_size)
    except OSError as exc:
        raise from_oserror(exc, f"loading metadata into {where}") from exc


def _load_new(reader: _Reader, db_path: Path, *, block_size: int) -> DumpInfo:
    for suffix in ("-wal", "-shm"):
        if Path(f"{db_path}{suffix}").exists():
            # SQLite would apply a leftover WAL to the new database: refuse rather than guess.
            raise ConfigError(f"{db_path}{suffix} exists without {db_path}: remove it first")
    tmp = db_path.with_name(db_path.name + ".loading")
    _remove_db(tmp)  # a leftover of an interrupted load: never a live store (never linked into place)
    try:
        info = _load_sqlite(reader, tmp, block_size=block_size)
        try:
            os.link(tmp, db_path)  # not rename: never replace a database that appeared meanwhile
        except FileExistsError:
            raise NotEmpty(f"{db_path} appeared while loading; load into a new path") from None
        fsync_dir(db_path.parent)
    finally:
        _remove_db(tmp)
    return info


def _load_sqlite(reader: _Reader, path: Path, *, block_size: int) -> DumpInfo:
    # The normal creation: schema, root and internal roots, block size; the load replaces them.
    MetaStore(path, block_size=block_size).close()
    db = _connect("sqlite", str(path), str(path))
    try:
        db.execute("PRAGMA busy_timeout=10000")
        db.set_cache_bytes(64 * MiB)  # a bulk load fills every index: more than a daemon keeps
        info = _load_rows(reader, db, str(path), block_size=block_size)
        # Fold the WAL into the database file (and fsync it) before the file is linked into place.
        busy, wal_pages, done_pages = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy or wal_pages != done_pages:
            raise InternalError(f"{path}: the loaded metadata could not be checkpointed (in use?)")
        return info
    except db.errors as exc:
        raise _db_error(db, exc, f"loading into {path}") from exc
    finally:
        db.close()


def _load_pg(reader: _Reader, dsn: str, where: str, *, block_size: int) -> DumpInfo:
    db = _connect("postgresql", dsn, where)
    try:
        return _load_rows(reader, db, where, block_size=block_size)
    except db.errors as exc:
        if db.is_retryable(exc):
            raise NotEmpty(
                f"{where} is in use (another connection wrote to it during the load): "
                "stop every dfsd using it, and load into a new, empty database"
            ) from exc
        raise _db_error(db, exc, f"loading into {where}") from exc
    finally:
        db.close()


def _load_rows(reader: _Reader, db: Db, where: str, *, block_size: int) -> DumpInfo:
    """The load itself, in one write transaction: check, clear, insert, set the counters, commit."""
    db.begin_write()
    try:
        _prepare_target(db, where, block_size)
        _check_fresh(db, where)
        _clear(db)
        loader = _Loader(db)
        info = reader.read_body(loader)
        recompute_usage(db)  # quota usage from the rows loaded (daemon/meta/quotas.py)
        row = db.execute("SELECT value FROM config WHERE key = 'block_size'").fetchone()
        if row is None or row[0] != block_size:
            found = None if row is None else row[0]
            raise _bad(f"its config holds block_size {found!r:.40}, its header {block_size}")
        # Only now that the MAC checked out: a PostgreSQL sequence moves outside the transaction.
        _set_counters(db, loader.counters)
        head = loader.counters.get(_OPLOG_COUNTER, 0)
        if head:
            db.execute(
                "INSERT INTO config VALUES ('oplog_seq', ?) ON CONFLICT (key) DO UPDATE SET value = "
                "CASE WHEN config.value > excluded.value THEN config.value ELSE excluded.value END",
                (head,),
            )
        db.commit()
    except BaseException:
        db.abandon()
        raise
    return info


def _check_fresh(db: Db, where: str) -> None:
    """Refuse a database holding anything beyond what a fresh MetaStore creates."""
    internal_keys = [_INTERNAL_KEY + name for name in INTERNAL_DIRS]
    fresh_keys = ("block_size", *internal_keys, *_ENGINE_CONFIG[db.engine])
    marks = ",".join("?" * len(fresh_keys))
    for table in _live_tables(db):
        if table == "config":
            found = db.execute(f"SELECT 1 FROM config WHERE key NOT IN ({marks}) LIMIT 1", fresh_keys)
        elif table == "inodes":
            found = db.execute(
                f"SELECT 1 FROM inodes WHERE ino != ? AND ino NOT IN (SELECT value FROM config "
                f"WHERE key IN ({','.join('?' * len(internal_keys))})) LIMIT 1",
                (ROOT_INO, *internal_keys),
            )
        else:
            found = db.execute(f"SELECT 1 FROM {_quote(table)} LIMIT 1")
        if found.fetchone() is not None:
            raise NotEmpty(
                f"{where} already holds metadata (table {table}): a load never overwrites metadata; "
                "load the dump into a new, empty database"
            )


def _clear(db: Db) -> None:
    """Drop a fresh store's rows (root, internal roots, config): the dump's replace them."""
    kept = _ENGINE_CONFIG[db.engine]
    for table in _live_tables(db):
        if table == "config" and kept:
            db.execute(f"DELETE FROM config WHERE key NOT IN ({','.join('?' * len(kept))})", kept)
        elif table in DUMPED_TABLES or table in EXCLUDED_TABLES:
            db.execute(f"DELETE FROM {_quote(table)}")


class _Loader:
    """A sink inserting each table's rows by column name (inside the caller's transaction); the
    counters are kept for the caller to set once the whole dump checked out."""

    def __init__(self, db: Db) -> None:
        self._db = db
        self._table = ""
        self._insert = ""
        self._misfits: tuple[type[Exception], ...] = (*_row_errors(db), OverflowError, ValueError, TypeError)
        self.counters: dict[str, int] = {}

    def begin_table(self, table: str, columns: list[str]) -> None:
        known = _columns(self._db, table)
        if not known:
            raise InternalError(f"the new metadata database lacks table {table}")
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise ConfigError(
                f"metadata dump: table {table} has columns {unknown} this dfs does not know "
                "(made by a newer dfs?)"
            )
        self._table = table
        self._insert = (
            f"INSERT INTO {_quote(table)} ({', '.join(_quote(c) for c in columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})"
        )

    def rows(self, rows: list[list[Any]]) -> None:
        try:
            self._db.executemany(self._insert, rows)
        except self._misfits as exc:
            raise _bad(f"rows of table {self._table} do not fit the schema: {exc}") from None

    def sequences(self, sequences: dict[str, int]) -> None:
        unknown = sorted(set(sequences) - {*_COUNTER_TABLES, _OPLOG_COUNTER})
        if unknown:
            raise ConfigError(f"metadata dump has counters {unknown} this dfs does not know")
        self.counters = dict(sequences)


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


# -- the engines --------------------------------------------------------------------------------
# Everything above runs on the Db interface in the SQL both engines understand (PgDb rewrites
# placeholders); what differs between SQLite and PostgreSQL is here, one small function each.


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ConfigError(f"metadata engine must be one of {', '.join(ENGINES)}, not {engine!r:.40}")


def _where(location: Path | str, engine: str) -> str:
    """The database, for messages: the SQLite path, or the connection string without its password."""
    return os.fspath(location) if engine == "sqlite" else describe_dsn(str(location))


class _SqliteReadOnly(SqliteDb):
    """A read-only connection to an existing SQLite file, as a Db."""

    def __init__(self, path: Path) -> None:
        # as_uri quotes the path, so "?" or "#" in it cannot pass for URI syntax.
        uri = path.absolute().as_uri() + "?mode=ro"
        self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self.execute = self.conn.execute


def _open_source(source: Path | str, engine: str, where: str) -> Db:
    """The dump's own connection; the snapshot is its first read transaction (``begin_read``)."""
    if engine == "postgresql":
        return _connect(engine, str(source), where)  # begin_read: REPEATABLE READ READ ONLY
    db_path = Path(source)
    if not db_path.is_file():
        raise NotFound(f"no metadata database at {db_path}")
    try:
        db = _SqliteReadOnly(db_path)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open metadata database {db_path}: {exc}") from exc
    try:
        db.execute("PRAGMA busy_timeout=10000")
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "wal":
            # Outside WAL mode a reader's lock blocks the writer's commits: never do that to a daemon.
            raise ConfigError(f"{db_path}: journal mode {mode!r}, not WAL; refusing to hold a read lock")
    except sqlite3.Error as exc:
        db.close()
        raise ConfigError(f"cannot read metadata database {db_path}: {exc}") from exc
    except BaseException:
        db.close()
        raise
    return db


def _live_tables(db: Db) -> list[str]:
    """The tables of the database (SQLite's file; PostgreSQL's schema first on the search_path)."""
    if db.engine == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    else:
        sql = (
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
    return [str(r[0]) for r in db.execute(sql)]


def _columns(db: Db, table: str) -> list[str]:
    """The table's columns in their order (empty: no such table)."""
    if db.engine == "sqlite":
        return [str(r[1]) for r in db.execute(f"PRAGMA table_info({_quote(table)})")]
    return [
        str(r[0])
        for r in db.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
            (table,),
        )
    ]


def _batches(db: Db, sql: str, params: Sequence[Any]) -> Iterator[list[Any]]:
    """A query's rows, at most a batch at a time in memory (on PostgreSQL a server-side cursor)."""
    if isinstance(db, PgDb):
        statement, numbered = pg_sql(sql)
        args: Any = {f"p{i}": v for i, v in enumerate(params, 1)} if numbered else params
        db.flush()  # the pending BEGIN: a named cursor lives in a transaction
        with db.conn.cursor(name="dfs_meta_dump") as cursor:
            cursor.itersize = _BATCH_ROWS
            cursor.execute(statement, args or None)
            while rows := cursor.fetchmany(_BATCH_ROWS):
                yield rows
        return
    assert isinstance(db, SqliteDb)
    sqlite_cursor = db.conn.execute(sql, params)
    while rows := sqlite_cursor.fetchmany(_BATCH_ROWS):
        yield rows


def _counters(db: Db) -> dict[str, int]:
    """Each counted table's highest number ever handed out (none yet: left out)."""
    if db.engine == "sqlite":
        found = {str(name): int(seq) for name, seq in db.execute("SELECT name, seq FROM sqlite_sequence")}
        unknown = sorted(set(found) - set(_COUNTER_TABLES))
        if unknown:
            raise InternalError(f"AUTOINCREMENT tables {unknown} have no counter in daemon/meta/dump.py")
        return found
    identity = {
        (str(t), str(c))
        for t, c in db.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND is_identity = 'YES'"
        )
    }
    unknown = sorted(f"{t}.{c}" for t, c in identity - set(COUNTER_COLUMNS.items()))
    if unknown:
        raise InternalError(f"identity columns {unknown} have no counter in daemon/meta/dump.py")
    found = {}
    for table, column in sorted(identity):
        # The sequence is not part of the snapshot (it may be ahead of it: never behind what the
        # snapshot's rows used), and a row inserted with its number may be ahead of the sequence.
        (value,) = db.execute(
            f"SELECT GREATEST(pg_sequence_last_value(pg_get_serial_sequence(?, ?)::regclass), "
            f"(SELECT MAX({_quote(column)}) FROM {_quote(table)}), 0)",
            (table, column),
        ).fetchone()
        if value:
            found[table] = int(value)
    return found


def _prepare_target(db: Db, where: str, block_size: int) -> None:
    """Inside the load's transaction: make sure the tables exist and are this dfs's.

    SQLite's were just created by MetaStore (in a file no daemon uses yet).  On PostgreSQL the
    tables are created here when missing, as MetaStore creates them but inside the load's
    transaction, so a failed load leaves the database as it found it; the setup lock keeps a
    daemon starting meanwhile from creating them too, and waits it out until the load commits.
    """
    if db.engine == "sqlite":
        return
    version = schema_version(db)
    if version not in (0, SCHEMA_VERSION):  # nothing to upgrade: a load fills a new database
        raise ConfigError(f"{where}: metadata schema {version}, expected {SCHEMA_VERSION}")
    ensure_tables(db, where)
    row = db.execute("SELECT value FROM config WHERE key = 'block_size'").fetchone()
    if row is not None and row[0] != block_size:
        raise ConfigError(f"{where}: block maps use block_size {row[0]}, configured {block_size}")


def _row_errors(db: Db) -> tuple[type[Exception], ...]:
    """The engine's errors that mean "a row does not fit the table" (not "the database failed")."""
    if db.engine == "sqlite":
        return (sqlite3.Error,)
    return (psycopg.DataError, psycopg.IntegrityError)


def _set_counters(db: Db, sequences: Mapping[str, int]) -> None:
    """Continue each counter after the dump's (never below the highest loaded row)."""
    if db.engine == "sqlite":
        db.execute("DELETE FROM sqlite_sequence")
        # Inserting explicit keys raised each counter to its highest row; a deleted newest row
        # left the dump's higher, and that is what keeps numbers from being reused.
        for table in _COUNTER_TABLES:
            seq = sequences.get(table)
            top = db.execute(f"SELECT MAX({_quote(COUNTER_COLUMNS[table])}) FROM {_quote(table)}").fetchone()[
                0
            ]
            value = max(seq or 0, top or 0)
            if value:
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, value))
        return
    catch_up_sequences(db, sequences)  # the dump's counters are the floor
