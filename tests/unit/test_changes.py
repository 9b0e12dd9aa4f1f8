"""Change notices: the ring and its cursors (dfs/core/changes.py), the daemon's long poll and
acknowledgement waits (daemon/changefeed.py), and how a mount applies them (mount/coherence.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from daemon.changefeed import ChangeFeed
from daemon.service.handlers import NOTICED_METHODS as _META_METHODS
from dfs.client.cluster import Client, ClusterInfo
from dfs.core.changes import ALL, ATTR, DATA, ENTRY, NEW, Change, ChangeLog, changes_of, is_known
from dfs.core.config import MountConfig
from dfs.core.errors import NotFound, Unavailable
from dfs.core.namespace import ROOT_INO, Attr
from dfs.net import rpc
from mount.coherence import Coherence, KernelOp, blocks, kernel_ops
from mount.fs import Operations


def entry(parent: int, *names: bytes) -> Change:
    return Change(ENTRY, parent, names)


def new(parent: int, *names: bytes) -> Change:
    return Change(NEW, parent, names)


# ----------------------------------------------------------------------------- the ring


def test_read_returns_changes_after_the_cursor_in_order() -> None:
    log = ChangeLog(capacity=8)
    assert log.append([entry(1, b"a"), Change(ATTR, 5)], origin=None) == 2
    assert log.append([Change(DATA, 6)], origin=None) == 3
    batch = log.read(0, reader=7, limit=10)
    assert batch.changes == [entry(1, b"a"), Change(ATTR, 5), Change(DATA, 6)]
    assert (batch.cursor, batch.reset) == (3, False)
    assert log.read(2, reader=7, limit=10).changes == [Change(DATA, 6)]
    nothing = log.read(3, reader=7, limit=10)
    assert (nothing.changes, nothing.cursor, nothing.reset) == ([], 3, False)


def test_read_honours_the_limit() -> None:
    log = ChangeLog(capacity=8)
    log.append([Change(ATTR, i) for i in range(5)], origin=None)
    first = log.read(0, reader=1, limit=2)
    assert first.changes == [Change(ATTR, 0), Change(ATTR, 1)]
    assert first.cursor == 2
    assert log.read(first.cursor, reader=1, limit=2).changes == [Change(ATTR, 2), Change(ATTR, 3)]


def test_a_readers_own_changes_are_skipped_but_passed() -> None:
    log = ChangeLog(capacity=8)
    log.append([Change(ATTR, 1)], origin=7)
    log.append([Change(ATTR, 2)], origin=8)
    log.append([Change(ATTR, 3)], origin=7)
    mine = log.read(0, reader=7, limit=10)
    assert (mine.changes, mine.cursor) == ([Change(ATTR, 2)], 3)
    assert log.read(0, reader=8, limit=10).changes == [Change(ATTR, 1), Change(ATTR, 3)]
    only_own = log.read(2, reader=7, limit=10)
    assert (only_own.changes, only_own.cursor) == ([], 3)


def test_the_ring_is_bounded_and_a_cursor_that_fell_out_is_reset() -> None:
    log = ChangeLog(capacity=4)
    log.append([Change(ATTR, i) for i in range(10)], origin=None)
    assert len(log._slots) == 4
    assert log.oldest == 7
    held = log.read(6, reader=None, limit=10)  # 7..10 are all still held
    assert (held.reset, [c.ino for c in held.changes]) == (False, [6, 7, 8, 9])
    lost = log.read(5, reader=None, limit=10)  # 6 was overwritten
    assert (lost.reset, lost.changes, lost.cursor) == (True, [], 10)
    future = log.read(11, reader=None, limit=10)  # a cursor from another daemon run
    assert (future.reset, future.cursor) == (True, 10)


def test_subscribers_are_bounded() -> None:
    log = ChangeLog(capacity=4, max_subscribers=2)
    log.attach(1, 0, now=1.0)
    log.attach(2, 0, now=2.0)
    log.attach(3, 0, now=3.0)
    assert log.subscribers() == 2
    log.append([Change(ATTR, 1)], origin=None)
    assert sorted(log.waiting_on(1, None)) == [2, 3]  # the least recently seen went


def test_waiting_on_skips_the_origin_busy_lagging_and_acked() -> None:
    log = ChangeLog(capacity=16)
    for sub in (1, 2, 3, 4):
        log.attach(sub, 0, now=0.0)
    seq = log.append([Change(ATTR, 9)], origin=1)
    assert sorted(log.waiting_on(seq, 1)) == [2, 3, 4]
    log.ack(2, seq)
    log.busy(3)
    assert log.waiting_on(seq, 1) == [4]
    log.give_up_on([4])
    assert log.waiting_on(seq, 1) == []
    log.idle(3)
    assert log.waiting_on(seq, 1) == [3]
    # A lagging subscriber is waited for again once it caught up with the head.
    seq2 = log.append([Change(ATTR, 9)], origin=None)
    log.ack(4, seq)
    assert 4 not in log.waiting_on(seq2, None)
    log.ack(4, seq2)
    seq3 = log.append([Change(ATTR, 9)], origin=None)
    assert 4 in log.waiting_on(seq3, None)


def test_news_is_for_other_subscribers_or_a_pile_of_own_changes() -> None:
    log = ChangeLog(capacity=8)
    assert not log.news(1)  # nobody subscribed
    assert log.news(None)  # a change of no subscriber's is news to all
    log.attach(1, 0, now=0.0)
    log.append([Change(ATTR, 1)], origin=1)
    assert not log.news(1)  # only its own subscriber: nobody to tell
    log.append([Change(ATTR, 2), Change(ATTR, 3), Change(ATTR, 4)], origin=1)
    assert log.news(1)  # half the ring unread: its cursor must move before it falls out
    log.ack(1, log.head)
    assert not log.news(1)
    log.attach(2, log.head, now=0.0)
    log.append([Change(ATTR, 5)], origin=1)
    assert log.news(1) and log.news(2)


def test_detach_and_prune() -> None:
    log = ChangeLog(capacity=4)
    log.attach(1, 0, now=0.0)
    log.attach(2, 0, now=0.0)
    log.detach(1, 5.0, gone=True)  # its connection closed
    log.detach(2, 5.0, gone=False)
    assert log.subscribers() == 1
    log.prune(10.0, idle_s=60.0)
    assert log.subscribers() == 1
    log.prune(70.0, idle_s=60.0)
    assert log.subscribers() == 0


# ----------------------------------------------------------------------------- what changes


def resolver(tree: dict[tuple[int, bytes], int]) -> Any:
    return lambda parent, name: tree.get((parent, name))


@pytest.mark.parametrize(
    ("op", "args", "expected"),
    [
        ("mkdir", [5, b"d", 0o755, 0, 0, 9], [new(5, b"d")]),
        ("create", [5, b"f", 0o644, 0, 0, "s", 9], [new(5, b"f")]),
        ("symlink", [5, b"l", b"target", 0, 0, 9], [new(5, b"l")]),
        ("unlink", [5, b"f"], [entry(5, b"f")]),
        ("rmdir", [5, b"d"], [entry(5, b"d")]),
        ("remove_tree", [5, b"d"], [entry(5, b"d")]),
        ("link", [9, 6, b"l"], [new(6, b"l"), Change(ATTR, 9)]),
        ("rename", [5, b"a", 6, b"b", 0], [entry(5, b"a"), entry(6, b"b")]),
        ("setattr", [9, 0o600, None, None, None, None, None], [Change(ATTR, 9)]),
        ("setattr", [9, None, None, None, 10, None, None], [Change(DATA, 9)]),
        ("setattr", [9, {"mode": 0o600}], [Change(ATTR, 9)]),  # as the RPC call carries it
        ("setattr", [9, {"size": 0}], [Change(DATA, 9)]),
        ("commit_write", [9, 10, 0, [], None, None], [Change(DATA, 9)]),
        ("open", [9, "s", True, False], [Change(DATA, 9)]),
        ("open", [9, "s", False, True], []),
        ("setxattr", [9, b"user.a", b"v", 0], [Change(ATTR, 9)]),
        ("removexattr", [9, b"user.a"], [Change(ATTR, 9)]),
        ("snapshot", [3, 5, b"snap", 0, 0, 11], [new(5, b"snap")]),
        ("create_volume", ["vol", {}, 0o755, 0, 0, 12], [new(ROOT_INO, b"vol")]),
        ("delete_volume", ["vol", True], [entry(ROOT_INO, b"vol")]),
        ("delete_volume", ["vol"], [entry(ROOT_INO, b"vol")]),
        ("delete_volume", ["vol", False], []),
        ("trash_restore", ["vol", 9, 5, b"f", 9], [new(5, b"f")]),  # back under its name
        ("trash_empty", ["vol", None, 3], []),
        ("trash_expire", [3], []),
        ("release", [9, "s"], []),
        ("gc_collect", [[]], []),
        ("open_events", [[["open", 9]], "s"], []),
        ("fsck_repair", ["x"], [Change(ALL)]),
        ("once", [b"r" * 16, False, "meta.mkdir", [5, b"d", 0o755, 0, 0]], [new(5, b"d")]),  # forwarded
        ("once", [b"r" * 16, True, "meta.rename", [5, b"a", 6, b"b", 0]], [entry(5, b"a"), entry(6, b"b")]),
        ("once", [b"r" * 16, False, "meta.once", [b"r" * 16, False, "meta.mkdir", []]], [Change(ALL)]),
        ("once", [b"r" * 16, False, 7, []], [Change(ALL)]),
        ("something_new", [1], [Change(ALL)]),
        ("unlink", [5], [Change(ALL)]),  # arguments of an unknown shape
    ],
)
def test_changes_of(op: str, args: list[Any], expected: list[Change]) -> None:
    assert changes_of(op, args) == expected


def test_every_logged_and_forwarded_operation_is_classified() -> None:
    """A new oplog operation or metadata call must say what it changes in dfs/core/changes.py
    (unclassified, it would make every mount drop all its caches each time)."""
    package = Path(__file__).parents[2] / "daemon" / "meta"
    source = "".join(p.read_text() for p in sorted(package.glob("*.py")))
    logged = set(re.findall(r'self\._log\(\s*now,\s*"(\w+)"', source))
    assert {"mkdir", "put_object", "fsck_repair", "s3_key_put"} <= logged  # the pattern still finds them
    forwarded = {m.removeprefix("meta.") for m in _META_METHODS}
    assert sorted(op for op in logged | forwarded if not is_known(op)) == []


def test_paths_are_resolved_where_the_metadata_is() -> None:
    tree = {(5, b"a"): 6, (6, b"b"): 7, (7, b"obj"): 8}
    args = [5, [b"a", b"b"], b"obj"]
    # Directories on the way are new or unchanged; the object may replace a file.
    assert changes_of("put_object", args, resolver(tree)) == [new(5, b"a"), new(6, b"b"), entry(7, b"obj")]
    assert changes_of("make_dirs", [5, [b"a", b"b"], 0o755, 0, 0, 7], resolver(tree)) == [
        new(5, b"a"),
        new(6, b"b"),
    ]
    # Without a resolver (a secondary) the path travels whole; the mount walks it.
    assert changes_of("put_object", args) == [entry(5, b"a", b"b", b"obj")]
    assert changes_of("make_dirs", [5, [b"a", b"b"], 0o755, 0, 0, 7]) == [new(5, b"a", b"b")]
    # A removal: the walk stops at the first step that is gone (dropping it drops all below).
    assert changes_of("remove_empty_parents", [5, [b"a", b"b"], 0], resolver({})) == [entry(5, b"a")]
    assert changes_of("make_dirs", [5, [], 0o755, 0, 0, 5], resolver(tree)) == []


def test_wire_round_trip() -> None:
    c = entry(5, b"a", b"b")
    assert Change.from_wire(c.to_wire()) == c
    with pytest.raises(ValueError, match="malformed"):
        Change.from_wire(["bogus", 1, []])


# ----------------------------------------------------------------------------- the daemon's feed


async def test_poll_waits_for_changes_and_skips_the_pollers_own() -> None:
    feed = ChangeFeed()
    first = await feed.poll(1, "", 0, 5.0)
    assert first["reset"] is True  # a new subscriber starts from the head
    epoch, cursor = first["epoch"], first["cursor"]
    answers: list[dict[str, Any]] = []

    async def poll() -> None:
        answers.append(await feed.poll(1, epoch, cursor, 5.0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.testing.wait_all_tasks_blocked()
        feed.record([Change(ATTR, 4)], origin=1)  # its own: no answer
        await trio.testing.wait_all_tasks_blocked()
        assert answers == []
        feed.record([Change(ATTR, 5)], origin=2)
    (answer,) = answers
    assert answer["changes"] == [Change(ATTR, 5).to_wire()]
    assert answer["cursor"] == 2 and answer["reset"] is False


async def test_a_lone_pollers_own_changes_do_not_wake_it() -> None:
    # A mount alone on its daemon: recording its own changes leaves its poll asleep, until
    # they would fill half the ring (then it wakes to move its cursor past them).
    feed = ChangeFeed(ChangeLog(capacity=8))
    epoch = (await feed.poll(1, "", 0, 5.0))["epoch"]
    woken = feed._appended
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.poll, 1, epoch, 0, 5.0)
        await trio.testing.wait_all_tasks_blocked()
        feed.record([Change(ATTR, 4)], origin=1)
        assert not woken.is_set()
        feed.record([Change(ATTR, 5), Change(ATTR, 6), Change(ATTR, 7)], origin=1)
        assert woken.is_set()
        await trio.testing.wait_all_tasks_blocked()
        assert feed.log.waiting_on(feed.log.head, None) == []  # it read and acknowledged them
        nursery.cancel_scope.cancel()


async def test_poll_times_out_empty(autojump_clock: trio.testing.MockClock) -> None:
    feed = ChangeFeed()
    epoch = (await feed.poll(1, "", 0, 1.0))["epoch"]
    start = trio.current_time()
    answer = await feed.poll(1, epoch, 0, 3.0)
    assert answer["changes"] == [] and answer["reset"] is False
    assert trio.current_time() - start == pytest.approx(3.0)


async def test_settle_waits_for_every_subscriber_to_acknowledge() -> None:
    feed = ChangeFeed(ack_wait_s=100.0)
    epoch = (await feed.poll(1, "", 0, 0))["epoch"]
    await feed.poll(2, "", 0, 0)
    settled = trio.Event()

    async def change() -> None:
        seq = feed.record([entry(1, b"x")], origin=None)
        assert seq == 1
        await feed.settle(seq, None)
        settled.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(change)
        await trio.testing.wait_all_tasks_blocked()
        await feed.poll(1, epoch, 1, 0)  # subscriber 1 applied it
        await trio.testing.wait_all_tasks_blocked()
        assert not settled.is_set()
        await feed.poll(2, epoch, 1, 0)
    assert settled.is_set()


async def test_settle_does_not_wait_for_the_origin_or_a_busy_subscriber() -> None:
    feed = ChangeFeed(ack_wait_s=100.0)
    await feed.poll(1, "", 0, 0)
    await feed.poll(2, "", 0, 0)
    with feed.busy(2):
        seq = feed.record([entry(1, b"x")], origin=1)
        assert seq is not None
        with trio.fail_after(1):
            await feed.settle(seq, 1)


async def test_settle_gives_up_on_a_silent_subscriber(autojump_clock: trio.testing.MockClock) -> None:
    feed = ChangeFeed(ack_wait_s=1.0)
    await feed.poll(1, "", 0, 0)
    seq = feed.record([entry(1, b"x")], origin=None)
    assert seq is not None
    start = trio.current_time()
    await feed.settle(seq, None)
    assert trio.current_time() - start == pytest.approx(1.0)
    seq = feed.record([entry(1, b"y")], origin=None)
    assert seq is not None
    await feed.settle(seq, None)  # lagging now: not waited for again
    assert trio.current_time() - start == pytest.approx(1.0)


async def test_a_cancelled_poll_detaches_its_subscriber() -> None:
    feed = ChangeFeed(ack_wait_s=100.0)
    epoch = (await feed.poll(1, "", 0, 0))["epoch"]
    with trio.move_on_after(0.01):
        await feed.poll(1, epoch, 0, 10.0)
    assert feed.log.subscribers() == 0
    seq = feed.record([entry(1, b"x")], origin=None)
    assert seq is not None
    with trio.fail_after(1):
        await feed.settle(seq, None)


async def test_connections_are_told_apart(tmp_path: Path) -> None:
    async def whoami() -> int | None:
        return rpc.current_connection()

    server = rpc.RpcServer({"whoami": whoami})
    async with trio.open_nursery() as nursery:
        listeners = await rpc.open_listeners(f"unix:{tmp_path}/rpc.sock")
        await nursery.start(server.serve, listeners)
        async with (
            rpc.open_client(f"unix:{tmp_path}/rpc.sock") as a,
            rpc.open_client(f"unix:{tmp_path}/rpc.sock") as b,
        ):
            first, again, other = await a.call("whoami"), await a.call("whoami"), await b.call("whoami")
        nursery.cancel_scope.cancel()
    assert isinstance(first, int) and first == again and other not in (None, first)
    assert rpc.current_connection() is None


# ----------------------------------------------------------------------------- the mount's side


def test_kernel_ops_only_for_what_the_kernel_knows() -> None:
    known = {1: 1, 5: 5, 9: 9}
    changes = [entry(5, b"a"), entry(6, b"b"), Change(ATTR, 9), Change(DATA, 9), Change(ATTR, 7)]
    ops = kernel_ops([*changes, entry(5, b"a"), new(1, b"n")], known.get, known)
    assert ops == [
        KernelOp(5, b"a"),
        KernelOp(5),
        KernelOp(9),
        KernelOp(9, attr_only=False),
        KernelOp(1),  # a new name: only its directory's attributes
    ]
    assert [blocks(op) for op in ops] == [True, False, False, True, False]
    assert kernel_ops([Change(ALL)], known.get, known) == [
        KernelOp(1, attr_only=False),
        KernelOp(5, attr_only=False),
        KernelOp(9, attr_only=False),
    ]


def attr(ino: int, *, mode: int = 0o40755) -> Attr:
    return Attr(ino, mode, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0)


class FakeMeta:
    """The metadata calls a mount's change notices may make."""

    def __init__(self, tree: dict[tuple[int, bytes], int]) -> None:
        self.tree = tree
        self.lookups: list[tuple[int, bytes]] = []

    async def call(self, method: str, *args: Any) -> Any:
        assert method == "meta.lookup", method
        self.lookups.append((args[0], args[1]))
        ino = self.tree.get((args[0], args[1]))
        if ino is None:
            raise NotFound("no such entry")
        return list(attr(ino))


