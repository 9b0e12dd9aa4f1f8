"""Caches the mount keeps coherent with change notices (mount/fs.py, mount/coherence.py).

The mount tells the kernel to cache names and attributes for COHERENT_TIMEOUT_S only while
the daemon says its notices cover every change, and remembers each name it hands out, so
that a reset (daemon restart, failover, a cursor that fell out of the ring) drops them all.
It also answers xattr probes of inodes known to have none (made here, where nothing could
be inherited) without asking the daemon.
"""

from __future__ import annotations

from typing import Any

import pyfuse3
import pytest
import trio

from dfs.client.cluster import Client, ClusterInfo
from dfs.core.changes import ALL, ATTR, ENTRY, Answer, Change
from dfs.core.config import MountConfig
from dfs.core.errors import NoAttribute, Unavailable
from dfs.core.namespace import RENAME_EXCHANGE, ROOT_INO, Attr, FileMap
from dfs.core.quotas import QUOTA_XATTR_PREFIX
from mount.attrs import AttrCache
from mount.coherence import Coherence, KernelOp, kernel_ops
from mount.files import OpenFile
from mount.fs import _XATTR_CACHE_MAX, COHERENT_TIMEOUT_S, Operations

_INFO = ClusterInfo("n", 1 << 20, 4096, 1, b"k" * 32, "", 60.0)


def file_attr(ino: int) -> Attr:
    return Attr(ino, 0o100644, 1, 0, 0, 0, 10, 8, 0, 0, 0, 0)


