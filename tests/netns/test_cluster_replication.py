"""Replication, failure and repair of a 5-host cluster, each host a network namespace.

Five daemons n1..n5 in zones z1, z2, z3, z1, z2 with R=3: n1 is the metadata
primary, the others forward metadata to it.  Because placement takes one
replica per zone while zones last, n3 (the only node of z3) holds a copy of
every chunk, and of n1/n4 (z1) and n2/n5 (z2) exactly one holds each chunk.

Every test ends with the same invariant check: once repair has settled, every
chunk file sits on exactly the nodes the current layout's placement table
assigns it (so R copies in R distinct zones), and ``dfs fsck`` on the primary,
which checks metadata against every node's chunks and every committed chunk
against its replication factor, finds nothing.

"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from dfs.core.config import StorageConfig
from dfs.core.placement import Layout, PlacementTable
from tests.netns.harness import Net, NsDaemon, NsMount, start_cluster, wait_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

NAMES = ("n1", "n2", "n3", "n4", "n5")
ZONES = ("z1", "z2", "z3", "z1", "z2")
R = 3
MiB = 1024 * 1024
BLOCK = 4 * MiB
# The daemons run with the default geometry: files up to this size live inline (no chunk).
INLINE_MAX = StorageConfig().inline_max
HEX_ID = re.compile(r"[0-9a-f]{64}")

# Short repair periods, like tests/cluster/test_replication.py.
CLUSTER: dict[str, Any] = {
    "replicas": R,
    "consistency": "quorum",
    "dead_grace_s": 600.0,
    "hint_interval_s": 0.5,
    "anti_entropy_interval_s": 2.0,
    "refresh_s": 0.5,
    "peer_timeout_s": 5.0,
}


# --------------------------------------------------------------------------- cluster helpers


def start_replicated(
    net: Net,
    base: Path,
    *,
    cluster: dict[str, Any] | None = None,
    storage: dict[str, Any] | None = None,
    preset: str = "fast_test",
    per_node: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> list[NsDaemon]:
    """n1..n5 on five hosts; n1 is the metadata primary; returns once all are active in the layout.

    ``per_node`` maps a node id to configuration sections merged over that node's only.
    """
    conf: dict[str, dict[str, Any]] = {"cluster": {**CLUSTER, **(cluster or {})}}
    if storage:
        conf["storage"] = dict(storage)
    daemons = start_cluster(net, base, NAMES, zones=ZONES, conf=conf, start=False)
    primary = daemons[0]
    for d in daemons:
        d.preset = preset
        if d is not primary:
            d.update_conf({"cluster": {"meta": primary.address}})
        d.update_conf((per_node or {}).get(d.node_id, {}))
    for d in daemons:
        d.start()
    wanted = dict.fromkeys(NAMES, "active")
    wait_until(lambda: layout_states(primary) == wanted, 60, "all five nodes active in the layout")
    for d in daemons:  # every daemon fetched the layout with all five

        def sees_all(d: NsDaemon = d) -> bool:
            return layout_states(d) == wanted

        wait_until(sees_all, 30, f"{d.node_id} to see all five active")
    return daemons


def mount(d: NsDaemon, path: Path) -> NsMount:
    """A mount made on ``d``'s host, connected to ``d``, using ``d``'s [cluster] timings."""
    return d.mount(path, options=f"config={d.conf_path}")


def layout_raw(d: NsDaemon) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(d.cli("layout", "--json", timeout=30).stdout)
    return raw


def layout_states(d: NsDaemon) -> dict[str, str]:
    res = d.cli("layout", "--json", check=False, timeout=30)
    if res.returncode != 0:
        return {}
    return {n["node_id"]: n["state"] for n in json.loads(res.stdout)["nodes"]}


def placement(d: NsDaemon) -> PlacementTable:
    """The placement table of the layout ``d`` serves now."""
    return PlacementTable(Layout.from_wire(layout_raw(d)))


def chunk_files(d: NsDaemon) -> dict[str, Path]:
    """Chunk id (hex) -> file, of every chunk in ``d``'s store (tmp/ and bad/ are not chunks)."""
    top = d.data_dir / "chunks"
    out: dict[str, Path] = {}
    for root, dirs, files in os.walk(top):
        rel = Path(root).relative_to(top).parts
        if rel[:1] in (("tmp",), ("bad",)):
            dirs.clear()
            continue
        for name in files:
            if HEX_ID.fullmatch(name):
                out[name] = Path(root) / name
    return out


