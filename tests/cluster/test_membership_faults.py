"""Five gossip runners in one trio test, on 127.0.0.1-5 with real UDP and TCP sockets, and a
fault-injecting link layer (loss, delay, partitions) between them.

The state machine has its own simulated tests (tests/unit/test_gossip.py) and the daemons their
kill -9 test over loopback (test_membership.py); these check the adapter in between: that the
real runner, its timers and push-pull streams keep SWIM's promises when the network misbehaves.
"""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from daemon.cluster.membership import Membership
from dfs.core import config
from dfs.core.auth import derive_key
from dfs.core.gossip.seal import Keyring

pytestmark = pytest.mark.timeout(120)

NAMES = ("n1", "n2", "n3", "n4", "n5")
#: Every runner's gossip key, as a daemon derives it from its cluster secret.
GOSSIP_KEY = derive_key(b"test cluster secret", "gossip")


@dataclass
class Faults:
    """A switch between the nodes: per-link loss and delay, and cut links (partitions).

    Addresses are gossip ``host:port`` strings; rules are keyed by node id through ``ids``.
    """

    ids: dict[str, str] = field(default_factory=dict)  # address -> node id
    loss: float = 0.0
    max_delay_s: float = 0.0
    slow: dict[str, float] = field(default_factory=dict)  # node id -> extra delay on its links
    cut: set[frozenset[str]] = field(default_factory=set)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    dropped: int = 0

    def delay(self, src: str, dst: str, *, stream: bool) -> float | None:
        a, b = self.ids.get(src, src), self.ids.get(dst, dst)
        if frozenset((a, b)) in self.cut or (not stream and self.rng.random() < self.loss):
            self.dropped += 1
            return None
        return self.rng.uniform(0, self.max_delay_s) + self.slow.get(a, 0.0) + self.slow.get(b, 0.0)

    def split(self, *groups: Iterable[str]) -> None:
        """Cut every link between nodes of different groups."""
        sets = [set(g) for g in groups]
        for i, g in enumerate(sets):
            for h in sets[i + 1 :]:
                self.cut |= {frozenset((a, b)) for a in g for b in h}

    def heal(self) -> None:
        self.cut.clear()