class ScriptedChanges:
    """Answers ns.changes from a script, then parks (as a long poll would)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.drained = trio.Event()

    async def call(self, method: str, *args: Any) -> Any:
        assert method == "ns.changes"
        if not self.answers:
            self.drained.set()
            await trio.sleep_forever()
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_answer_complete_travels_and_defaults_to_false() -> None:
    assert Answer.from_wire(Answer("e", 3, False, [], True).to_wire()).complete
    assert not Answer.from_wire({"epoch": "e", "cursor": 3, "reset": False, "changes": []}).complete
    # Only a real True counts (a daemon that says anything else is not trusted with long caches).
    assert not Answer.from_wire(
        {"epoch": "e", "cursor": 3, "reset": False, "changes": [], "complete": 1}
    ).complete


def test_timeouts_are_long_only_while_coherent_and_never_for_files_open_here() -> None:
    ops = Operations(Client(ScriptedChanges([]), _INFO, local_reads=False), MountConfig())
    e = ops._entry(file_attr(7))
    assert (e.entry_timeout, e.attr_timeout) == (1.0, 1.0)
    ops.coherent = True
    e = ops._entry(file_attr(7))
    assert (e.entry_timeout, e.attr_timeout) == (COHERENT_TIMEOUT_S, COHERENT_TIMEOUT_S)
    e = ops._entry(Attr(ROOT_INO, 0o40755, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    assert e.attr_timeout == 1.0  # a dead mount must not look alive from the kernel's cache
    ops.files[7] = OpenFile(7, FileMap(file_attr(7), None, []), ops.client, ops.cache, ops.budget)
    e = ops._entry(file_attr(7))
    assert (e.entry_timeout, e.attr_timeout) == (COHERENT_TIMEOUT_S, 1.0)  # settled at close
    # A timeout configured as 0 (no caching) stays 0.
    off = Operations(
        Client(ScriptedChanges([]), _INFO, local_reads=False),
        MountConfig(attr_timeout_s=0.0, entry_timeout_s=0.0),
    )
    off.coherent = True
    e = off._entry(file_attr(7))
    assert (e.entry_timeout, e.attr_timeout) == (0.0, 0.0)


def test_names_follow_renames_and_removals_made_here() -> None:
    ops = Operations(Client(ScriptedChanges([]), _INFO, local_reads=False), MountConfig())
    ops._looked_up(10, 1, b"a")
    ops._looked_up(11, 1, b"b")
    ops._looked_up(12, 2, b"c")
    ops._looked_up(1, 1, b"..")  # dot names are not entries the kernel can be told to drop
    ops._renamed(1, b"a", 2, b"c", 0)  # replaces c
    assert ops.names == {(1, b"b"): 11, (2, b"c"): 10}
    ops._renamed(1, b"b", 2, b"c", RENAME_EXCHANGE)
    assert ops.names == {(1, b"b"): 10, (2, b"c"): 11}
    ops.names.pop((1, b"b"))
    assert ops.names == {(2, b"c"): 11}


def test_names_of_forgotten_inodes_are_pruned() -> None:
    ops = Operations(Client(ScriptedChanges([]), _INFO, local_reads=False), MountConfig())
    for i in range(3000):
        ops._looked_up(100 + i, 1, b"n%d" % i)
    assert len(ops.names) == 3000
    ops.lookups.clear()  # the kernel forgot them all
    for i in range(1100):
        ops._looked_up(10_000 + i, 1, b"m%d" % i)
    assert len(ops.names) == 1100  # the 3,000 forgotten ones went
    assert all(ino in ops.lookups for ino in ops.names.values())


async def test_what_the_mount_keeps_per_inode_goes_when_the_kernel_forgets_it() -> None:
    """Per-inode state of inodes the kernel let go of is dropped, or bounded: kept, it grew by
    one entry per file ever opened or made here (a backup reading 10 million files: ~2 GB)."""
    ops = Operations(Client(ScriptedChanges([]), _INFO, local_reads=False), MountConfig())
    for i in range(3000):
        ops._looked_up(100 + i, 1, b"n%d" % i)
        ops.seen[100 + i] = (10, 0)  # what its page cache holds, as an open records it
    await ops.forget([(100 + i, 1) for i in range(2999)])
    assert ops.seen == {3099: (10, 0)}  # the kernel still knows this one
    for i in range(_XATTR_CACHE_MAX + 10):
        ops._no_capability(i)  # as a create does for each new file
    assert len(ops.no_capability) <= _XATTR_CACHE_MAX


def test_kernel_ops_for_a_reset_drop_every_known_name() -> None:
    known = {1: 1, 5: 5}
    ops = kernel_ops([Change(ALL)], known.get, known, [(1, b"a"), (5, b"b"), (6, b"c")])
    assert KernelOp(1, b"a") in ops and KernelOp(5, b"b") in ops
    assert all(op.ino != 6 for op in ops)  # a directory the kernel does not know holds nothing


async def test_coherent_follows_the_answers_and_a_reset_drops_the_names() -> None:
    script = ScriptedChanges(
        [
            {"epoch": "e1", "cursor": 3, "reset": True, "changes": [], "complete": True},
            Unavailable("daemon restarting"),
            {"epoch": "e2", "cursor": 0, "reset": True, "changes": [], "complete": True},
        ]
    )
    ops = Operations(Client(script, _INFO, local_reads=False), MountConfig())
    told: list[KernelOp] = []
    states: list[bool] = []

    def kernel(todo: list[KernelOp]) -> None:
        states.append(ops.coherent)
        told.extend(todo)

    coherence = Coherence(ops, wait_s=7.0, kernel=kernel)
    ops._looked_up(5, 1, b"dir")
    ops._looked_up(6, 5, b"file")
    async with trio.open_nursery() as nursery:
        await nursery.start(coherence.run)
        with trio.fail_after(10):
            await script.drained.wait()
        nursery.cancel_scope.cancel()
    assert KernelOp(1, b"dir") in told and KernelOp(5, b"file") in told
    assert states and not any(states)  # dropped while short timeouts were in force
    assert ops.coherent  # the last answer was complete


async def test_a_daemon_whose_notices_are_not_complete_keeps_timeouts_short() -> None:
    script = ScriptedChanges([{"epoch": "e1", "cursor": 3, "reset": True, "changes": []}])
    ops = Operations(Client(script, _INFO, local_reads=False), MountConfig())
    ops.coherent = True
    async with trio.open_nursery() as nursery:
        await nursery.start(Coherence(ops, kernel=lambda todo: None).run)
        with trio.fail_after(10):
            await script.drained.wait()
        nursery.cancel_scope.cancel()
    assert not ops.coherent


class XattrMeta:
    """A daemon whose inodes have no xattrs but ``acl_dirs``' default ACL; counts the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.acl_dirs: set[int] = set()
        self.next_ino = 100

    async def call(self, method: str, *args: Any) -> Any:
        self.calls.append(method)
        if method == "meta.listxattr":
            return [b"system.posix_acl_default"] if args[0] in self.acl_dirs else []
        if method == "meta.getxattr":
            raise NoAttribute("no such xattr")
        if method in ("meta.mkdir", "meta.create"):
            self.next_ino += 1
            mode = 0o40755 if method == "meta.mkdir" else 0o100644
            return [list(Attr(self.next_ino, mode, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0)), []]
        raise AssertionError(method)


class Ctx:
    uid = 0
    gid = 0
    pid = 0
    umask = 0o22


async def probe(ops: Operations, ino: int, name: bytes = b"system.posix_acl_access") -> None:
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.getxattr(ino, name, Ctx())  # type: ignore[arg-type]
    assert err.value.errno == 61  # ENODATA


