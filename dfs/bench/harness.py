"""The process harness shared by the tests and the benchmarks: real dfsd and mount.dfs processes
on loopback ports, and the polling, port and mount-table helpers they need.

tests/conftest.py builds its fixtures on :class:`Daemon` and :class:`Mount`;
``dfs cluster bench`` (dfs/bench/cluster.py) starts its daemons through :func:`spawn` and
finds ports, waits and checks mounts with the same functions; tests/netns/harness.py
reuses the waiting and mount checks.  Helpers fail with ``AssertionError`` unless given
another ``error`` (the bench raises its own, which the CLI prints as one line).
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dfs.core.auth import CallerClass, Credential
from dfs.net import credentials

#: Where the running interpreter's entry points (dfsd, mount.dfs, dfs) live: the venv.
BIN = Path(sys.executable).parent


def bin_path(name: str) -> str:
    """Our own entry point ``name`` beside the running interpreter, else whatever PATH finds."""
    here = BIN / name
    return str(here) if here.exists() else name


def spawn(
    argv: list[str], log_path: Path, *, env: dict[str, str] | None = None, new_session: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with no stdin and its output appended to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=new_session,
        )


def wait_for(
    pred: Callable[[], bool],
    timeout_s: float = 20.0,
    what: str = "condition",
    interval_s: float | None = None,
    *,
    error: Callable[[str], Exception] = AssertionError,
) -> None:
    """Poll ``pred`` until true or fail after ``timeout_s`` (never a bare sleep): every
    ``interval_s``, or from 5 ms doubling up to 100 ms when it is None."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005 if interval_s is None else interval_s
    while not pred():
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(delay)
        if interval_s is None:
            delay = min(delay * 2, 0.1)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now on 127.0.0.1, never one this test process was given before (the kernel
    may hand a just-closed port out again, and several daemons start from one fixture)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_ports(
    n: int, rng: random.Random | None = None, *, error: Callable[[str], Exception] = AssertionError
) -> list[int]:
    """``n`` distinct ports free for TCP and UDP on 127.0.0.1 (gossip uses both).

    Taken below the kernel's ephemeral range, so the daemons' own outgoing
    connections (made while later daemons are still starting) cannot take them.
    """
    rng = rng or random.Random()
    high = max(_ephemeral_low(), 12000)
    candidates = rng.sample(range(10000, high), min(high - 10000, 50 * n + 100))
    ports = [p for p in candidates if _port_free(p)][:n]
    if len(ports) < n:
        raise error(f"could not find {n} free ports on 127.0.0.1")
    return ports


def is_mounted(path: Path, fstype: str | None = None) -> bool:
    """Whether something (of type ``fstype``, e.g. "fuse.dfs", when given) is mounted at ``path``."""
    target = str(path.resolve())
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if (
                len(fields) > 2
                and fields[1].encode().decode("unicode_escape") == target
                and (fstype is None or fields[2] == fstype)
            ):
                return True
    return False