def holders(daemons: Sequence[NsDaemon]) -> dict[str, set[str]]:
    """Chunk id (hex) -> ids of the given nodes holding a copy."""
    out: dict[str, set[str]] = {}
    for d in daemons:
        for name in chunk_files(d):
            out.setdefault(name, set()).add(d.node_id)
    return out


def placement_problems(primary: NsDaemon, daemons: Sequence[NsDaemon], r: int = R) -> list[str]:
    """Chunks not held by exactly their replicas under the current layout (empty: all in place)."""
    table = placement(primary)
    zone = {n.node_id: n.zone for n in table.layout.nodes}
    zones_left = len({zone[n] for n in table.eligible})
    problems = []
    for cid, nodes in sorted(holders(daemons).items()):
        want = set(table.for_chunk(bytes.fromhex(cid), r))
        if nodes != want:
            problems.append(f"{cid[:16]} on {sorted(nodes)}, placement says {sorted(want)}")
        elif len({zone[n] for n in nodes}) != min(r, zones_left):
            problems.append(f"{cid[:16]} on {sorted(nodes)}: zones not distinct")
    return problems


def wait_until(
    pred: Callable[[], bool], timeout_s: float, what: str, detail: Callable[[], str] | None = None
) -> None:
    """Poll ``pred`` (at most every 0.25 s) until true; fail with ``detail()`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            extra = f": {detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{extra}")
        time.sleep(0.25)


def log_tails(daemons: Sequence[NsDaemon], chars: int = 1500) -> str:
    return "\n".join(f"--- {d.node_id} dfsd.log:\n{d.log_tail(chars)}" for d in daemons)


def assert_invariant(
    primary: NsDaemon, live: Sequence[NsDaemon], timeout_s: float = 120
) -> dict[str, set[str]]:
    """Repair settles: every chunk on exactly its R placement nodes among ``live``; fsck clean.

    Returns the final chunk -> holders map.
    """
    primary.cli("status", "--wait", "--timeout", str(int(timeout_s)), timeout=timeout_s + 30)
    last: list[str] = []

    def settled() -> bool:
        last[:] = placement_problems(primary, live)
        return not last

    wait_until(
        settled,
        timeout_s,
        "every chunk on exactly its placement nodes",
        lambda: f"{len(last)} chunk(s) out of place, e.g. {last[:5]}\n{log_tails(live)}",
    )
    where = holders(live)
    report = primary.fsck()
    assert report["problems"] == [], f"fsck on the primary: {report['problems']}\n{log_tails(live)}"
    # fsck saw the same copies we count on disk.
    assert report["chunks_stored"] == R * len(where), (report, len(where))
    assert report["orphans"] == 0
    assert report.get("under_replicated", 0) == 0
    return where


def per_node_share(primary: NsDaemon, chunk_ids: Sequence[str]) -> dict[str, set[str]]:
    """Node -> the chunk ids placement assigns it."""
    table = placement(primary)
    share: dict[str, set[str]] = {}
    for cid in chunk_ids:
        for node in table.for_chunk(bytes.fromhex(cid), R):
            share.setdefault(node, set()).add(cid)
    return share


def write_file(path: Path, data: bytes) -> None:
    """Write, fsync and close: returning means the file is acknowledged."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- 1. tree across hosts


TREE_SIZES = [
    0, 1, 100, 4096, 4097, 12_345, 50_000, 65_536, 300_000, 777_777,
    MiB, MiB + 7, 2 * MiB, 3 * MiB, BLOCK - 1, BLOCK, BLOCK + 1, 5_000_000, 9 * MiB + 3,
    INLINE_MAX, INLINE_MAX + 1,
]  # fmt: skip


TEXT = b"the quick brown fox jumps over the lazy dog\n" * 150_000  # compressible, two blocks


