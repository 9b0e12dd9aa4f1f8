"""Shared fixtures: real daemons on loopback ports and real FUSE mounts in subprocesses.

Every fixture that lets a test change the filesystem checks, at teardown,
that ``dfs fsck`` finds nothing (metadata and chunks agree, refcounts and
nlinks right), as S3QL's tests do.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def wait_for(pred: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    """Poll ``pred`` until true or fail after ``timeout_s`` (never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def http_call(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request to 127.0.0.1:port: (status, lower-cased headers, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


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


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and os.geteuid() == 0


needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and root")


@dataclass
class Daemon:
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
    node_id: str = ""
    zone: str = "default"

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

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "dfsd"), "--config", str(self.conf_path)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
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
    daemon: Daemon
    path: Path
    options: str = ""

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        opts = f"log={self.daemon.data_dir / ('mount-' + self.path.name + '.log')}"
        if self.options:
            opts += "," + self.options
        res = subprocess.run(
            [str(BIN / "mount.dfs"), f"{self.daemon.address}:/", str(self.path), "-o", opts],
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


def is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 2)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "var", free_port())
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def mnt(daemon: Daemon, tmp_path: Path) -> Iterator[Path]:
    m = Mount(daemon, tmp_path / "mnt")
    m.start()
    try:
        yield m.path
    finally:
        m.stop()
    if daemon.proc is not None:
        daemon.assert_clean()
