"""Sealed gossip between real daemons on loopback: forged and replayed packets change nothing, and
the keys rotate on a running cluster without anyone being declared dead.

The daemons share one cluster secret (``joins=``), from which each derives the same gossip key
until an operator rotates it (``dfs cluster keyring``, daemon/cluster/keyring.py).  Drop counters
are read from each daemon's Prometheus ``/metrics``; every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.cluster.keyring import KEYRING_FILE, load_keyring
from dfs.core.auth import derive_key
from dfs.core.gossip.messages import Dead, Suspect, encode_datagram, encode_message
from dfs.core.gossip.seal import Keyring, Sealer, fingerprint, new_key
from tests.conftest import Daemon, free_port, http_call, wait_for

pytestmark = pytest.mark.timeout(240)

FAST = 'preset = "fast_test"'


def members(d: Daemon) -> dict[str, dict[str, Any]]:
    """``d``'s gossip view: node id -> its member row (status, incarnation...)."""
    return {m["node_id"]: m for m in json.loads(d.cli("nodes", "--json").stdout) if "incarnation" in m}


def statuses(d: Daemon) -> dict[str, str]:
    return {node: str(m["status"]) for node, m in members(d).items()}


def all_alive(daemons: list[Daemon]) -> bool:
    everyone = {d.node_id: "alive" for d in daemons}
    return all(statuses(d) == everyone for d in daemons)


def metric(d: Daemon, name: str, label: str) -> float:
    """One labelled counter of ``d``'s /metrics (0 while it has not been counted yet)."""
    status, _, text = http_call(
        d.admin_port, "GET", "/metrics", headers={"Authorization": f"Bearer {d.admin_token()}"}
    )
    assert status == 200
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(label)}\}} (\S+)$", text.decode(), re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def dropped(d: Daemon, reason: str) -> float:
    return metric(d, "dfs_gossip_packets_dropped_total", f'reason="{reason}"')


def deaths(d: Daemon) -> float:
    return metric(d, "dfs_gossip_events_total", 'kind="dead"')


def cluster_keyring(d: Daemon) -> Keyring:
    """The keyring ``d`` runs with now (from its cluster secret, or its gossip.keyring)."""
    secret = d.credential().secret
    assert secret is not None
    return load_keyring(d.data_dir, secret)