def mount_ops(tree: dict[tuple[int, bytes], int], *, root_ino: int = ROOT_INO) -> Operations:
    info = ClusterInfo("n", 1 << 20, 4096, 1, b"k" * 32, "", 60.0)
    return Operations(Client(FakeMeta(tree), info, local_reads=False), MountConfig(), root_ino=root_ino)


async def test_apply_drops_the_mounts_caches_and_tells_the_kernel() -> None:
    ops = mount_ops({})
    told: list[list[KernelOp]] = []
    coherence = Coherence(ops, kernel=told.append)
    ops.known.made(attr(5))
    ops.known.made(attr(9))
    ops.lookups.update({5: 1, 9: 1})
    ops.seen[9] = (1, 1)
    ops.no_capability[9] = 1e18
    await coherence.apply([new(5, b"made")])
    assert ops.known.attr(5) is None and ops.known.attr(9) is not None
    ops.known.made(attr(5))
    await coherence.apply([entry(5, b"gone")])
    assert ops.known.attr(5) is None
    await coherence.apply([Change(DATA, 9)])
    assert ops.known.attr(9) is None
    assert 9 not in ops.seen and 9 not in ops.no_capability
    assert told == [
        [KernelOp(5)],
        [KernelOp(5)],  # told on the event loop: attributes alone never block
        [KernelOp(5, b"gone")],  # and in a worker thread, after
        [KernelOp(9, attr_only=False)],
    ]
    ops.seen[3] = (1, 1)
    await coherence.apply([Change(ALL)])
    assert ops.seen == {}


