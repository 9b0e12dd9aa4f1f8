"""Random and mutated RPC frames at a real daemon's TCP port, before and after authentication,
and at its unix socket (slow tier).

Every connection takes one of three lanes:

- **pre-auth**: TCP without a completed handshake.  Random bytes; length prefixes over the
  pre-authentication limit (``HANDSHAKE_FRAME_BYTES``) and frames right at it; truncated
  frames; well-framed calls to every endpoint with no handshake; malformed and bit-flipped
  hellos; a valid hello followed by calls instead of a proof; a replayed handshake; a proof
  without a hello; bodies of the wrong shape; and, interactively, a valid hello whose
  challenge is answered with a bad proof (flipped, wrong length or type, a call, garbage, an
  oversized or half frame).  The daemon may answer a hello with its challenge and a failure
  with one AuthFailed error frame (msgid 0), then must close: it never answers a call (no
  response with msgid != 0), sends nothing after the error, and never takes longer than
  ``HANDSHAKE_TIMEOUT_S`` to give up on a handshake.
- **post-auth**: TCP authenticated as node, admin or client at random, then the frames
  below, as before authentication existed; a call the class may not make is answered
  CallerNotAllowed.
- **unix**: the unix socket, whose caller (this uid) is ``node`` without a handshake.

Post-auth and unix frames, one kind per connection: random bytes; valid requests then
garbage; an oversized length prefix; a truncated frame; a bit-flipped valid frame; a
well-framed body of the wrong shape; or a pipelined batch of well-framed requests to every
declared endpoint with arguments of random types and counts.  Meanwhile slowloris
connections sit on half a frame in every lane (the daemon must close the unauthenticated
ones within ``HANDSHAKE_TIMEOUT_S``), and a separate client keeps calling ``sys.ping`` over
TCP as node and as client and over the unix socket (tests/fuzz/fuzzkit.py:Watch).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import pytest

from dfs.core import endpoints, wire
from dfs.core.auth import HELLO, PROOF, VERSION, CallerClass, ClientHandshake, Credential
from dfs.net.rpc import HANDSHAKE_FRAME_BYTES, HANDSHAKE_TIMEOUT_S
from tests.conftest import Daemon, wait_for
from tests.fuzz.fuzzkit import (
    Address,
    Watch,
    frame_budget,
    handshake,
    mutate_bytes,
    random_value,
    read_event,
    rpc_call,
    rpc_ping,
    time_budget,
)

pytestmark = pytest.mark.slow

WORKERS = 4
SLOWLORIS = 64
PRE, POST, UNIX = "pre-auth", "post-auth", "unix"
#: The share of connections in each lane.
LANE_WEIGHTS = {PRE: 0.5, POST: 0.3, UNIX: 0.2}
#: A connection the server must have closed (or answered) within this after we finished sending.
CLOSE_DEADLINE_S = 10.0
#: ...and an unauthenticated one within the handshake timeout plus this.
HANDSHAKE_MARGIN_S = 5.0
#: How long a batch of requests may wait for its answers; calls that may wait longer by design
#: (Timeout.POLL / LONG endpoints) are then abandoned, like a client giving up.
BATCH_WAIT_S = 10.0
#: How often the test removes the nodes the fuzzer registered (see _forget_registered_nodes).
JANITOR_S = 10.0
_PREFIX = struct.Struct(">I")
_SERVED = list(endpoints.ALL.values())
_SLOW_OK = {ep.name for ep in _SERVED if ep.timeout is not endpoints.Timeout.CALL}
_CLASSES = list(CallerClass)
Event = wire.Request | wire.Response


def _frame(body: bytes) -> bytes:
    return _PREFIX.pack(len(body)) + body


def _request(msgid: int, method: str, args: list[object]) -> bytes:
    return _frame(msgpack.packb([0, msgid, method, args], use_bin_type=True))


def _mutated_args(rng: random.Random, ep: endpoints.Endpoint[object]) -> list[object]:
    n = len(ep.params)
    if rng.random() < 0.4:
        n = max(0, n + rng.randrange(-2, 4)) if rng.random() < 0.8 else rng.randrange(0, 20)
    return [random_value(rng) for _ in range(n)]


def _calls(rng: random.Random, start: int, n: int) -> tuple[bytes, dict[int, str]]:
    """``n`` well-framed requests (msgids 1..n) to the endpoints from ``start`` on, with mutated
    arguments, and the method of every msgid sent."""
    calls: dict[int, str] = {}
    out = []
    for i in range(n):
        ep = _SERVED[(start + i) % len(_SERVED)] if rng.random() < 0.7 else rng.choice(_SERVED)
        try:
            out.append(_request(i + 1, ep.name, _mutated_args(rng, ep)))
        except (ValueError, TypeError, OverflowError):  # e.g. a str with surrogates
            continue
        calls[i + 1] = ep.name
    return b"".join(out), calls


def _count_frames(data: bytes) -> int:
    """How many frames ``data`` holds as a reader walking its length prefixes sees it (a partial
    or garbage frame counts as one; at least one)."""
    n = pos = 0
    while pos + 4 <= len(data):
        (size,) = _PREFIX.unpack_from(data, pos)
        pos += 4 + size
        n += 1
    return max(1, n + (0 < len(data) - pos < 4))


def _is_challenge(result: object) -> bool:
    return (
        isinstance(result, list)
        and len(result) == 2
        and all(isinstance(x, bytes) and len(x) == 32 for x in result)
    )


def pre_auth_violation(events: list[Event], challenged: bool = False) -> str | None:
    """What is wrong with what the daemon sent an unauthenticated connection (None: nothing).

    Allowed: the challenge (a non-error msgid 0 response, at most one, first), then at most one
    AuthFailed error frame (msgid 0), then nothing.  ``challenged``: the challenge was read
    already."""
    refused = False
    for ev in events:
        if not isinstance(ev, wire.Response):
            return f"the daemon sent a request ({ev.method!r})"
        if refused:
            return f"a frame after the AuthFailed error: {ev}"
        if ev.msgid != 0:
            what = repr(ev.error) if ev.error is not None else f"{ev.result!r:.200}"
            return f"an answer to a call before authentication (msgid {ev.msgid}): {what}"
        if ev.error is not None:
            if ev.error.code != "AuthFailed":
                return f"{ev.error.code} ({ev.error.message}) instead of AuthFailed before authentication"
            refused = True
            continue
        if challenged:
            return f"a second non-error response before authentication: {ev.result!r:.200}"
        if not _is_challenge(ev.result):
            return f"a non-error response that is no challenge: {ev.result!r:.200}"
        challenged = True
    return None


def read_until_close(
    s: socket.socket, decoder: wire.FrameDecoder, deadline: float
) -> tuple[list[Event], str]:
    """Every frame until the daemon closes: (frames, "closed" or "reset").  TimeoutError if it
    neither closes nor resets by ``deadline``."""
    events: list[Event] = []
    try:
        while (ev := read_event(s, decoder, deadline)) is not None:
            events.append(ev)
    except (ConnectionResetError, BrokenPipeError):
        return events, "reset"
    return events, "closed"


@dataclass
class Held:
    """A slowloris connection: what it sent, in which lane, since when."""

    sock: socket.socket
    lane: str
    opened: float
    what: str


class Fuzzer:
    def __init__(self, daemon: Daemon, seed: int, budget: int, deadline: float) -> None:
        self.tcp = ("127.0.0.1", daemon.port)
        self.unix = str(daemon.data_dir / "rpc.sock")
        self.credentials: dict[CallerClass, Credential] = {c: daemon.credential(c) for c in CallerClass}
        self.seed = seed
        self.budget = budget
        self.deadline = deadline
        self.lock = threading.Lock()
        self.total = 0
        #: Frames sent, by lane (post-auth TCP also by caller class).
        self.frames: Counter[str] = Counter()
        self.connections: Counter[str] = Counter()
        self.busy_s: dict[str, float] = dict.fromkeys(LANE_WEIGHTS, 0.0)
        self.cases: Counter[str] = Counter()
        #: What authenticated connections were answered, by "<who> <kind>".
        self.answers: Counter[str] = Counter()
        #: How unauthenticated connections ended.
        self.pre_answers: Counter[str] = Counter()
        self.unanswered: Counter[str] = Counter()
        #: The hello and proof of a recent successful handshake (what a replay sends again).
        self.recorded = b""
        self.failure: str | None = None

    def fail(self, why: str) -> None:
        with self.lock:
            if self.failure is None:
                self.failure = why

    def _take(self, n: int, lane: str = "", who: str = "") -> bool:
        with self.lock:
            if self.total >= self.budget or time.monotonic() > self.deadline or self.failure:
                return False
            self.total += n
            if lane:
                self.frames[lane] += n
                self.connections[lane] += 1
            if who:
                self.frames[f"{lane} {who}"] += n
            return True

    def _add(self, n: int, lane: str) -> None:
        """Count ``n`` more frames on a connection already counted by :meth:`_take`."""
        with self.lock:
            self.total += n
            self.frames[lane] += n

    def _socket(self, address: Address, timeout_s: float) -> socket.socket:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout_s)
        try:
            s.connect(address)
        except BaseException:
            s.close()
            raise
        return s

    def open_authenticated(self, lane: str, who: str, then: bytes) -> tuple[socket.socket, wire.FrameDecoder]:
        """A post-auth (handshake as ``who``, ``then`` pipelined behind the proof) or unix
        connection with ``then`` sent on it."""
        if lane == UNIX:
            s = self._socket(self.unix, CLOSE_DEADLINE_S)
            try:
                s.sendall(then)
            except BaseException:
                s.close()
                raise
            return s, wire.FrameDecoder()
        s = self._socket(self.tcp, CLOSE_DEADLINE_S)
        try:
            sent: list[bytes] = []
            cred = self.credentials[CallerClass(who)]
            decoder = handshake(s, cred, time.monotonic() + CLOSE_DEADLINE_S, then=then, sent=sent)
        except BaseException:
            s.close()
            raise
        self.recorded = b"".join(sent)
        return s, decoder

    # -- post-auth and unix: one connection each --------------------------------------------
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
        shapes: list[Callable[[], object]] = [
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
        body = rng.choice(shapes)()
        return _frame(msgpack.packb(body, use_bin_type=True)) + (
            _request(2, "sys.ping", []) if rng.random() < 0.5 else b""
        )

    def one_shot(
        self, rng: random.Random, lane: str, who: str, make: Callable[[random.Random], bytes], name: str
    ) -> None:
        """Send ``make``'s bytes, half-close, and read until the server closes: it must, soon."""
        data = make(rng)
        if not self._take(_count_frames(data), lane, who):
            return
        s: socket.socket | None = None
        try:
            s, _ = self.open_authenticated(lane, who, data)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except TimeoutError:
            self.fail(f"{lane} {name}: the server neither answered nor closed within {CLOSE_DEADLINE_S}s")
        except OSError:
            pass  # reset or closed on us mid-send: that is an answer
        finally:
            if s is not None:
                s.close()
        self.cases[f"{lane} {name}"] += 1

    # -- post-auth and unix: pipelined requests to every endpoint ------------------------------
    def batch(self, rng: random.Random, lane: str, who: str, start: int) -> None:
        n = rng.randrange(1, 64)
        if not self._take(n, lane, who):
            return
        out, calls = _calls(rng, start, n)
        try:
            s, decoder = self.open_authenticated(lane, who, out)
        except (ConnectionResetError, BrokenPipeError) as exc:
            self.fail(f"{lane} batch as {who}: server dropped a well-framed connection: {exc}")
            return
        with s:
            end = time.monotonic() + BATCH_WAIT_S
            while calls and time.monotonic() < end:
                try:
                    event = read_event(s, decoder, end)
                except TimeoutError:
                    break
                if event is None:
                    self.fail(
                        f"{lane} batch as {who}: server closed a well-framed connection "
                        f"({sorted(calls.values())[:5]})"
                    )
                    return
                if not isinstance(event, wire.Response) or event.msgid not in calls:
                    self.fail(f"{lane} batch as {who}: unexpected frame {event!r:.300}")
                    return
                calls.pop(event.msgid)
                kind = "result" if event.error is None else "error"
                if event.error is not None and event.error.code == "CallerNotAllowed":
                    kind = "CallerNotAllowed"
                self.answers[f"{who} {kind}"] += 1
        for method in calls.values():
            self.unanswered[method] += 1
            if method not in _SLOW_OK:
                self.fail(
                    f"{lane} batch as {who}: {method} with bad arguments got no answer within {BATCH_WAIT_S}s"
                )
        self.cases[f"{lane} batch"] += 1

    # -- pre-auth ----------------------------------------------------------------------------
    def _hello(self, rng: random.Random) -> bytes:
        return _request(0, HELLO, ClientHandshake(self.credentials[rng.choice(_CLASSES)]).hello())

    def _maybe_calls(self, rng: random.Random) -> bytes:
        """Real calls pipelined behind a pre-auth frame, sometimes: never to be answered."""
        if rng.random() < 0.5:
            return b""
        return _calls(rng, rng.randrange(len(_SERVED)), rng.randrange(1, 8))[0]

    def pre_garbage(self, rng: random.Random) -> bytes:
        return rng.randbytes(rng.randrange(1, 4096))

    def pre_oversized(self, rng: random.Random) -> bytes:
        size = rng.choice(
            [
                HANDSHAKE_FRAME_BYTES + 1,
                10 * 1024 * 1024,
                wire.MAX_FRAME_BYTES + 1,
                0xFFFFFFFF,
                rng.randrange(HANDSHAKE_FRAME_BYTES + 1, 2**32),
            ]
        )
        return _PREFIX.pack(size) + rng.randbytes(rng.randrange(0, 4096))

    def pre_at_limit(self, rng: random.Random) -> bytes:
        """A hello padded to exactly the pre-authentication limit, or one byte over it."""
        target = HANDSHAKE_FRAME_BYTES + rng.choice([0, 1])
        hello = ClientHandshake(self.credentials[rng.choice(_CLASSES)]).hello()
        pad = 0
        for _ in range(3):  # the pad's header grows from bin8 to bin16 on the way: converge
            body = msgpack.packb([0, 0, HELLO, [*hello, b"x" * pad]], use_bin_type=True)
            pad += target - len(body)
        assert len(body) == target, len(body)
        return _frame(body) + self._maybe_calls(rng)

    def pre_truncated(self, rng: random.Random) -> bytes:
        ep = rng.choice(_SERVED)
        whole = rng.choice([self._hello(rng), _request(1, ep.name, _mutated_args(rng, ep))])
        return whole[: rng.randrange(1, len(whole))]

    def pre_calls(self, rng: random.Random) -> bytes:
        return _calls(rng, rng.randrange(len(_SERVED)), rng.randrange(1, 64))[0]

    def pre_bad_hello(self, rng: random.Random) -> bytes:
        cls = rng.choice(_CLASSES).value
        nonce = rng.randbytes(32)
        args: object = rng.choice(
            [
                [VERSION + 1, cls, nonce],
                [0, cls, nonce],
                [str(VERSION), cls, nonce],
                [float(VERSION), cls, nonce],
                [VERSION, rng.choice(["root", "Node", "", "node\x00", "*", "x" * 300]), nonce],
                [VERSION, rng.randrange(3), nonce],
                [VERSION, cls, nonce[: rng.randrange(32)]],
                [VERSION, cls, nonce + b"\x00"],
                [VERSION, cls, nonce.hex()],
                [VERSION, cls, None],
                [],
                [VERSION],
                [VERSION, cls],
                [VERSION, cls, nonce, nonce],
                [random_value(rng) for _ in range(rng.randrange(0, 5))],
                random_value(rng),
            ]
        )
        method = rng.choice([HELLO] * 4 + ["auth.Hello", "auth.hello\x00", "auth", PROOF, "sys.ping"])
        msgid = rng.choice([0, 0, 1, 7, 2**63 - 1])
        body = msgpack.packb([0, msgid, method, args], use_bin_type=True)
        return _frame(body) + self._maybe_calls(rng)

    def pre_bitflip_hello(self, rng: random.Random) -> bytes:
        return mutate_bytes(rng, self._hello(rng)) + self._maybe_calls(rng)

    def pre_hello_then_calls(self, rng: random.Random) -> bytes:
        """A valid hello, then calls where the proof belongs."""
        return self._hello(rng) + _calls(rng, rng.randrange(len(_SERVED)), rng.randrange(1, 16))[0]

    def pre_replay(self, rng: random.Random) -> bytes:
        """Another connection's hello and proof again: the server's fresh nonce refuses it."""
        return (self.recorded or self._hello(rng)) + self._maybe_calls(rng)

    def pre_proof_first(self, rng: random.Random) -> bytes:
        return _request(0, PROOF, [rng.randbytes(32)]) + self._maybe_calls(rng)

    def pre_wrong_shape(self, rng: random.Random) -> bytes:
        return self.wrong_shape(rng)

    def pre_one_shot(self, rng: random.Random, make: Callable[[random.Random], bytes], name: str) -> None:
        """Send ``make``'s bytes unauthenticated, half-close, read until the server closes."""
        data = make(rng)
        if not self._take(_count_frames(data), PRE):
            return
        with self._socket(self.tcp, CLOSE_DEADLINE_S) as s:
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # refused and closed on us mid-send; what it sent is still read
            self._read_pre_auth(s, wire.FrameDecoder(), name)
        self.cases[f"{PRE} {name}"] += 1

    def _read_pre_auth(
        self, s: socket.socket, decoder: wire.FrameDecoder, name: str, challenged: bool = False
    ) -> None:
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S + HANDSHAKE_MARGIN_S
        try:
            events, end = read_until_close(s, decoder, deadline)
        except TimeoutError:
            self.fail(f"{PRE} {name}: the daemon neither refused nor closed within {HANDSHAKE_TIMEOUT_S}s")
            return
        violation = pre_auth_violation(events, challenged)
        if violation is not None:
            self.fail(f"{PRE} {name}: {violation}")
            return
        for ev in events:
            assert isinstance(ev, wire.Response)
            self.pre_answers["AuthFailed" if ev.error is not None else "challenge"] += 1
        refused = any(isinstance(ev, wire.Response) and ev.error is not None for ev in events)
        self.pre_answers[end if refused else f"{end} silently"] += 1

    def pre_bad_proof(self, rng: random.Random) -> None:
        """A valid hello; the challenge (checked) answered with a bad proof, calls, garbage..."""
        if not self._take(1, PRE):
            return
        hs = ClientHandshake(self.credentials[rng.choice(_CLASSES)])
        with self._socket(self.tcp, CLOSE_DEADLINE_S) as s:
            s.sendall(_request(0, HELLO, hs.hello()))
            decoder = wire.FrameDecoder()
            event = read_event(s, decoder, time.monotonic() + CLOSE_DEADLINE_S)
            if not isinstance(event, wire.Response) or event.msgid != 0 or event.error is not None:
                self.fail(f"{PRE} bad_proof: a valid hello was answered with {event!r:.300}")
                return
            proof = hs.answer(event.result)[0]  # AuthFailed: the daemon could not prove itself
            assert isinstance(proof, bytes)
            flipped = bytearray(proof)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            continuations: list[tuple[str, Callable[[], bytes]]] = [
                ("flipped", lambda: _request(0, PROOF, [bytes(flipped)])),
                ("short", lambda: _request(0, PROOF, [proof[: rng.randrange(32)]])),
                ("long", lambda: _request(0, PROOF, [proof + b"\x00"])),
                ("str", lambda: _request(0, PROOF, [proof.hex()])),
                ("typed", lambda: _request(0, PROOF, [random_value(rng)])),
                ("extra", lambda: _request(0, PROOF, [proof, proof])),
                ("empty", lambda: _request(0, PROOF, [])),
                (
                    "other_method",
                    lambda: _request(0, rng.choice(["auth.Proof", "sys.ping", HELLO]), [proof]),
                ),
                ("call", lambda: _calls(rng, rng.randrange(len(_SERVED)), 1)[0]),
                ("garbage", lambda: rng.randbytes(rng.randrange(1, 512))),
                ("oversized", lambda: _PREFIX.pack(HANDSHAKE_FRAME_BYTES + 1) + proof),
                ("half", lambda: _request(0, PROOF, [bytes(flipped)])[: rng.randrange(1, 40)]),
                ("nothing", lambda: b""),
            ]
            name, bad = rng.choice(continuations)
            data = bad() + (b"" if name == "half" else self._maybe_calls(rng))
            if data:
                self._add(_count_frames(data), PRE)
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._read_pre_auth(s, decoder, f"bad_proof {name}", challenged=True)
        self.cases[f"{PRE} bad_proof"] += 1

    # -- the workers ------------------------------------------------------------------------
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
        pre_kinds: list[tuple[str, Callable[[random.Random], bytes]]] = [
            ("garbage", self.pre_garbage),
            ("oversized", self.pre_oversized),
            ("at_limit", self.pre_at_limit),
            ("truncated", self.pre_truncated),
            ("calls", self.pre_calls),
            ("bad_hello", self.pre_bad_hello),
            ("bitflip_hello", self.pre_bitflip_hello),
            ("hello_then_calls", self.pre_hello_then_calls),
            ("replay", self.pre_replay),
            ("proof_first", self.pre_proof_first),
            ("wrong_shape", self.pre_wrong_shape),
        ]
        lanes, weights = list(LANE_WEIGHTS), list(LANE_WEIGHTS.values())
        step = index
        try:
            while self._take(0):
                lane = rng.choices(lanes, weights)[0]
                t0 = time.monotonic()
                if lane == PRE:
                    if rng.random() < 0.15:
                        self.pre_bad_proof(rng)
                    else:
                        name, make = rng.choice(pre_kinds)
                        self.pre_one_shot(rng, make, name)
                else:
                    who = rng.choice(_CLASSES).value if lane == POST else UNIX
                    if rng.random() < 0.5:
                        self.batch(rng, lane, who, step)
                        step += 37
                    else:
                        name, make = rng.choice(kinds)
                        self.one_shot(rng, lane, who, make, name)
                with self.lock:
                    self.busy_s[lane] += time.monotonic() - t0
        except Exception as exc:
            self.fail(f"worker {index}: {type(exc).__name__}: {exc}")

    def report(self, elapsed_s: float) -> None:
        for lane in (PRE, POST, UNIX):
            n = self.frames[lane]
            busy = self.busy_s[lane]
            extra = ""
            if lane == POST:
                extra = "; as " + ", ".join(
                    f"{c.value} {self.frames[f'{POST} {c.value}']}" for c in CallerClass
                )
            rate, worker_rate = n / max(elapsed_s, 1e-9), n / max(busy, 1e-9)
            print(
                f"{lane}: {n} frames on {self.connections[lane]} connections = {rate:.0f}/s of the run, "
                f"{worker_rate:.0f}/s per worker busy in it{extra}"
            )
        print(f"pre-auth answers {dict(self.pre_answers)}")
        print(f"post-auth and unix answers {dict(self.answers)}; abandoned {dict(self.unanswered)}")
        print(f"cases {dict(sorted(self.cases.items()))}")