def _port_on(ip: str) -> int:
    """A port free for both UDP and TCP on ``ip``."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind((ip, 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((ip, port))
                except OSError:
                    continue
        return port
    raise RuntimeError(f"no free port on {ip}")


@dataclass
class Node:
    node_id: str
    membership: Membership
    meta: dict[str, Any]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def view(self) -> dict[str, str]:
        return {m["node_id"]: m["status"] for m in self.membership.members() if not m["self"]}


@asynccontextmanager
async def cluster(faults: Faults, names: Iterable[str] = NAMES) -> AsyncIterator[dict[str, Node]]:
    """Gossip runners n1..n5 on 127.0.0.1..5, each joining through n1, all in one nursery."""
    nodes: dict[str, Node] = {}
    seed = ""
    for i, name in enumerate(names, start=1):
        ip = f"127.0.0.{i}"
        listen = f"{ip}:{_port_on(ip)}"
        cfg = config.parse(
            f'[node]\nid = "{name}"\nzone = "z{i}"\n'
            f'[gossip]\nlisten = "{listen}"\npreset = "fast_test"\nseeds = "{seed}"\n'
            "meta_interval_s = 0.1\n",
            env={},
        )
        seed = seed or listen
        meta: dict[str, Any] = {"zone": f"z{i}", "layout_epoch": 1}
        faults.ids[listen] = name
        membership = Membership(cfg, lambda meta=meta: dict(meta), faults, keyring=Keyring.of(GOSSIP_KEY))
        nodes[name] = Node(name, membership, meta)
    async with trio.open_nursery() as nursery:

        async def run(node: Node) -> None:
            with node.scope:
                await node.membership.run()

        for node in nodes.values():
            nursery.start_soon(run, node)
        yield nodes
        nursery.cancel_scope.cancel()


async def poll(pred: Callable[[], bool], timeout_s: float, what: str, detail: Callable[[], Any]) -> None:
    """Poll ``pred`` every 50 ms until true; fail with ``detail()`` after ``timeout_s``."""
    with trio.move_on_after(timeout_s):
        while True:  # the views change inside the runners, which signal nothing: poll
            if pred():
                return
            await trio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: {detail()}")


def views(nodes: dict[str, Node]) -> dict[str, dict[str, str]]:
    return {name: n.view() for name, n in nodes.items()}


def all_see(nodes: dict[str, Node], status: dict[str, str]) -> Callable[[], bool]:
    """Every node in ``nodes`` sees each other node of ``status`` with that status."""

    def check() -> bool:
        for name, node in nodes.items():
            seen = node.view()
            if any(seen.get(other) != st for other, st in status.items() if other != name):
                return False
        return True

    return check


def deaths(nodes: dict[str, Node]) -> int:
    return sum(n.membership.event_counts.get("dead", 0) for n in nodes.values())


async def test_joins_through_one_seed_and_no_one_dies_under_loss_and_delay() -> None:
    """10 % datagram loss and up to 20 ms of delay on every link: everyone joins, and over two
    seconds of probing (some 20 probe rounds each) no live member is ever declared dead."""
    faults = Faults(loss=0.10, max_delay_s=0.02)
    async with cluster(faults) as nodes:
        alive = dict.fromkeys(NAMES, "alive")
        await poll(all_see(nodes, alive), 30, "all five alive everywhere", lambda: views(nodes))
        before = deaths(nodes)
        await trio.sleep(2.0)  # a soak window, not a wait for a condition
        assert deaths(nodes) == before, views(nodes)
        # A member may be suspected at this instant under loss; it refutes within a few rounds.
        await poll(all_see(nodes, alive), 10, "suspicions refuted", lambda: views(nodes))
        assert faults.dropped > 0


async def test_partition_is_detected_on_both_sides_and_heals_with_refutation() -> None:
    """Cut {n1,n2,n3} from {n4,n5}: each side declares the other dead.  After the heal, push-pull
    and refutation bring everyone back alive everywhere, at higher incarnations."""
    faults = Faults()
    async with cluster(faults) as nodes:
        alive = dict.fromkeys(NAMES, "alive")
        await poll(all_see(nodes, alive), 30, "all five alive everywhere", lambda: views(nodes))
        incarnations = {m["node_id"]: m["incarnation"] for m in nodes["n1"].membership.members()}
        majority, minority = ("n1", "n2", "n3"), ("n4", "n5")
        faults.split(majority, minority)
        big = {k: nodes[k] for k in majority}
        small = {k: nodes[k] for k in minority}
        await poll(
            all_see(big, dict.fromkeys(minority, "dead")),
            30,
            "the majority to see n4, n5 dead",
            lambda: views(nodes),
        )
        await poll(
            all_see(small, dict.fromkeys(majority, "dead")),
            30,
            "the minority to see n1-n3 dead",
            lambda: views(nodes),
        )
        # Each side still sees its own members alive.
        assert all_see(big, dict.fromkeys(majority, "alive"))()
        assert all_see(small, dict.fromkeys(minority, "alive"))()
        faults.heal()
        await poll(all_see(nodes, alive), 30, "everyone alive again after the heal", lambda: views(nodes))
        after = {m["node_id"]: m["incarnation"] for m in nodes["n1"].membership.members()}
        assert all(after[k] > incarnations[k] for k in minority), (incarnations, after)


async def test_slow_member_is_not_declared_dead_and_meta_still_spreads() -> None:
    """n5's links add 40 ms each way (a round trip over fast_test's 50 ms probe timeout): its
    probes go indirect and it may be suspected, but it refutes and is never declared dead; a
    change of its advertised layout epoch reaches everyone."""
    faults = Faults(slow={"n5": 0.04})
    async with cluster(faults) as nodes:
        alive = dict.fromkeys(NAMES, "alive")
        await poll(all_see(nodes, alive), 30, "all five alive everywhere", lambda: views(nodes))
        nodes["n5"].meta["layout_epoch"] = 9

        def epoch_spread() -> bool:
            for name, node in nodes.items():
                if name == "n5":
                    continue
                n5 = next(m for m in node.membership.members() if m["node_id"] == "n5")
                if n5.get("layout_epoch") != 9:
                    return False
            return True

        await poll(epoch_spread, 30, "n5's new layout epoch everywhere", lambda: views(nodes))
        await trio.sleep(1.0)  # a soak window, not a wait for a condition
        assert deaths(nodes) == 0, views(nodes)
        await poll(all_see(nodes, alive), 10, "suspicions refuted", lambda: views(nodes))


async def test_member_cut_off_for_good_is_dead_everywhere_else() -> None:
    """n3 loses every link (a crash, as far as the others can tell): all four survivors declare
    it dead and keep seeing one another alive."""
    faults = Faults(max_delay_s=0.005)
    async with cluster(faults) as nodes:
        alive = dict.fromkeys(NAMES, "alive")
        await poll(all_see(nodes, alive), 30, "all five alive everywhere", lambda: views(nodes))
        faults.split(["n3"], [n for n in NAMES if n != "n3"])
        survivors = {k: v for k, v in nodes.items() if k != "n3"}
        await poll(
            all_see(survivors, {"n3": "dead"}), 30, "the survivors to see n3 dead", lambda: views(nodes)
        )
        assert all_see(survivors, {k: "alive" for k in survivors})()
