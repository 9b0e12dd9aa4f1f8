"""What the fuzz tier found, each reduced to one input against a real daemon (fast tier: not slow).

The ``fuzzd`` fixture fails a test if the daemon died, fsck is not clean, or its log shows a
traceback.
"""

from __future__ import annotations

import socket
import time

import msgpack

from dfs.core import wire
from tests.conftest import Daemon, wait_for
from tests.fuzz.fuzzkit import rpc_call, rpc_ping


def _answer(daemon: Daemon, method: str, *args: object) -> wire.Response:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        s.sendall(wire.encode_request(1, method, list(args)))
        decoder = wire.FrameDecoder()
        while (event := decoder.next_event()) is None:
            data = s.recv(65536)
            assert data, "connection closed"
            decoder.feed(data)
    assert isinstance(event, wire.Response)
    return event


def test_wrong_argument_counts_are_invalid_argument_not_internal_errors(fuzzd: Daemon) -> None:
    # meta.getattr runs inline, meta.setxattr in the metadata thread, s3.key_revoke in a task:
    # before the declared arities were checked at dispatch, a wrong count in a thread-run call
    # came back as InternalError with a traceback in the log.
    for method, args in [
        ("meta.getattr", ()),
        ("meta.getattr", (1, 2)),
        ("meta.setxattr", (1, b"user.x", b"v", 0, 5, 6, 7)),
        ("meta.end_session", ()),
        ("s3.key_revoke", ("a", "b", "c")),
        ("sys.ping", (1,)),
    ]:
        err = _answer(fuzzd, method, *args).error
        assert err is not None and err.code == "InvalidArgument", (method, err)
    assert rpc_call(("127.0.0.1", fuzzd.port), "meta.getattr", 1) is not None


def test_admin_forward_with_an_int_body_allocates_nothing(fuzzd: Daemon) -> None:
    # bytes(2**40) raised MemoryError (and bytes(2**32) would have allocated 4 GiB).
    err = _answer(fuzzd, "sys.admin_forward", "GET", "/health", [], 2**40, "x").error
    assert err is not None and err.code == "InvalidArgument"


def test_map_with_non_str_keys_in_a_logged_call_keeps_change_notices_working(fuzzd: Daemon) -> None:
    # meta.open_events logs its arguments to the oplog as given; reading them back refused a
    # map with an int key, so change notices failed with a traceback.
    rpc_call(("127.0.0.1", fuzzd.port), "meta.open_events", [], {7: 1})
    rpc_call(("127.0.0.1", fuzzd.port), "meta.mkdir", 1, b"after", 0o755, 0, 0)


def test_gossip_alive_with_an_unusable_address_does_not_stop_the_daemon(fuzzd: Daemon) -> None:
    # The daemon probes the members it hears of; sending to a host the socket cannot encode
    # (TypeError) or an address without a valid port (ConfigError) killed the receive loop and
    # with it the daemon.
    bad = {"evil-idna": "é" * 70 + ":7401", "evil-port": "127.0.0.1:6\x00486", "evil-empty": "a..é:1"}
    datagram = msgpack.packb([1, *[[5, node, 1, addr, {}] for node, addr in bad.items()]], use_bin_type=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(datagram, ("127.0.0.1", fuzzd.gossip_port))

    def probed_all() -> bool:
        members = rpc_call(("127.0.0.1", fuzzd.port), "sys.members")
        assert isinstance(members, list)
        status = {m["node_id"]: m["status"] for m in members}
        # Suspect or dead means the daemon tried to reach them.
        return all(status.get(node) in ("suspect", "dead") for node in bad)

    wait_for(probed_all, 30, "the daemon to probe the made-up members")
    assert fuzzd.proc is not None and fuzzd.proc.poll() is None
    t0 = time.monotonic()
    rpc_ping(("127.0.0.1", fuzzd.port))
    assert time.monotonic() - t0 < 5
