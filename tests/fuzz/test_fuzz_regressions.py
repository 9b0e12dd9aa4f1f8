"""What the fuzz tier found, each reduced to one input against a real daemon (fast tier: not slow,
but for the test that waits out the handshake timeout).

The ``fuzzd`` fixture fails a test if the daemon died, fsck is not clean, or its log shows a
traceback.
"""

from __future__ import annotations

import socket
import struct
import time

import msgpack
import pytest

from daemon.cluster.keyring import load_keyring
from dfs.core import wire
from dfs.core.auth import HELLO, CallerClass, ClientHandshake
from dfs.core.gossip.seal import Sealer
from dfs.net.rpc import HANDSHAKE_TIMEOUT_S
from tests.conftest import Daemon, wait_for
from tests.fuzz.fuzzkit import read_event, read_hwm, read_rss, rpc_call, rpc_connect, rpc_ping


def _answer(daemon: Daemon, method: str, *args: object) -> wire.Response:
    """The answer to one call over TCP as a node (error answers included)."""
    s, decoder = rpc_connect(("127.0.0.1", daemon.port), daemon.credential(), timeout_s=10)
    with s:
        s.sendall(wire.encode_request(1, method, list(args)))
        event = read_event(s, decoder, time.monotonic() + 10)
    assert isinstance(event, wire.Response), "connection closed"
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
    assert rpc_call(("127.0.0.1", fuzzd.port), "meta.getattr", 1, credential=fuzzd.credential()) is not None


def test_admin_forward_with_an_int_body_allocates_nothing(fuzzd: Daemon) -> None:
    # bytes(2**40) raised MemoryError (and bytes(2**32) would have allocated 4 GiB).
    err = _answer(fuzzd, "sys.admin_forward", "GET", "/health", [], 2**40, "x").error
    assert err is not None and err.code == "InvalidArgument"


def test_map_with_non_str_keys_in_a_logged_call_keeps_change_notices_working(fuzzd: Daemon) -> None:
    # meta.create_volume logs its policy to the oplog as given; reading it back refused a map
    # with an int key, so change notices failed with a traceback.
    rpc_call(("127.0.0.1", fuzzd.port), "meta.create_volume", "v", {7: 1}, credential=fuzzd.credential())
    rpc_call(("127.0.0.1", fuzzd.port), "meta.mkdir", 1, b"after", 0o755, 0, 0, credential=fuzzd.credential())


def test_gossip_alive_with_an_unusable_address_does_not_stop_the_daemon(fuzzd: Daemon) -> None:
    # The daemon probes the members it hears of; sending to a host the socket cannot encode
    # (TypeError) or an address without a valid port (ConfigError) killed the receive loop and
    # with it the daemon.
    bad = {"evil-idna": "é" * 70 + ":7401", "evil-port": "127.0.0.1:6\x00486", "evil-empty": "a..é:1"}
    datagram = msgpack.packb([1, *[[5, node, 1, addr, {}] for node, addr in bad.items()]], use_bin_type=True)
    secret = fuzzd.credential().secret
    assert secret is not None
    sealed = Sealer(load_keyring(fuzzd.data_dir, secret)).seal(datagram, time.time())  # as a member would
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(sealed, ("127.0.0.1", fuzzd.gossip_port))

    def probed_all() -> bool:
        members = rpc_call(("127.0.0.1", fuzzd.port), "sys.members", credential=fuzzd.credential())
        assert isinstance(members, list)
        status = {m["node_id"]: m["status"] for m in members}
        # Suspect or dead means the daemon tried to reach them.
        return all(status.get(node) in ("suspect", "dead") for node in bad)

    wait_for(probed_all, 30, "the daemon to probe the made-up members")
    assert fuzzd.proc is not None and fuzzd.proc.poll() is None
    t0 = time.monotonic()
    rpc_ping(("127.0.0.1", fuzzd.port), fuzzd.credential())
    assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------- before authentication

BIG_FRAME = 10 * 1024 * 1024
#: How much the daemon's peak RSS may grow while refusing BIG_FRAME offers (a daemon that
#: buffered them would grow by at least BIG_FRAME).
REFUSAL_RSS_SLACK = 3 * 1024 * 1024


