"""Directory stamps (MetaStore.stamped, what the handlers of directory-changing calls answer
with, see mount/dirs.py) on both engines: the ctime each directory had just before the change,
read by the change itself, and its attributes just after."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.meta import MetaStore
from dfs.core.errors import Exists
from dfs.core.namespace import ROOT_INO
from tests.metastores import open_meta, trace

pytestmark = pytest.mark.usefixtures("meta_engine")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetaStore]:
    s = open_meta(tmp_path / "meta.db", block_size=4096)
    yield s
    assert s.fsck(lambda c: True, repair=False) == []
    s.close()


def check(store: MetaStore, answer: list[object], before: dict[int, int]) -> None:
    _, stamps = answer
    assert isinstance(stamps, list)
    for ino, ctime_before, after in stamps:
        assert ctime_before == before[ino]
        assert after == store.getattr(ino)
        assert after.ctime_ns > ctime_before


def test_each_kind_of_change_stamps_the_directories_it_changed(store: MetaStore) -> None:
    a = store.mkdir(ROOT_INO, b"a", 0o755, 0, 0).ino
    b = store.mkdir(ROOT_INO, b"b", 0o755, 0, 0).ino
    f = store.create(a, b"f", 0o644, 0, 0, "s").ino
    calls = [
        ([a], store.mkdir, (a, b"d", 0o755, 0, 0)),
        ([a], store.create, (a, b"f0", 0o644, 0, 0, "s")),
        ([a], store.symlink, (a, b"l", b"f", 0, 0)),
        ([a], store.mknod, (a, b"p", 0o10644, 0, 0, 0)),
        ([b], store.link, (f, b, b"h")),
        ([a, b], store.rename, (a, b"f", b, b"g", 0)),
        ([a], store.rename, (a, b"l", a, b"l2", 0)),
        ([b], store.unlink, (b, b"h")),
        ([a], store.rmdir, (a, b"d")),
        ([a], functools.partial(store.setattr, mode=0o700), (a,)),
    ]
    for dirs, fn, args in calls:
        before = {d: store.getattr(d).ctime_ns for d in dirs}
        check(store, store.stamped(dirs, fn, *args), before)
    store.end_session("s")


def test_stamps_cost_one_statement_after_the_change(store: MetaStore) -> None:
    a = store.mkdir(ROOT_INO, b"a", 0o755, 0, 0).ino
    b = store.mkdir(ROOT_INO, b"b", 0o755, 0, 0).ino
    store.create(a, b"f", 0o644, 0, 0, "s")
    seen: list[str] = []
    trace(store, seen.append)
    store.stamped([a, b], store.rename, a, b"f", b, b"g", 0)
    reads = [s for s in seen if s.lstrip().upper().startswith("SELECT") and "FROM inodes WHERE ino IN" in s]
    assert len(reads) == 1  # both directories' "after", together; "before" came with the rename
    store.end_session("s")


def test_a_directory_the_change_did_not_read_has_no_before(store: MetaStore) -> None:
    a = store.mkdir(ROOT_INO, b"a", 0o755, 0, 0).ino
    _, [[ino, before, after]] = store.stamped([a], store.getattr, ROOT_INO)
    assert (ino, before, after) == (a, -1, store.getattr(a))


def test_a_failed_change_stamps_nothing_and_leaves_no_trace(store: MetaStore) -> None:
    a = store.mkdir(ROOT_INO, b"a", 0o755, 0, 0).ino
    store.mkdir(a, b"d", 0o755, 0, 0)
    with pytest.raises(Exists):
        store.stamped([a], store.mkdir, a, b"d", 0o755, 0, 0)
    assert store._ctime_seen is None