def _slowloris(fuzzer: Fuzzer, rng: random.Random) -> list[Held]:
    """Connections in every lane that send part of a frame (or a bare hello) and then nothing."""
    held = []
    lanes, weights = list(LANE_WEIGHTS), list(LANE_WEIGHTS.values())
    for _ in range(SLOWLORIS):
        lane = rng.choices(lanes, weights)[0]
        whole = _request(1, "sys.ping", [])
        if lane == PRE:
            hello = fuzzer._hello(rng)
            what, data = rng.choice(
                [
                    ("nothing", b""),
                    ("half a hello", hello[: rng.randrange(1, len(hello))]),
                    ("a hello", hello),
                    ("a hello and half a proof", hello + _request(0, PROOF, [b"p" * 32])[:9]),
                    ("a prefix", _PREFIX.pack(HANDSHAKE_FRAME_BYTES)),
                ]
            )
            s = fuzzer._socket(fuzzer.tcp, CLOSE_DEADLINE_S)
            s.sendall(data)
        else:
            what = "half a frame"
            part = rng.choice([whole[:2], whole[:4], whole[:-1], _PREFIX.pack(1 << 20) + b"\x94"])
            who = rng.choice(_CLASSES).value if lane == POST else UNIX
            s, _ = fuzzer.open_authenticated(lane, who, part)
        held.append(Held(s, lane, time.monotonic(), what))
    return held


