"""Metadata backups with real daemons: dump, lose meta.db, restore, read every file back.

A backup is its dump stored as chunks with R copies in the cluster and a manifest on every node
(daemon/service/backups.py).  Single host: the chunks are in its own store, and a restore
reassembles the dump from them.  Clusters: each chunk is on exactly R nodes, every node lists the
backup, fsck and the orphan sweep leave backup chunks alone, pruned backups' chunks are deleted
everywhere, and a metadata host that lost its whole data directory restores from a peer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dfs.core import codec
from tests.cluster.test_disk_failure import chunk_names
from tests.cluster.test_replication import loopback_cluster
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


def _backup(d: Daemon) -> dict[str, Any]:
    made: dict[str, Any] = json.loads(d.cli("meta", "backup", "--json").stdout)
    return made


def _listed(d: Daemon) -> list[str]:
    return [b["id"] for b in json.loads(d.cli("meta", "backups", "--json").stdout)]


def _chunk_path(d: Daemon, hexid: str) -> Path:
    return d.data_dir / "chunks" / codec.chunk_relpath(hexid)


def _holders(daemons: list[Daemon], info: dict[str, Any]) -> dict[str, list[str]]:
    """Each chunk of backup ``info`` -> the nodes whose store holds it."""
    return {h: [d.node_id for d in daemons if _chunk_path(d, h).exists()] for h in info["chunks"]}


def _no_dump_files(d: Daemon) -> None:
    """A node keeps manifests only: the dumps are chunks."""
    names = [p.name for p in (d.data_dir / "backups").iterdir()]
    assert names and all(n.endswith(".json") for n in names), names


def _active(d: Daemon) -> set[str]:
    raw = json.loads(d.cli("layout", "--json").stdout)
    return {n["node_id"] for n in raw["nodes"] if n["state"] == "active"}


@contextlib.contextmanager
def _cluster(tmp_path: Path, n: int, meta_conf: str = "", cluster_conf: str = "") -> Iterator[list[Daemon]]:
    """n1..n<n>, n1 the metadata primary, R = 2 (strong), all active in the layout.  No gossip
    seeds: a node stopped and started again is not left marked dead for a while, which would
    only slow repair here."""
    conf = "[cluster]\n" + CLUSTER + cluster_conf
    with loopback_cluster(tmp_path, n, conf, meta_conf, seeds=False) as daemons:
        yield daemons


@needs_fuse
def test_single_host_loses_meta_db_and_restores_it(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "var", free_port())
    d.start()
    m = Mount(d, tmp_path / "mnt")
    m.start()
    try:
        before = _write_tree(m.path, "before", 12)
        made = _backup(d)
        info = made["backup"]
        assert info["rows"] > 12 and made["copies"] == {}
        # One host: each piece is one chunk in its own store, and only the manifest is a file.
        assert info["replicas"] == 1 and info["chunks"]
        assert all(_chunk_path(d, h).exists() for h in info["chunks"])
        _no_dump_files(d)
        assert _listed(d) == [info["id"]]
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

    # The dump above made a second backup; restore the first, from this host's own chunks.
    res = _restore(d, info["id"])
    assert res.returncode == 0, res.stderr
    assert "loaded" in res.stdout
    _no_dump_files(d)  # the dump put together for the load is gone again
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
    # The orphan sweep takes the chunks of the files written after the backup, never the
    # backups' own chunks (referenced by no metadata either).
    d.cli("gc", "--orphans", "--now")
    assert all(_chunk_path(d, h).exists() for h in info["chunks"])
    d.assert_clean()
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
    try:
        m.start()
        try:
            _check_tree(m.path, before)
        finally:
            m.stop()
        _only_orphans(d)
        d.cli("gc", "--orphans", "--now")
        d.assert_clean()
    finally:
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
        wait_for(lambda: _active(primary) == {"n1", "n2"}, 30, "both nodes active")
        m = Mount(primary, tmp_path / "mnt")
        m.start()
        try:
            sums = _write_tree(m.path, "data", 8)
        finally:
            m.stop()
        made = _backup(primary)
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
        _no_dump_files(primary)  # the restored host keeps the manifest, as every node does
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


def _backup_until(
    primary: Daemon, daemons: list[Daemon], wanted: Callable[[dict[str, list[str]]], bool]
) -> dict[str, Any]:
    """New backups until one's chunk placement (chunk -> holders) is ``wanted``: each chunk
    lands on 2 of the 3 nodes by its id, so a few backups surely give any placement."""
    for _ in range(40):
        info = _backup(primary)["backup"]
        if wanted(_holders(daemons, info)):
            return info
    raise AssertionError("no backup was placed as wanted")


def _wipe_all_but_credentials(d: Daemon) -> None:
    """The metadata host's disk is replaced: only node.credential and dfs.conf are put back."""
    for p in d.data_dir.iterdir():
        if p.name not in {"node.credential", "dfs.conf"}:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