def _offer_big_frame(address: tuple[str, int]) -> tuple[list[wire.Request | wire.Response], str]:
    """Unauthenticated: a BIG_FRAME length prefix and the first 64 KiB of its body; once the
    daemon has answered, the rest while it lets us.  (Its frames, and how it ended.)"""
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(struct.pack(">I", BIG_FRAME) + bytes(64 * 1024))
        decoder = wire.FrameDecoder()
        try:
            answer = read_event(s, decoder, time.monotonic() + 10)
        except TimeoutError:
            # It waits for the body: the frame is being buffered.
            raise AssertionError("no answer to a 10 MiB frame header within 10 s") from None
        events = [answer] if answer is not None else []
        # The rest of the body: the daemon reads and drops a little of it, then closes.
        try:
            chunk = bytes(256 * 1024)
            for _ in range(BIG_FRAME // len(chunk)):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        end = "closed"
        try:
            while (event := read_event(s, decoder, time.monotonic() + 10)) is not None:
                events.append(event)
        except (BrokenPipeError, ConnectionResetError):
            end = "reset"
    return events, end


def test_unauthenticated_10_mib_frame_is_refused_without_being_buffered(fuzzd: Daemon) -> None:
    # Before the handshake the daemon reads frames of at most HANDSHAKE_FRAME_BYTES: a bigger
    # length prefix is refused at once (AuthFailed, answered while most of the body is still
    # unsent), its body never held in memory.
    tcp = ("127.0.0.1", fuzzd.port)
    assert fuzzd.proc is not None
    pid = fuzzd.proc.pid
    # Warm up what a refusal and an authenticated call use, so their first-use allocations and
    # imports are not counted below.
    for _ in range(2):
        _offer_big_frame(tcp)
        rpc_ping(tcp, fuzzd.credential())
    hwm0, rss0 = read_hwm(pid), read_rss(pid)
    for _ in range(3):
        events, end = _offer_big_frame(tcp)
        assert events, f"the daemon {end} the connection without refusing the frame"
        first = events[0]
        assert isinstance(first, wire.Response) and first.msgid == 0, first
        assert first.error is not None and first.error.code == "AuthFailed", first
        assert len(events) == 1, f"frames after the refusal: {events[1:]}"
    hwm1, rss1 = read_hwm(pid), read_rss(pid)
    print(f"\nrefusing 3 x 10 MiB: peak RSS +{(hwm1 - hwm0) >> 10} KiB, RSS +{(rss1 - rss0) >> 10} KiB")
    assert hwm1 - hwm0 < REFUSAL_RSS_SLACK, f"peak RSS grew by {(hwm1 - hwm0) >> 10} KiB"
    assert rss1 - rss0 < REFUSAL_RSS_SLACK, f"RSS grew by {(rss1 - rss0) >> 10} KiB"
    rpc_ping(tcp, fuzzd.credential())


@pytest.mark.slow
def test_unauthenticated_idle_connections_are_closed_after_the_handshake_timeout(fuzzd: Daemon) -> None:
    # One connection says nothing, one sends a valid hello and never proves: both are refused
    # and closed once HANDSHAKE_TIMEOUT_S has passed, while the daemon keeps serving others.
    tcp = ("127.0.0.1", fuzzd.port)
    hello = wire.encode_request(0, HELLO, ClientHandshake(fuzzd.credential(CallerClass.CLIENT)).hello())
    t0 = time.monotonic()
    deadline = t0 + HANDSHAKE_TIMEOUT_S + 5
    silent = socket.create_connection(tcp, timeout=10)
    halfway = socket.create_connection(tcp, timeout=10)
    with silent, halfway:
        halfway.sendall(hello)
        rpc_ping(tcp, fuzzd.credential(CallerClass.CLIENT))  # others are served meanwhile
        for name, s, want in [("silent", silent, 1), ("after hello", halfway, 2)]:
            decoder = wire.FrameDecoder()
            events = []
            try:
                while (event := read_event(s, decoder, deadline)) is not None:
                    events.append(event)
            except TimeoutError:
                raise AssertionError(
                    f"{name}: still open {time.monotonic() - t0:.1f} s after connecting "
                    f"(handshake timeout {HANDSHAKE_TIMEOUT_S} s)"
                ) from None
            took = time.monotonic() - t0
            assert len(events) == want, (name, events)
            last = events[-1]
            assert isinstance(last, wire.Response) and last.msgid == 0, (name, last)
            assert last.error is not None and last.error.code == "AuthFailed", (name, last)
            assert took >= HANDSHAKE_TIMEOUT_S - 1, f"{name}: closed after only {took:.1f} s"
            print(f"\n{name}: refused and closed after {took:.1f} s ({last.error.message})")
    rpc_ping(tcp, fuzzd.credential())


# --------------------------------------------------------------------------- refusing a connection
# Both found by the fuzz tier after the handshake landed: dfs/net/rpc.py's _reject_connection
# half-closed (send_eof) and drained after its error frame without handling a broken stream or
# another task still writing, so the connection's handler died with a traceback in the log
# ("rpc connection handler crashed").


def _crashes(daemon: Daemon) -> int:
    return daemon.log_path.read_text(errors="replace").count("rpc connection handler crashed")


def _wait_refusals(daemon: Daemon, before: int, n: int) -> None:
    def logged() -> bool:
        return daemon.log_path.read_text(errors="replace").count("rpc refusing connection") >= before + n

    wait_for(logged, 10, f"the daemon to refuse {n} connections")


def test_a_peer_that_closes_mid_frame_leaves_no_traceback(daemon: Daemon) -> None:
    tcp = ("127.0.0.1", daemon.port)
    before = daemon.log_path.read_text(errors="replace").count("rpc refusing connection")
    for i in range(10):
        if i % 2:  # authenticated: half a frame, then close (refused: EOF inside a frame)
            s, _ = rpc_connect(tcp, daemon.credential())
            s.sendall(wire.encode_request(1, "sys.ping", [])[:3])
        else:  # unauthenticated: a frame over the handshake limit; close once it is refused
            s = socket.create_connection(tcp, timeout=10)
            s.sendall(struct.pack(">I", 1 << 20) + bytes(100))
            refusal = read_event(s, wire.FrameDecoder(), time.monotonic() + 10)
            assert isinstance(refusal, wire.Response) and refusal.error is not None, refusal
        s.close()
    _wait_refusals(daemon, before, 10)
    rpc_ping(tcp, daemon.credential())
    assert _crashes(daemon) == 0, daemon.log_path.read_text()[-3000:]


def test_garbage_behind_answered_calls_leaves_no_traceback(daemon: Daemon) -> None:
    unix = str(daemon.data_dir / "rpc.sock")
    pings = b"".join(wire.encode_request(k + 1, "sys.ping", []) for k in range(64))
    for _ in range(40):
        s, decoder = rpc_connect(unix, None)
        with s:
            s.sendall(pings + b"\xff" * 64)
            s.shutdown(socket.SHUT_WR)
            while read_event(s, decoder, time.monotonic() + 10) is not None:
                pass
    rpc_ping(unix)
    assert _crashes(daemon) == 0, daemon.log_path.read_text()[-3000:]