async def test_a_mounted_subdirectory_maps_inodes() -> None:
    ops = mount_ops({}, root_ino=20)
    coherence = Coherence(ops, kernel=lambda todo: None)
    assert coherence.kernel_ino(20) == 1  # the mounted directory is the kernel's root
    assert coherence.kernel_ino(ROOT_INO) is None  # above it: invisible here
    assert coherence.kernel_ino(21) is None  # never looked up
    ops.lookups[21] = 1
    assert coherence.kernel_ino(21) == 21


async def test_paths_are_walked_while_the_kernel_knows_the_directories() -> None:
    tree = {(1, b"a"): 6, (6, b"b"): 7}
    ops = mount_ops(tree)
    coherence = Coherence(ops, kernel=lambda todo: None)
    ops.lookups[6] = 1
    assert await coherence.expand(entry(1, b"a", b"b", b"obj")) == [
        entry(1, b"a"),
        entry(6, b"b"),
        entry(7, b"obj"),  # 7 is unknown to the kernel, so the walk ends here
    ]
    meta = ops.client.rpc
    assert isinstance(meta, FakeMeta)
    assert meta.lookups == [(1, b"a"), (6, b"b")]
    assert await coherence.expand(entry(1, b"gone", b"x")) == [entry(1, b"gone")]
    assert await coherence.expand(new(1, b"a", b"b")) == [new(1, b"a"), new(6, b"b")]


