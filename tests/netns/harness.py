"""Multi-host test harness: each host is a Linux network namespace on a private switch.

Layout of one :class:`Net` (all names carry the prefix ``dfsnt<pid>x<seq>`` of the
creating process, so concurrent runs never collide and stale leftovers can be told
apart from live ones)::

    <prefix>-sw         switch namespace: bridge br0 (plus br1.. while split),
                        one port p<i> per host
    <prefix>-<host>     host namespace: lo, eth0 = 10.213.<k>.<10+i>/24, no default route

Every veth pair is created directly between the switch namespace and a host
namespace, so the root namespace's network configuration is never touched and the
private subnet exists only inside namespaces this harness created (a host
namespace can reach its own loopback and the other hosts of its switch, nothing
else: any other destination is "Network is unreachable").

Processes run in a host with ``nsenter --net=/run/netns/<ns>``, which switches only
the network namespace: a FUSE mount made there is visible to the test process.
(``ip netns exec`` would also unshare the mount namespace and hide it.)

Faults, all silent drops like a real network (no ICMP, no immediate errors):

- :meth:`Net.isolate` / :meth:`Net.reconnect`: unplug a host's switch port.
- :meth:`Net.split` / :meth:`Net.heal`: put groups of hosts on separate bridges.
- :meth:`Net.cut` / :meth:`Net.uncut`: drop traffic between two hosts only (routes the
  peer's /32 into ``lo`` inside the host namespace, where it is discarded because
  forwarding is off): non-transitive, optionally one-way.
- :meth:`NsDaemon.kill` (SIGKILL), :meth:`NsDaemon.freeze` / :meth:`NsDaemon.thaw`
  (SIGSTOP / SIGCONT).
"""

from __future__ import annotations

import ctypes
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from dfs.bench.harness import BIN, is_mounted, wait_for
from dfs.core.auth import CallerClass, Credential, new_cluster_secret
from dfs.net import credentials

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")
PREFIX = "dfsnt"
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)x(\d+)-")
_HOST_NAME_RE = re.compile(r"^[A-Za-z0-9_.]{1,32}$")
_SEQ = itertools.count(1)
CLONE_NEWNET = 0x40000000

RPC_PORT = 7400
GOSSIP_PORT = 7401
S3_PORT = 9000
ADMIN_PORT = 9001


# --------------------------------------------------------------------------- low-level helpers


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_state(pid: int) -> str:
    """The one-letter state of ``pid`` from /proc (``""`` once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return raw.rsplit(")", 1)[1].split()[0]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def netns_pids(ns: str) -> list[int]:
    """Pids of the processes living in network namespace ``ns``."""
    res = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def _setns_net(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _lazy_unmount_mount_dfs(pid: int) -> None:
    """If ``pid`` is a mount.dfs process, lazily unmount its mount point (best effort)."""
    argv = _cmdline(pid)
    if not any("mount.dfs" in a or a == "mount.main" for a in argv):
        return
    positional = [a for a in argv[1:] if a.startswith("/") and not a.endswith(("python", "python3"))]
    for candidate in positional:
        path = Path(candidate)
        if is_mounted(path):  # (stat() on a dead FUSE mount would fail with ENOTCONN)
            subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=30)


def _kill_netns_processes(ns: str) -> None:
    """SIGKILL whatever still runs in ``ns`` (SIGCONT too, for stopped ones)."""
    pids = netns_pids(ns)
    for pid in pids:
        _lazy_unmount_mount_dfs(pid)
    for pid in pids:
        for sig in (signal.SIGKILL, signal.SIGCONT):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    if pids:
        wait_for(lambda: not netns_pids(ns), 15, f"processes in {ns} to die")


def _delete_netns(ns: str) -> None:
    if (NETNS_DIR / ns).exists():
        _kill_netns_processes(ns)
        _ip("netns", "delete", ns, check=False)


def cleanup_stale() -> list[str]:
    """Delete namespaces of earlier runs (our prefix, creating pid dead); return their names."""
    removed = []
    for ns in sorted(_netns_names()):
        m = _NAME_RE.match(ns)
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        # Host namespaces first: their processes (and mounts) go before the switch does.
        removed.append(ns)
    for ns in sorted(removed, key=lambda n: n.endswith("-sw")):
        _delete_netns(ns)
    return removed


def _netns_names() -> list[str]:
    try:
        return [p.name for p in NETNS_DIR.iterdir()]
    except FileNotFoundError:
        return []


def netns_unavailable_reason() -> str | None:
    """Why namespace tests cannot run here (``None``: they can)."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nsenter", "fusermount3"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    probe = f"{PREFIX}{os.getpid()}x0-probe"
    res = _ip("netns", "add", probe, check=False)
    if res.returncode != 0:
        return f"ip netns add failed: {res.stderr.strip()}"
    try:
        res = _ip("-n", probe, "link", "add", "name", "br0", "type", "bridge", check=False)
        if res.returncode != 0:
            return f"no bridge support: {res.stderr.strip()}"
        res = _ip(
            "-n", probe, "link", "add", "name", "vp0", "type", "veth", "peer", "name", "vp1", check=False
        )
        if res.returncode != 0:
            return f"no veth support: {res.stderr.strip()}"
    finally:
        _ip("netns", "delete", probe, check=False)
    return None