def send_udp(d: Daemon, datagram: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(datagram, ("127.0.0.1", d.gossip_port))


def keyring_cli(d: Daemon, *args: str) -> list[dict[str, Any]]:
    """``dfs cluster keyring ... --json`` through ``d``: one row per member."""
    rows: list[dict[str, Any]] = json.loads(d.cli("cluster", "keyring", *args, "--json").stdout)
    return rows


@pytest.fixture
def trio_of_daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    first = Daemon(tmp_path / "n1", free_port(), node_id="n1", gossip_conf=FAST)
    seed = f"127.0.0.1:{first.gossip_port}"
    others = [
        Daemon(
            tmp_path / f"n{i}",
            free_port(),
            node_id=f"n{i}",
            gossip_conf=f'{FAST}\nseeds = "{seed}"',
            joins=first,
        )
        for i in (2, 3)
    ]
    daemons = [first, *others]
    try:
        for d in daemons:
            d.start()
        wait_for(lambda: all_alive(daemons), 30, "all three alive everywhere")
        yield daemons
    finally:
        for d in daemons:
            d.stop()


def test_forged_and_replayed_packets_change_nothing(trio_of_daemons: list[Daemon]) -> None:
    n1 = trio_of_daemons[0]
    incarnation = int(members(n1)["n2"]["incarnation"])
    # "n2 is dead", "n2 is suspect", at n2's current incarnation: accepted, n1 would believe it.
    forged = encode_datagram(
        [encode_message(Dead("n2", incarnation, "n3")), encode_message(Suspect("n2", incarnation, "n3"))]
    )
    bad_before, deaths_before = dropped(n1, "bad"), deaths(n1)

    # (a) Not sealed at all, and sealed under a key the cluster does not hold: dropped unread.
    send_udp(n1, forged)
    send_udp(n1, Sealer(Keyring.of(new_key())).seal(forged, time.time()))
    wait_for(lambda: dropped(n1, "bad") >= bad_before + 2, 20, "n1 to drop both forgeries")
    assert deaths(n1) == deaths_before
    for d in trio_of_daemons:
        assert statuses(d) == {"n1": "alive", "n2": "alive", "n3": "alive"}, d.node_id

    # The same news sealed with the cluster's key is believed: n1 declares n2 dead, and n2 refutes
    # at a higher incarnation.  So the forgeries above were potent, and only the seal stopped them.
    packet = Sealer(cluster_keyring(n1)).seal(forged, time.time())
    send_udp(n1, packet)
    wait_for(lambda: deaths(n1) > deaths_before, 20, "n1 to believe the sealed news")
    wait_for(
        lambda: int(members(n1)["n2"]["incarnation"]) > incarnation and all_alive(trio_of_daemons),
        20,
        "n2 to refute, alive everywhere again",
    )

    # (b) The recorded packet sent again within its time window: dropped as a replay.
    replayed_before, deaths_now = dropped(n1, "replayed"), deaths(n1)
    send_udp(n1, packet)
    wait_for(lambda: dropped(n1, "replayed") >= replayed_before + 1, 20, "n1 to drop the replay")
    assert deaths(n1) == deaths_now
    assert all_alive(trio_of_daemons)


def test_rotation_on_a_running_cluster(trio_of_daemons: list[Daemon], tmp_path: Path) -> None:
    n1, n2, n3 = trio_of_daemons
    secret = n1.credential().secret
    assert secret is not None
    old = fingerprint(derive_key(secret, "gossip"))
    rows = keyring_cli(n1, "list")
    assert [(r["node_id"], r["outcome"], r["primary"], r["keys"]) for r in rows] == [
        (n, "ok", old, [old]) for n in ("n1", "n2", "n3")
    ]
    deaths_before = {d.node_id: deaths(d) for d in trio_of_daemons}

    # 1. install a new key everywhere; everyone still seals with the old one.
    out = n1.cli("cluster", "keyring", "install", "--generate").stdout.splitlines()
    new = out[0].split()[1]
    assert re.fullmatch(r"[0-9a-f]{8}", new) and new != old, out
    assert len(out) == 4 and all(line.split()[1] == "ok" for line in out[1:]), out
    assert all_alive(trio_of_daemons)
    # 2. use it everywhere (the CLI first checks every member has it).
    rows = keyring_cli(n2, "use", new)
    assert {(r["node_id"], r["primary"]) for r in rows} == {(n, new) for n in ("n1", "n2", "n3")}
    assert all_alive(trio_of_daemons)
    # 3. remove the old key everywhere.
    rows = keyring_cli(n3, "remove", old)
    assert all(r["keys"] == [new] for r in rows), rows
    assert all_alive(trio_of_daemons)
    # Refused: removing the key every member seals with (nothing changes).
    refused = n1.cli("cluster", "keyring", "remove", new, check=False)
    assert refused.returncode != 0 and "still seals with" in refused.stderr, refused
    # Nobody was declared dead at any point, and gossip still flows under the new key alone.
    assert {d.node_id: deaths(d) for d in trio_of_daemons} == deaths_before
    for d in trio_of_daemons:
        path = d.data_dir / KEYRING_FILE
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert cluster_keyring(d).describe() == {"primary": new, "keys": [new]}

    # The saved keyring is what a restarted member comes back with: it rejoins.
    n3.stop()
    wait_for(lambda: statuses(n1).get("n3") == "left", 20, "n1 to see n3 leave")
    n3.start()
    wait_for(lambda: all_alive(trio_of_daemons), 30, "n3 back, alive everywhere")

    # A node holding only the removed key (the one its cluster secret derives) cannot join: its
    # packets are dropped as bad.
    n4 = Daemon(
        tmp_path / "n4",
        free_port(),
        node_id="n4",
        gossip_conf=f'{FAST}\nseeds = "127.0.0.1:{n1.gossip_port}"',
        joins=n1,
    )
    bad_before = dropped(n1, "bad")
    try:
        n4.start()
        assert cluster_keyring(n4).describe() == {"primary": old, "keys": [old]}
        wait_for(lambda: dropped(n1, "bad") > bad_before, 20, "n1 to drop n4's join")
        for d in trio_of_daemons:
            assert "n4" not in statuses(d), d.node_id
        assert statuses(n4).get("n1") != "alive"
        # Given a member's keyring file, the same node joins.
        n4.stop(signal.SIGTERM)
        shutil.copy2(n1.data_dir / KEYRING_FILE, n4.data_dir / KEYRING_FILE)
        n4.start()
        wait_for(lambda: all_alive([*trio_of_daemons, n4]), 30, "n4 alive everywhere")
    finally:
        n4.stop()
