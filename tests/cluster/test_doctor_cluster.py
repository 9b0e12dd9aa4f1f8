"""``dfs doctor`` on a node of a two-node cluster: every live member is asked for its time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, free_port, wait_for

FAST = 'preset = "fast_test"'


def layout(d: Daemon) -> dict[str, str]:
    raw = json.loads(d.cli("layout", "--json").stdout)
    return {n["node_id"]: n["state"] for n in raw["nodes"]}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    port = free_port()
    n1 = Daemon(tmp_path / "n1", port, node_id="n1", zone="z1", gossip_conf=FAST)
    n2 = Daemon(
        tmp_path / "n2",
        free_port(),
        node_id="n2",
        zone="z2",
        gossip_conf=FAST + f'\nseeds = "127.0.0.1:{n1.gossip_port}"',
        extra_conf=f'[cluster]\nmeta = "127.0.0.1:{port}"\n',
        joins=n1,
    )
    try:
        n1.start()
        n2.start()
        wait_for(lambda: layout(n1) == {"n1": "active", "n2": "active"}, 30, "both nodes active")
        yield n1, n2
    finally:
        n2.stop()
        n1.stop()


@pytest.mark.slow
def test_doctor_compares_the_clocks_of_every_member(pair: tuple[Daemon, Daemon]) -> None:
    n1, n2 = pair
    res = n2.cli("doctor", "--json")
    doc = json.loads(res.stdout)
    by_name = {c["name"]: c for c in doc["checks"]}
    assert doc["ok"] is True, res.stdout
    skew = by_name["clock skew"]
    assert skew["status"] == "ok" and skew["message"].startswith("2 member(s) and this host within"), skew
    assert "n2 answers" in by_name["daemon"]["message"]
    # A joining node's secret is required: present here, mode 0600.
    assert by_name["node credential"]["status"] == "ok"
    n1.assert_clean()