@dataclass
class Daemon:
    """One dfsd on loopback ports, its dfs.conf written from the fields; ``start`` returns once
    ``dfs status`` answers.  Failures are AssertionErrors: this is what tests drive."""

    data_dir: Path
    port: int
    extra_conf: str = ""
    reserve_bytes: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    s3_port: int = field(default_factory=lambda: free_port())
    admin_port: int = field(default_factory=lambda: free_port())
    s3_conf: str = ""
    rpc_conf: str = ""
    gossip_port: int = field(default_factory=lambda: free_port())
    gossip_conf: str = ""
    #: The [meta] section's lines (e.g. engine = "postgresql" and its dsn).
    meta_conf: str = ""
    node_id: str = ""
    zone: str = "default"
    #: A started daemon of the cluster this one joins: it is given that daemon's cluster
    #: secret (what copying node.credential does on a real host).
    joins: Daemon | None = None

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "dfsd.log"
        self.conf_path = self.data_dir / "dfs.conf"
        self.conf_path.write_text(
            f'[node]\ndata_dir = "{self.data_dir}"\nid = "{self.node_id}"\nzone = "{self.zone}"\n'
            f'[rpc]\nlisten = "127.0.0.1:{self.port}"\n{self.rpc_conf}\n'
            f'[storage]\nreserve_bytes = {self.reserve_bytes}\n[log]\nlevel = "INFO"\n'
            f'[s3]\nlisten = "127.0.0.1:{self.s3_port}"\n{self.s3_conf}\n'
            f'[gossip]\nlisten = "127.0.0.1:{self.gossip_port}"\n{self.gossip_conf}\n'
            f'[admin]\nlisten = "127.0.0.1:{self.admin_port}"\n{self.extra_conf}'
            + (f"\n[meta]\n{self.meta_conf}\n" if self.meta_conf else "")
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def s3_endpoint(self) -> str:
        scheme = "https" if "https = true" in self.s3_conf else "http"
        return f"{scheme}://127.0.0.1:{self.s3_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def root_key(self) -> tuple[str, str]:
        raw = json.loads((self.data_dir / "s3-root.json").read_text())
        return raw["access_key"], raw["secret_key"]

    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def credential(self, caller: CallerClass = CallerClass.NODE) -> Credential:
        """One of the credentials this daemon wrote (the cluster secret by default)."""
        return credentials.load(self.data_dir / credentials.FILE_NAMES[caller])

    def start(self) -> None:
        if self.joins is not None:
            secret = self.data_dir / credentials.FILE_NAMES[CallerClass.NODE]
            if not secret.exists():
                credentials.write(secret, self.joins.credential())
        self.proc = spawn([str(BIN / "dfsd"), "--config", str(self.conf_path)], self.log_path)
        try:
            wait_for(self._ready, 30, "dfsd to answer")
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"dfsd exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}"
            )
        return self.cli_ok("status", "--json")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(BIN / "dfs"), *args, "--config", str(self.conf_path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"dfs {' '.join(args)} failed ({res.returncode}): {res.stderr}{res.stdout}")
        return res

    def cli_ok(self, *args: str) -> bool:
        return self.cli(*args, check=False).returncode == 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def chunk_files(self) -> list[Path]:
        """The chunk files in this daemon's store (not chunks/tmp/ uploads, not chunks/bad/)."""
        top = self.data_dir / "chunks"
        return [
            p for p in top.rglob("*") if p.is_file() and p.relative_to(top).parts[0] not in ("tmp", "bad")
        ]

    def fsck(self, repair: bool = False) -> dict[str, object]:
        args = ["fsck", "--json"] + (["--repair"] if repair else [])
        res = self.cli(*args, check=False)
        report: dict[str, object] = json.loads(res.stdout)
        return report

    def assert_clean(self) -> None:
        report = self.fsck()
        assert report["problems"] == [], f"fsck found problems: {report['problems']}"


@dataclass
class Mount:
    """mount.dfs of ``daemon``'s root at ``path``, in its own process (mount.dfs daemonizes)."""

    daemon: Daemon
    path: Path
    options: str = ""
    #: Daemons of the same cluster the mount moves its metadata calls to, in order, when
    #: ``daemon`` goes away (``mount.dfs a,b,c:/``).
    others: tuple[Daemon, ...] = ()

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        opts = f"log={self.daemon.data_dir / ('mount-' + self.path.name + '.log')}"
        opts += f",credential={self.daemon.data_dir / 'client.credential'}"
        if self.options:
            opts += "," + self.options
        res = subprocess.run(
            [str(BIN / "mount.dfs"), ",".join(d.address for d in (self.daemon, *self.others)) + ":/"]
            + [str(self.path), "-o", opts],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, f"mount.dfs failed: {res.stderr}"
        assert is_mounted(self.path)

    def stop(self) -> None:
        if not is_mounted(self.path):
            return
        res = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, text=True)
        if res.returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        wait_for(lambda: not is_mounted(self.path), 30, f"{self.path} to unmount")
