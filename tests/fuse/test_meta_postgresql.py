"""The real-mount tests that drive metadata hardest, again with the namespace in PostgreSQL.

The metadata unit suite runs on both engines (tests/unit/test_metadata*.py); these
take the same engine through the daemon, a real mount and ordinary tools: the
functions are test_posix's own, collected here a second time against this
module's ``daemon`` fixture (``[meta] engine = "postgresql"``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, Mount, free_port, needs_fuse
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