@needs_fuse
def test_backup_chunks_are_on_r_nodes_every_node_lists_the_backup_and_a_peer_restores_it(
    tmp_path: Path,
) -> None:
    with _cluster(tmp_path, 3, meta_conf="backup_keep = 100\n") as daemons:
        n1, n2, n3 = daemons
        m = Mount(n1, tmp_path / "mnt")
        m.start()
        try:
            sums = _write_tree(m.path, "data", 8)
        finally:
            m.stop()
        n1.assert_clean()
        made = _backup(n1)
        info = made["backup"]
        assert made["copies"] == {"n2": "copied", "n3": "copied"}, made
        assert info["replicas"] == 2
        for d in daemons:
            assert _listed(d) == [info["id"]], d.node_id
            _no_dump_files(d)
        holders = _holders(daemons, info)
        # R copies of each chunk, not one on every node.
        assert all(len(nodes) == 2 for nodes in holders.values()), holders
        # Backup chunks are referenced by no metadata, yet neither fsck nor the sweep takes them.
        n1.assert_clean()
        for d in daemons:
            d.cli("gc", "--orphans", "--now")
        assert _holders(daemons, info) == holders
        n1.assert_clean()

        # A dump through a node lacking a piece reads it from a node that has it (each dump is
        # a new backup, placed anew).
        dump_file = tmp_path / "meta.dump"
        for _ in range(40):
            n3.cli("meta", "dump", "--output", str(dump_file))  # checks the dump's SHA-256
            dumped = json.loads(n3.cli("meta", "backups", "--json").stdout)[0]
            if any("n3" not in nodes for nodes in _holders(daemons, dumped).values()):
                break
        else:
            raise AssertionError("no dump had a piece n3 lacks")
        assert _listed(n1) == _listed(n2) == _listed(n3)

        # Here the peer the restore goes through holds every piece (the next test: it lacks one).
        target = _backup_until(n1, daemons, lambda h: all("n2" in nodes for nodes in h.values()))
        every = _listed(n1)
        n1.stop()
        _wipe_all_but_credentials(n1)
        # Not even a manifest is left here: only a peer can help.
        res = _restore(n1, "--latest")
        assert res.returncode != 0 and "no metadata backups" in res.stderr
        res = _restore(n1, "--from", n2.address, target["id"])
        assert res.returncode == 0, res.stderr
        n1.start()
        # The restored host took every manifest, as every node holds them.
        assert _listed(n1) == every
        m = Mount(n2, tmp_path / "mnt2")
        m.start()
        try:
            _check_tree(m.path, sums)
        finally:
            m.stop()
        # Repair puts n1's file chunks back; backup chunks are no orphans and no missing copies.
        wait_for(lambda: n1.fsck()["problems"] == [], 120, "repair to restore R copies")


def test_a_restore_through_a_peer_lacking_a_piece_fetches_it_from_another(tmp_path: Path) -> None:
    """The metadata host is gone, so the peer cannot ask it for the layout: it goes by the last
    layout it read to find the pieces it lacks.  That layout is as new as the last backup's
    manifest, not as the peer's periodic refresh (here too slow to matter: n2 read the layout
    when it joined, before n3 had)."""
    with _cluster(tmp_path, 3, cluster_conf="refresh_s = 600.0\n") as daemons:
        n1, n2, _ = daemons
        target = _backup_until(n1, daemons, lambda h: any(nodes == ["n1", "n3"] for nodes in h.values()))
        n1.stop()
        _wipe_all_but_credentials(n1)
        res = _restore(n1, "--from", n2.address, target["id"])
        assert res.returncode == 0, res.stderr
        n1.start()
        wait_for(lambda: n1.fsck()["problems"] == [], 60, "fsck clean once n1 is back in the layout")


