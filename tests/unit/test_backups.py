"""Unit tests for daemon/service/backups.py: backups stored as chunks, their manifests, reading
them piece by piece, pruning, and the offline reassembly `dfs meta restore` does (dfs/cli/meta.py).

In process on one host (no cluster): the chunks go to a real ChunkStore; tests/fuse/test_meta_backup.py
covers real daemons, clusters and restores.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import dfs.cli.meta as cli_meta
from daemon.chunks import ChunkStore
from daemon.meta import MetaStore
from daemon.service.backups import PIECE_BYTES, BackupHandlers, Backups
from daemon.service.threads import ChunkThreads
from dfs.cli.app import CliError
from dfs.core import codec
from dfs.core.backup_format import check_manifest
from dfs.core.backup_format import chunk_key as backup_chunk_key
from dfs.core.errors import EX_NOINPUT, ChunkMissing, CorruptChunk, InvalidArgument, NoSpace
from dfs.core.namespace import ROOT_INO

SECRET = b"cluster-secret-0123456789abcdef!"
CLUSTER_KEY = b"k" * 32
PIECE = 512  # small pieces: every backup here spans several chunks


@pytest.fixture
def meta_db(tmp_path: Path) -> Path:
    """A SQLite metadata store with enough rows that its dump spans several pieces."""
    path = tmp_path / "meta.db"
    store = MetaStore(path, block_size=4096)
    try:
        for i in range(300):
            store.mkdir(ROOT_INO, os.urandom(12).hex().encode() + b"-%d" % i, 0o755, 0, 0)
    finally:
        store.close()
    return path


def _backups(tmp_path: Path, keep: int = 3) -> Backups:
    data = tmp_path / "var"
    data.mkdir(exist_ok=True)
    return Backups(data, SECRET, "n1", keep, piece_bytes=PIECE)


def _handlers(backups: Backups, store: ChunkStore, db: Path | None) -> BackupHandlers:
    # A single host: no replicated chunk I/O, the layout names no other node.
    runner: Any = SimpleNamespace(chunkio=None, clustered=lambda: False)
    return BackupHandlers(
        backups, runner, db, lambda: CLUSTER_KEY, chunks=store, threads=ChunkThreads(), replicas=3
    )


def _manifest(backup_id: str, chunks: list[bytes], piece_bytes: int = PIECE) -> dict[str, Any]:
    return {
        "id": backup_id,
        "created_ns": 1,
        "origin": "n1",
        "dump_bytes": len(chunks) * piece_bytes,
        "file_sha256": "0" * 64,
        "rows": 1,
        "schema_version": 1,
        "cluster_key": "sealed",
        "piece_bytes": piece_bytes,
        "chunks": [c.hex() for c in chunks],
        "replicas": 2,
    }


def _id(n: int) -> bytes:
    return bytes([n]) * codec.ID_SIZE


async def _read_all(handlers: BackupHandlers, info: dict[str, Any], size: int) -> bytes:
    """What `dfs meta dump` does: read on from wherever the last (possibly short) read ended."""
    out = b""
    while len(out) < info["dump_bytes"]:
        piece = await handlers.backup_read(info["id"], len(out), size)
        assert piece
        out += piece
    return out


async def test_a_backup_is_replicated_chunks_and_a_manifest_read_back_piece_by_piece(
    tmp_path: Path, meta_db: Path
) -> None:
    backups = _backups(tmp_path)
    store = ChunkStore(backups.data_dir, fsync=False)
    handlers = _handlers(backups, store, meta_db)
    made = await handlers.backup_now()
    info = made["backup"]
    assert made["copies"] == {}
    assert info["piece_bytes"] == PIECE and info["replicas"] == 1  # one host: one copy
    assert len(info["chunks"]) == -(-info["dump_bytes"] // PIECE) > 2
    # The manifest is all the backup directory keeps: no dump file, no temporary one.
    assert [p.name for p in backups.dir.iterdir()] == [f"{info['id']}.json"]
    assert json.loads((backups.dir / f"{info['id']}.json").read_text()) == info
    assert (backups.dir / f"{info['id']}.json").stat().st_mode & 0o077 == 0
    assert await handlers.backup_list() == [info]

    # Each piece is a chunk named by the backup key, never by the cluster key files use.
    key = backup_chunk_key(SECRET)
    for hexid in info["chunks"]:
        plain = codec.decode(store.get(bytes.fromhex(hexid)))
        assert codec.chunk_id(key, plain).hex() == hexid
        assert codec.chunk_id(CLUSTER_KEY, plain).hex() != hexid
    assert backups.chunk_ids() == {bytes.fromhex(h) for h in info["chunks"]}

    # A read never crosses a piece's end; reading on gives back the exact dump.
    first = await handlers.backup_read(info["id"], 0, PIECE_BYTES)
    assert len(first) == PIECE
    dump = await _read_all(handlers, info, PIECE_BYTES)
    assert hashlib.sha256(dump).hexdigest() == info["file_sha256"]
    assert await _read_all(handlers, info, 100) == dump  # reads smaller than a piece
    assert await handlers.backup_read(info["id"], PIECE + 7, 20) == dump[PIECE + 7 : PIECE + 27]
    assert await handlers.backup_read(info["id"], info["dump_bytes"], 10) == b""

    # Sequential small reads fetch each piece once.
    fetched: list[bytes] = []
    real_get = store.get

    def counting_get(chunk_id: bytes) -> bytes:
        fetched.append(chunk_id)
        return real_get(chunk_id)

    store.get = counting_get  # type: ignore[method-assign]
    await _read_all(handlers, info, 64)
    assert [c.hex() for c in fetched] == info["chunks"]

    # What `dfs meta restore` does offline: the same bytes from the chunk files.
    out = io.BytesIO()
    cli_meta.assemble_backup(info, backups.data_dir / "chunks", key, out)
    assert out.getvalue() == dump

    with pytest.raises(InvalidArgument):
        await handlers.backup_read(info["id"], 0, PIECE_BYTES + 1)
    with pytest.raises(InvalidArgument):
        await handlers.backup_read("../x", 0, 10)


async def test_a_missing_or_wrong_piece_is_refused_and_restore_points_to_from(
    tmp_path: Path, meta_db: Path
) -> None:
    backups = _backups(tmp_path)
    store = ChunkStore(backups.data_dir, fsync=False)
    info = (await _handlers(backups, store, meta_db).backup_now())["backup"]
    key = backup_chunk_key(SECRET)
    second = bytes.fromhex(info["chunks"][1])

    # A sound blob of other content under the piece's name: its id gives it away.
    store.delete([second])
    store.put(second, codec.encode(os.urandom(PIECE), level=0))
    with pytest.raises(CorruptChunk, match="does not hold the piece"):
        await _handlers(backups, store, None).backup_read(info["id"], PIECE, 10)
    with pytest.raises(CliError, match="--from HOST:PORT") as caught:
        cli_meta.assemble_backup(info, backups.data_dir / "chunks", key, io.BytesIO())
    assert "chunk 2 of" in caught.value.message and "\n" not in caught.value.message

    store.delete([second])
    with pytest.raises(ChunkMissing):
        await _handlers(backups, store, None).backup_read(info["id"], PIECE, 10)
    with pytest.raises(CliError, match="not on this host.*--from HOST:PORT") as caught:
        cli_meta.assemble_backup(info, backups.data_dir / "chunks", key, io.BytesIO())
    assert caught.value.exit_code == EX_NOINPUT

    # Under another cluster's secret the chunks here do not hold the pieces their ids name.
    other = backup_chunk_key(b"another-secret-0123456789abcdef!")
    with pytest.raises(CliError, match="chunk 1 of .* does not hold the piece.*--from"):
        cli_meta.assemble_backup(info, backups.data_dir / "chunks", other, io.BytesIO())


def test_manifests_from_other_nodes_are_checked(tmp_path: Path) -> None:
    backups = _backups(tmp_path)
    good = _manifest("20260101T000000.000Z", [_id(1), _id(2)])
    assert check_manifest(good) == good
    bad: list[dict[str, Any]] = [
        {**good, "id": "../../etc/passwd"},
        {**good, "id": "20260101T000000.000Z\n"},
        {**good, "chunks": [_id(1).hex(), "../" + _id(2).hex()[3:]]},
        {**good, "chunks": [_id(1).hex(), _id(0xAB).hex().upper()]},
        {**good, "chunks": [_id(1).hex()]},  # 2 pieces' worth of bytes
        {**good, "chunks": None},
        {**good, "dump_bytes": True},
        {**good, "piece_bytes": 0},
        {**good, "replicas": 0},
        {**good, "file_sha256": "x" * 64},
        {k: v for k, v in good.items() if k != "cluster_key"},
    ]
    for info in bad:
        with pytest.raises(InvalidArgument):
            backups.add(info)
    with pytest.raises(InvalidArgument):
        backups.add([good])  # type: ignore[arg-type]
    assert not backups.dir.exists() or list(backups.dir.iterdir()) == []
    assert backups.add(good) == []
    assert backups.list() == [good]


def test_pruning_frees_only_the_chunks_no_kept_backup_lists(tmp_path: Path) -> None:
    backups = _backups(tmp_path, keep=2)
    shared = _id(9)  # an unchanged stretch of the namespace: the same piece in every backup
    a = _manifest("20260101T000000.000Z", [_id(1), shared])
    b = _manifest("20260102T000000.000Z", [_id(2), shared])
    c = _manifest("20260103T000000.000Z", [_id(3), shared])
    assert backups.add(a) == []
    assert backups.add(b) == []
    assert backups.add(c) == [_id(1)]  # a's own chunk; the shared one is still listed
    assert [i["id"] for i in backups.list()] == [c["id"], b["id"]]
    assert backups.chunk_ids() == {_id(2), _id(3), shared}
    # A manifest arriving late, older than those kept, is pruned at once; its chunks go.
    assert backups.add(a) == [_id(1)]
    assert sorted(p.name for p in backups.dir.iterdir()) == [f"{b['id']}.json", f"{c['id']}.json"]


def test_older_backups_kept_as_dump_files_are_still_listed_and_pruned(tmp_path: Path) -> None:
    backups = _backups(tmp_path, keep=1)
    backups.dir.mkdir(parents=True)
    chunked = _manifest("20250101T000000.000Z", [])
    old = {k: v for k, v in chunked.items() if k not in ("chunks", "piece_bytes", "replicas")}
    (backups.dir / f"{old['id']}.dfsmeta").write_bytes(b"dump")
    (backups.dir / f"{old['id']}.json").write_text(json.dumps(old))
    # Interrupted (no dump beside it) and damaged ones are not offered.
    (backups.dir / "20240101T000000.000Z.json").write_text(json.dumps({**old, "id": "20240101T000000.000Z"}))
    (backups.dir / "20240102T000000.000Z.json").write_text("{")
    assert backups.list() == [old]
    assert backups.read_file(old["id"], 1, 2) == b"um"
    new = _manifest("20260101T000000.000Z", [_id(1)])
    assert backups.add(new) == []  # the old backup's dump is a file, not chunks
    assert backups.list() == [new]
    assert not (backups.dir / f"{old['id']}.dfsmeta").exists()


def test_chunks_of_a_backup_being_made_count_as_referenced(tmp_path: Path) -> None:
    backups = _backups(tmp_path)
    backups.hold([_id(5)])
    assert backups.chunk_ids() == {_id(5)}
    backups.add(_manifest("20260101T000000.000Z", [_id(5)]))
    backups.release([_id(5)])
    assert backups.chunk_ids() == {_id(5)}  # now the manifest lists it


async def test_a_failed_backup_deletes_the_pieces_it_stored(tmp_path: Path, meta_db: Path) -> None:
    backups = _backups(tmp_path)
    store = ChunkStore(backups.data_dir, fsync=False)
    kept = (await _handlers(backups, store, meta_db).backup_now())["backup"]
    before = set(store.iter_ids())
    real_put = store.put
    puts = 0

    def put_then_full(chunk_id: bytes, blob: bytes) -> bool:
        nonlocal puts
        puts += 1
        if puts == 3:
            raise NoSpace("the disk filled")
        return real_put(chunk_id, blob)

    store.put = put_then_full  # type: ignore[method-assign]
    with pytest.raises(NoSpace):
        await _handlers(backups, store, meta_db).backup_now()
    assert puts == 3
    # The two pieces it stored are gone at once (not left to the orphan sweep); the kept
    # backup is whole, and nothing counts as a backup being made any more.
    assert set(store.iter_ids()) == before
    assert await _handlers(backups, store, None).backup_list() == [kept]
    assert backups.chunk_ids() == {bytes.fromhex(h) for h in kept["chunks"]}


def test_abandoning_a_backup_spares_the_pieces_a_kept_backup_lists(tmp_path: Path) -> None:
    backups = _backups(tmp_path)
    backups.add(_manifest("20260101T000000.000Z", [_id(1), _id(2)]))
    backups.hold([_id(2), _id(3), _id(3)])
    assert backups.abandon([_id(2), _id(3), _id(3)]) == [_id(3)]
    assert backups.chunk_ids() == {_id(1), _id(2)}
