"""``dfs cluster bench``: replicated throughput and repair time on a throwaway local cluster.

Starts N daemons on 127.0.0.1 (n1 the metadata primary, zones z1..zN), mounts
the cluster through n2 and, for R = 1, 2 and 3 (each in a directory with
``user.dfs.replicas`` = R and ``user.dfs.consistency`` = strong), times
writing one file in 1 MiB writes (+ fsync + close) and reading it back cold,
next to a plain local directory on the same disk.  Then it keeps only data
at R=2, kills one node (SIGKILL; not the primary, not the mount's node) and
times how long the cluster takes to notice (gossip + ``dead_grace_s``) and
to put back a second copy of every chunk the node held.

Everything runs on one machine, so the figures compare replication factors
and repair speed with each other and with the local disk, not with a real
network.  Repair progress is sampled every 0.1 s and repair starts on the
next anti-entropy tick after the layout change, so a small ``--repair-mb``
measures that latency more than bandwidth.  Every read is verified against a digest of what was written; a
mismatch fails the run.  Daemons and the mount are torn down on any exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import trio
import xxhash

from dfs.bench.harness import bin_path, free_ports, is_mounted, spawn, wait_for
from dfs.core import config as config_mod
from dfs.core.auth import CallerClass, Credential, new_cluster_secret
from dfs.core.endpoints import SYS_CLUSTER, SYS_GC, SYS_PING, SYS_SWEEP_ORPHANS, Endpoint
from dfs.core.errors import DfsError
from dfs.net import credentials
from dfs.net.rpc import open_client

T = TypeVar("T")
MB = 1_000_000
MiB = 1024 * 1024
REPLICAS = (1, 2, 3)
REPAIR_R = 2
_POOL_BYTES = 64 * MiB
_HEADER = struct.Struct("<QQ")  # (file tag, MiB index): makes every MiB, so every block, unique
_POLL_S = 0.1
# The [cluster] options of the bench: quick repair, no scrubbing competing with the measurement.
CLUSTER_OPTIONS: dict[str, float] = {
    "refresh_s": 0.5,
    "anti_entropy_interval_s": 2.0,
    "hint_interval_s": 1.0,
    "dead_grace_s": 5.0,
    "scrub_bytes_s": 0,
}
# Environment variables that would override the generated dfs.conf files.
_CONF_ENV = ("STORAGE_ROOT", "NODE_ID")

Progress = Callable[[str], None] | None


class ClusterBenchError(DfsError):
    code = "ClusterBenchError"


# -- pure helpers ----------------------------------------------------------------------------
def node_conf(
    *,
    node_id: str,
    zone: str,
    data_dir: Path,
    rpc_port: int,
    gossip_port: int,
    s3_port: int,
    admin_port: int,
    meta: str = "",
    seeds: str = "",
) -> str:
    """dfs.conf (TOML) of one bench daemon; ``meta`` empty makes it the metadata primary."""
    cluster = "".join(f"{k} = {v!r}\n" for k, v in CLUSTER_OPTIONS.items())
    return (
        f'[node]\nid = "{node_id}"\nzone = "{zone}"\ndata_dir = "{data_dir}"\n\n'
        f'[rpc]\nlisten = "127.0.0.1:{rpc_port}"\n\n'
        f"[storage]\nreserve_bytes = 0\n\n"
        f'[log]\nlevel = "WARNING"\n\n'
        f'[s3]\nlisten = "127.0.0.1:{s3_port}"\n\n'
        f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n\n'
        f'[gossip]\nlisten = "127.0.0.1:{gossip_port}"\npreset = "fast_test"\nseeds = "{seeds}"\n\n'
        f'[cluster]\nmeta = "{meta}"\n{cluster}'
    )


def make_pool(nbytes: int = _POOL_BYTES) -> bytes:
    """Random bytes that file contents are cut from (os.urandom once, not once per MiB)."""
    return os.urandom(nbytes)


def fill_block(buf: bytearray, pool: bytes | memoryview, tag: int, index: int) -> None:
    """Fill ``buf`` with MiB number ``index`` of file ``tag``: a unique header, then pool bytes.

    The header makes every MiB of every file distinct, so no two 4 MiB blocks
    dedup (within a file or across the R=1/2/3 files); the body is
    incompressible and taken at an offset that varies with both numbers.
    """
    h = _HEADER.size
    body = len(buf) - h
    span = len(pool) - body
    if span <= 0:
        raise ValueError("pool must be larger than a block")
    off = (index * 1_048_583 + tag * 7_919_993) % span  # primes: offsets wander over the pool
    _HEADER.pack_into(buf, 0, tag, index)
    buf[h:] = memoryview(pool)[off : off + body]


def file_digest(pool: bytes, tag: int, n_mib: int) -> bytes:
    """The xxh3-128 digest of the file :func:`fill_block` describes."""
    h = xxhash.xxh3_128()
    buf = bytearray(MiB)
    for i in range(n_mib):
        fill_block(buf, pool, tag, i)
        h.update(buf)
    return bytes(h.digest())


def chunk_files(data_dir: Path) -> dict[str, int]:
    """Chunk name -> size of the chunk files under ``data_dir/chunks`` (not tmp/ or bad/)."""
    top = data_dir / "chunks"
    out: dict[str, int] = {}
    for root, dirs, files in os.walk(top):
        if Path(root) == top:
            dirs[:] = [d for d in dirs if d not in ("tmp", "bad")]
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # deleted while we walk
                out[name] = os.stat(os.path.join(root, name)).st_size
    return out


def copy_counts(data_dirs: list[Path]) -> Counter[str]:
    """Chunk name -> number of the given data directories holding it."""
    counts: Counter[str] = Counter()
    for d in data_dirs:
        counts.update(chunk_files(d).keys())
    return counts


def exactly(counts: Counter[str], expected: set[str], r: int) -> bool:
    """Every expected chunk has ``r`` copies and there are no other chunks."""
    return set(counts) == expected and all(counts[c] == r for c in expected)


def spread(counts: Counter[str], ids: set[str]) -> dict[int, int]:
    """Number of copies -> how many of ``ids`` have that many."""
    return dict(sorted(Counter(counts[cid] for cid in ids).items()))


def describe(spread_: dict[int, int]) -> str:
    """``{2: 62, 3: 2}`` -> ``"62 x2, 2 x3"`` (chunks x copies)."""
    return ", ".join(f"{n} x{k}" for k, n in spread_.items()) or "no chunks"


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def table(res: dict[str, Any]) -> str:
    """The human form of :func:`run`'s result."""
    lines = [
        f"dfs cluster bench: {res['nodes']} daemons on 127.0.0.1 ({res['nodes']} zones), "
        f"mount through {res['mount_node']}, one {res['size_mb']} MiB file per row, "
        f"consistency {res['consistency']}"
        + ("" if res["caches_dropped"] else " (page cache NOT dropped: not root)"),
        f"{'target':<12}{'write MB/s':>12}{'read MB/s':>12}{'write/local':>13}{'read/local':>12}"
        "  chunks x copies at close / settled",
    ]
    for row in res["rows"]:
        wr = "-" if row["write_ratio"] is None else f"{row['write_ratio']:.2f}"
        rr = "-" if row["read_ratio"] is None else f"{row['read_ratio']:.2f}"
        copies = f"{row['copies_at_close']} / {row['copies']}" if "copies" in row else ""
        speeds = f"{row['write_MB_s']:>12,.1f}{row['read_MB_s']:>12,.1f}"
        lines.append(f"{row['target']:<12}{speeds}{wr:>13}{rr:>12}  {copies}")
    rep = res.get("repair")
    if rep:
        rate = "-" if rep["repair_MB_s"] is None else f"{rep['repair_MB_s']:,.1f}"
        lines.append(
            f"repair (R={rep['replicas']}, {rep['data_mb']} MiB written): {rep['victim']} held "
            f"{rep['victim_bytes'] / MiB:.1f} MiB in {rep['victim_chunks']} chunks"
        )
        lines.append(
            f"  marked out      {rep['detect_s']:>7.1f} s after SIGKILL "
            f"(gossip detection + dead_grace_s {rep['dead_grace_s']:g} s)"
        )
        lines.append(
            f"  re-replicated   {rep['repair_s']:>7.1f} s after that: {rate} MB/s "
            f"(all chunks >= {rep['replicas']} copies after {rep['min_copies_s']:.1f} s; "
            f"budget {rep['repair_budget_MB_s']:,.1f} MB/s per node)"
        )
        lines.append(
            f"  read after repair {rep['read_after_MB_s']:,.1f} MB/s, data verified; "
            f"total {rep['total_s']:.1f} s from SIGKILL to {rep['replicas']} copies of every chunk"
        )
    for note in res.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