def _check_slowloris_closed(held: list[Held]) -> Counter[str]:
    """The unauthenticated slowloris connections: each refused and closed by the daemon within
    the handshake timeout (plus a margin) of its opening."""
    ends: Counter[str] = Counter()
    for h in held:
        if h.lane != PRE:
            continue
        deadline = h.opened + HANDSHAKE_TIMEOUT_S + HANDSHAKE_MARGIN_S
        try:
            events, end = read_until_close(h.sock, wire.FrameDecoder(), deadline)
        except TimeoutError:
            raise AssertionError(
                f"an unauthenticated connection that sent {h.what} is still open "
                f"{time.monotonic() - h.opened:.1f} s later (handshake timeout {HANDSHAKE_TIMEOUT_S} s)"
            ) from None
        violation = pre_auth_violation(events)
        assert violation is None, f"slowloris that sent {h.what}: {violation}"
        refused = any(isinstance(ev, wire.Response) and ev.error is not None for ev in events)
        ends[f"{end} after AuthFailed" if refused else f"{end} silently"] += 1
    return ends


def _forget_registered_nodes(address: tuple[str, int], credential: Credential, *, wait: bool = True) -> None:
    """``meta.register_node`` with well-typed random arguments (from node callers) registers
    made-up nodes; they are unreachable, so fsck would rightly report them.  Remove them as an
    operator would, leaving the layout as it was."""

    def call(method: str, *args: object) -> object:
        return rpc_call(address, method, *args, credential=credential)

    layout = call("meta.layout")
    assert isinstance(layout, dict)
    for node in layout["nodes"]:
        if node["node_id"] == "fuzz1":
            continue
        try:
            if node["state"] != "out":
                call("meta.set_node", node["node_id"], {"state": "out"})
            call("meta.remove_node", node["node_id"])
        except AssertionError:
            if wait:  # while fuzzing, the fuzzer may have changed the node meanwhile
                raise

    def only_us() -> bool:
        cluster = call("sys.cluster")
        assert isinstance(cluster, dict)
        return [n["node_id"] for n in cluster["layout"]["nodes"]] == ["fuzz1"]

    if wait:
        wait_for(only_us, 30, "the daemon to see the cleaned layout")


