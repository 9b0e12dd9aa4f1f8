"""The RPC port serves only callers that authenticated, each only what its class may call.

Real daemons on loopback ports: raw frames from a socket for what a stranger can send (no
handshake, a replayed handshake, a frame over the pre-auth limit), the real client with
each class's credential for what the class rules let through.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from dfs.core import endpoints, wire
from dfs.core.auth import HELLO, PROOF, CallerClass, ClientHandshake, Credential, new_cluster_secret
from dfs.core.errors import AuthFailed, CallerNotAllowed, DfsError
from dfs.net import rpc
from tests.conftest import BIN, Daemon, free_port, http_call, wait_for

#: Methods served over RPC (LOCAL ones are in-process only and unknown on the wire).
SERVED = [ep for ep in endpoints.ALL.values() if ep.site is not endpoints.Site.LOCAL]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(
        tmp_path_factory.mktemp("auth") / "var", free_port(), node_id="auth1", rpc_conf="unix_socket = false"
    )
    d.start()
    try:
        yield d
        d.assert_clean()
    finally:
        d.stop()


def _exchange(port: int, frames: list[bytes], *, timeout_s: float = 15.0) -> list[wire.Response]:
    """Send ``frames`` on one fresh TCP connection; every response until the server closes it."""
    out: list[wire.Response] = []
    decoder = wire.FrameDecoder()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        for frame in frames:
            sock.sendall(frame)
        while data := sock.recv(65536):
            decoder.feed(data)
            while (event := decoder.next_event()) is not None:
                assert isinstance(event, wire.Response)
                out.append(event)
    return out


def _call(d: Daemon, credential: Credential | None, method: str, *args: Any) -> Any:
    async def go() -> Any:
        async with rpc.open_client(d.address, call_timeout_s=10, credential=credential) as conn:
            try:
                return await conn.call(method, *args)
            except DfsError as exc:  # raised inside the client's nursery: hand it out plainly
                return exc

    return trio.run(go)


@pytest.mark.parametrize("method", [ep.name for ep in SERVED])
def test_no_credential_no_endpoint(node: Daemon, method: str) -> None:
    """Every endpoint, called without a handshake: one AuthFailed frame, then the connection
    closes; the frame says nothing about the cluster."""
    responses = _exchange(node.port, [wire.encode_request(1, method, [])])
    assert len(responses) == 1
    (refusal,) = responses
    assert refusal.msgid == 0 and isinstance(refusal.error, AuthFailed)
    assert node.node_id not in refusal.error.message and "127.0.0.1" not in refusal.error.message


def test_a_stranger_learns_nothing_and_is_counted(node: Daemon) -> None:
    for frame in (
        wire.encode_request(1, "sys.info", []),
        wire.encode_request(0, HELLO, [1, "node", os.urandom(32)])
        + wire.encode_request(0, PROOF, [b"x" * 32]),
        wire.encode_request(0, HELLO, [1, "root", os.urandom(32)]),
        os.urandom(64),
    ):
        responses = _exchange(node.port, [frame])
        assert [r.msgid for r in responses][-1:] == [0]
        assert isinstance(responses[-1].error, AuthFailed)
    status, _, body = http_call(
        node.admin_port, "GET", "/metrics", headers={"Authorization": f"Bearer {node.admin_token()}"}
    )
    assert status == 200
    line = next(
        x
        for x in body.decode().splitlines()
        if x.startswith('dfs_rpc_connections_refused_total{reason="auth"}')
    )
    assert float(line.split()[-1]) >= 4


def test_a_frame_over_the_preauth_limit_is_refused_unread(node: Daemon) -> None:
    big = wire.encode_request(0, HELLO, [1, "client", b"\0" * (rpc.HANDSHAKE_FRAME_BYTES * 4)])
    (refusal,) = _exchange(node.port, [big])
    assert isinstance(refusal.error, AuthFailed)


def test_a_recorded_handshake_replayed_fails(node: Daemon) -> None:
    """Record a real client's hello and proof; sent again on a new connection (the server's
    nonce is new), the proof no longer verifies."""
    cred = node.credential(CallerClass.CLIENT)
    handshake = ClientHandshake(cred)
    hello = wire.encode_request(0, HELLO, handshake.hello())
    decoder = wire.FrameDecoder()
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(hello)
        while (challenge := decoder.next_event()) is None:
            decoder.feed(sock.recv(65536))
        assert isinstance(challenge, wire.Response) and challenge.error is None
        proof = wire.encode_request(0, PROOF, handshake.answer(challenge.result))
        ping = wire.encode_request(7, endpoints.SYS_PING.name, [])
        sock.sendall(proof + ping)
        while (answer := decoder.next_event()) is None:
            decoder.feed(sock.recv(65536))
        assert isinstance(answer, wire.Response) and answer.msgid == 7 and answer.result == "pong"
    responses = _exchange(node.port, [hello, proof, ping])
    assert [r.msgid for r in responses] == [0, 0]  # the (new) challenge, then the refusal
    assert isinstance(responses[1].error, AuthFailed)


def test_another_clusters_credential_is_refused_by_the_client(node: Daemon) -> None:
    """The daemon cannot prove it holds the stranger's key, so the client stops before
    sending a proof (and the daemon could not have accepted one)."""
    stranger = Credential.of_secret(new_cluster_secret())
    err = _call(node, stranger, "sys.ping")
    assert isinstance(err, AuthFailed)
    assert "could not prove" in err.message


@pytest.mark.parametrize("caller", list(CallerClass), ids=lambda c: c.value)
def test_each_class_calls_only_its_endpoints(node: Daemon, caller: CallerClass) -> None:
    """Every endpoint the class may not call is refused before any handler runs (so with no
    arguments at all); a representative allowed one answers."""
    cred = node.credential(caller)

    async def go() -> tuple[list[str], list[str]]:
        refused, wrong = [], []
        async with rpc.open_client(node.address, call_timeout_s=10, credential=cred) as conn:
            for ep in SERVED:
                if caller in ep.callers:
                    continue
                try:
                    await conn.call(ep.name)
                except CallerNotAllowed:
                    refused.append(ep.name)
                except DfsError as exc:
                    wrong.append(f"{ep.name}: {exc.code}")
                else:
                    wrong.append(f"{ep.name}: answered")
            assert await conn.call("sys.ping") == "pong"
            await conn.call("meta.getattr", 1)
        return refused, wrong

    refused, wrong = trio.run(go)
    assert wrong == []
    expected = {ep.name for ep in SERVED if caller not in ep.callers}
    assert set(refused) == expected
    if caller is CallerClass.CLIENT:  # what the issue names explicitly
        assert {"chunk.delete", "s3.key_create", "meta.register_node", "meta.remove_node"} <= expected
    if caller is CallerClass.ADMIN:
        assert "s3.key_create" not in expected and "chunk.delete" in expected
    if caller is CallerClass.NODE:
        assert expected == set()
    else:  # the master key goes to peer daemons only: not to mounts, the CLI, admins or S3
        assert "keys.master" in expected


def test_only_a_peer_gets_the_master_key(node: Daemon) -> None:
    """keys.master answers a node credential with the key master.key holds, and a mount's
    (client) or an admin's credential with a refusal before any handler runs."""
    on_disk = (node.data_dir / "master.key").read_bytes()
    answer = _call(node, node.credential(CallerClass.NODE), "keys.master", "current")
    assert answer["key"] == on_disk and answer["serves_metadata"]
    assert answer["fingerprint"] == answer["cluster_fingerprint"] or answer["cluster_fingerprint"] is None
    bare = _call(node, node.credential(CallerClass.NODE), "keys.master", "")
    assert bare["key"] is None and bare["previous"] is None and bare["fingerprint"] == answer["fingerprint"]
    for caller in (CallerClass.CLIENT, CallerClass.ADMIN):
        refused = _call(node, node.credential(caller), "keys.master", "current")
        assert isinstance(refused, CallerNotAllowed), refused
    assert on_disk.hex() not in node.log_path.read_text()


