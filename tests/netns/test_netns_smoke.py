"""Smoke tests of the network-namespace harness: the fault primitives on plain sockets,
gossip membership of three daemons on three hosts, and a FUSE mount made from a host."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from tests.netns.harness import Host, Net, NsDaemon, start_cluster, wait_status, wait_view

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

NOT_ALIVE = ("suspect", "dead")


class Listener:
    """A TCP server in a host that accepts and closes connections until the test ends."""

    def __init__(self, host: Host, port: int = 5000) -> None:
        def make() -> socket.socket:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host.ip, port))
            s.listen()
            return s

        self.sock = host.call(make)
        self.address = f"{host.ip}:{port}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def reaches(src: Host, listener: Listener, timeout: float = 0.5) -> bool:
    try:
        src.connect(listener.address, timeout=timeout).close()
    except OSError:
        return False
    return True


def test_isolation_primitives(net: Net) -> None:
    h1, h2, h3 = net.add_hosts("h1", "h2", "h3")
    assert len({h.ip for h in (h1, h2, h3)}) == 3
    listeners = {h.name: Listener(h) for h in (h1, h2, h3)}
    try:

        def matrix() -> dict[tuple[str, str], bool]:
            return {(a.name, b): reaches(a, lst) for a in (h1, h2, h3) for b, lst in listeners.items()}

        def expected() -> dict[tuple[str, str], bool]:
            # TCP needs both directions.
            return {
                (a.name, b): net.reachable(a, b) and net.reachable(b, a)
                for a in (h1, h2, h3)
                for b in listeners
            }

        assert all(matrix().values())
        # Nothing outside our own namespaces is reachable: no route leaves the subnet.
        outside = h1.run(
            [sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 80), 1)"]
        )
        assert "unreachable" in outside.stderr
        faults: list[tuple[Callable[[], None], Callable[[], None]]] = [
            (partial(net.isolate, h3), partial(net.reconnect, h3)),
            (partial(net.split, [h1], [h2, h3]), net.heal),
            (partial(net.cut, h1, h2), partial(net.uncut, h1, h2)),
            (partial(net.cut, h2, h3, both_ways=False), net.heal),
        ]
        for fault, undo in faults:
            fault()
            assert not all(expected().values())
            assert matrix() == expected()
            undo()
            assert all(expected().values())
            assert all(matrix().values())
    finally:
        for lst in listeners.values():
            lst.close()


@pytest.fixture
def trio_in_zones(net: Net, tmp_path: Path) -> list[NsDaemon]:
    return start_cluster(net, tmp_path, ["n1", "n2", "n3"], zones=["z1", "z2", "z3"])


def test_membership_across_hosts(net: Net, trio_in_zones: list[NsDaemon]) -> None:
    n1, n2, n3 = trio_in_zones
    everyone = {"n1": "alive", "n2": "alive", "n3": "alive"}
    wait_view(trio_in_zones, everyone)
    members = {m["node_id"]: m for m in n3.nodes()}
    assert {k: m["zone"] for k, m in members.items()} == {"n1": "z1", "n2": "z2", "n3": "z3"}
    assert members["n1"]["rpc"] == n1.address and n1.address.startswith("10.213.")

    net.isolate(n3.host)  # a partitioned host: alive, but nothing gets through
    wait_status([n1, n2], "n3", NOT_ALIVE)
    wait_status([n3], "n1", NOT_ALIVE)
    wait_status([n3], "n2", NOT_ALIVE)
    net.reconnect(n3.host)
    wait_view(trio_in_zones, everyone, 30)

    n3.freeze()  # SIGSTOP: a stalled host
    wait_status([n1, n2], "n3", NOT_ALIVE)
    n3.thaw()
    wait_view(trio_in_zones, everyone, 30)

    n2.kill()  # kill -9
    wait_status([n1, n3], "n2", "dead")


def test_mount_from_another_host(net: Net, tmp_path: Path) -> None:
    server, client = net.add_hosts("srv", "cli")
    d = NsDaemon(server, tmp_path / "srv", zone="z1")
    d.start()
    payload = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + a bit: inline and chunked paths
    for host, name in ((server, "local"), (client, "remote")):
        with d.mount(tmp_path / f"mnt-{name}", host=host) as m:
            (m.path / f"{name}.bin").write_bytes(payload)
            (m.path / "dir").mkdir(exist_ok=True)
            (m.path / "dir" / f"{name}.txt").write_text(f"hello from {host.name}\n")
        # A fresh mount from the same host reads what the previous one wrote.
        with d.mount(tmp_path / f"mnt-{name}", host=host) as m:
            assert (m.path / f"{name}.bin").read_bytes() == payload
            assert (m.path / "dir" / f"{name}.txt").read_text() == f"hello from {host.name}\n"
    d.assert_clean()
    d.stop()
