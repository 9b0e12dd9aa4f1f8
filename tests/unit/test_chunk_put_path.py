"""The chunk store's write path: O_DIRECT for large blobs (and the fall-back when a filesystem
refuses it), and what a put has made durable by the time it returns.

The durability checks watch the real system calls (``os.fsync``, ``os.link``) of a real store
on the test's filesystem: what each fsync'd descriptor names is read from /proc.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.chunks import ChunkStore
from dfs.core import codec

KEY = b"p" * 32
BIG = 2 * 1024 * 1024 + 1234  # above the O_DIRECT threshold, not a multiple of the alignment


def make(size: int) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    return codec.chunk_id(KEY, data), codec.encode(data, level=1)


def on_disk(store: ChunkStore, cid: bytes) -> bytes:
    return store.path_of(cid).read_bytes()


def watch_opens(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append((str(path), flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    return opened


def test_large_blobs_go_direct_and_read_back_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ChunkStore(tmp_path)
    opened = watch_opens(monkeypatch)
    big_id, big = make(BIG)
    small_id, small = make(10_000)
    assert store.put(big_id, big)
    assert store.put(small_id, small)
    monkeypatch.undo()
    temp_flags = {p.rsplit("/", 1)[-1].split(".")[0]: f for p, f in opened if "/tmp/" in p}
    direct = getattr(os, "O_DIRECT", 0)
    if store._use_direct:  # this filesystem takes O_DIRECT (ext4, XFS, btrfs)
        assert temp_flags[big_id.hex()] & direct
    assert not temp_flags[small_id.hex()] & direct
    # Exact size (the padding was cut off), checksum sound, content as sent.
    assert on_disk(store, big_id) == big
    assert store.get(big_id) == big
    assert codec.decode(store.get(big_id)) == codec.decode(big)
    assert on_disk(store, small_id) == small


def test_a_filesystem_refusing_o_direct_at_open_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = ChunkStore(tmp_path)
    real_open = os.open

    def no_direct(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_direct)
    ids = [make(BIG) for _ in range(2)]
    for cid, blob in ids:
        assert store.put(cid, blob)
    monkeypatch.undo()
    assert not store._use_direct
    assert sum("refuses O_DIRECT" in r.getMessage() for r in caplog.records) <= 1
    for cid, blob in ids:
        assert on_disk(store, cid) == blob
    assert list((tmp_path / "chunks" / "tmp").iterdir()) == []


def test_a_filesystem_refusing_o_direct_at_write_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ChunkStore(tmp_path)
    if not store._use_direct:
        pytest.skip("no O_DIRECT on this platform")
    real_write = os.write
    refused = 0

    def refuse_direct(fd: int, data: Any) -> int:
        nonlocal refused
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused += 1
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", refuse_direct)
    cid, blob = make(BIG)
    assert store.put(cid, blob)
    monkeypatch.undo()
    assert refused == 1
    assert not store._use_direct
    assert on_disk(store, cid) == blob


def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every fsync (what the descriptor names) and link, in order."""
    events: list[tuple[str, str]] = []
    real_fsync: Callable[[int], None] = os.fsync
    real_link = os.link

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        real_link(src, dst, *args, **kwargs)
        events.append(("link", str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    return events


@pytest.mark.parametrize("size", [BIG, 10_000])
def test_a_put_returns_only_once_data_entry_and_new_directories_are_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    store = ChunkStore(tmp_path)
    chunks = str((tmp_path / "chunks").resolve())
    events = _record_syncs(monkeypatch)
    cid, blob = make(size)
    assert store.put(cid, blob)
    final = str(store.path_of(cid).resolve())
    mid, top = os.path.dirname(final), os.path.dirname(os.path.dirname(final))
    kinds = list(events)
    # The data is durable before it gets its name ...
    data_sync = next(i for i, (k, p) in enumerate(kinds) if k == "fsync" and "/chunks/tmp/" in p)
    link_at = kinds.index(("link", str(store.path_of(cid))))
    assert data_sync < link_at
    # ... and the name, with both new directories above it, before put returns.
    after = kinds[link_at + 1 :]
    assert ("fsync", mid) in after
    assert ("fsync", top) in after
    assert ("fsync", chunks) in after
    assert after.index(("fsync", mid)) < after.index(("fsync", top))

    # A second chunk in the same (now durable) directory syncs only its data and its entry.
    events.clear()
    _, other = make(size)
    other_id = cid[:2] + os.urandom(30)  # the store files a blob under whatever id it is given
    assert store.put(other_id, other)
    synced = [p for k, p in events if k == "fsync"]
    assert len(synced) == 2
    assert "/chunks/tmp/" in synced[0]
    assert synced[1] == mid
    monkeypatch.undo()
    assert on_disk(store, cid) == blob
    assert on_disk(store, other_id) == other
