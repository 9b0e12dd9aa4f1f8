"""``dfs doctor``: is this host set up to run dfs, and if not, what to fix.

Each check is a small function returning a :class:`Check`: its name, ``ok``, ``warn`` or
``fail``, what it found, and for anything not ok a hint of how to fix it.  The checks of the
host itself take their paths and values as arguments (tests point them at temporary files);
the daemon's (reachable, the members' clocks) ask it over RPC.

- FUSE: /dev/fuse opens read-write, fusermount3 is on PATH, user_allow_other for non-root
  mounts with allow_other.  Missing pieces are warnings: dfsd runs without them, only
  mount.dfs on this host needs them.
- The configuration loads (dfs.conf parses and validates).
- The data directory exists and takes a new file; its disk has room (warn below
  :data:`FREE_WARN_FRACTION`, fail below :data:`FREE_FAIL_FRACTION`).
- The secrets (node/admin/client credentials, admin token, S3 root key, master key, gossip
  keyring, [rpc] credential_file, the TLS key) are present where needed and mode 0600.
- The ports of dfs.conf are free, or held by this data directory's own dfsd.
- The daemon answers; the TLS certificates do not expire within :data:`CERT_WARN_DAYS`.
- The clocks of the cluster's live members and of this host agree: warn beyond
  :data:`SKEW_WARN_S`, fail beyond :data:`SKEW_FAIL_S` (gossip drops packets stamped more
  than 60 s off, so at 30 s a cluster is close to losing its members).

Exit status: 0 when no check failed (warnings are printed, not fatal: a host without FUSE can
still run dfsd), 1 (``EX_FAILURE``, a failure the CLI finds itself) when one did; with
``--strict``, warnings count as failures.  ``--json`` prints the checks as a JSON document.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import click
import trio
from cryptography import x509

from dfs.cli.app import main, run
from dfs.cli.connect import Endpoint, call, config_file_for, endpoint_of
from dfs.cli.output import emit_json, json_option
from dfs.cli.repair import live_nodes
from dfs.core import config as config_mod
from dfs.core.auth import CallerClass
from dfs.core.config import Config
from dfs.core.endpoints import SYS_CLUSTER, SYS_STATUS
from dfs.core.errors import EX_FAILURE, DfsError
from dfs.net import credentials
from dfs.net.rpc import parse_address

Status = Literal["ok", "warn", "fail"]
OK: Status = "ok"
WARN: Status = "warn"
FAIL: Status = "fail"
_RANK = {OK: 0, WARN: 1, FAIL: 2}

FREE_WARN_FRACTION = 0.10
FREE_FAIL_FRACTION = 0.02
CERT_WARN_DAYS = 30
SKEW_WARN_S = 1.0
SKEW_FAIL_S = 30.0
#: How long the daemon and each member get to answer (a doctor must not hang on a dead peer).
CALL_TIMEOUT_S = 5.0
#: Members asked for their time at most (a bound on the fan-out; the rest are not compared).
MAX_MEMBERS = 256
#: File descriptors looked at, in all, to find which process holds a port (/proc is walked).
MAX_FDS_SCANNED = 200_000
START = "start it: systemctl start dfsd (or dfs up DIR); see its log"
SYNC_CLOCKS = "keep clocks in sync on every node: timedatectl set-ntp true (or run chronyd)"


class Check(NamedTuple):
    name: str
    status: Status
    message: str
    fix: str = ""


def worst(checks: list[Check]) -> Status:
    return max((c.status for c in checks), key=_RANK.__getitem__, default=OK)


def exit_status(checks: list[Check], strict: bool = False) -> int:
    """0 when nothing failed (nor, with ``strict``, warned); else EX_FAILURE."""
    bad = worst(checks)
    return EX_FAILURE if bad == FAIL or (strict and bad == WARN) else 0


def format_check(c: Check, name_width: int = 0) -> str:
    line = f"{c.status:<4}  {c.name:<{name_width}}  {c.message}"
    return line + (f"  (fix: {c.fix})" if c.fix and c.status != OK else "")


# -- FUSE ------------------------------------------------------------------------------------------


def check_fuse_device(path: Path = Path("/dev/fuse")) -> Check:
    name = "fuse device"
    fix = "modprobe fuse (in a container: --device /dev/fuse); mounts need it, dfsd does not"
    try:
        st = path.stat()
    except FileNotFoundError:
        return Check(name, WARN, f"{path} does not exist: mount.dfs cannot work on this host", fix)
    except OSError as exc:
        return Check(name, WARN, f"{path}: {exc.strerror}", fix)
    if not stat.S_ISCHR(st.st_mode):
        return Check(name, WARN, f"{path} is not a character device", fix)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return Check(name, WARN, f"{path} does not open read-write: {exc.strerror}", fix)
    os.close(fd)
    return Check(name, OK, f"{path} opens read-write")


def check_fusermount(which: Callable[[str], str | None] = shutil.which) -> Check:
    found = which("fusermount3")
    if found is None:
        return Check(
            "fusermount3",
            WARN,
            "not on PATH: unmounting (and non-root mounts) need it",
            "apt-get install fuse3",
        )
    return Check("fusermount3", OK, found)


def check_allow_other(fuse_conf: Path = Path("/etc/fuse.conf"), euid: int | None = None) -> Check:
    """Only a mount by a user other than root with ``-o allow_other`` needs user_allow_other."""
    name = "allow_other"
    if (os.geteuid() if euid is None else euid) == 0:
        return Check(name, OK, "running as root: allow_other needs no user_allow_other")
    try:
        lines = fuse_conf.read_text().splitlines()
    except OSError:
        lines = []
    if any(line.split("#", 1)[0].strip() == "user_allow_other" for line in lines):
        return Check(name, OK, f"user_allow_other is set in {fuse_conf}")
    return Check(
        name,
        WARN,
        f"user_allow_other is not set in {fuse_conf}: a mount by this user with -o allow_other fails",
        f"echo user_allow_other >> {fuse_conf} (as root), or mount without allow_other",
    )


# -- configuration and data directory ---------------------------------------------------------------


def check_config(path: Path | None, env: dict[str, str] | None = None) -> tuple[Check, Config | None]:
    """The configuration dfs commands and dfsd would load (``path``; None: the default)."""
    name = "config"
    try:
        cfg = config_mod.load(path, env=env)
    except DfsError as exc:
        fix = "edit dfs.conf: every option is described in dfs.conf.example"
        return Check(name, FAIL, exc.message, fix), None
    environ = os.environ if env is None else env
    where = path or environ.get("DFS_CONFIG") or config_mod.DEFAULT_CONFIG_PATH
    if path is None and not environ.get("DFS_CONFIG") and not config_mod.DEFAULT_CONFIG_PATH.exists():
        return Check(name, OK, "no dfs.conf: the built-in defaults"), cfg
    return Check(name, OK, f"{where} loads"), cfg


def check_data_dir(path: Path) -> Check:
    name = "data dir"
    if not path.exists():
        return Check(name, WARN, f"{path} does not exist (yet)", "dfsd creates it at its first start")
    if not path.is_dir():
        return Check(name, FAIL, f"{path} is not a directory", "point [node] data_dir at a directory")
    try:
        # Unnamed where the filesystem allows it: nothing is left behind, even on a crash.
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return Check(
            name,
            FAIL,
            f"{path} takes no new file: {exc.strerror}",
            f"chown the daemon's user {path}; mount rw",
        )
    return Check(name, OK, f"{path} is writable")


def free_space_check(path: Path, avail_bytes: int, total_bytes: int) -> Check:
    """The verdict on ``avail_bytes`` free of ``total_bytes`` where ``path`` lives."""
    name = "free space"
    if total_bytes <= 0:
        return Check(name, WARN, f"{path}: the filesystem reports no size")
    fraction = avail_bytes / total_bytes
    what = f"{path}: {avail_bytes / 2**30:.1f} GiB free of {total_bytes / 2**30:.1f} GiB ({fraction:.1%})"
    fix = "free space or add a disk (dfs node drain moves data to other nodes)"
    if fraction < FREE_FAIL_FRACTION:
        return Check(name, FAIL, what, fix)
    if fraction < FREE_WARN_FRACTION:
        return Check(name, WARN, what, fix)
    return Check(name, OK, what)


def check_free_space(path: Path) -> Check:
    """Free space of the disk ``path`` is (or will be) on: the nearest existing ancestor's."""
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        st = os.statvfs(where)
    except OSError as exc:
        return Check("free space", WARN, f"{where}: {exc.strerror}")
    return free_space_check(path, st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


# -- secrets ---------------------------------------------------------------------------------------


def check_secret_file(name: str, path: Path, *, missing: Status = WARN, missing_fix: str = "") -> Check:
    """A secret file: present (else ``missing``, with ``missing_fix``) and readable by its owner
    only (mode 0600), as dfs refuses a looser credential."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return Check(name, missing, f"{path} is missing", missing_fix)
    except OSError as exc:
        return Check(name, FAIL, f"{path}: {exc.strerror}", "run dfs doctor as the daemon's user or root")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return Check(name, FAIL, f"{path} is readable by others (mode {mode:o})", f"chmod 600 {path}")
    if not os.access(path, os.R_OK):
        return Check(name, WARN, f"{path} is not readable by this user", "run as the daemon's user or root")
    return Check(name, OK, f"{path} (mode {mode:o})")


def credential_checks(cfg: Config, env: dict[str, str] | None = None) -> list[Check]:
    data = cfg.data_path
    joining = bool(cfg.cluster.meta)
    started = "dfsd writes it at its start"
    node_fix = "copy node.credential from any member's data directory (mode 0600)" if joining else started
    out = [
        check_secret_file(
            "node credential",
            data / credentials.FILE_NAMES[CallerClass.NODE],
            # A joining node cannot make the cluster secret itself: dfsd refuses to start.
            missing=FAIL if joining else WARN,
            missing_fix=node_fix,
        ),
        check_secret_file(
            "admin credential", data / credentials.FILE_NAMES[CallerClass.ADMIN], missing_fix=started
        ),
        check_secret_file(
            "client credential", data / credentials.FILE_NAMES[CallerClass.CLIENT], missing_fix=started
        ),
    ]
    if cfg.admin.enabled:
        out.append(check_secret_file("admin token", cfg.admin_token_path, missing_fix=started))
    if cfg.s3.enabled:
        out.append(check_secret_file("s3 root key", cfg.s3_root_path, missing_fix=started))
    environ = os.environ if env is None else env
    if environ.get("DFS_MASTER_KEY"):
        out.append(Check("master key", OK, "from $DFS_MASTER_KEY"))
    elif cfg.master_key_path.exists() or cfg.storage.master_key_file:
        out.append(
            check_secret_file(
                "master key",
                cfg.master_key_path,
                missing=FAIL,
                missing_fix="[storage] master_key_file names it",
            )
        )
    else:
        out.append(
            Check("master key", OK, "none here (the metadata primary makes one for encrypted volumes)")
        )
    keyring = data / "gossip.keyring"
    if keyring.exists():  # only once an operator changed the keyring (dfs cluster keyring)
        out.append(check_secret_file("gossip keyring", keyring))
    if cfg.rpc.credential_file:
        out.append(
            check_secret_file(
                "rpc credential_file",
                Path(cfg.rpc.credential_file).expanduser(),
                missing=FAIL,
                missing_fix="copy the credential there or fix [rpc] credential_file",
            )
        )
    if cfg.tls.key_file:
        out.append(
            check_secret_file(
                "tls key", Path(cfg.tls.key_file), missing=FAIL, missing_fix="fix [tls] key_file"
            )
        )
    return out


# -- certificates ----------------------------------------------------------------------------------


def certificate_check(name: str, pem: bytes, now: datetime, warn_days: int = CERT_WARN_DAYS) -> Check:
    """The verdict on the PEM certificate(s) ``pem``: the first to expire decides."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        return Check(name, FAIL, "holds no PEM certificate", "dfs node cert (or your CA) makes a new one")
    not_after = min(c.not_valid_after_utc for c in certs)
    days = (not_after - now).total_seconds() / 86400
    when = not_after.strftime("%Y-%m-%d %H:%M UTC")
    fix = "issue a new one (dfs node cert NAME --ca-dir CA_DIR --out DIR) and restart dfsd"
    if days < 0:
        return Check(name, FAIL, f"expired on {when}", fix)
    if days < warn_days:
        return Check(name, WARN, f"expires on {when}, in {days:.0f} day(s)", fix)
    return Check(name, OK, f"valid until {when} ({days:.0f} days)")


def certificate_checks(cfg: Config, now: datetime) -> list[Check]:
    files = [("tls cert", cfg.tls.cert_file), ("tls ca", cfg.tls.ca_file)]
    named = [(n, Path(f)) for n, f in files if f]
    if not named:
        return [Check("certificates", OK, "none configured ([tls] is empty: no TLS)")]
    out = []
    for name, path in named:
        try:
            pem = path.read_bytes()
        except OSError as exc:
            out.append(Check(name, FAIL, f"{path}: {exc.strerror}", "fix the path in [tls]"))
            continue
        check = certificate_check(name, pem, now)
        out.append(check._replace(message=f"{path}: {check.message}"))
    return out


# -- ports -----------------------------------------------------------------------------------------

_PROC_NET = {socket.SOCK_STREAM: ("tcp", "tcp6"), socket.SOCK_DGRAM: ("udp", "udp6")}
_TCP_LISTEN = "0A"


def _bind_error(host: str, port: int, kind: socket.SocketKind) -> OSError | None:
    """Why ``host:port`` cannot be bound now (None: it can)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=kind, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {exc.strerror}")
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, kind) as s:
        if kind == socket.SOCK_STREAM:
            # A listener from a just-stopped daemon's TIME_WAIT connections is no conflict (dfsd
            # sets it too); a live listener still refuses the bind.  Not for UDP: there it would
            # let two sockets share the port and hide a conflict.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
        except OSError as exc:
            return exc
    return None


def _socket_inodes(port: int, kind: socket.SocketKind, proc: Path) -> set[str]:
    inodes = set()
    for table in _PROC_NET[kind]:
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and (kind == socket.SOCK_DGRAM or fields[3] == _TCP_LISTEN):
                inodes.add(fields[9])
    return inodes


def port_holder(port: int, kind: socket.SocketKind, proc: Path = Path("/proc")) -> tuple[int, str] | None:
    """(pid, command name) of a process holding ``port``, if this user may see it."""
    wanted = {f"socket:[{inode}]" for inode in _socket_inodes(port, kind, proc)}
    if not wanted:
        return None
    scanned = 0
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            continue  # gone, or another user's
        for fd in fds:
            scanned += 1
            if scanned > MAX_FDS_SCANNED:
                return None
            try:
                if os.readlink(fd) in wanted:
                    return int(pid_dir.name), (pid_dir / "comm").read_text().strip()
            except OSError:
                continue
    return None


def daemon_pid(data: Path) -> int | None:
    """The pid of the dfsd running on data directory ``data`` (its dfsd.pid, if alive)."""
    try:
        pid = int((data / "dfsd.pid").read_text().strip())
        os.kill(pid, 0)
    except PermissionError:
        return pid  # alive, and another user's (dfsd runs as its own user)
    except (OSError, ValueError):
        return None
    return pid


def check_port(
    name: str, address: str, default_port: int, kinds: tuple[socket.SocketKind, ...], own_pid: int | None
) -> Check:
    """``address`` (from dfs.conf) free for each of ``kinds``, or held by ``own_pid``."""
    try:
        addr = parse_address(address, default_port)
    except DfsError as exc:
        return Check(name, FAIL, exc.message, "fix the address in dfs.conf")
    protocols = "+".join("tcp" if k == socket.SOCK_STREAM else "udp" for k in kinds)
    where = f"{address} ({protocols})"
    ours = unseen = 0
    others: list[str] = []
    for kind in kinds:
        err = _bind_error(addr.host, addr.port, kind)
        if err is None:
            continue
        if err.errno == errno.EADDRNOTAVAIL:
            return Check(name, FAIL, f"{where}: not an address of this host", "fix the listen address")
        if err.errno == errno.EACCES:
            return Check(name, FAIL, f"{where}: a port below 1024 needs root", "use a port above 1023")
        if err.errno != errno.EADDRINUSE:
            return Check(name, FAIL, f"{where}: {err.strerror}", "fix the listen address")
        holder = port_holder(addr.port, kind)
        if holder is None:
            unseen += 1
        elif holder[0] == own_pid:
            ours += 1
        else:
            others.append(f"{holder[1]} (pid {holder[0]})")
    if others:
        return Check(
            name,
            FAIL,
            f"{where} is taken by {', '.join(sorted(set(others)))}",
            "stop that process or give dfs another port in dfs.conf",
        )
    if unseen:
        # Not root: the holder's sockets are hidden; it may well be this node's dfsd.
        running = f"; dfsd (pid {own_pid}) runs here" if own_pid is not None else ""
        return Check(
            name,
            WARN,
            f"{where} is in use by a process this user cannot see{running}",
            "run dfs doctor as root",
        )
    if ours == len(kinds):
        return Check(name, OK, f"{where} held by this node's dfsd (pid {own_pid})")
    if own_pid is not None:
        return Check(
            name,
            WARN,
            f"{where} is not (all) held by dfsd (pid {own_pid})",
            "see its log: it may have failed to bind",
        )
    return Check(name, OK, f"{where} free")


def port_checks(cfg: Config) -> list[Check]:
    own = daemon_pid(cfg.data_path)
    tcp, udp = socket.SOCK_STREAM, socket.SOCK_DGRAM
    wanted: list[tuple[str, str, int, tuple[socket.SocketKind, ...]]] = [
        ("rpc port", cfg.rpc.listen, 7400, (tcp,))
    ]
    if cfg.gossip.enabled:
        wanted.append(("gossip port", cfg.gossip.listen, 7401, (udp, tcp)))
    if cfg.s3.enabled:
        wanted.append(("s3 port", cfg.s3.listen, 9000, (tcp,)))
    if cfg.admin.enabled:
        wanted.append(("admin port", cfg.admin.listen, 9001, (tcp,)))
    return [check_port(name, address, port, kinds, own) for name, address, port, kinds in wanted]


# -- the daemon and the cluster's clocks ----------------------------------------------------------


class ClockSample(NamedTuple):
    """A member's clock against this host's: ``offset_s`` (positive: ahead), give or take
    ``uncertainty_s`` (half the round trip the answer took)."""

    offset_s: float
    uncertainty_s: float


def clock_skew_check(samples: dict[str, ClockSample], silent: list[str]) -> Check:
    """The verdict on the members' clocks, this host's included (offset 0): the least spread
    the samples allow, beyond what the round trips leave uncertain."""
    name = "clock skew"
    silent_note = f"; no time from {', '.join(sorted(silent))}" if silent else ""
    if not samples:
        return Check(name, WARN, "no member reported its time" + silent_note, "see the daemon check")
    points = {"this host": ClockSample(0.0, 0.0), **samples}
    ahead = max(points, key=lambda n: points[n].offset_s - points[n].uncertainty_s)
    behind = min(points, key=lambda n: points[n].offset_s + points[n].uncertainty_s)
    spread = max(
        0.0,
        (points[ahead].offset_s - points[ahead].uncertainty_s)
        - (points[behind].offset_s + points[behind].uncertainty_s),
    )
    what = f"{len(samples)} member(s) and this host within {spread:.3f} s"
    if spread > 0:
        what += f" ({ahead} ahead of {behind})"
    what += silent_note
    if spread > SKEW_FAIL_S:
        return Check(name, FAIL, what + ": gossip drops packets stamped more than 60 s off", SYNC_CLOCKS)
    if spread > SKEW_WARN_S or silent:
        return Check(name, WARN, what, SYNC_CLOCKS if spread > SKEW_WARN_S else "see which members are down")
    return Check(name, OK, what)


def _why(exc: Exception) -> str:
    if isinstance(exc, DfsError):
        return exc.message
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {CALL_TIMEOUT_S:g} s"
    return str(exc.strerror or exc) if isinstance(exc, OSError) else str(exc)


async def _timed_status(target: Endpoint) -> tuple[dict[str, Any], ClockSample | None]:
    """A member's status, and its clock against ours (None: it does not report its time)."""
    before_ns = time.time_ns()
    with trio.fail_after(CALL_TIMEOUT_S):
        st: dict[str, Any] = await call(target, SYS_STATUS, timeout_s=CALL_TIMEOUT_S)
    after_ns = time.time_ns()
    theirs = st.get("time_ns")
    if not isinstance(theirs, int):
        return st, None  # a daemon older than this field
    midpoint_ns = (before_ns + after_ns) / 2
    return st, ClockSample((theirs - midpoint_ns) / 1e9, (after_ns - before_ns) / 2e9)


async def daemon_checks(cfg: Config) -> list[Check]:
    """The daemon answers; then every live member's clock against this host's."""
    name = "daemon"
    try:
        endpoint = endpoint_of(cfg)
        st, _ = await _timed_status(endpoint)
    except (DfsError, trio.TooSlowError, OSError) as exc:
        why = _why(exc)
        return [
            Check(name, FAIL, f"dfsd at {cfg.rpc.listen} does not answer: {why}", START),
            Check("clock skew", WARN, "not checked: the daemon does not answer"),
        ]
    out = [
        Check(
            name,
            OK,
            f"dfsd {st.get('node_id')} answers (version {st.get('version')}, "
            f"up {st.get('uptime_s', 0):.0f} s, {st.get('role', '?')})",
        )
    ]
    samples: dict[str, ClockSample] = {}
    silent: list[str] = []

    async def ask(node_id: str, target: Endpoint) -> None:
        try:
            _, sample = await _timed_status(target)
        except (DfsError, trio.TooSlowError, OSError):
            silent.append(node_id)
            return
        if sample is None:
            silent.append(node_id)
        else:
            samples[node_id] = sample

    try:
        with trio.fail_after(CALL_TIMEOUT_S):
            cluster: dict[str, Any] = await call(endpoint, SYS_CLUSTER, timeout_s=CALL_TIMEOUT_S)
    except (DfsError, trio.TooSlowError, OSError) as exc:
        why = _why(exc)
        return [*out, Check("clock skew", WARN, f"not checked: no member list ({why})")]
    targets, down = live_nodes(endpoint, cluster)
    async with trio.open_nursery() as nursery:
        for node_id, target in sorted(targets.items())[:MAX_MEMBERS]:
            nursery.start_soon(ask, node_id, target)
    return [*out, clock_skew_check(samples, silent + sorted(down))]


# -- the command -----------------------------------------------------------------------------------


def host_checks() -> Iterator[Check]:
    yield check_fuse_device()
    yield check_fusermount()
    yield check_allow_other()


def run_checks(config_file: Path | None) -> list[Check]:
    """Every check, in the order they print.  Without a configuration only the host's run."""
    checks = list(host_checks())
    config_check, cfg = check_config(config_file)
    checks.append(config_check)
    if cfg is None:
        return checks
    checks.append(check_data_dir(cfg.data_path))
    checks.append(check_free_space(cfg.data_path))
    checks += credential_checks(cfg)
    checks += port_checks(cfg)
    checks += certificate_checks(cfg, datetime.now(UTC))
    if daemon_pid(cfg.data_path) is None and _rpc_port_free(cfg):
        # Nothing to ask (a call would only wait out its timeout connecting).
        checks.append(
            Check("daemon", FAIL, f"dfsd is not running: nothing listens on {cfg.rpc.listen}", START)
        )
        checks.append(Check("clock skew", WARN, "not checked: the daemon does not run"))
    else:
        checks += run(daemon_checks, cfg)
    return checks


def _rpc_port_free(cfg: Config) -> bool:
    try:
        addr = parse_address(cfg.rpc.listen, 7400)
    except DfsError:
        return False
    return _bind_error(addr.host, addr.port, socket.SOCK_STREAM) is None


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="dfs.conf of the daemon")
@click.option("--strict", is_flag=True, help="exit 1 on warnings too, not only on failures")
@json_option
def doctor(directory: str | None, config_path: str | None, strict: bool, as_json: bool) -> None:
    """Check this host's set-up for dfs and say what to fix: FUSE, the configuration, the data
    directory and its free space, the secrets and their modes, the ports, the daemon, the TLS
    certificates and the cluster's clocks.  Exit status 0 unless a check fails (1)."""
    checks = run_checks(config_file_for(directory, config_path))
    code = exit_status(checks, strict)
    if as_json:
        emit_json({"ok": code == 0, "worst": worst(checks), "checks": [c._asdict() for c in checks]})
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(format_check(c, width))
        counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL)}
        click.echo(f"{counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failure(s)")
    if code:
        raise click.exceptions.Exit(code)