# -- processes --------------------------------------------------------------------------------
def _wait(pred: Callable[[], bool], timeout_s: float, what: str, interval_s: float = _POLL_S) -> None:
    """:func:`~dfs.bench.harness.wait_for` at the bench's pace, failing with its own error."""
    wait_for(pred, timeout_s, what, interval_s, error=ClusterBenchError)


def _clean_env() -> dict[str, str]:
    """Our environment minus variables that would override the generated configurations."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DFS_") and k not in _CONF_ENV}


def rpc(
    address: str,
    method: Endpoint[Any],
    *args: Any,
    timeout_s: float = 10.0,
    credential: Credential | None = None,
) -> Any:
    """One call to a daemon, bounded by ``timeout_s``."""

    async def call() -> Any:
        with trio.fail_after(timeout_s):
            async with open_client(
                address, connect_timeout_s=timeout_s, call_timeout_s=timeout_s, credential=credential
            ) as conn:
                return await method.call(conn, *args)

    try:
        try:
            return trio.run(call)
        except BaseExceptionGroup as group:  # trio nurseries wrap what they raise; unwrap a lone one
            if group.subgroup(KeyboardInterrupt) is not None:
                raise KeyboardInterrupt from None
            leaves = list(_leaves(group))
            if len(leaves) == 1:
                raise leaves[0] from None
            raise
    except trio.TooSlowError:
        raise ClusterBenchError(f"{method.name} on {address} took more than {timeout_s:g} s") from None
    except OSError as exc:
        raise ClusterBenchError(f"{method.name} on {address}: {exc}") from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _try_rpc(
    address: str,
    method: Endpoint[Any],
    *args: Any,
    timeout_s: float = 5.0,
    credential: Credential | None = None,
) -> Any:
    try:
        return rpc(address, method, *args, timeout_s=timeout_s, credential=credential)
    except DfsError:
        return None


def _with_deadline(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run blocking I/O in a thread so a hung mount cannot hang the bench past ``timeout_s``."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # handed to the caller
            error.append(exc)

    t = threading.Thread(target=target, name=what, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise ClusterBenchError(f"{what} did not finish within {timeout_s:g} s")
    if error:
        raise error[0]
    return result[0]


@dataclass
class Node:
    node_id: str
    zone: str
    data_dir: Path
    rpc_port: int
    gossip_port: int
    s3_port: int
    admin_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def conf_path(self) -> Path:
        return self.data_dir / "dfs.conf"

    @property
    def credential(self) -> Credential:
        """The cluster's secret, which :meth:`Cluster.create` gave every node."""
        return credentials.load(self.data_dir / credentials.FILE_NAMES[CallerClass.NODE])

    @property
    def log_path(self) -> Path:
        return self.data_dir / "dfsd.log"

    def start(self) -> None:
        self.proc = spawn(
            [bin_path("dfsd"), "--config", str(self.conf_path)],
            self.log_path,
            env=_clean_env(),
            new_session=True,  # Ctrl-C reaches the bench, which stops us in order
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 3) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ClusterBenchError(
                    f"dfsd {self.node_id} exited with status {self.proc.returncode} during start-up: "
                    f"{self.log_tail() or 'no output'}"
                )
            if _try_rpc(self.address, SYS_PING, timeout_s=2.0, credential=self.credential) is None:
                return False
            return all(_accepts(port) for port in (self.s3_port, self.admin_port))

        _wait(ready, timeout_s, f"dfsd {self.node_id} to answer (see {self.log_path})")