# --------------------------------------------------------------------------- TOML


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot render {value!r} as TOML")


def render_toml(conf: Mapping[str, Mapping[str, Any]]) -> str:
    """``{section: {key: value}}`` as TOML text, each section once."""
    out = []
    for section, values in conf.items():
        out.append(f"[{_toml_key(section)}]")
        out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items())
        out.append("")
    return "\n".join(out)


def merge_conf(
    base: Mapping[str, Mapping[str, Any]], *overrides: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Section-wise merge: later values win per key; sections are never duplicated."""
    out: dict[str, dict[str, Any]] = {s: dict(v) for s, v in base.items()}
    for override in overrides:
        for section, values in override.items():
            out.setdefault(section, {}).update(values)
    return out


# --------------------------------------------------------------------------- network


class Net:
    """A private switch with hosts on it; a context manager that removes everything it made."""

    def __init__(self, subnet_k: int | None = None) -> None:
        self.seq = next(_SEQ)
        self.prefix = f"{PREFIX}{os.getpid()}x{self.seq}"
        self.switch_ns = f"{self.prefix}-sw"
        # 10.213.<k>.0/24; only ever configured inside our own namespaces.
        self.subnet_k = subnet_k if subnet_k is not None else (os.getpid() * 7 + self.seq) % 250 + 1
        self.subnet = f"10.213.{self.subnet_k}.0/24"
        self.hosts: dict[str, Host] = {}
        self._created: list[str] = []
        self._bridges: set[int] = set()
        self._segment: dict[str, int] = {}
        self._isolated: set[str] = set()
        self._cuts: set[tuple[str, str]] = set()  # (from host, to host): from drops packets to to
        self._procs: list[subprocess.Popen[Any]] = []
        self._daemons: list[NsDaemon] = []
        self._mounts: list[NsMount] = []
        self._closed = False
        #: The one cluster secret every daemon on this switch is given (copying node.credential,
        #: as the README's cluster recipe does on real hosts).
        self.secret = Credential.of_secret(new_cluster_secret())

    # ---- lifecycle

    def __enter__(self) -> Net:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        cleanup_stale()
        self._add_netns(self.switch_ns)
        self._ensure_bridge(0)

    def close(self) -> None:
        """Unmount, kill every process, delete every namespace; collects errors, raises at the end."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for m in reversed(self._mounts):
            try:
                m.stop(timeout=15)
            except BaseException as exc:
                errors.append(exc)
        for d in self._daemons:
            try:
                d.kill()
            except BaseException as exc:
                errors.append(exc)
        for p in self._procs:
            try:
                if p.poll() is None:
                    _signal_group(p, signal.SIGKILL)
                    _signal_group(p, signal.SIGCONT)
                p.wait(15)
            except BaseException as exc:
                errors.append(exc)
        # Hosts before the switch (deleting a host namespace takes its veth pair with it).
        for ns in sorted(self._created, key=lambda n: n == self.switch_ns):
            try:
                _delete_netns(ns)
            except BaseException as exc:
                errors.append(exc)
        leftovers = [ns for ns in self._created if (NETNS_DIR / ns).exists()]
        if leftovers:
            errors.append(RuntimeError(f"namespaces left behind: {leftovers}"))
        if errors:
            raise RuntimeError(f"netns teardown had {len(errors)} error(s): {errors!r}") from errors[0]

    def _add_netns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._created.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        # No IPv6 chatter (router solicitations, DAD) on the private links.
        subprocess.run(
            ["nsenter", f"--net={NETNS_DIR / ns}", "--", "sh", "-c", _DISABLE_IPV6],
            capture_output=True,
            timeout=30,
        )

    def _ensure_bridge(self, index: int) -> None:
        if index in self._bridges:
            return
        br = f"br{index}"
        _ip(
            "-n",
            self.switch_ns,
            "link",
            "add",
            "name",
            br,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        )
        _ip("-n", self.switch_ns, "link", "set", br, "up")
        self._bridges.add(index)

    # ---- hosts

    def add_host(self, name: str, ip: str | None = None) -> Host:
        """A new host namespace plugged into the switch, reachable at ``ip`` (default: next free)."""
        if not _HOST_NAME_RE.match(name) or name == "sw":
            raise ValueError(f"bad host name {name!r}")
        if name in self.hosts:
            raise ValueError(f"host {name} exists")
        index = len(self.hosts) + 1
        if index > 240:
            raise ValueError("too many hosts")
        ip = ip or f"10.213.{self.subnet_k}.{10 + index}"
        host = Host(self, name, ip, f"{self.prefix}-{name}", f"p{index}")
        self._add_netns(host.netns)
        _ip(
            "-n", self.switch_ns, "link", "add", "name", host.port, "type", "veth",
            "peer", "name", "eth0", "netns", host.netns,
        )  # fmt: skip
        _ip("-n", host.netns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        self._segment[name] = 0
        self.hosts[name] = host
        self._apply_port(host)
        return host

    def add_hosts(self, *names: str) -> list[Host]:
        return [self.add_host(n) for n in names]

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    # ---- faults

    def _apply_port(self, host: Host) -> None:
        if host.name in self._isolated:
            _ip("-n", self.switch_ns, "link", "set", host.port, "nomaster")
        else:
            seg = self._segment[host.name]
            self._ensure_bridge(seg)
            _ip("-n", self.switch_ns, "link", "set", host.port, "master", f"br{seg}")
        _ip("-n", self.switch_ns, "link", "set", host.port, "up")

    def _resolve(self, host: Host | str) -> Host:
        return self.hosts[host] if isinstance(host, str) else host

    def isolate(self, *hosts: Host | str) -> None:
        """Unplug hosts from the switch: everything they send or are sent is silently lost."""
        for h in map(self._resolve, hosts):
            self._isolated.add(h.name)
            self._apply_port(h)

    def reconnect(self, *hosts: Host | str) -> None:
        """Plug isolated hosts back into their segment."""
        for h in map(self._resolve, hosts):
            self._isolated.discard(h.name)
            self._apply_port(h)

    def split(self, *groups: Iterable[Host | str]) -> None:
        """Partition the switch: group i is on its own bridge; groups cannot reach each other.

        Hosts named in no group stay where they are (after :meth:`heal`: with group 0).
        """
        seen: set[str] = set()
        for index, group in enumerate(groups):
            for h in map(self._resolve, group):
                if h.name in seen:
                    raise ValueError(f"{h.name} is in two groups")
                seen.add(h.name)
                self._segment[h.name] = index
                self._apply_port(h)

    def cut(self, a: Host | str, b: Host | str, both_ways: bool = True) -> None:
        """Drop packets from ``a`` to ``b`` (and from ``b`` to ``a``); other links are unaffected."""
        ha, hb = self._resolve(a), self._resolve(b)
        pairs = [(ha, hb), (hb, ha)] if both_ways else [(ha, hb)]
        for src, dst in pairs:
            if (src.name, dst.name) not in self._cuts:
                # Into lo: received back with a foreign destination and dropped (no forwarding).
                _ip("-n", src.netns, "route", "add", f"{dst.ip}/32", "dev", "lo")
                self._cuts.add((src.name, dst.name))

    def uncut(self, a: Host | str, b: Host | str, both_ways: bool = True) -> None:
        ha, hb = self._resolve(a), self._resolve(b)
        pairs = [(ha, hb), (hb, ha)] if both_ways else [(ha, hb)]
        for src, dst in pairs:
            if (src.name, dst.name) in self._cuts:
                _ip("-n", src.netns, "route", "del", f"{dst.ip}/32", "dev", "lo")
                self._cuts.discard((src.name, dst.name))

    def heal(self) -> None:
        """Undo every isolate, split and cut: one switch, everyone reaches everyone."""
        for src, dst in list(self._cuts):
            self.uncut(src, dst, both_ways=False)
        self._isolated.clear()
        for h in self.hosts.values():
            self._segment[h.name] = 0
            self._apply_port(h)

    def reachable(self, a: Host | str, b: Host | str) -> bool:
        """Whether, by the harness's bookkeeping, packets from ``a`` reach ``b``."""
        ha, hb = self._resolve(a), self._resolve(b)
        if ha.name == hb.name:
            return True
        if ha.name in self._isolated or hb.name in self._isolated:
            return False
        if self._segment[ha.name] != self._segment[hb.name]:
            return False
        return (ha.name, hb.name) not in self._cuts


_DISABLE_IPV6 = (
    "for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; "
    'do [ -w "$f" ] && echo 1 > "$f"; done; true'
)


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    """Signal ``proc``'s process group (it leads one: started with start_new_session)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.send_signal(sig)


@dataclass(eq=False)
class Host:
    """One host: a network namespace with an address on the switch."""

    net: Net
    name: str
    ip: str
    netns: str
    port: str  # its port's name in the switch namespace

    @property
    def netns_path(self) -> str:
        return str(NETNS_DIR / self.netns)

    def argv(self, args: Sequence[str | Path]) -> list[str]:
        """``args`` prefixed to run in this host's network namespace (and only that one)."""
        return ["nsenter", f"--net={self.netns_path}", "--", *map(str, args)]

    def run(self, args: Sequence[str | Path], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run in this host (default: capture text output, 60 s timeout, no check)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(self.argv(args), **kw)

    def popen(self, args: Sequence[str | Path], **kw: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen in this host, in a new session (its pid leads a process group).

        The net kills it at teardown if it still runs.
        """
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(args), **kw)
        self.net._procs.append(proc)
        return proc

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 120, **kwargs: Any) -> T:
        """Run ``fn`` in a thread that has entered this host's network namespace.

        Sockets it creates belong to the host and stay usable from any thread afterwards.
        """
        box: dict[str, Any] = {}

        def body() -> None:
            try:
                _setns_net(self.netns_path)
                box["result"] = fn(*args, **kwargs)
            except BaseException as exc:
                box["error"] = exc

        t = threading.Thread(target=body, name=f"netns-{self.name}", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise TimeoutError(f"call in {self.name} still running after {timeout}s")
        if "error" in box:
            raise box["error"]
        result: T = box["result"]
        return result

    def connect(self, address: str | tuple[str, int], timeout: float = 10) -> socket.socket:
        """A TCP connection from this host to ``address`` (``"ip:port"`` or a tuple)."""
        if isinstance(address, str):
            ip, port = address.rsplit(":", 1)
            address = (ip, int(port))
        return self.call(socket.create_connection, address, timeout)

    def http(
        self,
        address: str,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP/1.1 request from this host to ``address`` ("ip:port"): (status, headers, body)."""

        def go() -> tuple[int, dict[str, str], bytes]:
            ip, port = address.rsplit(":", 1)
            conn = http.client.HTTPConnection(ip, int(port), timeout=timeout)
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
            finally:
                conn.close()

        return self.call(go, timeout=timeout + 10)

    def pids(self) -> list[int]:
        return netns_pids(self.netns)


# --------------------------------------------------------------------------- daemons and mounts


@dataclass(eq=False)
class NsDaemon:
    """A ``dfsd`` in a host namespace, listening on the host's address.

    ``conf`` (``{section: {key: value}}``) and ``extra_conf`` (TOML text) are merged over the
    generated configuration key by key, so a section is never written twice.
    """

    host: Host
    data_dir: Path
    node_id: str = ""
    zone: str = "default"
    seeds: Sequence[str | NsDaemon] = ()
    conf: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    extra_conf: str = ""
    preset: str = "fast_test"
    log_level: str = "INFO"
    rpc_port: int = RPC_PORT
    gossip_port: int = GOSSIP_PORT
    s3_port: int = S3_PORT
    admin_port: int = ADMIN_PORT
    proc: subprocess.Popen[bytes] | None = None
    frozen: bool = False

    def __post_init__(self) -> None:
        self.node_id = self.node_id or self.host.name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "dfsd.log"
        self.conf_path = self.data_dir / "dfs.conf"
        self.write_conf()
        secret = self.data_dir / credentials.FILE_NAMES[CallerClass.NODE]
        if not secret.exists():
            credentials.write(secret, self.host.net.secret)
        self.host.net._daemons.append(self)

    # ---- configuration

    def config(self) -> dict[str, dict[str, Any]]:
        seeds = ",".join(s.gossip_address if isinstance(s, NsDaemon) else s for s in self.seeds)
        base: dict[str, dict[str, Any]] = {
            "node": {"id": self.node_id, "zone": self.zone, "data_dir": str(self.data_dir)},
            "rpc": {"listen": self.address},
            "storage": {"reserve_bytes": 0},
            "gossip": {"listen": self.gossip_address, "preset": self.preset, "seeds": seeds},
            "s3": {"listen": self.s3_address},
            "admin": {"listen": self.admin_address},
            "log": {"level": self.log_level},
        }
        return merge_conf(base, self.conf, tomllib.loads(self.extra_conf))

    def write_conf(self) -> None:
        text = render_toml(self.config())
        tomllib.loads(text)  # what we write must parse
        self.conf_path.write_text(text)

    def update_conf(self, conf: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge ``conf`` into the configuration (takes effect at the next start)."""
        self.conf = merge_conf(self.conf, conf)
        self.write_conf()

    # ---- addresses

    @property
    def ip(self) -> str:
        return self.host.ip

    @property
    def address(self) -> str:
        return f"{self.host.ip}:{self.rpc_port}"

    @property
    def gossip_address(self) -> str:
        return f"{self.host.ip}:{self.gossip_port}"

    @property
    def s3_address(self) -> str:
        return f"{self.host.ip}:{self.s3_port}"

    @property
    def admin_address(self) -> str:
        return f"{self.host.ip}:{self.admin_port}"

    def root_key(self) -> tuple[str, str]:
        raw = json.loads((self.data_dir / "s3-root.json").read_text())
        return raw["access_key"], raw["secret_key"]

    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    # ---- process control

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.node_id} is not running"
        return self.proc.pid

    def start(self, timeout: float = 30) -> None:
        """Start dfsd in the host; return once ``dfs status`` answers there."""
        if self.running:
            raise RuntimeError(f"{self.node_id} already runs")
        self.frozen = False
        with open(self.log_path, "ab") as log:
            self.proc = self.host.popen([BIN / "dfsd", "--config", self.conf_path], stdout=log, stderr=log)
        try:
            wait_for(self._ready, timeout, f"dfsd {self.node_id} to answer")
        except AssertionError as exc:
            self.kill()
            raise AssertionError(f"{exc}\n--- {self.log_path} (tail):\n{self.log_tail()}") from None
        except BaseException:
            self.kill()
            raise

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"dfsd {self.node_id} exited with {self.proc.returncode}")
        return self.cli("status", "--json", check=False, timeout=10).returncode == 0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Send ``sig`` and wait for the exit (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return
        proc = self.proc
        if proc.poll() is None:
            if sig == signal.SIGKILL:
                _signal_group(proc, signal.SIGKILL)
            else:
                proc.send_signal(sig)
            if self.frozen:
                _signal_group(proc, signal.SIGCONT)  # a stopped process cannot act on the signal
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(15)
        else:
            proc.wait()
        self.frozen = False
        self.proc = None

    def kill(self) -> None:
        """kill -9: no goodbye, like a host losing power."""
        self.stop(signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP: the process (group) hangs with its sockets open, like a stalled host."""
        assert self.proc is not None and self.proc.poll() is None, f"{self.node_id} is not running"
        _signal_group(self.proc, signal.SIGSTOP)
        self.frozen = True
        pid = self.proc.pid
        wait_for(lambda: _proc_state(pid) in ("T", "t", ""), 10, f"{self.node_id} to stop")

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        assert self.proc is not None, f"{self.node_id} is not running"
        _signal_group(self.proc, signal.SIGCONT)
        self.frozen = False
        pid = self.proc.pid
        wait_for(lambda: _proc_state(pid) not in ("T", "t"), 10, f"{self.node_id} to continue")

    # ---- CLI

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120, host: Host | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``dfs ARGS --config <conf>`` run in this daemon's host (or ``host``)."""
        res: subprocess.CompletedProcess[str] = (host or self.host).run(
            [BIN / "dfs", *args, "--config", self.conf_path], timeout=timeout
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"[{self.node_id}] dfs {' '.join(args)} failed ({res.returncode}): {res.stderr}{res.stdout}"
                f"\n--- {self.log_path} (tail):\n{self.log_tail(1500)}"
            )
        return res

    def cli_ok(self, *args: str) -> bool:
        return self.cli(*args, check=False).returncode == 0

    def nodes(self) -> list[dict[str, Any]]:
        """``dfs nodes --json``: the members as this daemon's gossip sees them."""
        members: list[dict[str, Any]] = json.loads(self.cli("nodes", "--json", timeout=20).stdout)
        return members

    def view(self) -> dict[str, str]:
        """node id -> status (alive, suspect, dead, left) as this daemon sees it."""
        return {m["node_id"]: m["status"] for m in self.nodes()}

    def fsck(self, repair: bool = False) -> dict[str, Any]:
        res = self.cli("fsck", "--json", *(["--repair"] if repair else []), check=False, timeout=300)
        report: dict[str, Any] = json.loads(res.stdout)
        return report

    def assert_clean(self) -> None:
        report = self.fsck()
        assert report["problems"] == [], f"fsck on {self.node_id} found problems: {report['problems']}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - chars))
                return f.read().decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    def mount(self, path: Path, options: str = "", host: Host | None = None) -> NsMount:
        """A started :class:`NsMount` of this daemon at ``path``, made from ``host`` (default: ours)."""
        m = NsMount(self, path, options, host)
        m.start()
        return m


@dataclass(eq=False)
class NsMount:
    """``mount.dfs <daemon ip>:<rpc port>:/ <path>`` run in a host's network namespace.

    Only the network namespace changes, so the mount is visible to the test process.
    """

    daemon: NsDaemon
    path: Path
    options: str = ""
    host: Host | None = None

    def __post_init__(self) -> None:
        self.host = self.host or self.daemon.host
        self.log_path = self.path.parent / f"mount-{self.path.name}.log"
        self.daemon.host.net._mounts.append(self)

    @property
    def mounted(self) -> bool:
        return is_mounted(self.path)

    def start(self, timeout: float = 60) -> None:
        assert self.host is not None
        self.path.mkdir(parents=True, exist_ok=True)
        opts = f"log={self.log_path},credential={self.daemon.data_dir / 'client.credential'}"
        opts += f",{self.options}" if self.options else ""
        res = self.host.run(
            [BIN / "mount.dfs", f"{self.daemon.address}:/", self.path, "-o", opts], timeout=timeout
        )
        if res.returncode != 0:
            tail = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
            raise AssertionError(f"mount.dfs failed ({res.returncode}): {res.stderr}{res.stdout}\n{tail}")
        assert self.mounted, f"{self.path} not mounted after mount.dfs returned"

    def pids(self) -> list[int]:
        """The mount's FUSE process(es) in its host."""
        assert self.host is not None
        target = str(self.path)
        return [p for p in self.host.pids() if target in _cmdline(p)]

    def stop(self, timeout: float = 30) -> None:
        """Unmount (fusermount3 -u; lazily if busy or dead) and wait until it is gone."""
        if not self.mounted:
            return
        res = subprocess.run(
            ["fusermount3", "-u", str(self.path)], capture_output=True, text=True, timeout=60
        )
        if res.returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True, timeout=60)
        wait_for(lambda: not self.mounted, timeout, f"{self.path} to unmount")

    def __enter__(self) -> NsMount:
        if not self.mounted:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def wait_status(
    observers: Iterable[NsDaemon], node_id: str, states: str | Collection[str], timeout: float = 20
) -> None:
    """Wait until every observer's gossip shows ``node_id`` in one of ``states``."""
    wanted = {states} if isinstance(states, str) else set(states)
    for d in observers:

        def seen(d: NsDaemon = d) -> bool:
            return d.view().get(node_id) in wanted

        wait_for(seen, timeout, f"{d.node_id} to see {node_id} {'/'.join(sorted(wanted))}")


def wait_view(observers: Iterable[NsDaemon], expected: Mapping[str, str], timeout: float = 20) -> None:
    """Wait until every observer's whole view (node id -> status) equals ``expected``."""
    for d in observers:

        def agrees(d: NsDaemon = d) -> bool:
            return d.view() == dict(expected)

        try:
            wait_for(agrees, timeout, f"{d.node_id} to see {dict(expected)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it sees {d.view()}") from None


def start_cluster(
    net: Net,
    base_dir: Path,
    names: Sequence[str],
    zones: Sequence[str] | None = None,
    conf: Mapping[str, Mapping[str, Any]] | None = None,
    extra_conf: str = "",
    start: bool = True,
) -> list[NsDaemon]:
    """One host and daemon per name (zones round-robin), all joining through the first."""
    zones = list(zones or ["default"])
    daemons: list[NsDaemon] = []
    for i, name in enumerate(names):
        host = net.hosts.get(name) or net.add_host(name)
        daemons.append(
            NsDaemon(
                host,
                base_dir / name,
                node_id=name,
                zone=zones[i % len(zones)],
                seeds=daemons[:1],
                conf=conf or {},
                extra_conf=extra_conf,
            )
        )
    if start:
        for d in daemons:
            d.start()
    return daemons
