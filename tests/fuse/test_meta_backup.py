"""Metadata backups with real daemons: dump, lose meta.db, restore, read every file back.

Single host (the backup in its own data dir) and a two-node cluster whose metadata host loses
its whole data directory's metadata and backups (restored from the copy on the other node).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, Daemon, Mount, free_port, needs_fuse, wait_for

# Both copies of every chunk on disk before a write returns; repair looks every 2 s.
CLUSTER = 'replicas = 2\nconsistency = "strong"\nanti_entropy_interval_s = 2.0\n'


def _meta_files(d: Daemon) -> list[Path]:
    return [p for p in d.data_dir.iterdir() if p.name.startswith("meta.db")]


def _write_tree(root: Path, prefix: str, n: int) -> dict[str, str]:
    """n files (some multi-block, some inline, a hard link, a symlink) -> sha256 of each."""
    sums = {}
    (root / prefix).mkdir()
    for i in range(n):
        data = os.urandom(100 if i % 3 == 0 else 300_000 + i)
        path = root / prefix / f"f{i}"
        path.write_bytes(data)
        sums[f"{prefix}/f{i}"] = hashlib.sha256(data).hexdigest()
    os.link(root / prefix / "f1", root / prefix / "link")
    sums[f"{prefix}/link"] = sums[f"{prefix}/f1"]
    os.symlink("f2", root / prefix / "sym")
    os.setxattr(root / prefix / "f0", "user.note", b"kept")
    return sums


def _check_tree(root: Path, sums: dict[str, str]) -> None:
    for name, digest in sums.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name


def _only_orphans(d: Daemon) -> None:
    """Chunks written after the backup are unreferenced now: fsck names them (orphans) and
    nothing else; they are kept until the sweep's delay, never deleted at once."""
    report = d.fsck()
    assert [p for p in report["problems"] if "(orphans)" not in p] == [], report


