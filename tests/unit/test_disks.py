"""daemon.disks.DiskSet: weighted placement, lookups across disks, failure, drain and sums."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import pytest

from daemon.chunks import ChunkStore, ids_digest
from daemon.disks import STATE_FILE, DiskSet
from dfs.core import codec
from dfs.core.errors import ChunkMissing, CorruptChunk, InvalidArgument
from dfs.core.placement import partition_of

KEY = b"k" * 32


def make(i: int) -> tuple[bytes, bytes]:
    data = f"chunk {i} ".encode() * 40
    return codec.chunk_id(KEY, data), codec.encode(data, level=1)


def fake_ids(n: int) -> list[bytes]:
    """Deterministic 32-byte ids: the placement statistics below never flake."""
    return [hashlib.blake2b(i.to_bytes(4, "big"), digest_size=32).digest() for i in range(n)]


def dirs(tmp_path: Path, n: int) -> list[Path]:
    out = [tmp_path / f"d{i}" for i in range(n)]
    for d in out:
        d.mkdir()
    return out


def held_by(disks: list[Path], cid: bytes) -> list[int]:
    rel = codec.chunk_relpath(cid.hex())
    return [i for i, d in enumerate(disks) if (d / "chunks" / rel).exists()]


def test_placement_follows_the_weights(tmp_path: Path) -> None:
    d = dirs(tmp_path, 3)
    ds = DiskSet([(d[0], 1.0), (d[1], 1.0), (d[2], 2.0)], fsync=False)
    ids = fake_ids(10_000)
    got = Counter(ds.preferred(cid) for cid in ids)
    expected = {str(d[0]): 2500, str(d[1]): 2500, str(d[2]): 5000}
    chi2 = sum((got[p] - e) ** 2 / e for p, e in expected.items())
    assert chi2 < 13.8, (got, chi2)  # 2 degrees of freedom, p = 0.001


def test_adding_a_disk_moves_only_its_share(tmp_path: Path) -> None:
    d = dirs(tmp_path, 4)
    ids = fake_ids(10_000)
    before = DiskSet([(p, 1.0) for p in d[:3]], fsync=False)
    after = DiskSet([(p, 1.0) for p in d], fsync=False)
    moved = [cid for cid in ids if before.preferred(cid) != after.preferred(cid)]
    # Every id that moves goes to the new disk, and about a quarter of them do.
    assert {after.preferred(cid) for cid in moved} == {str(d[3])}
    assert 0.22 < len(moved) / len(ids) < 0.28


def test_single_disk_keeps_todays_layout(tmp_path: Path) -> None:
    ds = DiskSet([(tmp_path, 1.0)], fsync=False)
    cid, blob = make(1)
    assert ds.put(cid, blob) is True
    assert (tmp_path / "chunks" / codec.chunk_relpath(cid.hex())).read_bytes() == blob
    assert ChunkStore(tmp_path, fsync=False).get(cid) == blob
    assert ds.put(cid, blob) is False
    assert ds.disk_report()[0]["state"] == "ok"


def test_reads_find_a_chunk_on_a_non_preferred_disk(tmp_path: Path) -> None:
    d = dirs(tmp_path, 2)
    ds = DiskSet([(d[0], 1.0), (d[1], 1.0)], fsync=False)
    cid, blob = next((c, b) for c, b in map(make, range(100)) if ds.preferred(c) == str(d[0]))
    # Stored on the other disk behind the set's back (as after a disk set change).
    ChunkStore(d[1], fsync=False).put(cid, blob)
    ds = DiskSet([(d[0], 1.0), (d[1], 1.0)], fsync=False)
    assert ds.get(cid) == blob
    assert ds.exists(cid) and ds.has([cid]) == [True]
    assert ds.stored_bytes(cid) == len(blob)
    assert ds.put(cid, blob) is False  # not stored twice
    assert held_by(d, cid) == [1]
    assert ds.delete([cid]) == 1
    with pytest.raises(ChunkMissing):
        ds.get(cid)


def test_a_vanished_disk_is_failed_and_skipped(tmp_path: Path) -> None:
    d = dirs(tmp_path, 2)
    ds = DiskSet([(d[0], 1.0), (d[1], 1.0)], fsync=False)
    chunks = [make(i) for i in range(60)]
    for cid, blob in chunks:
        assert ds.put(cid, blob)
    on0 = {cid for cid, _ in chunks if held_by(d, cid) == [0]}
    assert 10 < len(on0) < 50
    digests_before = ds.partition_digests()

    gone = tmp_path / "gone"
    d[0].rename(gone)  # the filesystem vanished
    ds.check()
    report = {r["path"]: r for r in ds.disk_report()}
    assert report[str(d[0])]["state"] == "failed"
    assert "gone" in report[str(d[0])]["reason"]
    assert report[str(d[1])]["state"] == "ok"
    # Its chunks are missing here (anti-entropy sees that); the other disk's are served.
    for cid, blob in chunks:
        if cid in on0:
            assert not ds.exists(cid)
            with pytest.raises(ChunkMissing):
                ds.get(cid)
        else:
            assert ds.get(cid) == blob
    assert set(ds.iter_ids()) == {cid for cid, _ in chunks} - on0
    assert ds.partition_digests() != digests_before
    assert ds.stats()["chunk_count"] == len(chunks) - len(on0)
    assert ds.stats()["disks_not_ok"] == 1
    # New writes (a re-replicated copy) land on the healthy disk.
    lost, blob = next((c, b) for c, b in chunks if c in on0)
    assert ds.put(lost, blob) is True
    assert held_by(d, lost) == [1]

    # Only an operator brings it back, once it is there again.
    with pytest.raises(InvalidArgument, match="still unusable"):
        ds.reset(str(d[0]))
    gone.rename(d[0])
    assert ds.reset(str(d[0]))["state"] == "ok"
    assert ds.exists(next(iter(on0 - {lost})))


def test_io_errors_past_the_threshold_fail_the_disk(tmp_path: Path) -> None:
    d = dirs(tmp_path, 2)
    ds = DiskSet([(d[0], 1.0), (d[1], 1.0)], fsync=False, max_io_errors=3)
    ids = [cid for cid in fake_ids(200) if ds.preferred(cid) == str(d[0])][:4]
    for cid in ids:
        # A directory where the chunk file belongs: reading it is an I/O error (EISDIR).
        (d[0] / "chunks" / codec.chunk_relpath(cid.hex())).mkdir(parents=True)
    for n, cid in enumerate(ids, 1):
        with pytest.raises(Exception) as ei:
            ds.get(cid)
        assert not isinstance(ei.value, ChunkMissing)
        state = {r["path"]: r for r in ds.disk_report()}[str(d[0])]
        assert state["io_errors"] == n
        assert state["state"] == ("failed" if n > 3 else "ok")


def test_a_checksum_storm_fails_the_disk(tmp_path: Path) -> None:
    d = dirs(tmp_path, 2)
    ds = DiskSet([(d[0], 1.0), (d[1], 1.0)], fsync=False, max_checksum_errors=2)
    bad = [(c, b) for c, b in map(make, range(100)) if ds.preferred(c) == str(d[0])][:3]
    for cid, blob in bad:
        ds.put(cid, blob)
        path = d[0] / "chunks" / codec.chunk_relpath(cid.hex())
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0xFF
        path.write_bytes(bytes(raw))
    for cid, _ in bad:
        with pytest.raises(CorruptChunk):
            ds.get(cid)
    report = {r["path"]: r for r in ds.disk_report()}[str(d[0])]
    assert report["checksum_errors"] == 3
    assert report["state"] == "failed"
    # A blob that arrives corrupt is the sender's fault, never the disk's.
    ok = DiskSet([(d[1], 1.0)], fsync=False, max_checksum_errors=0)
    cid, blob = make(999)
    with pytest.raises(CorruptChunk):
        ok.put(cid, blob[:-1] + bytes([blob[-1] ^ 1]))
    assert ok.disk_report()[0]["state"] == "ok"


def test_drain_moves_everything_and_keeps_it_readable(tmp_path: Path) -> None:
    d = dirs(tmp_path, 3)
    state = tmp_path / STATE_FILE
    ds = DiskSet([(p, 1.0) for p in d], fsync=False, state_path=state)
    chunks = [make(i) for i in range(150)]
    for cid, blob in chunks:
        ds.put(cid, blob)
    digests = ds.partition_digests()
    on0 = sum(1 for cid, _ in chunks if held_by(d, cid) == [0])
    assert on0 > 0
    assert ds.drain(str(d[0]))["state"] in ("draining", "drained")
    assert ds.wait_drained(str(d[0]), 60)
    report = {r["path"]: r for r in ds.disk_report()}
    assert report[str(d[0])]["chunk_count"] == 0
    assert report[str(d[0])]["drain_moved"] == on0
    for cid, blob in chunks:
        assert ds.get(cid) == blob
        assert held_by(d, cid) in ([1], [2])
    assert ds.partition_digests() == digests  # the node holds exactly what it held
    new, blob = make(1000)
    ds.put(new, blob)
    assert 0 not in held_by(d, new)
    # Remembered across a restart, until undrained.
    again = DiskSet([(p, 1.0) for p in d], fsync=False, state_path=state)
    assert {r["path"]: r["state"] for r in again.disk_report()}[str(d[0])] == "drained"
    assert again.undrain(str(d[0]))["state"] == "ok"
    assert "drained" not in {
        r["state"] for r in DiskSet([(p, 1.0) for p in d], state_path=state).disk_report()
    }
    with pytest.raises(InvalidArgument):
        again.drain("/not/a/disk")


def test_an_unmounted_or_swapped_disk_is_not_taken_for_its_mount_point(tmp_path: Path) -> None:
    d = dirs(tmp_path, 2)
    state = tmp_path / STATE_FILE

    def disk_set() -> DiskSet:
        return DiskSet([(p, 1.0) for p in d], fsync=False, state_path=state)

    def states(ds: DiskSet) -> dict[str, tuple[str, str]]:
        return {r["path"]: (r["state"], r["reason"]) for r in ds.disk_report()}

    first = disk_set()
    chunks = [make(i) for i in range(40)]
    for cid, blob in chunks:
        first.put(cid, blob)
    first.close()
    # The second disk's filesystem is not mounted at restart: its mount point is an empty directory.
    mounted = tmp_path / "mounted"
    d[1].rename(mounted)
    d[1].mkdir()
    unmounted = disk_set()
    state1, reason = states(unmounted)[str(d[1])]
    assert state1 == "failed" and "marker" in reason, reason
    new, blob = make(500)
    unmounted.put(new, blob)
    assert held_by(d, new) == [0] and not (d[1] / "chunks").exists()  # nothing on the "root fs"
    unmounted.close()
    # Mounted again: the same disk, served as before.
    d[1].rmdir()
    mounted.rename(d[1])
    back = disk_set()
    assert {s for s, _ in states(back).values()} == {"ok"}
    assert all(back.get(cid) == blob for cid, blob in chunks)
    back.close()
    # Two disks swapped: neither is taken for the other.
    d[0].rename(tmp_path / "x")
    d[1].rename(d[0])
    (tmp_path / "x").rename(d[1])
    swapped = disk_set()
    assert all(s == "failed" and "swapped" in r for s, r in states(swapped).values())
    # The operator's reset takes a directory as it is.
    assert swapped.reset(str(d[0]))["state"] == "ok"
    assert swapped.reset(str(d[1]))["state"] == "ok"
    assert all(swapped.get(cid) == blob for cid, blob in chunks)
    swapped.close()
    assert {s for s, _ in states(disk_set()).values()} == {"ok"}  # remembered


def test_stats_are_sums_and_digests_unions(tmp_path: Path) -> None:
    d = dirs(tmp_path, 2)
    ds = DiskSet([(d[0], 1.0), (d[1], 3.0)], fsync=False)
    chunks = [make(i) for i in range(80)]
    for cid, blob in chunks:
        ds.put(cid, blob)
    st = ds.stats()
    assert st["chunk_count"] == 80
    assert st["used_bytes"] == sum(len(b) for _, b in chunks)
    # Both directories sit on one filesystem: its space is counted once.
    assert st["total_bytes"] == ChunkStore(d[0], fsync=False).stats()["total_bytes"]
    per_disk = {r["path"]: r["chunk_count"] for r in ds.disk_report()}
    assert sum(per_disk.values()) == 80 and per_disk[str(d[1])] > per_disk[str(d[0])]
    ids = [cid for cid, _ in chunks]
    assert sorted(ds.iter_ids()) == sorted(ids)
    for part, digest in ds.partition_digests().items():
        assert digest == ids_digest([c for c in ids if partition_of(c) == part])
    assert sum(ds.partition_counts().values()) == 80


def test_config_errors(tmp_path: Path) -> None:
    from dfs.core import config
    from dfs.core.errors import ConfigError

    cfg = config.parse(f'[storage]\ndisks = ["{tmp_path}/a", "{tmp_path}/b:2.5"]\n', env={})
    assert config.disk_specs(cfg.storage) == [(f"{tmp_path}/a", 1.0), (f"{tmp_path}/b", 2.5)]
    assert config.parse(config.render(cfg), env={}).storage.disks == cfg.storage.disks
    for bad, why in (
        ('["/x", "/x/"]', "listed twice"),
        ('["/x:0"]', "weight"),
        ('["/x:-1"]', "weight"),
        ('["x"]', "absolute"),
        ("5", "list of strings"),
    ):
        with pytest.raises(ConfigError, match=why):
            config.parse(f"[storage]\ndisks = {bad}\n", env={})
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        DiskSet([(afile, 1.0)])
    os.mkdir(tmp_path / "ok")
    with pytest.raises(ConfigError, match="twice"):
        DiskSet([(tmp_path / "ok", 1.0), (tmp_path / "ok", 2.0)])
