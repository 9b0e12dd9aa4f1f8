"""Cloud tiers end to end on one real daemon and real mounts: a tiered volume's chunks leave
the local disk for two tiers, reads come back through a fresh mount and S3, a tier that loses
its objects gets them back from the other on a verify pass, collected chunks' objects are
deleted, and pinning brings a tree back.  Plain-directory tiers ("dir") here; the providers
are tested against their emulators in test_tiering_clouds.py and test_tier_backends.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, Mount, admin_ok, free_port, fuse_available
from tests.s3.conftest import make_client

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not fuse_available(), reason="needs FUSE")]

# Passes only when the test asks (`dfs tier run`); no read cache, so every cold read asks a tier.
TIERS_CONF = "\n[tiers]\ninterval_s = 0\nverify_interval_s = 0\ncache_bytes = 0\n"
MARKER = b"TIERING-PLAINTEXT-MARKER"


def chunk_files(d: Daemon) -> set[str]:
    root = d.data_dir / "chunks"
    return {p.name for p in root.glob("??/??/*")}


def tier_objects(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.rglob("*") if p.is_file() and len(p.name) == 64}


def run_pass(d: Daemon, *args: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(d.cli("tier", "run", "--json", *args).stdout)
    return doc


def payload(i: int) -> bytes:
    return (MARKER + os.urandom(1024)) * (2500 + i * 700)  # ~2.5-4 MiB, several chunks


def test_tiered_volume_leaves_local_disk_and_reads_back(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "var", free_port(), extra_conf=TIERS_CONF)
    d.start()
    mounts: list[Mount] = []
    try:
        admin_ok(d, "POST", "/storage/volumes", {"name": "archive", "encryption": True})
        m = Mount(d, tmp_path / "mnt")
        m.start()
        mounts.append(m)
        files = {f"f{i}": payload(i) for i in range(3)}
        for name, data in files.items():
            (m.path / "archive" / name).write_bytes(data)
        m.stop()
        before = chunk_files(d)

        t1, t2 = tmp_path / "tier1", tmp_path / "tier2"
        t1.mkdir()
        t2.mkdir()
        d.cli("tier", "add", "t1", "--kind", "dir", "--bucket", str(t1), "--cost-per-gib-month", "0.02")
        d.cli("tier", "add", "t2", "--kind", "dir", "--bucket", str(t2))
        # A volume may name only defined tiers.
        bad = d.cli("tier", "attach", "archive", "nope", check=False)
        assert bad.returncode != 0 and "no tier 'nope'" in bad.stderr
        d.cli("tier", "attach", "archive", "t1", "t2", "--mode", "tiered")

        done = run_pass(d)
        cold = done["chunks_made_cold"]
        assert cold >= 3 and done["copies_stored"] == 2 * cold and not done["errors"], done
        after = chunk_files(d)
        assert len(before) - len(after) == cold, (len(before), len(after), cold)
        o1, o2 = tier_objects(t1), tier_objects(t2)
        assert len(o1) == len(o2) == cold
        # An encrypted volume's chunks leave the host as ciphertext only.
        assert not any(MARKER in blob for blob in o1.values())
        # A second pass finds nothing left to do.
        again = run_pass(d)
        assert again["copies_stored"] == 0 and again["chunks_made_cold"] == 0, again

        # Reads: a fresh mount (no cache) and S3 both get the data back from the tiers.
        m2 = Mount(d, tmp_path / "mnt2")
        m2.start()
        mounts.append(m2)
        for name, data in files.items():
            assert (m2.path / "archive" / name).read_bytes() == data
        s3 = make_client(d)
        assert s3.get_object(Bucket="archive", Key="f1")["Body"].read() == files["f1"]
        status = json.loads(d.cli("tier", "status", "--json").stdout)
        assert status["cold_chunks"] == cold and status["reads"]["cold_reads"] > 0
        text = d.cli("status").stdout
        assert "volume archive tiers  tiered to t1, t2" in text and "tier t1" in text, text
        assert {t["name"]: t["copies"] for t in status["tiers"]} == {"t1": cold, "t2": cold}
        assert status["tiers"][0]["monthly_cost"] is not None

        # Tier t1 loses everything: reads fall back to t2, and a verify pass stores it again.
        shutil.rmtree(t1)
        t1.mkdir()
        assert s3.get_object(Bucket="archive", Key="f2")["Body"].read() == files["f2"]
        # fsck sees what the tier lost (and, with --repair, forgets the copies, as verify does).
        report = d.fsck()
        assert f"{cold} chunk copies recorded in tier t1 are missing there" in report["problems"], report
        fixed = run_pass(d, "--verify")
        assert fixed["missing_copies_found"] == cold and fixed["copies_stored"] == cold, fixed
        assert len(tier_objects(t1)) == cold
        # A damaged object is found by the verify pass's read-back sample, and replaced.
        victim = next(p for p in t2.rglob("*") if p.is_file() and len(p.name) == 64)
        good = victim.read_bytes()
        victim.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        scrubbed = run_pass(d, "--verify")
        assert scrubbed["corrupt_copies_found"] == 1 and scrubbed["copies_stored"] == 1, scrubbed
        assert victim.read_bytes() == good

        # A deleted file's chunks are collected, and so are their objects in both tiers.
        (m2.path / "archive" / "f0").unlink()
        d.cli("gc", "--now")
        gone = run_pass(d)
        assert gone["objects_deleted"] > 0, gone
        assert len(tier_objects(t1)) == len(tier_objects(t2)) == cold - gone["objects_deleted"] // 2

        # Pinning brings the rest back to the local disk, as warm chunks.
        d.cli("tier", "pin", "/archive")
        warm = run_pass(d)
        assert warm["chunks_warmed"] > 0 and not warm["errors"], warm
        status = json.loads(d.cli("tier", "status", "--json").stdout)
        assert status["cold_chunks"] == 0
        # ...so they read with both tiers gone.
        t1.rename(tmp_path / "away1")
        t2.rename(tmp_path / "away2")
        for name in ("f1", "f2"):
            assert s3.get_object(Bucket="archive", Key=name)["Body"].read() == files[name]
        (tmp_path / "away1").rename(t1)
        (tmp_path / "away2").rename(t2)
        for mount in mounts:
            mount.stop()
        d.assert_clean()
    finally:
        for mount in mounts:
            mount.stop()
        d.stop()


CACHE_BYTES = 8 * 1024 * 1024


def test_cloud_volume_keeps_local_disks_as_a_bounded_cache(tmp_path: Path) -> None:
    """A "cloud" volume (the object store is its home) larger than the daemon's tier cache."""
    conf = f"\n[tiers]\ninterval_s = 0\nverify_interval_s = 0\ncache_bytes = {CACHE_BYTES}\n"
    d = Daemon(tmp_path / "var", free_port(), extra_conf=conf)
    d.start()
    mounts: list[Mount] = []
    try:
        store = tmp_path / "store"
        store.mkdir()
        d.cli("tier", "add", "home", "--kind", "dir", "--bucket", str(store))
        admin_ok(d, "POST", "/storage/volumes", {"name": "big", "tiers": ["home"], "tier_mode": "cloud"})
        m = Mount(d, tmp_path / "mnt")
        m.start()
        mounts.append(m)
        files = {f"f{i}": os.urandom(6 * 1024 * 1024 + i) for i in range(4)}  # 24 MiB > 8 MiB cache
        for name, data in files.items():
            (m.path / "big" / name).write_bytes(data)
        m.stop()
        before = chunk_files(d)
        done = run_pass(d)
        assert done["chunks_made_cold"] >= 4 and not done["errors"], done
        assert len(before) - len(chunk_files(d)) == done["chunks_made_cold"]
        cache = d.data_dir / "tier-cache"
        m2 = Mount(d, tmp_path / "mnt2")
        m2.start()
        mounts.append(m2)
        for _ in range(2):
            for name, data in files.items():
                assert (m2.path / "big" / name).read_bytes() == data
                cached = sum(p.stat().st_size for p in cache.iterdir())
                assert cached <= CACHE_BYTES, cached
        # The last file read is still cached: reading it through S3 costs no tier request.
        reads = json.loads(d.cli("tier", "status", "--json").stdout)["reads"]
        assert make_client(d).get_object(Bucket="big", Key="f3")["Body"].read() == files["f3"]
        after = json.loads(d.cli("tier", "status", "--json").stdout)["reads"]
        assert after["cache_hits"] > reads["cache_hits"] and after["cold_reads"] == reads["cold_reads"]
        for mount in mounts:
            mount.stop()
        d.assert_clean()
    finally:
        for mount in mounts:
            mount.stop()
        d.stop()


