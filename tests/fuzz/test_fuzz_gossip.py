"""Random and mutated gossip packets at a real daemon's gossip port, UDP and TCP (slow tier).

Datagrams: random bytes, bit-flipped valid datagrams, and well-formed envelopes holding
messages with fields of random types (dfs/core/gossip/messages.py), among them forged
"suspect"/"dead" news about the daemon itself; push-pull streams: random and mutated frames,
oversized length prefixes, half a frame then silence.  The daemon must keep answering RPC
(tests/fuzz/fuzzkit.py:Watch) and still see itself alive afterwards.  Gossip packets are sealed
(dfs/core/gossip/seal.py): about half of them are sealed with the daemon's key, so the decoder
behind the seal is fuzzed too, and some sealed ones are mutated after sealing.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from daemon.cluster.keyring import load_keyring
from dfs.core.gossip.messages import PROTOCOL_VERSION
from dfs.core.gossip.seal import Sealer
from tests.conftest import Daemon
from tests.fuzz.fuzzkit import (
    Watch,
    frame_budget,
    mutate_bytes,
    random_value,
    rpc_call,
    rpc_ping,
    time_budget,
)

pytestmark = pytest.mark.slow

_LEN = struct.Struct(">I")
NODE = "fuzz1"


def _field(rng: random.Random, plausible: object) -> object:
    return plausible if rng.random() < 0.6 else random_value(rng)


def _message(rng: random.Random) -> list[object]:
    kind = rng.choice([1, 2, 3, 4, 5, 6, 7, 0, 8, -1, 255])
    node = rng.choice([NODE, NODE, f"n{rng.randrange(50)}", "x" * 200, ""])
    shapes: dict[int, list[object]] = {
        1: [rng.randrange(2**32), node],
        2: [rng.randrange(2**32)],
        3: [rng.randrange(2**32), node, f"127.0.0.1:{rng.randrange(1, 65536)}"],
        4: [rng.randrange(2**32)],
        5: [node, rng.randrange(2**63), f"127.0.0.1:{rng.randrange(1, 65536)}", {"zone": "z"}],
        6: [node, rng.randrange(0, 100), f"n{rng.randrange(50)}"],
        7: [node, rng.randrange(0, 100), rng.choice([node, "n1"])],
    }
    fields = [_field(rng, f) for f in shapes.get(kind, [])]
    if rng.random() < 0.2:
        fields = fields[: rng.randrange(len(fields) + 1)] + [
            random_value(rng) for _ in range(rng.randrange(3))
        ]
    return [kind, *fields]


Seal = Callable[[bytes], bytes]


def _sealed(rng: random.Random, seal: Seal, data: bytes) -> bytes:
    """About half sealed with the daemon's key (a tenth of those then mutated), the rest as is."""
    if rng.random() < 0.5:
        return data
    sealed = seal(data)
    return mutate_bytes(rng, sealed) if rng.random() < 0.1 else sealed


def _datagram(rng: random.Random, seal: Seal) -> bytes:
    pick = rng.random()
    if pick < 0.2:
        return rng.randbytes(rng.randrange(0, 1500))
    version = PROTOCOL_VERSION if rng.random() < 0.9 else random_value(rng)
    body = [version, *[_message(rng) for _ in range(rng.randrange(0, 8))]]
    data: bytes = msgpack.packb(body, use_bin_type=True)
    if pick < 0.4:
        data = mutate_bytes(rng, data)
    return _sealed(rng, seal, data[:65000])[:65000]


def _entry(rng: random.Random) -> list[object]:
    row: list[object] = [
        rng.choice([NODE, f"n{rng.randrange(50)}"]),
        f"127.0.0.1:{rng.randrange(1, 65536)}",
        rng.randrange(0, 100),
        rng.choice(["alive", "suspect", "dead", "left", 0, 1, 2, 3, 9]),
        {"zone": "z"},
    ]
    return [_field(rng, f) for f in row]


