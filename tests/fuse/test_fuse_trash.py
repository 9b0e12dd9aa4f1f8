"""The per-volume trash through a real FUSE mount and the CLI: rm moves a file to its volume's
trash (gone from the volume, listed by `dfs trash list`, shown by `dfs status`), an open handle
keeps working, `dfs trash restore` brings it back with its content (refusing a taken name
unless --to is given), and `dfs trash empty` purges it so GC reclaims its chunks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, needs_fuse, wait_for
from tests.conftest import admin_ok as admin

pytestmark = [needs_fuse, pytest.mark.fuse]


def listed(d: Daemon, *args: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(d.cli("trash", "list", *args, "--json").stdout)
    return out


def test_rm_goes_to_trash_restore_and_empty(daemon: Daemon, mnt: Path) -> None:
    admin(daemon, "POST", "/storage/volumes", {"name": "data", "trash_days": 7})
    vol = mnt / "data"
    wait_for(vol.is_dir, timeout_s=10)
    (vol / "docs").mkdir()
    payload = os.urandom(3 * 1024 * 1024 + 17)
    victim = vol / "docs" / "big.bin"
    victim.write_bytes(payload)
    (vol / "keep.txt").write_text("keep\n")
    wait_for(lambda: len(daemon.chunk_files()) >= 1, timeout_s=10)
    chunks_with_file = len(daemon.chunk_files())
    used_before = json.loads(daemon.cli("quota", "get", "/data", "--json").stdout)["used_bytes"]

    # An open handle outlives the rm; the file leaves the volume (and its quota usage).
    with victim.open("rb") as held:
        victim.unlink()
        assert not victim.exists() and os.listdir(vol / "docs") == []
        assert held.read() == payload
    [entry] = listed(daemon, "data")
    assert entry["name"] == "big.bin" and entry["path"] == "/data/docs/big.bin"
    assert entry["size"] == len(payload)
    used_after = json.loads(daemon.cli("quota", "get", "/data", "--json").stdout)["used_bytes"]
    assert used_after == used_before - len(payload)
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert [(u["volume"], u["entries"], u["bytes"]) for u in status["trash"]] == [("data", 1, len(payload))]
    assert "trash data" in daemon.cli("status").stdout

    # Restore: back at its name with the same content.
    daemon.cli("trash", "restore", "data", str(entry["id"]))
    wait_for(victim.exists, timeout_s=10)
    assert victim.read_bytes() == payload
    assert listed(daemon) == []

    # A taken name is refused unless --to names another place.
    victim.unlink()
    victim.write_bytes(b"newer\n")
    [entry] = listed(daemon, "data")
    res = daemon.cli("trash", "restore", "data", str(entry["id"]), check=False)
    assert res.returncode != 0 and "--to" in res.stderr, res
    daemon.cli("trash", "restore", "data", str(entry["id"]), "--to", "/data/docs/older.bin")
    wait_for((vol / "docs" / "older.bin").exists, timeout_s=10)
    assert (vol / "docs" / "older.bin").read_bytes() == payload
    assert victim.read_bytes() == b"newer\n"

    # Empty: the entry is purged and GC reclaims its chunks.
    (vol / "docs" / "older.bin").unlink()
    assert len(listed(daemon, "data")) == 1
    assert len(daemon.chunk_files()) >= chunks_with_file  # still referenced from the trash
    out = json.loads(daemon.cli("trash", "empty", "data", "--json").stdout)
    assert out == {"purged": 1}
    assert listed(daemon, "data") == []
    daemon.cli("gc", "--now")
    wait_for(lambda: len(daemon.chunk_files()) < chunks_with_file, timeout_s=15)
    assert (vol / "keep.txt").read_text() == "keep\n"
    # fsck at teardown (the daemon fixture): trash rows, names and refcounts agree.
