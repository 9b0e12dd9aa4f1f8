"""SQLite's log copied back into the database file from a connection of its own
(daemon/meta/checkpoints.py), so the metadata thread never stalls on a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.meta import MetaStore
from daemon.meta.checkpoints import WalCheckpointer
from dfs.core.errors import InternalError
from dfs.core.namespace import ROOT_INO


def test_the_checkpointer_copies_the_log_back_while_the_writer_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    store = MetaStore(path, block_size=4096)
    store._db.execute("PRAGMA wal_autocheckpoint=0")  # only the checkpointer copies pages back
    for i in range(40):
        store.mkdir(ROOT_INO, b"d%d" % i, 0o755, 0, 0)
    checkpointer = WalCheckpointer(str(path))
    try:
        assert checkpointer.step() > 40  # every frame of the 40 transactions
        # The writer finds the log copied back and starts it over: the next transaction's frames
        # are all it holds, so the log stays small without the writer ever checkpointing.
        store.mkdir(ROOT_INO, b"after", 0o755, 0, 0)
        frames = checkpointer.step()
        assert 0 < frames < 40
        assert [d.name for d in store.readdir(ROOT_INO, 0, 100)][-1] == b"after"
    finally:
        checkpointer.close()
        store.close()


def test_a_failing_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-db").write_bytes(b"x" * 4096)
    checkpointer = WalCheckpointer(str(tmp_path / "not-a-db"))
    with pytest.raises(InternalError, match="checkpointing"):
        checkpointer.step()
    checkpointer.close()
