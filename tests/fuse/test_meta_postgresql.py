"""The real-mount tests that drive metadata hardest, again with the namespace in PostgreSQL.

The metadata unit suite runs on both engines (tests/unit/test_metadata*.py); these
take the same engine through the daemon, a real mount and ordinary tools: the
functions are test_posix's own, collected here a second time against this
module's ``daemon`` fixture (``[meta] engine = "postgresql"``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, Mount, free_port, needs_fuse
from tests.fuse.test_meta_backup import _check_tree, _only_orphans, _restore, _write_tree
from tests.fuse.test_posix import (  # noqa: F401 - collected again here, on PostgreSQL
    test_cp_a_and_diff,
    test_data_survives_daemon_restart,
    test_errors_are_errnos,
    test_fsync_durable_after_sigkill,
    test_git_init_commit_clone_fsck,
    test_hard_links_and_nlink,
    test_readdir_large_directory,
    test_rename_noreplace_and_exchange,
    test_rename_over_existing,
    test_rsync_twice_transfers_nothing,
    test_sqlite_wal_integrity,
    test_tar_roundtrip,
    test_two_mounts_see_closed_files,
    test_unlink_while_open,
    test_xattrs,
)
from tests.pg import PgServer

pytestmark = [needs_fuse, pytest.mark.fuse]


def pg_daemon(tmp_path: Path, dsn: str) -> Daemon:
    return Daemon(tmp_path / "var", free_port(), meta_conf=f'engine = "postgresql"\ndsn = "{dsn}"\n')


@pytest.fixture
def daemon(tmp_path: Path, pg_dsn: str) -> Iterator[Daemon]:
    d = pg_daemon(tmp_path, pg_dsn)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def test_no_meta_db_and_status_names_the_engine(daemon: Daemon, tmp_path: Path) -> None:
    m = Mount(daemon, tmp_path / "mnt")
    m.start()
    try:
        (m.path / "d").mkdir()
        (m.path / "d" / "f").write_bytes(os.urandom(200_000))
    finally:
        m.stop()
    assert not (daemon.data_dir / "meta.db").exists()
    assert "postgresql" in daemon.cli("status").stdout
    daemon.assert_clean()


def test_a_single_host_moves_from_sqlite_to_postgresql(tmp_path: Path, pg_dsn: str) -> None:
    """The move the README describes: dump the SQLite metadata, load it into PostgreSQL."""
    d = Daemon(tmp_path / "var", free_port())
    d.start()
    m = Mount(d, tmp_path / "mnt")
    m.start()
    try:
        tree = _write_tree(m.path, "moved", 10)
    finally:
        m.stop()
    dump_file = tmp_path / "meta.dump"
    d.cli("meta", "dump", "--output", str(dump_file))
    d.stop()
    moved = pg_daemon(tmp_path, pg_dsn)  # same data dir, now [meta] engine = "postgresql"
    res = moved.cli("meta", "load", str(dump_file), check=False)
    assert res.returncode == 0, res.stderr
    assert "postgresql" in res.stdout and "password" not in res.stdout
    (moved.data_dir / "meta.db").rename(moved.data_dir / "meta.db.old")  # not used any more
    moved.start()
    m = Mount(moved, tmp_path / "mnt")
    m.start()
    try:
        _check_tree(m.path, tree)
        (m.path / "moved" / "new").write_bytes(b"after the move")
    finally:
        m.stop()
    try:
        moved.assert_clean()
    finally:
        moved.stop()


def test_a_lost_postgresql_database_is_restored_from_a_backup(tmp_path: Path, pg_server: PgServer) -> None:
    schema = "restore_target"
    dsn = pg_server.fresh_schema(schema)
    try:
        d = pg_daemon(tmp_path, dsn)
        d.start()
        m = Mount(d, tmp_path / "mnt")
        m.start()
        try:
            before = _write_tree(m.path, "before", 8)
            made = json.loads(d.cli("meta", "backup", "--json").stdout)
            assert made["backup"]["rows"] > 8
            _write_tree(m.path, "after", 2)  # not in the backup
        finally:
            m.stop()
        d.stop()
        pg_server.drop_schema(schema)  # the database is gone
        pg_server.fresh_schema(schema)
        res = _restore(d, "--latest")
        assert res.returncode == 0, res.stderr
        d.start()
        m.start()
        try:
            _check_tree(m.path, before)
            assert not (m.path / "after").exists()
        finally:
            m.stop()
        _only_orphans(d)  # the files written after the backup left unreferenced chunks, kept
        d.stop()
    finally:
        pg_server.drop_schema(schema)