@dataclass
class Cluster:
    base: Path
    n_nodes: int
    nodes: list[Node] = field(default_factory=list)
    mnt: Path | None = None
    mount_log: Path | None = None
    _fuse_minor: int | None = None
    _mount_pid: int | None = None

    def create(self) -> None:
        ports = free_ports(4 * self.n_nodes, error=ClusterBenchError)
        # One secret for all (what copying node.credential to each host does in the README).
        secret = Credential.of_secret(new_cluster_secret())
        for i in range(self.n_nodes):
            rpc_p, gossip_p, s3_p, admin_p = ports[4 * i : 4 * i + 4]
            node = Node(f"n{i + 1}", f"z{i + 1}", self.base / f"n{i + 1}", rpc_p, gossip_p, s3_p, admin_p)
            node.data_dir.mkdir(parents=True)
            credentials.write(node.data_dir / credentials.FILE_NAMES[CallerClass.NODE], secret)
            primary = self.nodes[0] if self.nodes else None
            text = node_conf(
                node_id=node.node_id,
                zone=node.zone,
                data_dir=node.data_dir,
                rpc_port=rpc_p,
                gossip_port=gossip_p,
                s3_port=s3_p,
                admin_port=admin_p,
                meta=primary.address if primary else "",
                seeds=f"127.0.0.1:{primary.gossip_port}" if primary else "",
            )
            config_mod.parse(text, origin=str(node.conf_path), env={})  # fail early on a bad option
            node.conf_path.write_text(text)
            self.nodes.append(node)

    @property
    def primary(self) -> Node:
        return self.nodes[0]

    def start(self) -> None:
        self.primary.start()
        self.primary.wait_ready()
        for node in self.nodes[1:]:
            node.start()
        for node in self.nodes[1:]:
            node.wait_ready()
        want = {n.node_id for n in self.nodes}
        _wait(
            lambda: {k for k, v in self.states().items() if v == "active"} == want,
            60,
            f"{self.n_nodes} active nodes in the layout",
            interval_s=0.2,
        )

    def cluster_info(self) -> dict[str, Any] | None:
        info: dict[str, Any] | None = _try_rpc(
            self.primary.address, SYS_CLUSTER, timeout_s=5.0, credential=self.primary.credential
        )
        return info

    def states(self) -> dict[str, str]:
        """Layout node -> state, as the primary sees it (what ``dfs layout --json`` prints)."""
        info = self.cluster_info()
        if info is None:
            return {}
        return {n["node_id"]: n["state"] for n in info["layout"]["nodes"]}

    def check_alive(self, skip: Node | None = None) -> None:
        """Fail with the log tail of any daemon that exited (the bench kills only its victim)."""
        for n in self.nodes:
            if n is not skip and not n.alive():
                code = None if n.proc is None else n.proc.returncode
                raise ClusterBenchError(
                    f"dfsd {n.node_id} exited (status {code}): {n.log_tail(1) or 'no output'}"
                )

    def primary_conf(self) -> config_mod.Config:
        return config_mod.load(self.primary.conf_path, env={})

    def epoch(self) -> int | None:
        info = self.cluster_info()
        return None if info is None else int(info["layout"]["epoch"])

    def cli(self, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [bin_path("dfs"), *args, "--config", str(self.primary.conf_path)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=_clean_env(),
            )
        except subprocess.TimeoutExpired:
            raise ClusterBenchError(f"`dfs {' '.join(args)}` took more than {timeout_s:g} s") from None

    def mount(self, node: Node) -> Path:
        mnt = self.base / "mnt"
        mnt.mkdir()
        self.mount_log = self.base / "mount.log"
        try:
            res = subprocess.run(
                [
                    bin_path("mount.dfs"),
                    f"{node.address}:/",
                    str(mnt),
                    "-o",
                    f"log={self.mount_log},credential={node.data_dir / 'client.credential'}",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=_clean_env(),
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            self.mnt = mnt  # it may have come up after all: unmount it in teardown
            raise ClusterBenchError("mount.dfs did not return within 60 s") from None
        self.mnt = mnt
        if res.returncode != 0:
            msg = (res.stderr.strip() or res.stdout.strip() or f"status {res.returncode}").splitlines()[-1]
            raise ClusterBenchError(f"mount.dfs failed: {msg}")
        if not is_mounted(mnt, "fuse.dfs"):
            raise ClusterBenchError(f"mount.dfs returned but {mnt} is not a dfs mount")
        self._fuse_minor = os.minor(os.stat(mnt).st_dev)
        self._mount_pid = _mount_process(mnt)
        return mnt

    def unmount(self) -> list[str]:
        """Unmount (lazily and aborting the connection if busy) and see the mount process exit."""
        problems: list[str] = []
        if self.mnt is not None and is_mounted(self.mnt, "fuse.dfs"):
            try:
                res = subprocess.run(
                    ["fusermount3", "-u", str(self.mnt)], capture_output=True, text=True, timeout=30
                )
                ok = res.returncode == 0
            except (subprocess.TimeoutExpired, OSError):
                ok = False
            if not ok:
                problems.append(
                    f"{self.mnt} was busy or hung: its connection was aborted and it lazily unmounted"
                )
                if self._fuse_minor is not None:  # unblocks anything stuck in a request to the mount
                    with contextlib.suppress(OSError):
                        Path(f"/sys/fs/fuse/connections/{self._fuse_minor}/abort").write_text("1")
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    subprocess.run(
                        ["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, timeout=30
                    )
            with contextlib.suppress(ClusterBenchError):
                _wait(lambda: self.mnt is None or not is_mounted(self.mnt, "fuse.dfs"), 30, "the unmount")
        if self._mount_pid is not None and self.mnt is not None:
            if not _wait_exit(self._mount_pid, self.mnt, 10.0):
                problems.append(
                    f"mount.dfs (pid {self._mount_pid}) was still running 10 s after the unmount: terminated"
                )
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    if _same_process(self._mount_pid, self.mnt):
                        with contextlib.suppress(OSError):
                            os.kill(self._mount_pid, sig)
                    if _wait_exit(self._mount_pid, self.mnt, 5.0):
                        break
            self._mount_pid = None
        return problems

    def stop(self, timeout_s: float = 20.0) -> None:
        running = [n for n in self.nodes if n.alive()]
        for n in running:
            assert n.proc is not None
            with contextlib.suppress(OSError):
                n.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for n in running:
            assert n.proc is not None
            try:
                n.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    n.proc.wait(10)


def _same_process(pid: int, mnt: Path) -> bool:
    """Is ``pid`` still the mount process serving ``mnt`` (its command line names the mount point)?"""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(str(mnt)) in argv


def _mount_process(mnt: Path) -> int | None:
    """The pid of the process serving ``mnt`` (mount.dfs forks it; we only know the mount point)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _same_process(int(entry.name), mnt):
            return int(entry.name)
    return None


def _wait_exit(pid: int, mnt: Path, timeout_s: float) -> bool:
    with contextlib.suppress(ClusterBenchError):
        _wait(lambda: not _same_process(pid, mnt), timeout_s, "the mount process to exit")
        return True
    return False


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0):
            return True
    except OSError:
        return False


# -- measurements -----------------------------------------------------------------------------
def drop_caches() -> bool:
    """Write back and drop the page cache (root only); True if dropped."""
    os.sync()
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def write_file(path: Path, pool: bytes, tag: int, n_mib: int) -> float:
    """Write the file in 1 MiB os.write calls, fsync and close; returns the seconds taken."""
    buf = bytearray(MiB)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(n_mib):
            fill_block(buf, pool, tag, i)
            view = memoryview(buf)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def read_file(path: Path, n_mib: int, digest: bytes) -> float:
    """Read the file back in 1 MiB reads and check its digest; returns the seconds taken."""
    buf = bytearray(MiB)
    view = memoryview(buf)
    h = xxhash.xxh3_128()
    total = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            total += n
    elapsed = time.perf_counter() - t0
    if total != n_mib * MiB or h.digest() != digest:
        raise ClusterBenchError(
            f"{path} read back wrong data ({total} bytes, expected {n_mib * MiB}; digest "
            f"{'matches' if h.digest() == digest else 'differs'})"
        )
    return elapsed


def _io_deadline(n_mib: int) -> float:
    return 120.0 + n_mib * 2.0  # 0.5 MB/s would already be a failure worth reporting


@dataclass
class _Bench:
    cluster: Cluster
    size_mb: int
    repair_mb: int
    progress: Progress
    pool: bytes = b""
    notes: list[str] = field(default_factory=list)
    caches_dropped: bool = True

    def say(self, msg: str) -> None:
        if self.progress is not None:
            self.progress(msg)

    def _drop(self) -> None:
        self.caches_dropped = drop_caches() and self.caches_dropped

    def io(self, fn: Callable[[], float], n_mib: int, what: str) -> float:
        """Run one timed I/O step with a deadline; an OSError becomes one line naming the step."""
        try:
            return _with_deadline(fn, _io_deadline(n_mib), what)
        except OSError as exc:
            msg = f"{what} failed: {exc.strerror or exc}"
            log = self.cluster.mount_log
            if log is not None and log.exists():
                lines = log.read_text(errors="replace").strip().splitlines()
                if lines:
                    msg += f"; mount log: {lines[-1][:300]}"
            raise ClusterBenchError(msg) from None

    def measure(
        self, label: str, path: Path, tag: int, n_mib: int, after_write: Callable[[], None] | None = None
    ) -> tuple[float, float, bytes]:
        """Timed write, then (after ``after_write``, untimed, and dropping caches) timed read."""
        digest = file_digest(self.pool, tag, n_mib)
        self.say(f"{label}: writing {n_mib} MiB")
        t_w = self.io(lambda: write_file(path, self.pool, tag, n_mib), n_mib, f"{label} write")
        if after_write is not None:
            after_write()
        self._drop()
        self.say(f"{label}: reading it back")
        t_r = self.io(lambda: read_file(path, n_mib, digest), n_mib, f"{label} read")
        mb = n_mib * MiB / MB
        return mb / t_w, mb / t_r, digest

    def _count_into(self, out: Counter[str]) -> None:
        out.update(self.all_chunks())

    def all_chunks(self, nodes: list[Node] | None = None) -> Counter[str]:
        return copy_counts([n.data_dir for n in (nodes or self.cluster.nodes)])

    def run(self) -> dict[str, Any]:
        c = self.cluster
        self.pool = make_pool()
        local = c.base / "local"
        local.mkdir()
        rows: list[dict[str, Any]] = []
        w, r, _ = self.measure("local directory", local / "data.bin", 0, self.size_mb)
        (local / "data.bin").unlink()
        rows.append({"target": "local", "write_MB_s": round(w, 1), "read_MB_s": round(r, 1)})
        local_w, local_r = w, r

        self.say(f"starting {c.n_nodes} daemons")
        c.start()
        c.check_alive()
        epoch0 = c.epoch()
        mount_node = c.nodes[1]
        self.say(f"mounting through {mount_node.node_id}")
        mnt = c.mount(mount_node)

        files: dict[int, tuple[Path, bytes, set[str]]] = {}
        for rf in REPLICAS:
            c.check_alive()
            d = mnt / f"r{rf}"
            d.mkdir()
            os.setxattr(d, "user.dfs.replicas", str(rf).encode())
            os.setxattr(d, "user.dfs.consistency", b"strong")
            if os.getxattr(d, "user.dfs.replicas") != str(rf).encode():
                raise ClusterBenchError(f"{d}: user.dfs.replicas did not stick")
            before = set(self.all_chunks())
            at_close: Counter[str] = Counter()
            w, r, digest = self.measure(
                f"R={rf}", d / "data.bin", rf, self.size_mb, partial(self._count_into, at_close)
            )
            new = set(at_close) - before
            want = min(rf, c.n_nodes)
            copies = spread(at_close, new)
            if copies != {want: len(new)}:
                self.notes.append(
                    f"R={rf}, strong: right after close the file's {len(new)} chunks had "
                    f"{describe(copies)} (expected {want} each)"
                )
            files[rf] = (d / "data.bin", digest, new)
            rows.append(
                {
                    "target": f"R={rf}",
                    "replicas": rf,
                    "write_MB_s": round(w, 1),
                    "read_MB_s": round(r, 1),
                    "chunks": len(new),
                    "copies_at_close": describe(copies),
                }
            )
        c.check_alive()
        self.settle(files, rows)
        for row in rows:
            row["write_ratio"] = _ratio(row["write_MB_s"], local_w)
            row["read_ratio"] = _ratio(row["read_MB_s"], local_r)
        epoch1 = c.epoch()
        if epoch1 != epoch0 or set(c.states().values()) != {"active"}:
            self.notes.append(
                f"the layout changed during the throughput runs (epoch {epoch0} -> {epoch1}, "
                f"states {c.states()}): a node was probably taken for dead under load"
            )
        repair = self.repair(files)
        return {
            "nodes": c.n_nodes,
            "mount_node": mount_node.node_id,
            "size_mb": self.size_mb,
            "consistency": "strong",
            "caches_dropped": self.caches_dropped,
            "cluster_options": dict(CLUSTER_OPTIONS),
            "rows": rows,
            "repair": repair,
            "notes": self.notes,
        }

    def settle(self, files: dict[int, tuple[Path, bytes, set[str]]], rows: list[dict[str, Any]]) -> None:
        """Wait (bounded) until each file's chunks have exactly R copies; note what did not."""
        n = self.cluster.n_nodes

        def settled() -> bool:
            counts = self.all_chunks()
            return all(spread(counts, ids) == {min(rf, n): len(ids)} for rf, (_, _, ids) in files.items())

        self.say("waiting for every chunk to have exactly R copies")
        t0 = time.monotonic()
        with contextlib.suppress(ClusterBenchError):
            _wait(settled, 60, "R copies")
        waited = time.monotonic() - t0
        counts = self.all_chunks()
        for row in rows[1:]:
            rf = row["replicas"]
            row["copies"] = describe(spread(counts, files[rf][2]))
            if spread(counts, files[rf][2]) != {min(rf, n): row["chunks"]}:
                self.notes.append(
                    f"R={rf}: {waited:.0f} s after the runs the file's chunks had {row['copies']}"
                )

    def repair(self, files: dict[int, tuple[Path, bytes, set[str]]]) -> dict[str, Any]:
        c = self.cluster
        path, digest, expected = files[REPAIR_R]
        n_mib = self.size_mb
        doomed = [files[rf][0] for rf in REPLICAS if rf != REPAIR_R]
        if self.repair_mb != self.size_mb:
            doomed.append(path)
            n_mib = self.repair_mb
            path = path.parent / "repair.bin"
            before = set(self.all_chunks())
            self.say(f"repair: writing {n_mib} MiB at R={REPAIR_R}")
            digest = file_digest(self.pool, 10 + REPAIR_R, n_mib)
            self.io(lambda: write_file(path, self.pool, 10 + REPAIR_R, n_mib), n_mib, "repair write")
            expected = set(self.all_chunks()) - before
        # Only R=2 data stays: R=1 copies on the victim could never be repaired and R=3
        # copies would be re-replicated too, muddling the rate.
        self.say("repair: deleting the other files and collecting their chunks")
        for p in doomed:
            p.unlink()

        collected = 0
        orphans: set[str] = set()
        orphan_copies = 0

        def only_r2() -> bool:
            nonlocal collected, orphan_copies
            # The mount releases files asynchronously: collect again until they are all gone.
            n = int(rpc(c.primary.address, SYS_GC, 0.0, timeout_s=120, credential=c.primary.credential))
            collected += n
            counts = self.all_chunks()
            if exactly(counts, expected, REPAIR_R):
                return True
            stale = set(counts) - expected
            if stale and collected and not n:
                # GC is done (its deletes are synchronous), yet copies are on disk: chunks no
                # metadata knows.  Report them, then sweep them as `dfs gc --orphans --now` does.
                orphans.update(stale)
                orphan_copies = max(orphan_copies, sum(counts[cid] for cid in stale))
                for node in c.nodes:
                    rpc(node.address, SYS_SWEEP_ORPHANS, 0.0, timeout_s=120, credential=node.credential)
            return False

        try:
            _wait(only_r2, 120, f"only the R={REPAIR_R} file's chunks, {REPAIR_R} copies each", 0.5)
        except ClusterBenchError as exc:
            stale = {n.node_id: len(set(chunk_files(n.data_dir)) - expected) for n in c.nodes}
            raise ClusterBenchError(
                f"{exc.message}: R={REPAIR_R} chunks {describe(spread(self.all_chunks(), expected))}; "
                f"chunks of the deleted files still stored per node: {stale}"
            ) from None
        if orphans:
            self.notes.append(
                f"after GC collected the deleted R=1/R=3 files' chunks, {orphan_copies} copies of "
                f"{len(orphans)} of them were on disk again (unknown to metadata, so only the orphan "
                f"sweep would remove them); swept them as `dfs gc --orphans --now` does before the kill"
            )
        self.say("repair: waiting for `dfs status --wait`")
        res = c.cli("status", "--wait", "--timeout", "300", "--json", timeout_s=330)
        if res.returncode != 0:
            raise ClusterBenchError(
                f"`dfs status --wait` before the kill failed: {(res.stderr or res.stdout).strip()}"
            )

        c.check_alive()
        victim = c.nodes[-1]
        survivors = [n for n in c.nodes if n is not victim]
        held = chunk_files(victim.data_dir)
        victim_bytes = sum(held.values())
        if not held:
            raise ClusterBenchError(f"{victim.node_id} holds no chunks: nothing to repair")
        grace = float(CLUSTER_OPTIONS["dead_grace_s"])
        self.say(f"repair: SIGKILL {victim.node_id} ({victim_bytes / MiB:.1f} MiB in {len(held)} chunks)")
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        victim.proc.wait(10)

        t_out: float | None = None
        t_min: float | None = None
        out_deadline = t0 + grace + 60.0
        repair_deadline_s = 120.0 + victim_bytes / (2 * MB)
        while True:
            now = time.monotonic()
            if t_out is None:
                if c.states().get(victim.node_id) == "out":
                    t_out = now
                    self.say(f"repair: {victim.node_id} marked out after {t_out - t0:.1f} s")
                elif now > out_deadline:
                    raise ClusterBenchError(
                        f"{victim.node_id} not marked out {now - t0:.0f} s after SIGKILL "
                        f"(dead_grace_s {grace:g}); layout: {c.states()}"
                    )
            counts = self.all_chunks(survivors)
            if t_out is not None:
                if t_min is None and all(counts[cid] >= REPAIR_R for cid in expected):
                    t_min = now
                if exactly(counts, expected, REPAIR_R):
                    t_done = now
                    break
                if now - t_out > repair_deadline_s:
                    short = sum(1 for cid in expected if counts[cid] < REPAIR_R)
                    extra = sum(1 for cid in expected if counts[cid] > REPAIR_R)
                    raise ClusterBenchError(
                        f"re-replication not done {now - t_out:.0f} s after {victim.node_id} was marked "
                        f"out: {short} chunk(s) under {REPAIR_R} copies, {extra} over"
                    )
            time.sleep(_POLL_S)
        assert t_min is not None
        repair_s = t_done - t_out
        self._drop()
        self.say("repair: reading the R=2 file back without the victim")
        t_r = self.io(lambda: read_file(path, n_mib, digest), n_mib, "read after repair")
        c.check_alive(skip=victim)
        budget = c.primary_conf().cluster.repair_bandwidth_bytes_s
        return {
            "replicas": REPAIR_R,
            "data_mb": n_mib,
            "victim": victim.node_id,
            "victim_bytes": victim_bytes,
            "victim_chunks": len(held),
            "dead_grace_s": grace,
            "detect_s": round(t_out - t0, 2),
            "repair_s": round(repair_s, 2),
            "min_copies_s": round(t_min - t_out, 2),
            "total_s": round(t_done - t0, 2),
            "repair_MB_s": round(victim_bytes / MB / repair_s, 1) if repair_s > 0 else None,
            "repair_budget_MB_s": round(budget / MB, 1),
            "read_after_MB_s": round(n_mib * MiB / MB / t_r, 1),
        }


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the cluster is torn down either way."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _save_logs(base: Path) -> Path | None:
    """Copy the logs and configurations of a failed run out of ``base`` before it is removed."""
    try:
        dest = Path(tempfile.mkdtemp(prefix="dfs-cluster-bench-logs."))
        for p in [*base.glob("*.log"), *base.glob("n*/*.log"), *base.glob("n*/dfs.conf")]:
            target = dest / p.relative_to(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
        return dest
    except OSError:
        return None


def run(
    *,
    n_nodes: int = 4,
    size_mb: int = 256,
    repair_mb: int = 256,
    keep: Path | None = None,
    progress: Progress = None,
) -> dict[str, Any]:
    """Run the whole bench; raises :class:`ClusterBenchError` (one clear line) on failure."""
    if n_nodes < 3:
        raise ClusterBenchError("--nodes must be at least 3 (the primary, the mount's node and a victim)")
    if not os.path.exists("/dev/fuse"):
        raise ClusterBenchError("/dev/fuse is missing: the bench needs FUSE")
    if shutil.which("fusermount3") is None:
        raise ClusterBenchError("fusermount3 is not installed (apt install fuse3)")
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        if any(keep.iterdir()):
            raise ClusterBenchError(f"--keep directory {keep} is not empty")
        base = keep.resolve()
    else:
        base = Path(tempfile.mkdtemp(prefix="dfs-cluster-bench."))
    cluster = Cluster(base, n_nodes)
    try:
        with _sigterm_as_interrupt():
            problems: list[str] = []
            try:
                cluster.create()
                results = _Bench(cluster, size_mb, repair_mb, progress).run()
            finally:
                if progress is not None:
                    progress("tearing down")
                problems = cluster.unmount()
                cluster.stop()
        results["notes"].extend(problems)
        results["work_dir"] = str(base) if keep is not None else None
        return results
    except (DfsError, OSError) as exc:
        message = exc.message if isinstance(exc, DfsError) else str(exc)
        if keep is None and (saved := _save_logs(base)) is not None:
            message += f" (logs kept in {saved})"
        raise ClusterBenchError(message) from None
    finally:
        if keep is None:
            shutil.rmtree(base, ignore_errors=True)
