"""Several daemons changing the same directories at once through one PostgreSQL database.

Each thread is one daemon's metadata store (its own connection); they run
create/link/unlink/rename/mkdir/rmdir storms on shared directories.  PostgreSQL
runs every change SERIALIZABLE and the store retries conflicts, so afterwards
nlink counts, refcounts, the tree shape and every other fsck invariant hold,
and no directory became its own ancestor.
"""

from __future__ import annotations

import random
import threading

import pytest

from daemon.meta import MetaStore
from dfs.core.errors import DfsError, InternalError
from dfs.core.namespace import ROOT_INO, BlockRef

BS = 4096
DAEMONS = 4
OPS_EACH = 250
NAMES = [b"n%d" % i for i in range(12)]


def cid(n: int) -> bytes:
    return n.to_bytes(4, "big") * 8


def storm(store: MetaStore, dirs: list[int], seed: int, errors: list[str]) -> None:
    rnd = random.Random(seed)
    session = f"s{seed}"
    for _ in range(OPS_EACH):
        op = rnd.choice(("create", "create", "mkdir", "link", "unlink", "rename", "rename", "rmdir", "write"))
        a, b = rnd.choice(dirs), rnd.choice(dirs)
        x, y = rnd.choice(NAMES), rnd.choice(NAMES)
        try:
            if op == "create":
                ino = store.create(a, x, 0o644, 0, 0, session).ino
                store.release(ino, session)
            elif op == "mkdir":
                store.mkdir(a, x, 0o755, 0, 0)
            elif op == "link":
                store.link(store.lookup(a, x).ino, b, y)
            elif op == "unlink":
                store.unlink(a, x)
            elif op == "rmdir":
                store.rmdir(a, x)
            elif op == "rename":
                store.rename(a, x, b, y, 0)
            else:
                ino = store.lookup(a, x).ino
                refs = [BlockRef(0, cid(rnd.randrange(8)), BS, BS)]
                store.commit_write(
                    ino, size=BS, mtime_ns=1, blocks=refs, inline=None, chunk_exists=lambda c: True
                )
        except InternalError as exc:  # an engine error that is not a POSIX answer: a defect
            errors.append(f"{op}: {exc}")
        except DfsError:
            pass  # ENOENT, EEXIST, ENOTEMPTY, EISDIR, EINVAL (a directory into itself), ...


@pytest.mark.slow
def test_daemons_storming_shared_directories_keep_every_invariant(pg_dsn: str) -> None:
    stores = [MetaStore(pg_dsn, engine="postgresql", block_size=BS) for _ in range(DAEMONS)]
    try:
        first = stores[0]
        top = [first.mkdir(ROOT_INO, b"shared%d" % i, 0o755, 0, 0).ino for i in range(3)]
        dirs = [ROOT_INO, *top]
        errors: list[str] = []
        threads = [
            threading.Thread(target=storm, args=(s, dirs, seed, errors)) for seed, s in enumerate(stores)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        for s in stores:
            s.end_session(f"s{stores.index(s)}")
        assert first.fsck(lambda c: True, repair=False) == []
        # Every store sees the same tree.
        listings = {tuple(e.name for e in s.readdir(ROOT_INO, 0, 1000)) for s in stores}
        assert len(listings) == 1
    finally:
        for s in stores:
            s.close()