def make_tree(root: Path, rng: random.Random) -> dict[str, tuple[str, Any]]:
    """~20 files of mixed sizes (inline, one block, several blocks) in nested dirs, plus symlinks.

    Returns what :func:`snapshot` must find under ``root``.
    """
    expected: dict[str, tuple[str, Any]] = {}
    dirs = ["tree", "tree/a", "tree/a/b", "tree/a/b/c", "tree/d"]
    for d in dirs:
        (root / d).mkdir()
        expected[d] = ("dir", None)
    files: dict[str, bytes] = {}
    for i, size in enumerate(TREE_SIZES):
        files[f"{dirs[i % len(dirs)]}/f{i:02d}-{size}.bin"] = rng.randbytes(size)
    files["tree/a/text.txt"] = TEXT
    # The same 4 MiB block as another file (dedup: one chunk, two references).
    files["tree/a/b/c/copy-of-4MiB.bin"] = files[
        f"{dirs[BLOCK_INDEX % len(dirs)]}/f{BLOCK_INDEX:02d}-{BLOCK}.bin"
    ]
    for rel, data in files.items():
        write_file(root / rel, data)
        expected[rel] = ("file", data)
    links = {"tree/link-to-file": "a/b/c/f03-4096.bin", "tree/a/link-to-dir": "../d"}
    for rel, target in links.items():
        os.symlink(target, root / rel)
        expected[rel] = ("link", target)
    return expected