async def test_xattr_probes_of_a_tree_made_here_need_no_calls() -> None:
    meta = XattrMeta()
    ops = Operations(Client(meta, _INFO, local_reads=False), MountConfig())
    top = (await ops.mkdir(5, b"top", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    assert meta.calls == ["meta.listxattr", "meta.mkdir"]  # 5's xattrs asked once
    sub = (await ops.mkdir(top, b"sub", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    _, entry = await ops.create(sub, b"f", 0o644, 0, Ctx())  # type: ignore[arg-type]
    meta.calls.clear()
    for ino in (top, sub, entry.st_ino):
        await probe(ops, ino)
        await probe(ops, ino, b"security.capability")
    assert meta.calls == []
    # Quota views appear without a notice: always asked.
    await probe(ops, top, QUOTA_XATTR_PREFIX + b"max_bytes")
    assert meta.calls == ["meta.getxattr"]


async def test_what_could_have_inherited_an_acl_is_asked() -> None:
    meta = XattrMeta()
    meta.acl_dirs.add(5)
    ops = Operations(Client(meta, _INFO, local_reads=False), MountConfig())
    top = (await ops.mkdir(5, b"top", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    meta.calls.clear()
    await probe(ops, top)  # 5 has a default ACL: top may have inherited one
    assert meta.calls == ["meta.getxattr"]


async def test_a_notice_or_a_setxattr_ends_the_knowledge_below_too() -> None:
    meta = XattrMeta()
    ops = Operations(Client(meta, _INFO, local_reads=False), MountConfig())
    coherence = Coherence(ops, kernel=lambda todo: None)
    top = (await ops.mkdir(5, b"top", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    sub = (await ops.mkdir(top, b"sub", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    leaf = (await ops.mkdir(sub, b"leaf", 0o755, Ctx())).st_ino  # type: ignore[arg-type]
    # Someone set a default ACL on top elsewhere, maybe just before sub was made in it.
    await coherence.apply([Change(ATTR, top)])
    meta.calls.clear()
    await probe(ops, top)
    await probe(ops, sub)
    assert meta.calls == ["meta.getxattr", "meta.getxattr"]
    await probe(ops, leaf)  # made in sub, which was known empty then and is still not dropped
    assert len(meta.calls) == 2
    ops.no_xattrs.pop(sub)  # as setxattr here does
    await probe(ops, leaf)
    assert len(meta.calls) == 3


# ----------------------------------------------------------------------------- getattr from memory


def test_attr_cache_never_keeps_an_answer_older_than_a_drop() -> None:
    cache = AttrCache(max_entries=3)
    cache.begin(7)
    cache.drop(7)  # a change landed while the fetch was in flight
    cache.end(7, file_attr(7))
    assert cache.get(7) is None
    cache.begin(7)
    cache.begin(7)
    cache.end(7, file_attr(7))
    assert cache.get(7) == file_attr(7)
    cache.clear()  # a reset, with one fetch still in flight
    cache.end(7, file_attr(7))
    assert cache.get(7) is None
    for ino in (1, 2, 3, 4):
        cache.begin(ino)
        cache.end(ino, file_attr(ino))
    assert len(cache) <= 3  # bounded


class RenameMeta:
    """setattr, rename and getattr of one file 10 in directory 1; counts getattr calls."""

    def __init__(self) -> None:
        self.getattrs = 0

    async def call(self, method: str, *args: Any) -> Any:
        if method == "meta.setattr":
            return [list(file_attr(10)._replace(mtime_ns=5, ctime_ns=6)), []]
        if method == "meta.rename":
            after = list(Attr(1, 0o40755, 2, 0, 0, 0, 0, 0, 0, 99, 99, 0))
            return [None, [[1, 6, after]]]
        if method == "meta.getattr":
            self.getattrs += 1
            return list(file_attr(10)._replace(mtime_ns=5, ctime_ns=99))
        raise AssertionError(method)


class MtimeOnly:
    """What setattr reads of pyfuse3.SetattrFields (whose fields cannot be set from Python)."""

    update_mode = update_uid = update_gid = update_atime = update_size = False
    update_mtime = True


async def test_getattr_after_a_rename_here_needs_no_call_while_coherent() -> None:
    meta = RenameMeta()
    ops = Operations(Client(meta, _INFO, local_reads=False), MountConfig())
    ops.coherent = True
    ops._looked_up(10, 1, b".f.tmp")
    entry = pyfuse3.EntryAttributes()
    entry.st_mtime_ns = 5
    await ops.setattr(10, entry, MtimeOnly(), None, Ctx())  # type: ignore[arg-type]
    await ops.rename(1, b".f.tmp", 1, b"f", 0, Ctx())  # type: ignore[arg-type]
    got = await ops.getattr(10, Ctx())  # type: ignore[arg-type]
    assert (got.st_mtime_ns, got.st_ctime_ns) == (5, 99)  # the rename's time, from its stamps
    assert meta.getattrs == 0
    assert ops.names == {(1, b"f"): 10}
    # Another mount removes the name: the inode's link count changed, ask again.
    await Coherence(ops, kernel=lambda todo: None).apply([Change(ENTRY, 1, (b"f",))])
    await ops.getattr(10, Ctx())  # type: ignore[arg-type]
    assert meta.getattrs == 1
    ops.coherent = False  # and never from memory without complete notices
    await ops.getattr(10, Ctx())  # type: ignore[arg-type]
    assert meta.getattrs == 2