class ScriptedMeta:
    """Answers ns.changes from a script, then parks (as a long poll would)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.asked: list[tuple[Any, ...]] = []
        self.drained = trio.Event()

    async def call(self, method: str, *args: Any) -> Any:
        assert method == "ns.changes"
        self.asked.append(args)
        if not self.answers:
            self.drained.set()
            await trio.sleep_forever()
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_the_poll_resumes_after_errors_and_resets() -> None:
    script = ScriptedMeta(
        [
            {"epoch": "e1", "cursor": 3, "reset": True, "changes": []},
            {"epoch": "e1", "cursor": 4, "reset": False, "changes": [Change(ATTR, 9).to_wire()]},
            Unavailable("daemon restarting"),
            {"epoch": "e2"},  # malformed: retried like an error
            {"epoch": "e2", "cursor": 0, "reset": True, "changes": []},
        ]
    )
    info = ClusterInfo("n", 1 << 20, 4096, 1, b"k" * 32, "", 60.0)
    ops = Operations(Client(script, info, local_reads=False), MountConfig())
    ops.seen[9] = (1, 1)
    ops.seen[10] = (1, 1)
    coherence = Coherence(ops, wait_s=7.0, kernel=lambda todo: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(coherence.run)
        with trio.fail_after(10):  # one retry after the error: 50 ms
            await script.drained.wait()
        nursery.cancel_scope.cancel()
    assert [a[:2] for a in script.asked] == [("", 0), ("e1", 3), ("e1", 4), ("e1", 4), ("e1", 4), ("e2", 0)]
    assert all(a[2] == 7.0 for a in script.asked)
    assert ops.seen == {}  # the ATTR kept 10's entry; the second reset dropped it
