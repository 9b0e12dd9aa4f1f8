"""A throwaway PostgreSQL server for the tests: its own data directory, port and socket.

Debian's ``postgresql`` package provides the binaries (/usr/lib/postgresql/<version>/bin);
nothing here relies on the cluster the package's postinst may have created.  initdb and
postgres refuse to run as root, so when the tests run as root (as CI does) the server runs as
the ``postgres`` system user and the directories it writes are handed to that user.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dfs.bench.harness import free_port

_PG_ROOT = Path("/usr/lib/postgresql")
_SUPERUSER = "postgres"
_SCHEMA_MAX = 60  # below NAMEDATALEN-1 (63), leaving room for a test's own suffixes
_PLAIN_IDENT = re.compile(r"[a-z_][a-z0-9_]*")


def find_bin_dir(root: Path = _PG_ROOT) -> Path:
    """The bin directory of the newest PostgreSQL installed under ``root``."""
    found: list[tuple[tuple[int, ...], Path]] = []
    for bin_dir in root.glob("*/bin"):
        try:
            version = tuple(int(p) for p in bin_dir.parent.name.split("."))
        except ValueError:
            continue
        if all((bin_dir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            found.append((version, bin_dir))
    if not found:
        raise RuntimeError(
            f"no PostgreSQL server under {root}/*/bin: install the Debian package `postgresql` "
            "(scripts/setup.sh does)"
        )
    return max(found)[1]


def sanitize_schema(name: str) -> str:
    """``name`` as a schema name that needs no quoting anywhere (SQL, search_path, options)."""
    clean = re.sub(r"[^a-z0-9_]", "_", name.lower())
    if not _PLAIN_IDENT.fullmatch(clean):
        # Empty, or starts with a digit: unquoted, SQL would read it as something else.
        clean = "s_" + clean
    return clean[:_SCHEMA_MAX]


def _search_path_option(schema: str) -> str:
    """The backend option that puts ``schema`` first in search_path, escaped for libpq's
    ``options``, which splits on unescaped spaces."""
    ident = schema if _PLAIN_IDENT.fullmatch(schema) else '"' + schema.replace('"', '""') + '"'
    return "-c search_path=" + ident.replace("\\", "\\\\").replace(" ", "\\ ")


def server_user() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as: ``postgres`` when running as root (initdb and postgres
    refuse root), None (ourselves) otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_SUPERUSER)
    except KeyError:
        raise RuntimeError(
            f"running as root needs the `{_SUPERUSER}` system user to run postgres as: "
            "install the Debian package `postgresql`"
        ) from None


class PgServer:
    """One postgres cluster under ``base_dir``: data/ (the cluster), sock/ (its unix socket)
    and postgres.log.  Build it with :meth:`start`; :meth:`stop` ends it."""

    def __init__(self, base_dir: Path, bin_dir: Path, port: int) -> None:
        self.base_dir = base_dir
        self.bin_dir = bin_dir
        self.port = port
        self.data_dir = base_dir / "data"
        self.host = str(base_dir / "sock")
        self.log_path = base_dir / "postgres.log"
        # Set only while running as root: the user the server's own processes run as.
        self._run_as: pwd.struct_passwd | None = None

    @classmethod
    def start(cls, base_dir: Path, *, durable: bool = False) -> PgServer:
        """initdb a new cluster in ``base_dir`` (created; its parents must be traversable by
        the ``postgres`` user when running as root) and start it; returns once it accepts
        connections.  ``durable``: PostgreSQL's own defaults (fsync, synchronous commit), for
        measurements; tests do without them."""
        server = cls(base_dir, find_bin_dir(), free_port())
        server._initdb()
        server._pg_ctl_start(durable)
        return server

    def _argv(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bin_dir / tool), *args]
        if self._run_as is None:
            return argv
        return ["runuser", "-u", self._run_as.pw_name, "--", *argv]

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        # cwd: as postgres, the caller's cwd (e.g. /root) may be unreadable, and initdb
        # and pg_ctl complain when they cannot resolve it.
        return subprocess.run(
            self._argv(tool, *args),
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )

    def _initdb(self) -> None:
        self._run_as = server_user()
        if self._run_as is not None and shutil.which("runuser") is None:
            raise RuntimeError("running as root needs `runuser` (Debian package util-linux)")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        Path(self.host).mkdir(exist_ok=True)
        for d in (self.base_dir, Path(self.host)):
            if self._run_as is not None:
                os.chown(d, self._run_as.pw_uid, self._run_as.pw_gid)
            # Clients that are not the server's user still have to reach the socket.
            d.chmod(0o755)
        done = self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-U",
            _SUPERUSER,
            # Throwaway cluster: nothing gained by waiting for its files to reach the disk.
            "--no-sync",
        )
        if done.returncode != 0:
            hint = ""
            if self._run_as is not None:
                hint = f" (as {self._run_as.pw_name}: every parent of {self.base_dir} must let it through)"
            raise RuntimeError(f"initdb failed ({done.returncode}) in {self.base_dir}{hint}:\n{done.stderr}")

    def _pg_ctl_start(self, durable: bool) -> None:
        # pg_ctl hands -o to /bin/sh, hence the quoting of the socket path.
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-p {self.port}",
                f"-k {shlex.quote(self.host)}",
                # Durability is worthless for a server that dies with the test session.
                *(
                    []
                    if durable
                    else ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
                ),
                # Room for tests that open many connections at once.
                "-c max_connections=300",
                "-c shared_buffers=128MB",
            ]
        )
        done = self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
                f"--- {self.log_path} (tail) ---\n{self._log_tail()}"
            )

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(unreadable: {e})"

    def stop(self) -> None:
        """Stop the server at once (no checkpoint: the data is thrown away); a no-op when it
        is not running."""
        done = self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        if done.returncode == 0:
            return
        # pg_ctl status exits 3 when no server runs there, 4 when there is no data directory.
        status = self._run("pg_ctl", "-D", str(self.data_dir), "status").returncode
        if status not in (3, 4):
            raise RuntimeError(f"pg_ctl stop failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def dsn(self, dbname: str = "postgres", *, schema: str | None = None) -> str:
        """A libpq connection string over the unix socket, as the superuser; with ``schema``,
        the session's search_path is that schema alone."""
        return self._conninfo(self.host, dbname, schema)

    def tcp_dsn(self, dbname: str = "postgres", *, schema: str | None = None) -> str:
        """As :meth:`dsn`, over TCP to 127.0.0.1."""
        return self._conninfo("127.0.0.1", dbname, schema)

    def _conninfo(self, host: str, dbname: str, schema: str | None) -> str:
        params: dict[str, str | int] = {"host": host, "port": self.port, "user": _SUPERUSER, "dbname": dbname}
        if schema is not None:
            params["options"] = _search_path_option(schema)
        return make_conninfo("", **params)

    def fresh_schema(self, name: str) -> str:
        """Create schema ``name`` (sanitized by :func:`sanitize_schema`) in database postgres
        if missing; returns the :meth:`dsn` whose search_path is that schema."""
        schema = sanitize_schema(name)
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        return self.dsn(schema=schema)

    def drop_schema(self, name: str) -> None:
        """Drop schema ``name`` (sanitized as by :meth:`fresh_schema`) and all it holds."""
        schema = sanitize_schema(name)
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            # A connection a test leaked mid-transaction would otherwise hang the teardown
            # until pytest's timeout; failing names the problem.
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

    def psql(self, query: str, dbname: str = "postgres") -> str:
        """Run ``query`` through the psql binary (unaligned, tuples only) and return its output;
        for poking at the server while debugging."""
        done = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.dsn(dbname),
                "-c",
                query,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout
