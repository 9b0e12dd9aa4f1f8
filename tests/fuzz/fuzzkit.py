"""Shared parts of the bad-input fuzz tier: random and mutated input at a real dfsd's ports (slow-marked).

Each test starts its own daemon, runs a :class:`Watch` beside the fuzzer (a separate,
well-formed client that must keep being answered within a deadline, the process alive and
its resident memory under a stated limit), and ends with a clean ``dfs fsck`` and a log
without a traceback (:func:`scan_log`): the RPC server refuses badly typed arguments before any
handler runs (dfs/core/endpoints.py declares each parameter's wire type), so a handler failing
on one is a bug.
Well-formed clients authenticate on TCP with one of the daemon's credentials
(``Daemon.credential``, :func:`handshake`); on the unix socket the daemon knows them by uid.

Budget: ``DFS_FUZZ_FRAMES`` RPC frames or gossip datagrams per test (a tenth as many HTTP requests), default
:data:`DEFAULT_FRAMES` so the whole tier fits a few minutes on 2 cores in CI;
``DFS_FUZZ_SECONDS`` caps each test's fuzzing time (default :data:`DEFAULT_SECONDS`).
``DFS_FUZZ_SEED`` replays a run (the seed is printed, and named in every failure).
The full run of the issue, one million RPC frames (and as many datagrams, a tenth as many HTTP
requests; about 5 minutes per test on 2 cores), without pytest's 300 s per-test timeout::

    DFS_FUZZ_FRAMES=1000000 DFS_FUZZ_SECONDS=3600 .venv/bin/pytest -m slow tests/fuzz -s --timeout 0

``-s`` shows each test's rate, peak RSS and answer mix.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from dfs.core import wire
from dfs.core.auth import HELLO, PROOF, ClientHandshake, Credential
from dfs.net.rpc import HANDSHAKE_FRAME_BYTES
from tests.conftest import Daemon, free_port

DEFAULT_FRAMES = 50_000
DEFAULT_SECONDS = 40.0
#: A well-formed request from the watcher must be answered within this, during and after fuzzing.
PROBE_DEADLINE_S = 5.0
#: Peak RSS may not exceed this multiple of the starting RSS plus RSS_HEADROOM_BYTES.
RSS_FACTOR = 2
RSS_HEADROOM_BYTES = 200 * 1024 * 1024
#: What must never appear in the daemon's log after fuzzing.
_LOG_ALARMS = re.compile(r"Traceback|failed unexpectedly|crashed")


_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\dT", re.M)
_HANDLER_FAILED = re.compile(r"rpc handler '([^']+)' failed")


def scan_log(text: str) -> tuple[list[str], Counter[str]]:
    """The log records that show an unhandled error, and how many of them are handler
    failures (answered InternalError) by method."""
    alarms: list[str] = []
    failed: Counter[str] = Counter()
    starts = [m.start() for m in _RECORD_START.finditer(text)] + [len(text)]
    for begin, end in itertools.pairwise(starts):
        record = text[begin:end]
        if not _LOG_ALARMS.search(record):
            continue
        handler = _HANDLER_FAILED.search(record.partition("\n")[0])
        if handler:
            failed[handler.group(1)] += 1
        alarms.append(record.rstrip())
    return alarms, failed


def frame_budget() -> int:
    return int(os.environ.get("DFS_FUZZ_FRAMES", DEFAULT_FRAMES))


def time_budget() -> float:
    return float(os.environ.get("DFS_FUZZ_SECONDS", DEFAULT_SECONDS))


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("DFS_FUZZ_SEED", random.SystemRandom().randrange(2**32)))
    print(f"\nfuzz seed {value} (replay with DFS_FUZZ_SEED={value})")
    return value


@pytest.fixture
def fuzzd(tmp_path: Path) -> Iterator[Daemon]:
    """A fresh daemon with gossip on; at teardown it must still run, fsck clean, log clean."""
    d = Daemon(tmp_path / "var", free_port(), node_id="fuzz1", gossip_conf='preset = "fast_test"')
    d.start()
    try:
        yield d
        assert d.proc is not None and d.proc.poll() is None, "dfsd died during fuzzing"
        res = d.cli("fsck", "--json", check=False)
        try:
            problems = json.loads(res.stdout)["problems"]
        except ValueError:
            raise AssertionError(f"dfs fsck failed ({res.returncode}): {res.stderr[-3000:]}") from None
        assert problems == [], f"fsck found problems: {problems}"
        alarms, failed = scan_log(d.log_path.read_text(errors="replace"))
        if failed:
            print(f"\nhandler failures (answered InternalError), by method: {dict(failed)}")
        assert not alarms, "daemon log shows unhandled errors:\n" + "\n\n".join(alarms[:10])
    finally:
        d.stop()


# --------------------------------------------------------------------------- a well-formed client

#: Where an RPC client connects: TCP (host, port), or a unix socket path.
Address = tuple[str, int] | str


def read_event(
    s: socket.socket, decoder: wire.FrameDecoder, deadline: float
) -> wire.Request | wire.Response | None:
    """The next whole frame on ``s`` (None: the peer closed); TimeoutError after ``deadline``."""
    while (event := decoder.next_event()) is None:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        data = s.recv(65536)
        if not data:
            return None
        decoder.feed(data)
    return event


def handshake(
    s: socket.socket,
    credential: Credential,
    deadline: float,
    then: bytes = b"",
    sent: list[bytes] | None = None,
) -> wire.FrameDecoder:
    """Authenticate a fresh TCP connection as ``credential`` (dfs/core/auth.py): hello, check the
    daemon's challenge, send the proof with ``then`` pipelined behind it.  The decoder to read
    the connection's answers with; AssertionError if the daemon refused.  The hello and proof
    frames are appended to ``sent`` when given (what a replay sends again)."""
    hs = ClientHandshake(credential)
    hello = wire.encode_request(0, HELLO, hs.hello())
    s.sendall(hello)
    decoder = wire.FrameDecoder(HANDSHAKE_FRAME_BYTES)
    event = read_event(s, decoder, deadline)
    assert isinstance(event, wire.Response) and event.msgid == 0, f"no handshake challenge: {event}"
    assert event.error is None, f"the daemon refused the hello: {event.error!r}"
    proof = wire.encode_request(0, PROOF, hs.answer(event.result))
    if sent is not None:
        sent += [hello, proof]
    s.sendall(proof + then)
    decoder.max_frame_bytes = wire.MAX_FRAME_BYTES
    return decoder


def rpc_connect(
    address: Address, credential: Credential | None, timeout_s: float = PROBE_DEADLINE_S
) -> tuple[socket.socket, wire.FrameDecoder]:
    """A connected socket, authenticated as ``credential`` on TCP (a unix socket's caller is
    known by its uid: no handshake), and the decoder for its answers."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout_s)
        s.connect(address)
        if isinstance(address, str):
            return s, wire.FrameDecoder()
        if credential is None:
            raise ValueError("a TCP connection needs a credential (e.g. Daemon.credential())")
        return s, handshake(s, credential, time.monotonic() + timeout_s)
    except BaseException:
        s.close()
        raise