def test_rpc_survives_random_and_mutated_frames(fuzzd: Daemon, seed: int) -> None:
    tcp = ("127.0.0.1", fuzzd.port)
    unix = str(fuzzd.data_dir / "rpc.sock")
    node = fuzzd.credential(CallerClass.NODE)
    client = fuzzd.credential(CallerClass.CLIENT)
    budget = frame_budget()
    fuzzer = Fuzzer(fuzzd, seed, budget, time.monotonic() + time_budget())
    probes: list[Callable[[], object]] = [
        lambda: rpc_ping(tcp, node),
        lambda: rpc_ping(tcp, client),
        lambda: rpc_ping(unix),
    ]
    with Watch(fuzzd, probes) as watch:
        held = _slowloris(fuzzer, random.Random(seed))
        t0 = time.monotonic()
        threads = [threading.Thread(target=fuzzer.worker, args=(i,)) for i in range(WORKERS)]
        for t in threads:
            t.start()
        janitor_at = time.monotonic() + JANITOR_S
        while any(t.is_alive() for t in threads):
            if watch.failure is not None:
                fuzzer.fail("watch failed")
            for t in threads:
                t.join(0.2)
            if time.monotonic() > janitor_at:
                # Made-up nodes pile up otherwise, and every whole-store call (fsck, GC) then
                # spends its time failing to reach them.
                _forget_registered_nodes(tcp, node, wait=False)
                janitor_at = time.monotonic() + JANITOR_S
                print(f"  {fuzzer.total} frames after {time.monotonic() - t0:.0f} s", flush=True)
        elapsed = time.monotonic() - t0
        watch.check()
        assert fuzzer.failure is None, f"seed {seed}: {fuzzer.failure}"
        # The daemon closed the unauthenticated slowloris connections (the others are still
        # held), and it still serves everyone else.
        slow_ends = _check_slowloris_closed(held)
        watch.finish("rpc frames", fuzzer.total, elapsed)
        for h in held:
            h.sock.close()
    fuzzer.report(elapsed)
    print(f"unauthenticated slowloris connections: {dict(slow_ends)}")
    _forget_registered_nodes(tcp, node)
    assert fuzzer.total >= min(budget, 1000), f"only {fuzzer.total} frames sent"
    assert fuzzer.frames[PRE] > 0 and fuzzer.frames[POST] > 0, dict(fuzzer.frames)