def _stream_frame(rng: random.Random, seal: Seal) -> bytes:
    pick = rng.random()
    if pick < 0.15:
        return rng.randbytes(rng.randrange(0, 600))
    if pick < 0.25:
        return _LEN.pack(rng.choice([16 * 1024 * 1024 + 1, 0xFFFFFFFF])) + rng.randbytes(8)
    body = [
        _field(rng, PROTOCOL_VERSION),
        _field(rng, rng.choice([0, 1])),
        _field(rng, f"n{rng.randrange(50)}"),
        [_entry(rng) for _ in range(rng.randrange(0, 20))] if rng.random() < 0.8 else random_value(rng),
    ]
    data: bytes = msgpack.packb(body, use_bin_type=True)
    if pick < 0.5:
        data = mutate_bytes(rng, data)
    data = _sealed(rng, seal, data)
    frame = _LEN.pack(len(data)) + data
    if pick > 0.95:
        frame = frame[: rng.randrange(1, len(frame))]  # half a frame, then we close
    return frame


def _udp_drops(port: int) -> int | None:
    """The receive drops counted for the UDP socket bound to 127.0.0.1:port (/proc/net/udp)."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[-1])
    return None


def test_gossip_survives_random_and_mutated_packets(fuzzd: Daemon, seed: int) -> None:
    tcp = ("127.0.0.1", fuzzd.port)
    node = fuzzd.credential()
    target = ("127.0.0.1", fuzzd.gossip_port)
    budget = frame_budget()
    stop_at = time.monotonic() + time_budget()
    rng = random.Random(seed)
    sent = 0
    streams = 0
    failure: list[str] = []
    secret = fuzzd.credential().secret
    assert secret is not None
    keyring = load_keyring(fuzzd.data_dir, secret)

    def sealer() -> Seal:
        # One Sealer per thread: each seals with the daemon's key, stamped now.
        s = Sealer(keyring)
        return lambda data: s.seal(data, time.time())

    def push_pull_worker() -> None:
        nonlocal streams
        srng = random.Random(seed + 1)
        seal = sealer()
        try:
            while sent < budget and time.monotonic() < stop_at and not failure:
                with socket.create_connection(target, timeout=15) as s:
                    try:
                        s.sendall(_stream_frame(srng, seal))
                        s.shutdown(socket.SHUT_WR)
                        while s.recv(65536):
                            pass
                    except TimeoutError:
                        failure.append("push-pull: the daemon neither answered nor closed within 15 s")
                    except OSError:
                        pass  # reset or already closed by the daemon: that is an answer
                streams += 1
        except Exception as exc:
            failure.append(f"push-pull: {type(exc).__name__}: {exc}")

    with Watch(fuzzd, [lambda: rpc_ping(tcp, node)]) as watch:
        silent = [socket.create_connection(target, timeout=5) for _ in range(16)]
        for s in silent:
            s.sendall(_LEN.pack(1000) + b"\x94")  # then nothing: the daemon times these out
        worker = threading.Thread(target=push_pull_worker)
        worker.start()
        t0 = time.monotonic()
        seal = sealer()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            while sent < budget and time.monotonic() < stop_at:
                try:
                    udp.sendto(_datagram(rng, seal), target)
                except OSError:  # ENOBUFS / ECONNREFUSED reported for an earlier datagram
                    pass
                sent += 1
                if sent % 200 == 0:
                    watch.check()
                    time.sleep(0.002)  # let the daemon's socket buffer drain a little
        elapsed = time.monotonic() - t0
        worker.join(60)
        watch.finish("gossip datagrams", sent, elapsed)
        drops = _udp_drops(target[1])
        print(f"push-pull streams: {streams}; datagrams the kernel dropped (buffer full): {drops}")
        for s in silent:
            s.close()
    assert not failure, f"seed {seed}: {failure[0]}"
    members = rpc_call(tcp, "sys.members", credential=node)
    assert isinstance(members, list)
    me = [m for m in members if isinstance(m, dict) and m.get("self")]
    assert me and me[0]["status"] == "alive", f"seed {seed}: the daemon no longer sees itself alive: {me}"