def rpc_ping(
    address: Address, credential: Credential | None = None, timeout_s: float = PROBE_DEADLINE_S
) -> None:
    """One ``sys.ping`` on a fresh connection (TCP (host, port) with ``credential``, or a unix
    socket path); raises unless the answer is "pong" within ``timeout_s``."""
    assert rpc_call(address, "sys.ping", credential=credential, timeout_s=timeout_s) == "pong"


def rpc_call(
    address: Address,
    method: str,
    *args: object,
    credential: Credential | None = None,
    timeout_s: float = PROBE_DEADLINE_S,
) -> object:
    """One call on a fresh connection with a plain socket, authenticated as ``credential`` on TCP;
    its result (AssertionError on an error answer)."""
    deadline = time.monotonic() + timeout_s
    s, decoder = rpc_connect(address, credential, timeout_s)
    with s:
        s.sendall(wire.encode_request(7, method, list(args)))
        event = read_event(s, decoder, deadline)
        if event is None:
            raise AssertionError("daemon closed the probe connection")
        assert isinstance(event, wire.Response) and event.msgid == 7, event
        assert event.error is None, event
        return event.result


def http_probe(port: int, path: str, timeout_s: float = PROBE_DEADLINE_S) -> int:
    """GET ``path`` on a fresh connection; the status code (any status is an answer)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def read_hwm(pid: int) -> int:
    """The process's peak resident set (VmHWM) in bytes."""
    return _read_status(pid, "VmHWM")


def read_rss(pid: int) -> int:
    """The process's resident set now (VmRSS) in bytes."""
    return _read_status(pid, "VmRSS")


