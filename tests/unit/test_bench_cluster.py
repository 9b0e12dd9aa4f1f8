"""Pure helpers of ``dfs cluster bench`` (the bench itself needs FUSE and real daemons)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import xxhash

from dfs.bench import cluster as bc
from dfs.bench import harness
from dfs.core import config as config_mod

KiB = 1024


def test_blocks_are_unique_within_and_across_files() -> None:
    pool = bc.make_pool(256 * KiB)
    buf = bytearray(64 * KiB)
    seen: set[bytes] = set()
    for tag in (1, 2, 3):
        for i in range(32):
            bc.fill_block(buf, pool, tag, i)
            seen.add(bytes(buf))
    assert len(seen) == 3 * 32


def test_file_digest_matches_the_blocks() -> None:
    pool = bc.make_pool(3 * bc.MiB)
    h = xxhash.xxh3_128()
    buf = bytearray(bc.MiB)
    for i in range(3):
        bc.fill_block(buf, pool, 7, i)
        h.update(buf)
    assert bc.file_digest(pool, 7, 3) == h.digest()
    assert bc.file_digest(pool, 8, 3) != h.digest()


def test_node_conf_is_a_valid_config(tmp_path: Path) -> None:
    text = bc.node_conf(
        node_id="n2",
        zone="z2",
        data_dir=tmp_path / "n2",
        rpc_port=12001,
        gossip_port=12002,
        s3_port=12003,
        admin_port=12004,
        meta="127.0.0.1:12000",
        seeds="127.0.0.1:12005",
    )
    cfg = config_mod.parse(text, env={})
    assert cfg.node.id == "n2" and cfg.node.zone == "z2"
    assert cfg.rpc.listen == "127.0.0.1:12001"
    assert cfg.gossip.preset == "fast_test" and cfg.gossip.seeds == "127.0.0.1:12005"
    assert cfg.cluster.meta == "127.0.0.1:12000"
    assert cfg.cluster.dead_grace_s == 5.0 and cfg.cluster.scrub_bytes_s == 0
    assert cfg.storage.reserve_bytes == 0 and cfg.log.level == "WARNING"
    primary = config_mod.parse(
        bc.node_conf(
            node_id="n1",
            zone="z1",
            data_dir=tmp_path / "n1",
            rpc_port=1,
            gossip_port=2,
            s3_port=3,
            admin_port=4,
        ),
        env={},
    )
    assert primary.cluster.meta == "" and primary.gossip.seeds == ""


def test_chunk_files_skip_tmp_and_bad(tmp_path: Path) -> None:
    chunks = tmp_path / "chunks"
    for rel, size in (("ab/cd/abcd01", 10), ("ab/ce/abce02", 20), ("tmp/x", 5), ("bad/abcd01.1", 7)):
        (chunks / rel).parent.mkdir(parents=True, exist_ok=True)
        (chunks / rel).write_bytes(b"x" * size)
    assert bc.chunk_files(tmp_path) == {"abcd01": 10, "abce02": 20}
    other = tmp_path / "other"
    (other / "chunks" / "ab" / "cd").mkdir(parents=True)
    (other / "chunks" / "ab" / "cd" / "abcd01").write_bytes(b"y")
    counts = bc.copy_counts([tmp_path, other])
    assert counts == Counter({"abcd01": 2, "abce02": 1})
    assert bc.spread(counts, {"abcd01", "abce02"}) == {1: 1, 2: 1}
    assert bc.describe(bc.spread(counts, {"abcd01", "abce02"})) == "1 x1, 1 x2"
    assert not bc.exactly(counts, {"abcd01", "abce02"}, 2)
    assert bc.exactly(Counter({"a": 2, "b": 2}), {"a", "b"}, 2)
    assert not bc.exactly(Counter({"a": 2, "b": 2, "c": 1}), {"a", "b"}, 2)


def test_free_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    ports = harness.free_ports(8, random.Random(1))
    assert len(set(ports)) == 8
    assert all(10000 <= p < max(harness._ephemeral_low(), 12000) for p in ports)


def test_table_shows_every_row_and_the_repair() -> None:
    res = {
        "nodes": 4,
        "mount_node": "n2",
        "size_mb": 256,
        "consistency": "strong",
        "caches_dropped": True,
        "rows": [
            {
                "target": "local",
                "write_MB_s": 600.0,
                "read_MB_s": 900.0,
                "write_ratio": 1.0,
                "read_ratio": 1.0,
            },
            {
                "target": "R=2",
                "replicas": 2,
                "write_MB_s": 80.0,
                "read_MB_s": 180.0,
                "write_ratio": 0.133,
                "read_ratio": 0.2,
                "copies_at_close": "64 x2",
                "copies": "64 x2",
            },
        ],
        "repair": {
            "replicas": 2,
            "data_mb": 256,
            "victim": "n4",
            "victim_bytes": 128 * bc.MiB,
            "victim_chunks": 32,
            "dead_grace_s": 5.0,
            "detect_s": 5.9,
            "repair_s": 1.2,
            "min_copies_s": 1.0,
            "total_s": 7.1,
            "repair_MB_s": 111.8,
            "repair_budget_MB_s": 104.9,
            "read_after_MB_s": 200.0,
        },
        "notes": ["something odd"],
    }
    out = bc.table(res)
    assert "R=2" in out and "local" in out and "64 x2 / 64 x2" in out
    assert "n4 held 128.0 MiB in 32 chunks" in out and "111.8 MB/s" in out
    assert out.splitlines()[-1] == "note: something odd"