def test_credential_files_are_private_and_stable(node: Daemon) -> None:
    for cls in CallerClass:
        path = node.data_dir / f"{cls.value}.credential"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # What dfsd wrote is what the classes prove with: admin may create keys, client may not.
    assert isinstance(_call(node, node.credential(CallerClass.CLIENT), "s3.key_create"), CallerNotAllowed)
    made = _call(node, node.credential(CallerClass.ADMIN), "s3.key_create", "auth test")
    assert isinstance(made, dict) and made["access_key"]
    _call(node, node.credential(CallerClass.ADMIN), "s3.key_revoke", made["access_key"])
    # No credential text ever reaches the daemon's log.
    log = node.log_path.read_text()
    for cls in CallerClass:
        assert (node.data_dir / f"{cls.value}.credential").read_text().split()[-1] not in log


def test_cli_over_tcp_with_a_foreign_credential_fails_in_one_line(node: Daemon, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.credential"
    foreign.write_text(Credential.derived(new_cluster_secret(), CallerClass.ADMIN).to_text())
    foreign.chmod(0o600)
    env = {**os.environ, "DFS_RPC_CREDENTIAL_FILE": str(foreign)}
    res = subprocess.run(
        [str(BIN / "dfs"), "status", "--config", str(node.conf_path)], capture_output=True, text=True, env=env
    )
    assert res.returncode == 77, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "could not prove" in res.stderr
    foreign.chmod(0o644)  # a credential others may read is refused outright
    res = subprocess.run(
        [str(BIN / "dfs"), "status", "--config", str(node.conf_path)], capture_output=True, text=True, env=env
    )
    assert res.returncode == 77 and "chmod 600" in res.stderr


def test_a_joining_daemon_without_the_secret_refuses_to_start(tmp_path: Path) -> None:
    primary = Daemon(tmp_path / "n1", free_port(), node_id="j1")
    joiner = Daemon(
        tmp_path / "n2", free_port(), node_id="j2", extra_conf=f'[cluster]\nmeta = "{primary.address}"\n'
    )
    primary.start()
    try:
        proc = subprocess.run(
            [str(BIN / "dfsd"), "--config", str(joiner.conf_path)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode != 0
        assert "node.credential" in proc.stderr and "Copy" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        # Given the file, it joins, and the primary's layout shows it.
        joiner.joins = primary
        joiner.start()
        try:
            wait_for(lambda: '"j2"' in primary.cli("layout", "--json").stdout, 30, "j2 in the layout")
        finally:
            joiner.stop()
    finally:
        primary.stop()


# Runs as `nobody`, who can read no credential file: knocks on every port of the daemon.
KNOCK = """
import http.client, json, os, socket
from dfs.core import wire

out = {}
with socket.create_connection(("127.0.0.1", int(os.environ["RPC"])), timeout=10) as s:
    s.sendall(wire.encode_request(1, "sys.info", []))
    decoder = wire.FrameDecoder()
    while (event := decoder.next_event()) is None:
        decoder.feed(s.recv(65536))
    out["rpc"] = [event.msgid, event.error.code if event.error else "answered"]

def fetch(port, method, path):
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
    conn.request(method, path)
    resp = conn.getresponse()
    return [resp.status, resp.read().decode(errors="replace")[:300]]

out["s3_list"] = fetch(os.environ["S3"], "GET", "/")
out["s3_put"] = fetch(os.environ["S3"], "PUT", "/nobodys-bucket")
out["admin_nodes"] = fetch(os.environ["ADMIN"], "GET", "/storage/nodes")
out["admin_metrics"] = fetch(os.environ["ADMIN"], "GET", "/metrics")
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
    u.sendto(b"\\x01" + os.urandom(80), ("127.0.0.1", int(os.environ["GOSSIP"])))
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")
def test_nobody_gets_nothing_on_any_port(node: Daemon) -> None:
    """Per port, what a local user without credentials gets: refusals only."""

    def dropped() -> float:
        _, _, body = http_call(
            node.admin_port, "GET", "/metrics", headers={"Authorization": f"Bearer {node.admin_token()}"}
        )
        return sum(
            float(line.split()[-1])
            for line in body.decode().splitlines()
            if line.startswith("dfs_gossip_packets_dropped_total")
        )

    before = dropped()
    ports = {"RPC": node.port, "S3": node.s3_port, "ADMIN": node.admin_port, "GOSSIP": node.gossip_port}
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", KNOCK],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={**os.environ, **{k: str(v) for k, v in ports.items()}},
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["rpc"] == [0, "AuthFailed"]
    assert out["s3_list"][0] == 403 and "AccessDenied" in out["s3_list"][1]
    assert out["s3_put"][0] == 403 and "AccessDenied" in out["s3_put"][1]
    assert out["admin_nodes"][0] == 401 and out["admin_metrics"][0] == 401
    wait_for(lambda: dropped() > before, 10, "the forged gossip packet to be dropped and counted")