def test_pruned_backups_chunks_are_deleted_from_every_store(tmp_path: Path) -> None:
    with _cluster(tmp_path, 3, meta_conf="backup_keep = 2\n") as daemons:
        n1 = daemons[0]
        infos = [_backup(n1)["backup"] for _ in range(3)]
        oldest, kept = infos[0], infos[1:]
        for d in daemons:
            assert _listed(d) == [kept[1]["id"], kept[0]["id"]], d.node_id
        still = {h for info in kept for h in info["chunks"]}
        freed = set(oldest["chunks"]) - still
        assert freed  # each dump starts with its own creation time: no backup shares its first piece
        for d in daemons:
            assert not [h for h in freed if _chunk_path(d, h).exists()], d.node_id
        for info in kept:
            assert all(len(nodes) == 2 for nodes in _holders(daemons, info).values())
        n1.assert_clean()


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


def test_a_local_restore_missing_a_chunk_names_from(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "var", free_port())
    d.start()
    try:
        info = _backup(d)["backup"]
    finally:
        d.stop()
    _chunk_path(d, info["chunks"][-1]).unlink()  # e.g. on another node of a cluster
    res = _restore(d, "--latest")
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "not on this host" in lines[0] and "--from HOST:PORT" in lines[0], res.stderr
    _no_dump_files(d)  # nothing of the attempt left behind
    d.start()
    try:
        d.assert_clean()  # the metadata was never touched
    finally:
        d.stop()


@pytest.mark.parametrize("keep", [2])
def test_each_node_keeps_the_newest_backups(tmp_path: Path, keep: int) -> None:
    d = Daemon(tmp_path / "var", free_port(), extra_conf=f"[meta]\nbackup_keep = {keep}\n")
    d.start()
    try:
        infos = [_backup(d)["backup"] for _ in range(4)]
        ids = [info["id"] for info in infos]
        assert _listed(d) == ids[::-1][:keep]
        assert sorted(p.name for p in (d.data_dir / "backups").iterdir()) == sorted(
            f"{i}.json" for i in ids[-keep:]
        )
        for p in (d.data_dir / "backups").iterdir():
            assert p.stat().st_mode & 0o077 == 0
        # The pruned backups' chunks are gone from the store, the kept ones' are there.
        still = {h for info in infos[-keep:] for h in info["chunks"]}
        assert still and all(_chunk_path(d, h).exists() for h in still)
        freed = {h for info in infos[:-keep] for h in info["chunks"]} - still
        assert freed and not [h for h in freed if _chunk_path(d, h).exists()]
        d.assert_clean()
    finally:
        d.stop()


def test_a_backup_that_fails_deletes_its_pieces_everywhere(tmp_path: Path) -> None:
    """R = 3 on three nodes with n3 stopped: each piece's copies on n1 and n2 are made, n3's
    cannot be (no spare node), so the backup fails, and its maker deletes those copies at once
    rather than leave them to the nodes' orphan sweeps (a day later by default)."""
    conf = '[cluster]\nreplicas = 3\nconsistency = "strong"\n'
    with loopback_cluster(tmp_path, 3, conf, seeds=False) as daemons:
        n1, n2, n3 = daemons
        kept = _backup(n1)["backup"]
        stored = {d.node_id: chunk_names(d.data_dir) for d in (n1, n2)}
        assert all(stored.values()), stored
        n3.stop()
        res = n1.cli("meta", "backup", check=False)
        assert res.returncode != 0 and "2 of 3 required copies durable" in res.stderr, res.stderr
        assert {d.node_id: chunk_names(d.data_dir) for d in (n1, n2)} == stored
        assert _listed(n1) == _listed(n2) == [kept["id"]]
        n3.start()
        wait_for(lambda: n1.fsck()["problems"] == [], 60, "fsck clean with n3 back")