def test_age_and_path_decide_what_tiers(tmp_path: Path) -> None:
    """tier_after_days (a "day" of 1 s here) and tier_paths pick the files whose chunks move."""
    conf = "\n[tiers]\ninterval_s = 0\nverify_interval_s = 0\ncache_bytes = 0\nday_s = 1.0\n"
    d = Daemon(tmp_path / "var", free_port(), extra_conf=conf)
    d.start()
    m = Mount(d, tmp_path / "mnt")
    try:
        store = tmp_path / "store"
        store.mkdir()
        d.cli("tier", "add", "cold", "--kind", "dir", "--bucket", str(store))
        admin_ok(d, "POST", "/storage/volumes", {"name": "mixed"})
        m.start()
        vol = m.path / "mixed"
        (vol / "logs").mkdir()
        (vol / "keep").mkdir()
        data = {p: os.urandom(300_000 + i) for i, p in enumerate(["logs/old", "logs/new", "keep/old"])}
        for rel, blob in data.items():
            (vol / rel).write_bytes(blob)
        # Two "hours" (of 1 s days: 7200 days) ago for the old ones; the new one is fresh.
        for rel in ("logs/old", "keep/old"):
            os.utime(vol / rel, (1, 1))
        attach = ["tier", "attach", "mixed", "cold", "--mode", "tiered", "--after-days", "3600"]
        d.cli(*attach, "--path", "/logs")
        done = run_pass(d)
        # Only logs/old qualifies: keep/ is outside the paths, logs/new is too young.
        assert done["chunks_made_cold"] == 1 and done["copies_stored"] == 1, done
        moved = set(tier_objects(store))
        assert len(moved) == 1 and not moved & chunk_files(d)
        # Widen the policy to the whole volume: keep/old follows, logs/new still stays.
        d.cli(*attach)
        assert run_pass(d)["chunks_made_cold"] == 1
        assert len(tier_objects(store)) == 2
        m.stop()
        m.start()
        for rel, blob in data.items():
            assert (m.path / "mixed" / rel).read_bytes() == blob
        m.stop()
        d.assert_clean()
    finally:
        m.stop()
        d.stop()
