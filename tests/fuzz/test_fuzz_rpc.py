"""Random and mutated RPC frames at a real daemon's TCP port and unix socket (slow tier).

Per connection, one of: random bytes; valid requests then garbage; an oversized length
prefix; a truncated frame; a bit-flipped valid frame; a well-framed body of the wrong shape;
or a pipelined batch of well-framed requests to every declared endpoint with arguments of
random types and counts.  Meanwhile many slowloris connections sit on half a frame, and a
separate client keeps calling ``sys.ping`` (tests/fuzz/fuzzkit.py:Watch).  No authentication
exists yet: when it lands, this runs both before the handshake and after it.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

import msgpack
import pytest

from dfs.core import endpoints, wire
from tests.conftest import Daemon, wait_for
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

WORKERS = 4
SLOWLORIS = 64
#: A connection the server must have closed (or answered) within this after we finished sending.
CLOSE_DEADLINE_S = 10.0
#: How long a batch of requests may wait for its answers; calls that may wait longer by design
#: (Timeout.POLL / LONG endpoints) are then abandoned, like a client giving up.
BATCH_WAIT_S = 10.0
#: How often the test removes the nodes the fuzzer registered (see _forget_registered_nodes).
JANITOR_S = 10.0
_PREFIX = struct.Struct(">I")
_SERVED = list(endpoints.ALL.values())
_SLOW_OK = {ep.name for ep in _SERVED if ep.timeout is not endpoints.Timeout.CALL}


def _frame(body: bytes) -> bytes:
    return _PREFIX.pack(len(body)) + body


def _request(msgid: int, method: str, args: list[object]) -> bytes:
    return _frame(msgpack.packb([0, msgid, method, args], use_bin_type=True))


def _mutated_args(rng: random.Random, ep: endpoints.Endpoint[object]) -> list[object]:
    n = len(ep.params)
    if rng.random() < 0.4:
        n = max(0, n + rng.randrange(-2, 4)) if rng.random() < 0.8 else rng.randrange(0, 20)
    return [random_value(rng) for _ in range(n)]


class Fuzzer:
    def __init__(self, daemon: Daemon, seed: int, budget: int, deadline: float) -> None:
        self.addresses: list[tuple[str, int] | str] = [
            ("127.0.0.1", daemon.port),
            str(daemon.data_dir / "rpc.sock"),
        ]
        self.seed = seed
        self.budget = budget
        self.deadline = deadline
        self.lock = threading.Lock()
        self.frames = 0
        self.cases: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()
        self.unanswered: Counter[str] = Counter()
        self.failure: str | None = None

    def _take(self, n: int) -> bool:
        with self.lock:
            if self.frames >= self.budget or time.monotonic() > self.deadline or self.failure:
                return False
            self.frames += n
            return True

    def connect(self, rng: random.Random) -> socket.socket:
        address = rng.choice(self.addresses)
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(CLOSE_DEADLINE_S)
        s.connect(address)
        return s

    # -- one connection each ----------------------------------------------------------------
    def garbage(self, rng: random.Random) -> bytes:
        return rng.randbytes(rng.randrange(1, 4096))

    def prefix_then_garbage(self, rng: random.Random) -> bytes:
        good = b"".join(_request(i + 1, "sys.ping", []) for i in range(rng.randrange(1, 5)))
        return good + rng.randbytes(rng.randrange(1, 512))

    def oversized(self, rng: random.Random) -> bytes:
        size = rng.choice(
            [wire.MAX_FRAME_BYTES + 1, 0xFFFFFFFF, 0x80000000, rng.randrange(wire.MAX_FRAME_BYTES, 2**32)]
        )
        return _PREFIX.pack(size) + rng.randbytes(rng.randrange(0, 64))

    def truncated(self, rng: random.Random) -> bytes:
        ep = rng.choice(_SERVED)
        whole = _request(1, ep.name, _mutated_args(rng, ep))
        return whole[: rng.randrange(1, len(whole))]

    def bitflip(self, rng: random.Random) -> bytes:
        ep = rng.choice(_SERVED)
        return mutate_bytes(rng, _request(rng.randrange(1, 100), ep.name, _mutated_args(rng, ep)))

    def wrong_shape(self, rng: random.Random) -> bytes:
        body = rng.choice(
            [
                lambda: random_value(rng),
                lambda: [
                    rng.choice([0, 1, 2, -1, None, "0"]),
                    random_value(rng),
                    random_value(rng),
                    random_value(rng),
                ],
                lambda: [0, rng.randrange(1, 9), random_value(rng), []],
                lambda: [1, 1, None, None],  # a response sent to a server
                lambda: [0, 1, "sys.ping"],
                lambda: [0, -1, "sys.ping", []],
                lambda: [0, 2**64 - 1, "sys.ping", []],
                lambda: [0, True, "sys.ping", []],
                lambda: [0, 1, "x" * 201, []],
                lambda: [0, 1, "sys.ping", {}],
            ]
        )()
        return _frame(msgpack.packb(body, use_bin_type=True)) + (
            _request(2, "sys.ping", []) if rng.random() < 0.5 else b""
        )

    def one_shot(self, rng: random.Random, make: Callable[[random.Random], bytes], name: str) -> None:
        """Send ``make``'s bytes, half-close, and read until the server closes: it must, soon."""
        data = make(rng)
        if not self._take(1):
            return
        with self.connect(rng) as s:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
            except TimeoutError:
                self.failure = f"{name}: the server neither answered nor closed within {CLOSE_DEADLINE_S}s"
            except OSError:
                pass  # reset or closed on us mid-send: that is an answer
        self.cases[name] += 1

    # -- pipelined requests to every endpoint ------------------------------------------------
    def batch(self, rng: random.Random, start: int) -> None:
        n = rng.randrange(1, 64)
        if not self._take(n):
            return
        calls: dict[int, str] = {}
        out = []
        for i in range(n):
            ep = _SERVED[(start + i) % len(_SERVED)] if rng.random() < 0.7 else rng.choice(_SERVED)
            args = _mutated_args(rng, ep)
            try:
                out.append(_request(i + 1, ep.name, args))
            except (ValueError, TypeError, OverflowError):  # e.g. a str with surrogates
                continue
            calls[i + 1] = ep.name
        with self.connect(rng) as s:
            try:
                s.sendall(b"".join(out))
            except (ConnectionResetError, BrokenPipeError) as exc:
                self.failure = f"batch: server dropped a well-framed connection: {exc}"
                return
            decoder = wire.FrameDecoder()
            end = time.monotonic() + BATCH_WAIT_S
            while calls and time.monotonic() < end:
                s.settimeout(max(0.01, end - time.monotonic()))
                try:
                    data = s.recv(1 << 20)
                except TimeoutError:
                    break
                if not data:
                    self.failure = (
                        f"batch: server closed a well-framed connection ({sorted(calls.values())[:5]})"
                    )
                    return
                decoder.feed(data)
                while (event := decoder.next_event()) is not None:
                    assert isinstance(event, wire.Response)
                    method = calls.pop(event.msgid)
                    self.answers["error" if event.error is not None else "result"] += 1
        for method in calls.values():
            self.unanswered[method] += 1
            if method not in _SLOW_OK:
                self.failure = f"batch: {method} with bad arguments got no answer within {BATCH_WAIT_S}s"
        self.cases["batch"] += 1

    def worker(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        kinds: list[tuple[str, Callable[[random.Random], bytes]]] = [
            ("garbage", self.garbage),
            ("prefix_then_garbage", self.prefix_then_garbage),
            ("oversized", self.oversized),
            ("truncated", self.truncated),
            ("bitflip", self.bitflip),
            ("wrong_shape", self.wrong_shape),
        ]
        step = index
        try:
            while self._take(0):
                if rng.random() < 0.5:
                    self.batch(rng, step)
                    step += 37
                else:
                    name, make = rng.choice(kinds)
                    self.one_shot(rng, make, name)
        except Exception as exc:
            self.failure = f"worker {index}: {type(exc).__name__}: {exc}"


def _slowloris(fuzzer: Fuzzer, rng: random.Random) -> list[socket.socket]:
    """Connections that send part of a frame and then nothing."""
    held = []
    for _ in range(SLOWLORIS):
        s = fuzzer.connect(rng)
        whole = _request(1, "sys.ping", [])
        s.sendall(rng.choice([whole[:2], whole[:4], whole[:-1], _PREFIX.pack(1 << 20) + b"\x94"]))
        held.append(s)
    return held


def _forget_registered_nodes(address: tuple[str, int], *, wait: bool = True) -> None:
    """``meta.register_node`` with well-typed random arguments registers made-up nodes (nothing
    asks who calls it yet); they are unreachable, so fsck would rightly report them.  Remove
    them as an operator would, leaving the layout as it was."""
    layout = rpc_call(address, "meta.layout")
    assert isinstance(layout, dict)
    for node in layout["nodes"]:
        if node["node_id"] == "fuzz1":
            continue
        try:
            if node["state"] != "out":
                rpc_call(address, "meta.set_node", node["node_id"], {"state": "out"})
            rpc_call(address, "meta.remove_node", node["node_id"])
        except AssertionError:
            if wait:  # while fuzzing, the fuzzer may have changed the node meanwhile
                raise

    def only_us() -> bool:
        cluster = rpc_call(address, "sys.cluster")
        assert isinstance(cluster, dict)
        return [n["node_id"] for n in cluster["layout"]["nodes"]] == ["fuzz1"]

    if wait:
        wait_for(only_us, 30, "the daemon to see the cleaned layout")


def test_rpc_survives_random_and_mutated_frames(fuzzd: Daemon, seed: int) -> None:
    tcp = ("127.0.0.1", fuzzd.port)
    unix = str(fuzzd.data_dir / "rpc.sock")
    budget = frame_budget()
    fuzzer = Fuzzer(fuzzd, seed, budget, time.monotonic() + time_budget())
    with Watch(fuzzd, [lambda: rpc_ping(tcp), lambda: rpc_ping(unix)]) as watch:
        held = _slowloris(fuzzer, random.Random(seed))
        t0 = time.monotonic()
        threads = [threading.Thread(target=fuzzer.worker, args=(i,)) for i in range(WORKERS)]
        for t in threads:
            t.start()
        janitor_at = time.monotonic() + JANITOR_S
        while any(t.is_alive() for t in threads):
            if watch.failure is not None:
                fuzzer.failure = "watch failed"
            for t in threads:
                t.join(0.2)
            if time.monotonic() > janitor_at:
                # Made-up nodes pile up otherwise, and every whole-store call (fsck, GC) then
                # spends its time failing to reach them.
                _forget_registered_nodes(tcp, wait=False)
                janitor_at = time.monotonic() + JANITOR_S
                print(f"  {fuzzer.frames} frames after {time.monotonic() - t0:.0f} s", flush=True)
        elapsed = time.monotonic() - t0
        watch.check()
        assert fuzzer.failure is None, f"seed {seed}: {fuzzer.failure}"
        # The slowloris connections are still open and the daemon still serves everyone else.
        watch.finish("rpc frames", fuzzer.frames, elapsed)
        for s in held:
            s.close()
    print(f"cases {dict(fuzzer.cases)}; answers {dict(fuzzer.answers)}; abandoned {dict(fuzzer.unanswered)}")
    _forget_registered_nodes(tcp)
    assert fuzzer.frames >= min(budget, 1000), f"only {fuzzer.frames} frames sent"