BLOCK_INDEX = TREE_SIZES.index(BLOCK)
# Distinct chunks of the tree: every block of every file above the inline limit is
# random, so unique, except the copy's; the text file has two (different) blocks.
TREE_CHUNKS = sum(-(-s // BLOCK) for s in TREE_SIZES if s > INLINE_MAX) + 2


def snapshot(root: Path) -> dict[str, tuple[str, Any]]:
    """Relative path -> ("dir", None) | ("link", target) | ("file", bytes), without following links."""
    out: dict[str, tuple[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", None)
            else:
                out[rel] = ("file", p.read_bytes())
    return out


def test_tree_written_on_one_host_reads_identically_on_another(net: Net, tmp_path: Path) -> None:
    """Acceptance item 1: a tree written through a mount on n4 reads identically through a mount
    on n5 connected to n5's own daemon (a secondary); every chunk has exactly R=3 copies, on the
    nodes placement assigns, in the three zones; fsck on the primary is clean."""
    daemons = start_replicated(net, tmp_path)
    n1, _n2, _n3, n4, n5 = daemons
    with mount(n4, tmp_path / "m-a") as ma, mount(n5, tmp_path / "m-b") as mb:
        expected = make_tree(ma.path, random.Random(1))
        assert len([v for v in expected.values() if v[0] == "file"]) >= 20
        read = snapshot(mb.path)
        assert sorted(read) == sorted(expected)
        for rel, (kind, value) in expected.items():
            assert read[rel][0] == kind, rel
            assert read[rel][1] == value, f"{rel} differs when read on {n5.node_id}"
        assert (mb.path / "tree" / "link-to-file").read_bytes() == expected["tree/a/b/c/f03-4096.bin"][1]
        assert sorted(os.listdir(mb.path / "tree" / "a" / "link-to-dir")) == sorted(
            os.listdir(mb.path / "tree" / "d")
        )
    where = assert_invariant(n1, daemons)
    assert len(where) == TREE_CHUNKS
    zones = dict(zip(NAMES, ZONES, strict=True))
    for cid, nodes in where.items():
        assert len(nodes) == R and {zones[n] for n in nodes} == {"z1", "z2", "z3"}, (cid, nodes)


# --------------------------------------------------------------------------- 2 + 4. SIGKILL during writes


class Writer(threading.Thread):
    """Writes files one by one (write, fsync, close) and records which were acknowledged."""

    def __init__(self, directory: Path, seed: int, max_files: int = 500) -> None:
        super().__init__(name=f"writer-{directory.name}", daemon=True)
        self.directory = directory
        self.rng = random.Random(seed)
        self.max_files = max_files
        self.acked: dict[str, bytes] = {}
        self.failed: dict[str, str] = {}
        self.stop = threading.Event()
        self.durations: list[float] = []

    def run(self) -> None:
        sizes = [MiB + 5, 5 * MiB, 20_000, 2 * MiB + 3, BLOCK + 17]
        for i in range(self.max_files):
            if self.stop.is_set():
                return
            data = self.rng.randbytes(sizes[i % len(sizes)])
            path = self.directory / f"f{i:03d}"
            started = time.monotonic()
            stage = "open"
            try:
                with open(path, "wb") as f:
                    stage = "write"
                    f.write(data)
                    f.flush()
                    stage = "fsync"
                    os.fsync(f.fileno())
                    stage = "close"
            except OSError as exc:
                at = time.strftime("%H:%M:%S", time.gmtime()) + f" ({time.monotonic() - started:.2f}s in)"
                self.failed[path.name] = f"{stage}: {exc!r} at {at}"
            else:
                self.acked[path.name] = data
            self.durations.append(time.monotonic() - started)

    def finish(self, timeout_s: float = 120) -> None:
        self.stop.set()
        self.join(timeout_s)
        assert not self.is_alive(), f"{self.name} still writing after {timeout_s}s"


def set_consistency(directory: Path, level: str) -> None:
    directory.mkdir()
    os.setxattr(directory, "user.dfs.consistency", level.encode())
    assert os.getxattr(directory, "user.dfs.consistency") == level.encode()


def test_sigkill_during_strong_and_quorum_writes_loses_nothing_then_host_is_marked_out(
    net: Net, tmp_path: Path
) -> None:
    """Acceptance items 2 and 4.

    Two writers (one in a strong directory, one in a quorum directory) write through a mount on
    n2 while n4, a replica of about half of all chunks, is killed with SIGKILL.  Every file whose
    fsync and close returned reads back byte-identical from a mount on another surviving host.
    After dead_grace_s the primary marks n4 out of the layout, and the survivors restore R copies
    of everything: each survivor holds exactly the chunks placement now assigns it.

    A write that failed may have stored chunks it never committed: orphans, garbage rather than
    lost data.  fsck reports them; see remove_orphans_of_failed_writes.
    """
    daemons = start_replicated(net, tmp_path, cluster={"dead_grace_s": 3.0})
    n1, n2, n3, n4, n5 = daemons
    epoch_before = layout_raw(n1)["epoch"]
    with mount(n2, tmp_path / "m-w") as mw:
        writers = []
        for level, seed in (("strong", 11), ("quorum", 12)):
            set_consistency(mw.path / level, level)
            writers.append(Writer(mw.path / level, seed))
        strong, quorum = writers
        for w in writers:
            w.start()
        wait_until(lambda: all(len(w.acked) >= 4 for w in writers), 120, "writes before the kill")
        n4.kill()
        acked_at_kill = [len(w.acked) for w in writers]
        # Keep writing while n4 is declared dead and then marked out, until each writer has had
        # 4 more files acknowledged after that.
        wait_until(lambda: layout_states(n1).get("n4") == "out", 60, "n4 marked out")
        acked_at_out = [len(w.acked) for w in writers]
        wait_until(
            lambda: all(len(w.acked) >= k + 4 for w, k in zip(writers, acked_at_out, strict=True)),
            120,
            "writes after the kill",
            lambda: f"failed: {[w.failed for w in writers]}\n{log_tails([n1, n2])}",
        )
        assert all(len(w.acked) > k for w, k in zip(writers, acked_at_kill, strict=True))
        for w in writers:
            w.finish()
        # Writes go on at both levels with a replica gone: substitutes take its copies.
        assert quorum.failed == {}, quorum.failed
        assert strong.failed == {}, strong.failed
        print(f"strong: {len(strong.acked)} acknowledged, failed: {strong.failed}")
        print(f"quorum: {len(quorum.acked)} acknowledged")

    survivors = [n1, n2, n3, n5]
    with mount(n3, tmp_path / "m-r") as mr:
        for w in writers:
            for name, data in w.acked.items():
                got = (mr.path / w.directory.name / name).read_bytes()
                assert got == data, f"{w.directory.name}/{name} differs after the kill"

        # Item 4: n4 is marked out after the grace period, everyone else stays active.
        wait_until(lambda: layout_states(n1).get("n4") == "out", 60, "n4 marked out")
        assert layout_states(n1) == {
            "n1": "active",
            "n2": "active",
            "n3": "active",
            "n4": "out",
            "n5": "active",
        }
        assert layout_raw(n1)["epoch"] > epoch_before
        if strong.failed:
            remove_orphans_of_failed_writes(n1)
        where = assert_invariant(n1, survivors)
        share = per_node_share(n1, sorted(where))
        assert "n4" not in share
        for d in survivors:
            assert set(chunk_files(d)) == share.get(d.node_id, set()), f"{d.node_id} does not hold its share"
        # And still readable after repair moved things around.
        for w in writers:
            for name, data in w.acked.items():
                assert (mr.path / w.directory.name / name).read_bytes() == data


ORPHANS_PROBLEM = re.compile(r"\d+ stored chunk cop\(ies\) referenced by no metadata \(orphans\)")


def remove_orphans_of_failed_writes(primary: NsDaemon) -> None:
    """Delete the chunks of writes that failed before committing (orphans) with ``fsck --repair``,
    after checking that orphans are all fsck finds.

    Not the orphan sweep: with a short orphan_delay_s it also claims chunks of writes whose commit
    is merely slow (their commits are then refused), and swept copies come back from unswept ones
    (see test_swept_orphan_copies_stay_gone).  fsck --repair deletes every node's copies at once.
    """
    for _ in range(3):
        problems = primary.fsck()["problems"]
        if not problems:
            return
        assert all(ORPHANS_PROBLEM.fullmatch(p) for p in problems), problems
        primary.fsck(repair=True)
    assert primary.fsck()["problems"] == []


def test_strong_write_with_a_replica_dead_in_gossip_uses_a_substitute(net: Net, tmp_path: Path) -> None:
    """A replica that gossip reports dead (but that is not out of the layout yet) is substituted
    by the next node, and a strong write completes with R copies (design: hinted handoff)."""
    daemons = start_replicated(net, tmp_path, cluster={"dead_grace_s": 10.0})
    n1, n2, n3, n4, n5 = daemons
    n3.kill()  # the only node of z3: a replica of every chunk
    wait_status([n1, n2], "n3", "dead", timeout=30)
    data = random.Random(7).randbytes(MiB + 1)
    # A fresh mount fetches the cluster view now: it already sees n3 dead.
    with mount(n2, tmp_path / "m-w") as mw:
        set_consistency(mw.path / "strong", "strong")
        write_file(mw.path / "strong" / "f", data)
        assert (mw.path / "strong" / "f").read_bytes() == data
    wait_until(lambda: layout_states(n1).get("n3") == "out", 60, "n3 marked out")
    assert_invariant(n1, [n1, n2, n4, n5])


# --------------------------------------------------------------------------- 3. partition and rejoin


def test_partitioned_host_rejoins_and_catches_up(net: Net, tmp_path: Path) -> None:
    """Acceptance item 3: n4 is cut off while quorum writes go on; back, it gets its share.

    dead_grace_s is far longer than the partition, so n4 stays in the layout (active) and the
    copies it missed reach it by hinted handoff and anti-entropy; the substitutes' copies go away.
    """
    daemons = start_replicated(net, tmp_path, cluster={"dead_grace_s": 300.0})
    n1, n2, _n3, n4, _n5 = daemons
    epoch = layout_raw(n1)["epoch"]
    rng = random.Random(3)
    files: dict[str, bytes] = {"before.bin": rng.randbytes(3 * MiB)}
    with mount(n2, tmp_path / "m-w") as mw:
        write_file(mw.path / "before.bin", files["before.bin"])
        net.isolate(n4.host)
        # Right away: gossip still thinks n4 is alive; quorum writes do not wait for its copies,
        # which time out (peer_timeout_s) and become hints.
        for i in range(3):
            files[f"early{i}.bin"] = rng.randbytes(BLOCK + 1000 * i)
            write_file(mw.path / f"early{i}.bin", files[f"early{i}.bin"])
        wait_status([n1, n2], "n4", "dead", timeout=30)
        # Gossip says dead: substitutes take n4's copies (misplaced until it is back).  A chunk
        # has n4 among its replicas 3 times in 5, and the mount's view may still call n4 alive
        # for a refresh: write until some copies went to substitutes (bounded).
        for i in range(16):
            files[f"late{i}.bin"] = rng.randbytes(2 * MiB + 777 * i)
            write_file(mw.path / f"late{i}.bin", files[f"late{i}.bin"])
            missing, misplaced = missed_by(n4, n1, daemons)
            if i >= 3 and missing and misplaced:
                break
        assert missing and misplaced, f"n4 missed {missing} copies, {misplaced} substitutes: nothing to test"
        net.reconnect(n4.host)
        wait_status(daemons, "n4", "alive", timeout=60)
        where = assert_invariant(n1, daemons)
        assert layout_states(n1)["n4"] == "active" and layout_raw(n1)["epoch"] == epoch
        share = per_node_share(n1, sorted(where))
        assert set(chunk_files(n4)) == share["n4"], "n4 does not hold its share after rejoining"
        for d in daemons:
            assert set(chunk_files(d)) == share.get(d.node_id, set()), f"{d.node_id} does not hold its share"
    with mount(n4, tmp_path / "m-r") as mr:
        for name, data in files.items():
            assert (mr.path / name).read_bytes() == data, name


def missed_by(node: NsDaemon, primary: NsDaemon, daemons: Sequence[NsDaemon]) -> tuple[int, int]:
    """(chunks placement assigns ``node`` that it lacks, copies held by nodes placement does not name)."""
    table = placement(primary)
    mine = set(chunk_files(node))
    missing = misplaced = 0
    for cid, nodes in holders(daemons).items():
        want = set(table.for_chunk(bytes.fromhex(cid), R))
        missing += node.node_id in want and cid not in mine
        misplaced += len(nodes - want)
    return missing, misplaced


# --------------------------------------------------------------------------- 5. scrubber


def test_scrubber_replaces_a_corrupted_chunk_copy(net: Net, tmp_path: Path) -> None:
    """Acceptance item 5: a byte flipped in one copy on n3 is found by the scrubber, the bad file
    goes to chunks/bad/ and a good copy is fetched from another replica under the same name."""
    daemons = start_replicated(net, tmp_path, cluster={"scrub_bytes_s": 1024 * MiB, "scrub_interval_s": 1.0})
    n1, n2, n3, _n4, _n5 = daemons
    rng = random.Random(5)
    payload = {f"f{i}": rng.randbytes(size) for i, size in enumerate((MiB + 1, 6 * MiB, 300_000))}
    with mount(n2, tmp_path / "m-w") as mw:
        for name, data in payload.items():
            write_file(mw.path / name, data)
    where = assert_invariant(n1, daemons)
    # n3 holds every chunk (only node of z3); corrupt the biggest copy there.
    files = chunk_files(n3)
    assert set(files) == set(where)
    victim = max(files, key=lambda c: files[c].stat().st_size)
    path = files[victim]
    good = path.read_bytes()
    other = next(d for d in daemons if d is not n3 and victim in chunk_files(d))
    assert chunk_files(other)[victim].read_bytes() == good  # replicas are byte-identical
    middle = len(good) // 2
    damaged = good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1 :]
    with open(path, "r+b") as f:
        f.seek(middle)
        f.write(damaged[middle : middle + 1])
        f.flush()
        os.fsync(f.fileno())
    assert path.read_bytes() == damaged
    bad_dir = n3.data_dir / "chunks" / "bad"

    def quarantined() -> list[Path]:
        return [p for p in bad_dir.iterdir() if p.name.startswith(victim)] if bad_dir.exists() else []

    wait_until(
        lambda: bool(quarantined()),
        30,
        "the scrubber to quarantine the corrupt copy",
        lambda: log_tails([n3]),
    )
    assert quarantined()[0].read_bytes() == damaged  # what was moved aside is the damaged file
    wait_until(
        lambda: path.exists() and path.read_bytes() == good,
        30,
        "a good copy back in place on n3",
        lambda: log_tails([n3]),
    )
    status = json.loads(n3.cli("status", "--json").stdout)
    mine = next(n for n in status["cluster"]["nodes"] if n["node_id"] == "n3")
    assert mine["scrub"]["corrupt_found"] >= 1 and mine["corrupt_replaced"] >= 1, mine
    # The repaired copy serves reads: a mount on n3 reads its own daemon's copy first.
    with mount(n3, tmp_path / "m-r") as mr:
        for name, data in payload.items():
            assert (mr.path / name).read_bytes() == data
    assert_invariant(n1, daemons)


# ----------------------------------------------------------- 6. consistency levels, frozen replica


class TimedWrite(threading.Thread):
    def __init__(self, path: Path, data: bytes) -> None:
        super().__init__(name=f"write-{path.name}", daemon=True)
        self.path = path
        self.data = data
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.started_at = 0.0
        self.took = -1.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        super().start()

    def run(self) -> None:
        try:
            write_file(self.path, self.data)
        except BaseException as exc:
            self.error = exc
        finally:
            self.took = time.monotonic() - self.started_at
            self.done.set()


WINDOW_S = 3.0  # quorum and eventual writes must finish within this while a replica is frozen
FROZEN_S = 6.0  # a strong write must still be waiting after this long


class SlowAcknowledgement(AssertionError):
    """A quorum or eventual write waited for a frozen replica."""


def start_for_freezing(net: Net, tmp_path: Path) -> list[NsDaemon]:
    """The cluster for the frozen-replica tests.

    n3, which gets frozen, is the only node of zone z3, so placement puts a replica of *every*
    chunk on it (the tests check this against the placement table at the end): every block of
    every file written meanwhile has n3 among its replicas, which makes the timing assertions
    deterministic.  Gossip uses the "lan" preset, under which declaring a silent member dead takes
    several seconds (suspicion >= 4 s), and peer_timeout_s is 30 s: within the test's windows
    nothing substitutes n3.
    """
    return start_replicated(net, tmp_path, cluster={"peer_timeout_s": 30.0}, preset="lan")


def check_every_chunk_placed_on(node: str, primary: NsDaemon, daemons: Sequence[NsDaemon]) -> None:
    table = placement(primary)
    for cid in holders(daemons):
        assert node in table.for_chunk(bytes.fromhex(cid), R), f"{cid} is not placed on {node}"


def test_frozen_replica_makes_strong_writes_wait_until_it_answers(net: Net, tmp_path: Path) -> None:
    """Acceptance item 6, strong: with n3 frozen (SIGSTOP) an fsync in a strong directory does not
    return: all R copies are required, and the copy sent to n3 waits for its answer (up to
    peer_timeout_s, 30 s here; gossip declaring n3 dead meanwhile does not cut a call short).
    After the thaw it completes, the data is intact and repair leaves R copies of everything."""
    daemons = start_for_freezing(net, tmp_path)
    n1, n2, n3, _n4, n5 = daemons
    rng = random.Random(6)
    data = rng.randbytes(BLOCK + 2 * MiB)
    with mount(n2, tmp_path / "m-w") as mw:
        set_consistency(mw.path / "strong", "strong")
        # Warm up: connections to every peer exist, and strong writes work when all is well.
        write_file(mw.path / "strong" / "warmup", rng.randbytes(MiB))
        n3.freeze()
        try:
            strong = TimedWrite(mw.path / "strong" / "data", data)
            strong.start()
            assert not strong.done.wait(FROZEN_S), (
                f"strong write returned after {strong.took:.2f}s with a replica frozen ({strong.error!r})"
            )
        finally:
            n3.thaw()
        assert strong.done.wait(60), "strong write did not complete after the thaw"
        assert strong.error is None, f"strong write failed after the thaw: {strong.error!r}"
        assert strong.took >= FROZEN_S
    check_every_chunk_placed_on("n3", n1, daemons)
    with mount(n5, tmp_path / "m-r") as mr:
        assert (mr.path / "strong" / "data").read_bytes() == data
    assert_invariant(n1, daemons)


def test_frozen_replica_does_not_hold_up_quorum_or_eventual_writes(net: Net, tmp_path: Path) -> None:
    """Acceptance item 6, quorum and eventual: with n3 frozen, an fsync'd write in a quorum
    (2 of 3 copies) or eventual (1 of 3) directory returns within WINDOW_S; n3's copies follow by
    hinted handoff after the thaw, everything reads back intact, repair leaves R copies."""
    daemons = start_for_freezing(net, tmp_path)
    n1, n2, n3, _n4, n5 = daemons
    rng = random.Random(6)
    levels = ("quorum", "eventual")
    payload = {level: rng.randbytes(BLOCK + 2 * MiB) for level in levels}
    with mount(n2, tmp_path / "m-w") as mw:
        healthy = {}
        for level in levels:
            set_consistency(mw.path / level, level)
            started = time.monotonic()
            write_file(mw.path / level / "warmup", rng.randbytes(MiB))
            healthy[level] = time.monotonic() - started
        n3.freeze()
        try:
            writes = {level: TimedWrite(mw.path / level / "data", payload[level]) for level in levels}
            for w in writes.values():
                w.start()
            in_window = {
                level: w.done.wait(max(0.0, w.started_at + WINDOW_S - time.monotonic()))
                for level, w in writes.items()
            }
        finally:
            n3.thaw()
        for level, w in writes.items():
            assert w.done.wait(60), f"{level} write did not complete after the thaw"
            assert w.error is None, f"{level} write failed: {w.error!r}"
    check_every_chunk_placed_on("n3", n1, daemons)
    with mount(n5, tmp_path / "m-r") as mr:
        for level, data in payload.items():
            assert (mr.path / level / "data").read_bytes() == data, level
    assert_invariant(n1, daemons)
    slow = {level: round(w.took, 2) for level, w in writes.items() if not in_window[level]}
    if slow:
        primary_log = (n1.data_dir / "dfsd.log").read_text()
        evidence = [line for line in primary_log.splitlines() if "has() on n3" in line]
        raise SlowAcknowledgement(
            f"with n3 frozen these writes took (s) {slow} (> {WINDOW_S}s, healthy: {healthy}); "
            f"primary log: {evidence[:3]}"
        )


# --------------------------------------------------------------------------- orphans of a crashed client


_WRITE_AND_HANG = """
import os, sys, time
f = open(sys.argv[1], "wb")
f.write(os.urandom(int(sys.argv[2])))
f.flush()
print("written", flush=True)
time.sleep(600)
"""


class Resurrected(AssertionError):
    """A swept orphan copy was stored again."""


def test_swept_orphan_copies_stay_gone(net: Net, tmp_path: Path) -> None:
    """Chunks a client stored but never committed (it was killed before fsync/close) are orphans.

    Each node's orphan sweep removes its own copies once untouched for orphan_delay_s, on its own
    timer, so different nodes sweep one orphan at different times (hours apart with the default
    6 h scan interval).  A copy swept on one node must not come back from a copy another node has
    not swept yet.  Here n3 (a replica of every chunk) sweeps after 4 s, the others after an hour.
    """
    daemons = start_replicated(
        net,
        tmp_path,
        storage={"orphan_delay_s": 3600.0, "orphan_scan_interval_s": 1.0},
        per_node={"n3": {"storage": {"orphan_delay_s": 4.0}}},
    )
    n1, n2, n3, _n4, _n5 = daemons
    m = mount(n2, tmp_path / "m-w")
    # The writer is a process of its own: the test process forks (CLI calls), and a fork that
    # execs closes its copy of an open file descriptor, which sends FUSE a flush: a commit.
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITE_AND_HANG, str(m.path / "doomed"), str(2 * BLOCK + 1)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "written"
        # Two full blocks: their uploads start before any fsync or close, which never come.
        wait_until(
            lambda: sorted(map(len, holders(daemons).values())) == [R, R],
            30,
            "both full blocks stored with R copies",
            lambda: str(holders(daemons)),
        )
        for pid in m.pids():
            os.kill(pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(30)
        if writer.stdout is not None:
            writer.stdout.close()
        m.stop()
    orphans = set(holders(daemons))
    assert n1.fsck()["orphans"] == 2 * R
    wait_until(lambda: not orphans & set(chunk_files(n3)), 30, "n3 to sweep its orphan copies")
    # Anti-entropy runs every 2 s: watch four rounds.
    deadline = time.monotonic() + 4 * CLUSTER["anti_entropy_interval_s"]
    while time.monotonic() < deadline:
        back = orphans & set(chunk_files(n3))
        if back:
            others = {c: sorted(h) for c, h in holders(daemons).items() if c in back}
            sweeps = [line for line in n3.log_path.read_text().splitlines() if "orphan" in line]
            raise Resurrected(f"orphan copies swept on n3 are back there: {others}; n3 log: {sweeps}")
        time.sleep(0.2)
    # The other nodes sweep theirs now; nothing comes back anywhere.
    for d in daemons:
        d.cli("gc", "--orphans", "--now")
    wait_until(lambda: not holders(daemons), 30, "every orphan copy removed", lambda: str(holders(daemons)))
    assert_invariant(n1, daemons)