def _read_status(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {name}")


@dataclass
class Watch:
    """Probes the daemon from a separate thread while fuzzing runs: every probe must be answered
    within PROBE_DEADLINE_S, the process must stay alive, RSS is sampled (psutil) and checked."""

    daemon: Daemon
    probes: list[Callable[[], object]]
    start_rss: int = 0
    peak_rss: int = 0
    probes_ok: int = 0
    worst_probe_s: float = 0.0
    failure: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def rss_limit(self) -> int:
        return RSS_FACTOR * self.start_rss + RSS_HEADROOM_BYTES

    def __enter__(self) -> Watch:
        assert self.daemon.proc is not None
        self._proc = psutil.Process(self.daemon.proc.pid)
        self.start_rss = self._proc.memory_info().rss
        self.peak_rss = self.start_rss
        self.probe_all()  # fails here if the daemon is not answering to begin with
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)

    def probe_all(self) -> None:
        for probe in self.probes:
            t0 = time.monotonic()
            probe()
            took = time.monotonic() - t0
            self.worst_probe_s = max(self.worst_probe_s, took)
            if took > PROBE_DEADLINE_S:
                raise AssertionError(f"probe {probe} took {took:.1f} s")
            self.probes_ok += 1

    def _sample(self) -> None:
        rss = self._proc.memory_info().rss
        self.peak_rss = max(self.peak_rss, rss)
        if rss > self.rss_limit:
            raise AssertionError(f"RSS {rss >> 20} MiB over the limit {self.rss_limit >> 20} MiB")

    def _run(self) -> None:
        while not self._stop.is_set() and self.failure is None:
            try:
                if not self._proc.is_running() or self._proc.status() == psutil.STATUS_ZOMBIE:
                    raise AssertionError("dfsd is not running")
                self._sample()
                self.probe_all()
            except Exception as exc:  # reported by check() in the test's thread
                self.failure = f"{type(exc).__name__}: {exc}"
            self._stop.wait(0.05)

    def check(self) -> None:
        """Raise if the watcher saw a failure so far (call from the fuzz loop: fail fast)."""
        if self.failure is not None:
            raise AssertionError(f"while fuzzing: {self.failure}")

    def finish(self, label: str, count: int, elapsed_s: float) -> None:
        """After fuzzing: probe again, check the peak, print the numbers."""
        self.check()
        self.probe_all()
        self._sample()
        assert self.daemon.proc is not None
        hwm = read_hwm(self.daemon.proc.pid)
        self.peak_rss = max(self.peak_rss, hwm)
        print(
            f"\n{label}: {count} in {elapsed_s:.1f} s = {count / max(elapsed_s, 1e-9):.0f}/s; "
            f"RSS start {self.start_rss >> 20} MiB, peak {self.peak_rss >> 20} MiB "
            f"(limit {self.rss_limit >> 20} MiB); {self.probes_ok} probes, worst {self.worst_probe_s:.2f} s"
        )
        assert self.peak_rss <= self.rss_limit, (
            f"peak RSS {self.peak_rss >> 20} MiB over the limit {self.rss_limit >> 20} MiB"
        )


# --------------------------------------------------------------------------- random values


def random_value(rng: random.Random, depth: int = 0) -> object:
    """A msgpack-able value of a random type, biased to edge cases (what a mutated argument is)."""
    pick = rng.randrange(22 if depth < 3 else 17)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice(
            [0, 1, -1, 2, 255, 256, 65535, 2**31 - 1, 2**31, 2**32, 2**63 - 1, -(2**63), 2**64 - 1]
        )
    if pick == 3:
        return rng.randrange(-(2**40), 2**40)
    if pick == 4:
        return rng.choice([0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e308, -1.5, 0.25, 1e-300])
    if pick == 5:
        return ""
    if pick == 6:
        return rng.choice(["/", "..", ".", "a/b", "\x00", "é", "💥", " ", "a" * 300, "meta.lookup", "root"])
    if pick == 7:
        return "".join(chr(rng.randrange(1, 0x2FF)) for _ in range(rng.randrange(1, 40)))
    if pick == 8:
        return b""
    if pick in (9, 10):
        return rng.randbytes(rng.choice([1, 8, 16, 20, 31, 32, 33, 64]))
    if pick == 11:
        return rng.randbytes(rng.randrange(0, 5000))
    if pick == 12:
        return rng.randrange(0, 10)  # plausible inode numbers, counts, flags
    if pick == 13:
        return rng.choice(["default", "fuzz1", "127.0.0.1:1", "x" * 129, "", "quorum"])
    if pick == 14:
        import msgpack

        return msgpack.ExtType(rng.randrange(0, 128), rng.randbytes(rng.randrange(0, 9)))
    if pick == 15:
        return []
    if pick == 16:
        return {}
    if pick in (17, 18):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    if pick == 19:
        return [rng.randbytes(32) for _ in range(rng.randrange(0, 20))]
    if pick == 20:
        return {
            rng.choice(["mode", "size", "uid", "replicas", "x", "", 0, -1, 2**64 - 1, b"k", None, 1.5]): (
                random_value(rng, depth + 1)
            )
            for _ in range(rng.randrange(0, 5))
        }
    nested: object = []
    for _ in range(rng.randrange(10, 200)):
        nested = [nested]
    return nested


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """``data`` with a few random bit flips, insertions, deletions and msgpack marker bytes."""
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(4)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 9))
        elif op == 2:
            del buf[pos : pos + rng.randrange(1, 9)]
        else:
            buf[pos : pos + 1] = bytes([rng.choice([0x00, 0xFF, 0xC1, 0xDD, 0xDF, 0xC6, 0xD9, 0x7F])])
    return bytes(buf)
