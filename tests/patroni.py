"""A throwaway highly-available PostgreSQL for the failover tests: one etcd and N Patroni members.

Debian's ``etcd-server`` (etcd 3.4) and ``patroni`` (3.0) provide the programs; nothing here
uses the services their postinsts may have set up: every process listens on free loopback
ports of its own and keeps its state under the ``base_dir`` given to :meth:`PatroniCluster.start`.

Patroni is a system Python program (/usr/bin/patroni), not part of the project's virtualenv,
so it runs as a subprocess with a clean environment.  PostgreSQL refuses to run as root, so
when the tests run as root Patroni (and thus its postgres) runs as the ``postgres`` system
user, and the member directories are handed to that user.  etcd runs as whoever we are.

The timings (ttl 10 s, loop_wait 2 s, retry_timeout 4 s, primary_start_timeout 0) make a
failover take seconds instead of Patroni's default minute or more; synchronous mode makes
every acknowledged commit be on the synchronous standby too, so a failover loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import psycopg
from psycopg.conninfo import make_conninfo

from dfs.bench.harness import free_port, wait_for
from tests.pg import find_bin_dir, server_user

_SUPERUSER = "postgres"
_REPLICATOR = "replicator"
_PATRONI_BIN = "/usr/bin/patroni"
# Patroni's DCS timings.  Patroni needs ttl >= loop_wait + 2 * retry_timeout (10 >= 2 + 8):
# a leader that cannot reach etcd must give up its key (after retry_timeout) before the key
# expires on its own, or two members could both believe they lead.
_TTL_S = 10
_LOOP_WAIT_S = 2
_RETRY_TIMEOUT_S = 4
_START_TIMEOUT_S = 120.0
# Member states the /cluster API reports for a healthy postgres ("streaming" for replicas
# from Patroni 3.0.4 on, "running" before and for the leader).
_UP_STATES = ("running", "streaming")
_REPLICA_ROLES = ("replica", "sync_standby")


def _require_programs() -> None:
    missing = [p for p in ("etcd", "patroni") if shutil.which(p) is None]
    if missing:
        raise RuntimeError(
            f"{' and '.join(missing)} not found: install the Debian packages `etcd-server` and "
            "`patroni` (scripts/setup.sh does)"
        )


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs: a zombie (dead, waiting for its parent,
    maybe init, to reap it) does not count."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The command name, in parentheses, may itself hold spaces and parentheses: split after it.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _with_descendants(roots: Iterable[int]) -> set[int]:
    """``roots`` and every process below them now.  Postgres's children call setsid(), so
    process groups do not cover them; the parent links do."""
    children = _children_map()
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def _mentions(pid: int, needle: str) -> bool:
    """Whether the command line of ``pid`` contains ``needle``."""
    try:
        return needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _processes_mentioning(needle: str) -> set[int]:
    """Processes whose command line contains ``needle`` (our unique base directory): the
    catch-all for anything started under it that lost its parent link to us."""
    me = os.getpid()
    return {
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit() and int(e.name) != me and _mentions(int(e.name), needle)
    }


def _kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(unreadable: {e})"


@dataclass
class Member:
    """One Patroni node: its directory, ports and (while running) its Patroni process."""

    name: str
    dir: Path
    pg_port: int
    api_port: int
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def config_path(self) -> Path:
        return self.dir / "patroni.yml"

    @property
    def log_path(self) -> Path:
        return self.dir / "patroni.log"


class PatroniCluster:
    """etcd plus ``members`` Patroni nodes (pg0, pg1, ...) under ``base_dir``.  Build it with
    :meth:`start`; :meth:`stop` ends every process it started."""

    def __init__(self, base_dir: Path, members: int) -> None:
        self.base_dir = base_dir
        self.bin_dir = find_bin_dir()
        # A fresh scope per cluster: nothing read from etcd can come from another run.
        self.scope = f"dfs-{uuid.uuid4().hex[:8]}"
        self.etcd_dir = base_dir / "etcd"
        self.etcd_client_port = free_port()
        self.etcd_peer_port = free_port()
        self.etcd_log_path = base_dir / "etcd.log"
        self.etcd: subprocess.Popen[bytes] | None = None
        self._etcd_log: IO[bytes] | None = None
        self.members = [
            Member(f"pg{i}", base_dir / f"pg{i}", free_port(), free_port()) for i in range(members)
        ]
        # Set only while running as root: the user Patroni and postgres run as.
        self._run_as: pwd.struct_passwd | None = None
        # Every postmaster seen, so stop() finds those Patroni left behind (it detaches them).
        self._postmasters: set[int] = set()
        # Processes killed outside their parent's control: init reaps them, stop() waits for it.
        self._orphans: set[int] = set()

    # ---- start -------------------------------------------------------------------------

    @classmethod
    def start(cls, base_dir: Path, members: int = 2) -> PatroniCluster:
        """Start etcd, then ``members`` Patroni nodes; returns once one leads and all the others
        replicate, one of them synchronously.  ``base_dir`` is created; when running as root
        its parents must be traversable by the ``postgres`` user (pytest's tmp dirs are not)."""
        if members < 1:
            raise ValueError("a cluster needs at least one member")
        _require_programs()
        cluster = cls(base_dir, members)
        try:
            cluster._prepare_dirs()
            cluster._start_etcd()
            for m in cluster.members:
                cluster._write_config(m)
                cluster._start_patroni(m)
            wait_for(
                cluster._healthy,
                _START_TIMEOUT_S,
                f"a Patroni leader with {members - 1} streaming replica(s), one synchronous",
                interval_s=0.2,
                error=cluster._error,
            )
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _prepare_dirs(self) -> None:
        self._run_as = server_user()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        # postgres must traverse base_dir to reach its member directory.
        self.base_dir.chmod(0o755)
        if self._run_as is not None:
            # Patroni only says "Config is empty." when it cannot reach its config file.
            for parent in self.base_dir.resolve().parents:
                if not parent.stat().st_mode & 0o001:
                    raise RuntimeError(
                        f"{parent} is not traversable by `{_SUPERUSER}`: put the cluster under a "
                        "directory from tempfile.mkdtemp() chmod-ed 0o755, not pytest's tmp_path"
                    )
        self.etcd_dir.mkdir(mode=0o700)
        for m in self.members:
            m.dir.mkdir()
            (m.dir / "sock").mkdir()
            for d in (m.dir, m.dir / "sock"):
                if self._run_as is not None:
                    os.chown(d, self._run_as.pw_uid, self._run_as.pw_gid)
                # Clients that are not the server's user still have to reach the socket.
                d.chmod(0o755)

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.etcd_client_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._etcd_log = self.etcd_log_path.open("ab")
        self.etcd = subprocess.Popen(
            [
                "etcd",
                "--name=etcd0",
                f"--data-dir={self.etcd_dir}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=etcd0={peer}",
                "--initial-cluster-state=new",
                f"--initial-cluster-token={self.scope}",
            ],
            # etcd reads ETCD_* variables as flags: an environment of our own keeps stray
            # ones (e.g. a developer's ETCD_DATA_DIR) out.
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._etcd_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._etcd_healthy, 30.0, "etcd to serve", interval_s=0.05, error=self._error)

    def _etcd_healthy(self) -> bool:
        if self.etcd is not None and self.etcd.poll() is not None:
            raise self._error(f"etcd exited with {self.etcd.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.etcd_client_port}/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _write_config(self, m: Member) -> None:
        hba = [
            # Test-only: everyone on loopback is trusted, replication included.
            "local all all trust",
            "local replication all trust",
            "host all all 127.0.0.1/32 trust",
            "host replication all 127.0.0.1/32 trust",
        ]
        config: dict[str, Any] = {
            "scope": self.scope,
            "namespace": "/dfs-tests/",
            "name": m.name,
            "restapi": {
                "listen": f"127.0.0.1:{m.api_port}",
                "connect_address": f"127.0.0.1:{m.api_port}",
            },
            # etcd 3.4 serves the v3 API through its JSON gateway, which Patroni's etcd3
            # client speaks (no v2 emulation, no --enable-v2 needed).
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd_client_port}"], "protocol": "http"},
            "bootstrap": {
                "dcs": {
                    "ttl": _TTL_S,
                    "loop_wait": _LOOP_WAIT_S,
                    "retry_timeout": _RETRY_TIMEOUT_S,
                    # Fail over at once when the primary's postgres dies instead of spending
                    # up to 300 s restarting it in place: the failover is what the tests test.
                    "primary_start_timeout": 0,
                    # The standby a commit waits for is the one a failover promotes: no
                    # acknowledged commit is lost.  Not strict: with the standby gone, the
                    # primary goes on alone instead of blocking every write.
                    "synchronous_mode": True,
                    "synchronous_mode_strict": False,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            # pg_rewind needs hint-bit changes WAL-logged to rejoin an old primary.
                            "wal_log_hints": "on",
                            "max_connections": 100,
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{m.pg_port}",
                "connect_address": f"127.0.0.1:{m.pg_port}",
                "data_dir": str(m.data_dir),
                "bin_dir": str(self.bin_dir),
                # Patroni writes it before pg_basebackup/pg_rewind; default is ~/pgpass.
                "pgpass": str(m.dir / "pgpass"),
                "authentication": {
                    "superuser": {"username": _SUPERUSER, "password": "postgres"},
                    "replication": {"username": _REPLICATOR, "password": "replicator"},
                    "rewind": {"username": _SUPERUSER, "password": "postgres"},
                },
                # A socket directory of our own: /var/run/postgresql belongs to the system's.
                "parameters": {"unix_socket_directories": str(m.dir / "sock")},
                "pg_hba": hba,
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
        }
        # JSON is YAML: no YAML library needed on our side.
        m.config_path.write_text(json.dumps(config, indent=2) + "\n")
        if self._run_as is not None:
            os.chown(m.config_path, self._run_as.pw_uid, self._run_as.pw_gid)

    def _start_patroni(self, m: Member) -> None:
        m.log = m.log_path.open("ab")
        run_as: dict[str, Any] = {}
        home = str(m.dir)
        if self._run_as is not None:
            # Popen switches user itself: unlike runuser, which forks, the pid we hold is
            # Patroni's own, so kill_patroni() hits Patroni and nothing in between.
            run_as = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}
        m.proc = subprocess.Popen(
            [_PATRONI_BIN, str(m.config_path)],
            # The system's python3 runs Patroni: nothing of our virtualenv may leak in.
            env={
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": home,
                "USER": _SUPERUSER if self._run_as is not None else os.environ.get("USER", ""),
                "LANG": "C.UTF-8",
            },
            # As postgres, the caller's cwd (e.g. /root) may be unreadable.
            cwd=m.dir,
            stdin=subprocess.DEVNULL,
            stdout=m.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **run_as,
        )

    # ---- state -------------------------------------------------------------------------

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"no member {name!r} (members: {', '.join(m.name for m in self.members)})")

    def status(self) -> dict[str, Any]:
        """The ``GET /cluster`` JSON of the first member whose REST API answers: every
        member's name, role (leader, sync_standby, replica), state, host, port, timeline."""
        errors: list[str] = []
        for m in self.members:
            if m.proc is None or m.proc.poll() is not None:
                continue  # known dead: do not wait for its timeout
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{m.api_port}/cluster", timeout=2) as r:
                    return cast(dict[str, Any], json.loads(r.read()))
            except (OSError, ValueError) as e:
                errors.append(f"{m.name}: {e}")
        raise RuntimeError(f"no Patroni REST API answers: {'; '.join(errors) or 'none running'}")

    def _roles(self) -> dict[str, tuple[str, str]]:
        """name -> (role, state) from :meth:`status`; empty when no API answers."""
        try:
            members = self.status().get("members", [])
        except RuntimeError:
            return {}
        return {str(m["name"]): (str(m.get("role", "")), str(m.get("state", ""))) for m in members}

    def leader(self) -> str:
        """The member holding the leader key now."""
        for name, (role, _) in self._roles().items():
            if role == "leader":
                return name
        raise RuntimeError(f"no leader: {self._roles()}")

    def member_dsn(self, name: str, dbname: str = "postgres") -> str:
        """A libpq string for that member alone (leader or replica), over TCP."""
        m = self.member(name)
        return make_conninfo(
            "", host="127.0.0.1", port=m.pg_port, dbname=dbname, user=_SUPERUSER, connect_timeout=2
        )

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq string naming every member; libpq tries them in turn and keeps the one that
        accepts writes, so after a failover a new connection finds the new leader."""
        return make_conninfo(
            "",
            host=",".join("127.0.0.1" for _ in self.members),
            port=",".join(str(m.pg_port) for m in self.members),
            dbname=dbname,
            user=_SUPERUSER,
            target_session_attrs="read-write",
            connect_timeout=2,
        )

    def member_pid(self, name: str) -> int:
        """The postmaster pid of that member, from its data directory's postmaster.pid."""
        path = self.member(name).data_dir / "postmaster.pid"
        try:
            pid = int(path.read_text().split("\n", 1)[0])
        except (OSError, ValueError) as e:
            raise RuntimeError(f"{name}: no postmaster running ({path}: {e})") from None
        # A postmaster killed -9 leaves its file behind, and its pid may since belong to any
        # process: only one whose command line names our data directory is the postmaster.
        if not (_alive(pid) and _mentions(pid, str(path.parent))):
            raise RuntimeError(f"{name}: no postmaster running (stale {path}: pid {pid})")
        self._postmasters.add(pid)
        return pid

    def _in_recovery(self, name: str) -> bool | None:
        """Whether ``name``'s postgres is a standby (None: it does not answer)."""
        try:
            with psycopg.connect(self.member_dsn(name), autocommit=True) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        except psycopg.Error:
            return None
        return None if row is None else bool(row[0])

    def _is_primary(self, name: str) -> bool:
        return self._in_recovery(name) is False

    def _has_sync_standby(self, name: str) -> bool:
        """Whether the primary ``name`` has a standby that acknowledges commits synchronously
        (Patroni marks it sync_standby only then, but the server is the truth)."""
        try:
            with psycopg.connect(self.member_dsn(name), autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'"
                ).fetchone()
        except psycopg.Error:
            return False
        return row is not None and int(row[0]) > 0

    def _healthy(self) -> bool:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is not None:
                raise self._error(f"patroni {m.name} exited with {m.proc.returncode}")
        roles = self._roles()
        if len(roles) != len(self.members) or any(s not in _UP_STATES for _, s in roles.values()):
            return False
        leaders = [n for n, (r, _) in roles.items() if r == "leader"]
        others = [r for n, (r, _) in roles.items() if n not in leaders]
        if len(leaders) != 1 or any(r not in _REPLICA_ROLES for r in others):
            return False
        if len(self.members) == 1:
            return self._is_primary(leaders[0])
        return any(r == "sync_standby" for r, _ in roles.values()) and self._has_sync_standby(leaders[0])

    def wait_for_leader(self, not_name: str | None = None, timeout_s: float = 30.0) -> str:
        """Wait until a member other than ``not_name`` holds the leader key and its postgres
        accepts writes; returns its name."""
        found: list[str] = []

        def ready() -> bool:
            for name, (role, _) in self._roles().items():
                if role == "leader" and name != not_name and self._is_primary(name):
                    found.append(name)
                    return True
            return False

        wait_for(
            ready, timeout_s, f"a writable leader other than {not_name}", interval_s=0.1, error=self._error
        )
        return found[-1]

    def wait_for_replica(self, name: str, timeout_s: float = 60.0) -> None:
        """Wait until ``name`` runs as a replica (in recovery, reported running by Patroni)."""

        def ready() -> bool:
            role, state = self._roles().get(name, ("", ""))
            if role not in _REPLICA_ROLES or state not in _UP_STATES:
                return False
            return self._in_recovery(name) is True

        wait_for(ready, timeout_s, f"{name} to run as a replica", interval_s=0.2, error=self._error)

    # ---- faults ------------------------------------------------------------------------

    def kill_postgres(self, name: str) -> None:
        """kill -9 that member's postmaster ("the PostgreSQL server dies"); its Patroni lives
        on and its backends exit when they see the postmaster gone."""
        pid = self.member_pid(name)
        self._orphans |= _with_descendants([pid])
        os.kill(pid, signal.SIGKILL)

    def kill_patroni(self, name: str) -> None:
        """kill -9 that member's Patroni and all of its postgres processes ("the host dies").
        Patroni starts postgres detached (setsid, reparented to init), so it is killed apart."""
        m = self.member(name)
        victims: set[int] = set()
        patroni_running = m.proc is not None and m.proc.poll() is None
        if m.proc is not None and patroni_running:
            victims |= _with_descendants([m.proc.pid])
        with contextlib.suppress(RuntimeError):
            victims |= _with_descendants([self.member_pid(name)])
        # Patroni first, so it cannot react to its postgres dying.
        if m.proc is not None and patroni_running:
            _kill_all([m.proc.pid])
            m.proc.wait()
        _kill_all(victims)
        self._orphans |= victims
        wait_for(
            lambda: not any(_alive(p) for p in victims),
            10.0,
            f"{name}'s processes to die",
            error=self._error,
        )

    # ---- stop --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything this cluster started, at once, and check that no process of it is
        left.  Like tests/pg.py's immediate stop: the data is thrown away, so nothing is gained
        by a clean shutdown, which takes seconds (a synchronous standby waits to be released)."""
        # Patroni first (it is only a supervisor), so it cannot restart what is stopped next.
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                _kill_all(_with_descendants([m.proc.pid]))
                m.proc.wait()
        # Patroni detaches its postmaster: find it through postmaster.pid (and those seen before).
        for m in self.members:
            with contextlib.suppress(RuntimeError):
                self.member_pid(m.name)
        # (A pid seen earlier whose command line no longer names base_dir is someone else's now.)
        postmasters = [p for p in self._postmasters if _alive(p) and _mentions(p, f"{self.base_dir}/")]
        # SIGQUIT is postgres's immediate shutdown: the postmaster ends its children itself and
        # releases its shared memory.
        for pid in postmasters:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not any(_alive(p) for p in postmasters), 10.0, "postmasters to stop")
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
                self.etcd.wait()
        # Whatever is still there (a postmaster that ignored SIGQUIT, its orphaned backends,
        # anything else started under base_dir) is killed.
        leftovers = _with_descendants(
            p for p in (*postmasters, *_processes_mentioning(f"{self.base_dir}/")) if _alive(p)
        )
        _kill_all(leftovers)
        for m in self.members:
            if m.log is not None:
                m.log.close()
                m.log = None
        if self._etcd_log is not None:
            self._etcd_log.close()
            self._etcd_log = None
        try:
            wait_for(lambda: not any(_alive(p) for p in leftovers), 10.0, "leftover processes to die")
        except AssertionError:
            raise RuntimeError(
                f"processes of {self.base_dir} survive SIGKILL: {sorted(p for p in leftovers if _alive(p))}"
            ) from None
        # The postmasters (and what kill_patroni() killed) are init's children: dead, they stay
        # zombies until init reaps them, which some inits do only every second or two.  Wait a
        # little so that pgrep shows nothing after the tests; an init that never reaps is not
        # ours to fix, hence no error.
        self._orphans |= self._postmasters | leftovers
        with contextlib.suppress(AssertionError):
            wait_for(
                lambda: not any(Path(f"/proc/{p}").exists() for p in self._orphans),
                5.0,
                "init to reap the stopped processes",
                interval_s=0.1,
            )

    def _error(self, message: str) -> Exception:
        """A RuntimeError for ``message`` carrying the tails of every log, for diagnosis."""
        parts = [message]
        for m in self.members:
            parts.append(f"--- {m.log_path} (tail) ---\n{_log_tail(m.log_path)}")
        parts.append(f"--- {self.etcd_log_path} (tail) ---\n{_log_tail(self.etcd_log_path, 10)}")
        with contextlib.suppress(RuntimeError):
            parts.insert(1, f"cluster: {json.dumps(self.status())}")
        return RuntimeError("\n".join(parts))
