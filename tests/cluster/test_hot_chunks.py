"""Hot chunks on four real daemons: a chunk read faster than ``hot_reads_per_s`` from its only
replica (R=1) gets two temporary extra copies on the next nodes of its preference list, which
anti-entropy leaves alone while they are pinned; its replica advertises it in gossip, so readers
(a mount on another node) can use the extra copies; once reads stop, the pins lapse and repair
removes the extra copies again, leaving exactly R copies and a clean fsck."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from dfs.core.placement import Layout, PlacementTable, partition_of
from dfs.net import rpc
from tests.cluster.test_replication import copies, loopback_cluster
from tests.conftest import Daemon, Mount, needs_fuse, wait_for

pytestmark = [pytest.mark.slow, needs_fuse]

CONF = """
[cluster]
replicas = 1
consistency = "strong"
hint_interval_s = 0.5
anti_entropy_interval_s = 1.0
refresh_s = 0.5
peer_timeout_s = 5.0
hot_reads_per_s = 5.0
hot_extra_copies = 2
hot_ttl_s = 6.0
"""


@pytest.fixture
def four(tmp_path: Path) -> Iterator[list[Daemon]]:
    with loopback_cluster(tmp_path, 4, CONF) as daemons:
        yield daemons


def call(d: Daemon, method: str, *args: Any, times: int = 1) -> Any:
    async def go() -> Any:
        async with rpc.open_client(d.address, call_timeout_s=10, credential=d.credential()) as conn:
            result = None
            for _ in range(times):
                result = await conn.call(method, *args)
            return result

    return trio.run(go)


def holders(daemons: list[Daemon], chunk_hex: str) -> set[str]:
    return {d.node_id for d in daemons if any(p.name == chunk_hex for p in d.chunk_files())}


def test_hot_chunk_gets_pinned_extra_copies_that_lapse_when_reads_stop(
    four: list[Daemon], tmp_path: Path
) -> None:
    n1 = four[0]
    by_id = {d.node_id: d for d in four}
    data = os.urandom(1024 * 1024)
    m1 = Mount(n1, tmp_path / "m1")
    m1.start()
    try:
        (m1.path / "hot.bin").write_bytes(data)
    finally:
        m1.stop()
    wait_for(lambda: len(copies(four)) == 1 and set(copies(four).values()) == {1}, 30, "one chunk, one copy")
    (chunk_hex,) = copies(four)
    cid = bytes.fromhex(chunk_hex)
    (replica,) = holders(four, chunk_hex)
    table = PlacementTable(Layout.from_wire(json.loads(n1.cli("layout", "--json").stdout)))
    pref = list(table.preference(partition_of(cid)))
    assert pref[0] == replica
    extras = set(pref[1:3])

    # 80 reads in well under a second: 8/s over the 10 s window, above hot_reads_per_s = 5.
    blob = call(by_id[replica], "chunk.get", cid, times=80)
    assert isinstance(blob, bytes)
    wait_for(lambda: holders(four, chunk_hex) == {replica} | extras, 30, "extra copies on the next two nodes")
    status = call(by_id[replica], "sys.repair_status")
    assert status["hot_chunks"] == 1 and status["hot_promotions"] >= 1, status
    for x in extras:
        assert call(by_id[x], "sys.repair_status")["hot_copies_held"] == 1

    # Gossip tells every node (and so every client) about the hot chunk.
    def advertised_everywhere() -> bool:
        for d in four:
            members = json.loads(d.cli("nodes", "--json").stdout)
            entry = next(m for m in members if m["node_id"] == replica)
            if chunk_hex[:12] not in entry.get("hot", []):
                return False
        return True

    wait_for(advertised_everywhere, 30, "the hot chunk in every node's gossip view")

    # While pinned, anti-entropy rounds on the extra nodes leave their copies in place.
    rounds = {x: call(by_id[x], "sys.repair_status")["rounds"] for x in extras}
    wait_for(
        lambda: all(call(by_id[x], "sys.repair_status")["rounds"] >= rounds[x] + 2 for x in extras),
        30,
        "two anti-entropy rounds on the extra nodes",
    )
    assert holders(four, chunk_hex) == {replica} | extras
    # An extra copy serves reads like any other (a reader whose view lists the chunk as hot
    # tries it as readily as the replica).
    for x in extras:
        assert call(by_id[x], "chunk.get", cid) == blob
    other = next(d for d in four if d.node_id not in extras and d.node_id != replica)
    m = Mount(other, tmp_path / "m-other")
    m.start()
    try:
        assert (m.path / "hot.bin").read_bytes() == data
    finally:
        m.stop()

    # Reads stop: the pins lapse after hot_ttl_s and repair removes the extra copies.
    wait_for(lambda: holders(four, chunk_hex) == {replica}, 60, "the extra copies removed")
    assert call(by_id[replica], "sys.repair_status")["hot_chunks"] == 0
    n1.cli("status", "--wait", "--timeout", "60")
    n1.assert_clean()