def _restore(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dfs"), "meta", "restore", *args, "--config", str(d.conf_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@needs_fuse
def test_single_host_loses_meta_db_and_restores_it(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "var", free_port())
    d.start()
    m = Mount(d, tmp_path / "mnt")
    m.start()
    try:
        before = _write_tree(m.path, "before", 12)
        made = json.loads(d.cli("meta", "backup", "--json").stdout)
        assert made["backup"]["rows"] > 12 and made["copies"] == {}
        listed = json.loads(d.cli("meta", "backups", "--json").stdout)
        assert [b["id"] for b in listed] == [made["backup"]["id"]]
        dump_file = tmp_path / "meta.dump"
        d.cli("meta", "dump", "--output", str(dump_file))
        assert dump_file.stat().st_size > 0
        after = _write_tree(m.path, "after", 3)  # not in the backup
        assert after
    finally:
        m.stop()
    chunks_before = len(d.chunk_files())
    d.stop()
    for p in _meta_files(d):
        p.unlink()

    res = _restore(d, "--latest")
    assert res.returncode == 0, res.stderr
    assert "loaded" in res.stdout
    # A second restore never overwrites the metadata it made.
    again = _restore(d, "--latest")
    assert again.returncode != 0 and "move it away" in again.stderr
    d.start()
    m.start()
    try:
        _check_tree(m.path, before)
        assert os.readlink(m.path / "before" / "sym") == "f2"
        assert os.getxattr(m.path / "before" / "f0", "user.note") == b"kept"
        assert not (m.path / "after").exists()
        (m.path / "new").write_bytes(b"written after the restore")  # inode numbers carry on
    finally:
        m.stop()
    assert len(d.chunk_files()) >= chunks_before  # nothing deleted at once
    _only_orphans(d)
    d.stop()

    # The dump file loads the same way (moving to another host: dfs meta load).
    for p in _meta_files(d):
        p.unlink()
    res = subprocess.run(
        [str(BIN / "dfs"), "meta", "load", str(dump_file), "--config", str(d.conf_path)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    d.start()
    m.start()
    try:
        _check_tree(m.path, before)
    finally:
        m.stop()
        _only_orphans(d)
        d.stop()


@needs_fuse
def test_the_metadata_host_loses_everything_but_its_secret_and_restores_from_a_peer(tmp_path: Path) -> None:
    primary = Daemon(
        tmp_path / "n1",
        free_port(),
        node_id="n1",
        extra_conf="[cluster]\n" + CLUSTER,
    )
    primary.start()
    secondary = Daemon(
        tmp_path / "n2",
        free_port(),
        node_id="n2",
        extra_conf=f'[cluster]\nmeta = "{primary.address}"\n' + CLUSTER,
        joins=primary,
    )
    secondary.start()
    try:

        def active() -> set[str]:
            raw = json.loads(primary.cli("layout", "--json").stdout)
            return {n["node_id"] for n in raw["nodes"] if n["state"] == "active"}

        wait_for(lambda: active() == {"n1", "n2"}, 30, "both nodes active")
        m = Mount(primary, tmp_path / "mnt")
        m.start()
        try:
            sums = _write_tree(m.path, "data", 8)
        finally:
            m.stop()
        made = json.loads(primary.cli("meta", "backup", "--json").stdout)
        assert made["copies"] == {"n2": "copied"}, made
        on_n2 = json.loads(secondary.cli("meta", "backups", "--json").stdout)
        assert on_n2[0]["id"] == made["backup"]["id"]
        primary.stop()
        # The metadata host's disk is replaced: only node.credential and dfs.conf are put back.
        keep = {"node.credential", "dfs.conf"}
        for p in primary.data_dir.iterdir():
            if p.name not in keep:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        res = _restore(primary, "--from", secondary.address)
        assert res.returncode == 0, res.stderr
        assert (primary.data_dir / "cluster.key").read_bytes() == (
            secondary.data_dir / "cluster.key"
        ).read_bytes()
        primary.start()
        m = Mount(secondary, tmp_path / "mnt2")
        m.start()
        try:
            _check_tree(m.path, sums)  # every chunk from n2's copies (n1's store is empty)
        finally:
            m.stop()
        # Repair puts n1's copies back (it lost its chunk store too); then fsck is clean.
        wait_for(lambda: primary.fsck()["problems"] == [], 120, "repair to restore R copies")
    finally:
        secondary.stop()
        primary.stop()


def test_restore_refuses_a_running_daemon_and_a_missing_backup(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "var", free_port())
    d.start()
    try:
        res = _restore(d, "--latest")
        assert res.returncode != 0 and "no metadata backups" in res.stderr
        d.cli("meta", "backup")
        res = _restore(d, "--latest")
        assert res.returncode != 0 and ("another dfsd" in res.stderr or "move it away" in res.stderr)
        res = _restore(d, "20000101T000000.000Z")
        assert res.returncode != 0 and "no backup 20000101T000000.000Z" in res.stderr
    finally:
        d.stop()
    d.assert_clean() if d.proc is not None else None


@pytest.mark.parametrize("keep", [2])
def test_each_node_keeps_the_newest_backups(tmp_path: Path, keep: int) -> None:
    d = Daemon(tmp_path / "var", free_port(), extra_conf=f"[meta]\nbackup_keep = {keep}\n")
    d.start()
    try:
        ids = [json.loads(d.cli("meta", "backup", "--json").stdout)["backup"]["id"] for _ in range(4)]
        listed = [b["id"] for b in json.loads(d.cli("meta", "backups", "--json").stdout)]
        assert listed == ids[::-1][:keep]
        assert sorted(p.name for p in (d.data_dir / "backups").iterdir()) == sorted(
            f"{i}{suffix}" for i in ids[-keep:] for suffix in (".dfsmeta", ".json")
        )
        for p in (d.data_dir / "backups").iterdir():
            assert p.stat().st_mode & 0o077 == 0
        d.assert_clean()
    finally:
        d.stop()
