"""Gossip membership between real daemons on loopback: join through a seed, detect a kill -9,
rejoin after a restart, and a graceful leave."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, free_port, wait_for


def view(d: Daemon) -> dict[str, str]:
    return {m["node_id"]: m["status"] for m in json.loads(d.cli("nodes", "--json").stdout)}


@pytest.fixture
def trio_of_daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    first = Daemon(tmp_path / "n1", free_port(), node_id="n1", gossip_conf='preset = "fast_test"')
    seed = f"127.0.0.1:{first.gossip_port}"
    others = [
        Daemon(
            tmp_path / f"n{i}",
            free_port(),
            node_id=f"n{i}",
            gossip_conf=f'preset = "fast_test"\nseeds = "{seed}"',
            joins=first,  # the cluster secret, from which the gossip key derives
        )
        for i in (2, 3)
    ]
    daemons = [first, *others]
    try:
        for d in daemons:
            d.start()
        yield daemons
    finally:
        for d in daemons:
            d.stop()


def test_join_detect_death_and_rejoin(trio_of_daemons: list[Daemon]) -> None:
    n1, n2, n3 = trio_of_daemons
    everyone = {"n1": "alive", "n2": "alive", "n3": "alive"}
    for d in (n1, n2, n3):
        wait_for(lambda d=d: view(d) == everyone, 20, f"{d.node_id} to see all three alive")
    nodes = json.loads(n3.cli("nodes", "--json").stdout)
    assert {m["node_id"]: m["rpc"] for m in nodes}["n1"] == n1.address  # advertised state rides along
    n2.stop(signal.SIGKILL)
    for d in (n1, n3):
        wait_for(lambda d=d: view(d).get("n2") == "dead", 30, f"{d.node_id} to see n2 dead")
    n2.start()  # same node id, a fresh incarnation: it must win back its place
    for d in (n1, n3):
        wait_for(lambda d=d: view(d).get("n2") == "alive", 30, f"{d.node_id} to see n2 back")
    n3.stop()  # SIGTERM: a graceful leave
    wait_for(lambda: view(n1).get("n3") == "left", 20, "n1 to see n3 leave")
    human = n1.cli("nodes").stdout
    assert "n1 *" in human and "left" in human
