"""Per-volume compression and encryption at rest through a real FUSE mount.

A marker written (compressible and not) into an encrypted volume must appear in
no file of the daemon's chunk store, while the same marker in a plain,
uncompressed volume does (so the search can fail).  Reads give the bytes back,
also after ``dfs key rotate`` and a daemon restart; identical content in two
encrypted volumes is stored twice (unrelated chunk ids), within one volume once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dfs.core import codec
from tests.conftest import Daemon, Mount, needs_fuse, wait_for
from tests.conftest import admin_ok as admin

pytestmark = [needs_fuse, pytest.mark.fuse]

MARKER = b"DFS-AT-REST-MARKER-5f1c2e9a"


def compressible() -> bytes:
    return (MARKER + b" lorem ipsum " * 8 + b"\n") * 30_000  # ~3.9 MiB: one block and a bit


def incompressible() -> bytes:
    return b"".join(os.urandom(4000) + MARKER for _ in range(1500))  # ~6 MiB: two blocks


def store_holds(d: Daemon, needle: bytes) -> bool:
    return any(needle in p.read_bytes() for p in d.chunk_files())


def write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def encrypted_chunks(d: Daemon) -> int:
    return sum(codec.header_info(p.read_bytes()).encrypted for p in d.chunk_files())


def test_encrypted_volume_hides_data_at_rest(daemon: Daemon, tmp_path: Path) -> None:
    key_file = daemon.data_dir / "master.key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_bytes()) == 32
    admin(daemon, "POST", "/storage/volumes", {"name": "plain", "compression": "none"})
    admin(daemon, "POST", "/storage/volumes", {"name": "secret", "encryption": True})
    admin(daemon, "POST", "/storage/volumes", {"name": "secret2", "encryption": True, "compression": "none"})
    mount = Mount(daemon, tmp_path / "mnt")
    mount.start()
    try:
        mnt = mount.path
        (mnt / "secret" / "sub").mkdir()
        files = {
            mnt / "secret" / "sub" / "c.txt": compressible(),
            mnt / "secret" / "r.bin": incompressible(),
            mnt / "secret2" / "c.txt": compressible(),
            mnt / "secret" / "small.txt": MARKER * 10,  # would be inline in a plain volume
        }
        for path, data in files.items():
            write(path, data)
        assert not store_holds(daemon, MARKER)
        assert encrypted_chunks(daemon) >= 4
        # The control: the same bytes in a plain, uncompressed volume are there to find.
        write(mnt / "plain" / "c.txt", compressible())
        assert store_holds(daemon, MARKER)
        for path, data in files.items():
            assert path.read_bytes() == data

        # Identical content: stored again in another encrypted volume, not again in the same one.
        same = os.urandom(1 << 20)
        before = set(daemon.chunk_files())
        write(mnt / "secret" / "same1", same)
        one = set(daemon.chunk_files()) - before
        write(mnt / "secret" / "same2", same)
        assert set(daemon.chunk_files()) - before == one and len(one) == 1  # dedup within the volume
        write(mnt / "secret2" / "same", same)
        two = set(daemon.chunk_files()) - before - one
        write(mnt / "plain" / "same", same)
        three = set(daemon.chunk_files()) - before - one - two
        assert len(two) == 1 and len(three) == 1  # three volumes, three unrelated ids

        rotated = json.loads(daemon.cli("key", "rotate", "--json").stdout)
        assert rotated["rewrapped"] == 2
        assert (daemon.data_dir / "master.key.old").exists()
        status = daemon.cli("key", "status").stdout
        assert rotated["master_fingerprint"] in status and "Losing the master key" in status
    finally:
        mount.stop()

    daemon.stop()
    daemon.start()
    again = Mount(daemon, tmp_path / "mnt2")
    again.start()
    try:
        for path, data in files.items():
            assert (again.path / path.relative_to(mnt)).read_bytes() == data
        assert (again.path / "secret2" / "same").read_bytes() == same
        out = json.loads(daemon.cli("status", "--json").stdout)
        by_name = {v["name"]: v for v in out["volumes"]}
        assert by_name["secret"]["encryption"] and not by_name["plain"]["encryption"]
        assert by_name["plain"]["compression"] == "none"
    finally:
        again.stop()
    daemon.assert_clean()


def test_policy_changes_apply_to_new_writes(daemon: Daemon, tmp_path: Path) -> None:
    admin(daemon, "POST", "/storage/volumes", {"name": "vol", "compression": "none"})
    mount = Mount(daemon, tmp_path / "mnt")
    mount.start()
    try:
        vol = mount.path / "vol"
        write(vol / "before", compressible())
        assert store_holds(daemon, MARKER)
        admin(daemon, "PUT", "/storage/volumes/vol", {"encryption": True, "compression_level": 9})
        # Writers learn the new policy within a ring refresh (2 s): poll with a deadline.
        n = iter(range(1000))

        def new_writes_encrypted() -> bool:
            old = set(daemon.chunk_files())
            name = vol / f"after{next(n)}"
            write(name, compressible() + name.name.encode())
            new = set(daemon.chunk_files()) - old
            return bool(new) and all(codec.header_info(p.read_bytes()).encrypted for p in new)

        wait_for(new_writes_encrypted, 20, "writes into vol to be encrypted")
        assert (vol / "before").read_bytes() == compressible()  # old chunks untouched and readable
        admin(daemon, "PUT", "/storage/volumes/vol", {"encryption": False})

        def new_writes_plain() -> bool:
            old = set(daemon.chunk_files())
            name = vol / f"plain{next(n)}"
            write(name, compressible() + name.name.encode())
            new = set(daemon.chunk_files()) - old
            return bool(new) and not any(codec.header_info(p.read_bytes()).encrypted for p in new)

        wait_for(new_writes_plain, 20, "writes into vol to be plain again")
        for p in vol.iterdir():  # encrypted and plain files alike
            assert p.read_bytes().startswith(MARKER)
    finally:
        mount.stop()
    daemon.assert_clean()


@pytest.mark.slow
def test_secondary_mounts_use_the_primarys_keys(tmp_path: Path) -> None:
    """Only the metadata primary holds the master key: a mount of a secondary gets the data
    keys through it (keys.volumes is forwarded) and both nodes' copies stay encrypted."""
    from tests.cluster.test_replication import loopback_cluster

    conf = '[cluster]\nreplicas = 2\nconsistency = "strong"\n'
    with loopback_cluster(tmp_path, 2, conf, seeds=False) as (n1, n2):
        assert (n1.data_dir / "master.key").exists() and not (n2.data_dir / "master.key").exists()
        admin(n1, "POST", "/storage/volumes", {"name": "secret", "encryption": True, "compression": "none"})
        mount = Mount(n2, tmp_path / "mnt")
        mount.start()
        try:
            data = incompressible()
            write(mount.path / "secret" / "f", data)
            assert (mount.path / "secret" / "f").read_bytes() == data
        finally:
            mount.stop()
        for d in (n1, n2):
            assert d.chunk_files() and not store_holds(d, MARKER)
        again = Mount(n1, tmp_path / "mnt1")
        again.start()
        try:
            assert (again.path / "secret" / "f").read_bytes() == data
        finally:
            again.stop()
        n1.assert_clean()
