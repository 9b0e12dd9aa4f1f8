"""Namespace change notices: how a daemon keeps its mounts' caches from outliving a change.

A mount's kernel caches names and attributes for the entry/attribute timeout,
and the mount answers some lookups from memory (mount/dirs.py).  Changes made
through the same mount update those caches as they happen; changes made
through S3, the admin API or another mount of the same daemon would stay
invisible until the caches expire.  So the daemon keeps a record of what
changed and its mounts long-poll it (``ns.changes``), invalidating what they
cache as each change arrives.

The RPC layer only answers requests, so the record is a bounded ring of
:class:`Change` notices, each numbered (``seq``), and a mount asks for
"everything after my cursor".  Asking with a cursor also acknowledges every
change up to it: the mount asks again only after it has applied the answer.
That lets a change wait, before it is answered, until every attached mount
has applied it, so "visible at once" holds for whoever made the change as
soon as their call returns (:meth:`ChangeLog.waiting_on`).

Three rules keep that wait from costing more than a round trip:

- A mount never waits for itself, and is never told of its own changes (its
  kernel and caches learnt of them from the replies).  Clients are told
  apart by their RPC connection (``origin``).
- A change never waits for a mount that has a change of its own in progress
  (``busy``): that mount's kernel may hold the very directory lock its
  invalidation needs until its own call returns, which could be waiting for
  us - a deadlock.  Its invalidation still arrives, just not synchronously.
- A mount that does not acknowledge within the daemon's bound is "lagging"
  and not waited for again until it catches up with the ring's head.

A cursor older than the ring (the mount fell behind by more than its
capacity) or from another daemon run (the ``epoch`` changed: a restart, a
failover) gets a ``reset``: the mount must drop everything it caches.

Which notices an operation produces is decided here too (:func:`changes_of`),
from the operation name and arguments as both the metadata oplog rows and the
RPC calls carry them (the positions this reads are the same in both).

Pure bookkeeping: no I/O, time is passed in.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dfs.core.namespace import ROOT_INO

__all__ = [
    "ALL",
    "ATTR",
    "DATA",
    "ENTRY",
    "NEW",
    "Answer",
    "Batch",
    "Change",
    "ChangeLog",
    "changes_of",
    "is_known",
]

#: A name that did not exist appeared in directory ``ino`` (a reader holds no entry for it
#: to drop: only the directory's attributes changed).
NEW = "new"
#: Names in directory ``ino`` were added, removed or replaced.  ``names`` is one name, or a
#: path below ``ino`` each of whose steps may have changed (when the daemon could not resolve
#: the directories in between: the reader walks it).
ENTRY = "entry"
#: The attributes of inode ``ino`` changed (mode, owner, times, xattrs, link count).
ATTR = "attr"
#: The contents of inode ``ino`` changed (and with them its size and times).
DATA = "data"
#: Anything may have changed (a repair): drop every cache.
ALL = "all"
KINDS = frozenset({NEW, ENTRY, ATTR, DATA, ALL})

DEFAULT_CAPACITY = 16384
DEFAULT_MAX_SUBSCRIBERS = 1024

# Operations (oplog rows and RPC methods) that change nothing a mount caches.  An operation
# not named here or below counts as ALL: a new kind of change is never silently missed.
_NO_EFFECT = frozenset(
    {
        "release",
        "remark_step",  # chunks' replication factors: nothing a mount shows
        "open_events",
        "end_session",
        "session_heartbeat",
        "expire_sessions",
        "gc_collect",
        "sync",
        "counts",
        "claim_orphans",
        "update_volume",
        "adopt_volume",
        "volume_key_create",
        "volume_keys_rewrap",
        "put_node",
        "delete_node",
        "register_node",
        "set_node",
        "remove_node",
        "s3_key_put",
        "s3_key_delete",
        "admin_token_put",
        "admin_token_delete",
        "s3_bucket_own",
        "s3_grant",
        "s3_revoke_grant",
        "set_quota",  # quota limits: no mount caches them (the xattr view and df ask each time)
        "clear_quota",
        # Trash entries live outside the namespace mounts show (the moves into trash are
        # logged as the unlink, rename or put_object that made them).
        "trash_empty",
        "trash_expire",
        "versioning_set",  # a bucket's versioning status: nothing a mount caches
        "objlock_config_set",  # a bucket's object lock defaults: nothing a mount caches either
        # A snapshot copied in batches grows outside the namespace (snapshot-builds/) until
        # snapshot_create publishes it.
        "snapshot_build_batch",
        "snapshot_build_abort",
    }
)
# Operations whose first two arguments are the directory and the name they make (failing if
# it exists) or remove.
_MAKE_OPS = frozenset({"mknod", "mkdir", "symlink", "create"})
_REMOVE_OPS = frozenset({"unlink", "rmdir", "remove_tree"})

# Operations handled one by one in _changes_of.
_OTHER_OPS = frozenset(
    {
        "link",
        "rename",
        "setattr",
        "commit_write",
        "open",
        "setxattr",
        "removexattr",
        "objlock_retention_set",
        "objlock_hold_set",
        "make_dirs",
        "remove_empty_parents",
        "put_object",
        "snapshot",
        "snapshot_build",
        "snapshot_create",
        "snapshot_delete",
        "snapshot_restore",
        "snapshot_restore_path",
        "snapshot_clone",
        "create_volume",
        "delete_volume",
        "fsck_repair",
        "trash_restore",
        "versions_delete",
        "once",
    }
)

#: ``resolve(directory, name)``: the inode now at that name, or None.
Resolver = Callable[[int, bytes], int | None]


@dataclass(frozen=True, slots=True)
class Change:
    kind: str
    ino: int = 0
    names: tuple[bytes, ...] = ()

    def to_wire(self) -> list[Any]:
        return [self.kind, self.ino, list(self.names)]

    @classmethod
    def from_wire(cls, raw: Any) -> Change:
        kind, ino, names = raw
        if kind not in KINDS or not isinstance(ino, int) or not all(isinstance(n, bytes) for n in names):
            raise ValueError(f"malformed change {raw!r:.100}")
        return cls(str(kind), ino, tuple(names))


def is_known(op: str) -> bool:
    """Whether this module knows what ``op`` changes (an unknown one counts as ALL)."""
    return op in _NO_EFFECT or op in _MAKE_OPS or op in _REMOVE_OPS or op in _OTHER_OPS


def changes_of(op: str, args: Sequence[Any], resolve: Resolver | None = None) -> list[Change]:
    """The notices an operation that succeeded produces.  ``resolve`` (the daemon that holds
    the metadata) turns paths into one notice per directory they pass through."""
    try:
        return _changes_of(op, args, resolve)
    except (IndexError, KeyError, TypeError, ValueError, AttributeError):
        # Arguments of a shape this does not know: say "anything changed" rather than nothing.
        return [Change(ALL)]


def _changes_of(op: str, args: Sequence[Any], resolve: Resolver | None) -> list[Change]:
    if op in _NO_EFFECT:
        return []
    if op == "once":  # meta.once (request_id, retried, method, args): what the method changes
        method = args[2]
        inner = method.removeprefix("meta.") if isinstance(method, str) else ""
        if inner in ("", "once", method):
            raise ValueError("meta.once wraps another metadata call")
        return _changes_of(inner, args[3], resolve)
    if op in _MAKE_OPS:
        return [_entry(args[0], args[1], NEW)]
    if op in _REMOVE_OPS:
        return [_entry(args[0], args[1])]
    if op == "link":
        return [_entry(args[1], args[2], NEW), Change(ATTR, int(args[0]))]
    if op == "rename":
        return [_entry(args[0], args[1]), _entry(args[2], args[3])]
    if op == "setattr":
        # RPC: (ino, {field: value}); oplog: [ino, mode, uid, gid, size, atime, mtime].
        size = args[1].get("size") if isinstance(args[1], dict) else args[4]
        return [Change(ATTR if size is None else DATA, int(args[0]))]
    if op == "commit_write":
        return [Change(DATA, int(args[0]))]
    if op == "open":
        return [Change(DATA, int(args[0]))] if args[2] else []  # (ino, session, truncate, read)
    if op in ("setxattr", "removexattr"):
        return [Change(ATTR, int(args[0]))]
    if op in ("objlock_retention_set", "objlock_hold_set"):  # [bucket, ino, ...]: its lock xattr
        return [Change(ATTR, int(args[1]))]
    if op == "make_dirs":  # every step existed already or is new
        return _path(int(args[0]), [bytes(n) for n in args[1]], resolve, NEW, NEW)
    if op == "remove_empty_parents":
        return _path(int(args[0]), [bytes(n) for n in args[1]], resolve, ENTRY, ENTRY)
    if op == "put_object":  # directories as make_dirs; the object may replace a file
        return _path(int(args[0]), [*(bytes(n) for n in args[1]), bytes(args[2])], resolve, NEW, ENTRY)
    if op == "snapshot":
        return [_entry(args[1], args[2], NEW)]
    if op in ("snapshot_build", "snapshot_create"):
        # [volume, name, origin, /.snapshots, /.snapshots/VOLUME(, top)]: a build makes the two
        # directories if missing, its publication the snapshot's name.
        made = [_entry(ROOT_INO, b".snapshots", NEW), _entry(args[3], str(args[0]).encode(), NEW)]
        return made + [_entry(args[4], str(args[1]).encode(), NEW)] if op == "snapshot_create" else made
    if op == "snapshot_delete":  # [volume, name, /.snapshots/VOLUME or None, top]
        return [] if args[2] is None else [_entry(args[2], str(args[1]).encode())]
    if op == "snapshot_restore":
        # The volume's whole subtree was replaced: mounts drop what they cache (a rollback is rare).
        return [Change(ALL)]
    if op == "snapshot_restore_path":  # [volume, name, path, dst_parent, dst_name, top]
        return [_entry(args[3], args[4], NEW)]
    if op == "snapshot_clone":  # [volume, name, new volume, top]
        return [_entry(ROOT_INO, str(args[2]).encode(), NEW)]
    if op == "trash_restore":  # [volume, id, parent, name, ino]: the file is back under a name
        return [_entry(args[2], args[3], NEW)]
    if op == "versions_delete":  # [bucket, key, version id]: the key's file may go or come back
        return _path(int(args[0]), bytes(args[1]).split(b"/"), resolve, ENTRY, ENTRY)
    if op == "create_volume":
        return [_entry(ROOT_INO, str(args[0]).encode(), NEW)]
    if op == "delete_volume":
        remove_dir = len(args) < 2 or bool(args[1])
        return [_entry(ROOT_INO, str(args[0]).encode())] if remove_dir else []
    return [Change(ALL)]


def _entry(parent: Any, name: Any, kind: str = ENTRY) -> Change:
    if not isinstance(name, bytes):
        raise TypeError("names are bytes")
    return Change(kind, int(parent), (name,))


def _path(parent: int, names: list[bytes], resolve: Resolver | None, steps: str, last: str) -> list[Change]:
    """A path whose steps may each have appeared or gone (``steps`` and ``last``: how).
    Resolved now, after the change, so a walk stops at the first step that is gone: dropping
    that name drops all below it.  Unresolved it travels whole, and the reader walks it."""
    if not names:
        return []
    if resolve is None:
        return [Change(steps if steps == last else ENTRY, parent, tuple(names))]
    out = []
    here: int | None = parent
    for i, name in enumerate(names):
        assert here is not None
        out.append(Change(last if i == len(names) - 1 else steps, here, (name,)))
        here = resolve(here, name)
        if here is None:
            break
    return out


@dataclass(frozen=True, slots=True)
class Answer:
    """What ``ns.changes`` answers: the daemon run (``epoch``), the cursor to ask with next,
    whether to drop every cache instead, and the changes.

    ``complete``: every change to the namespace reaches this daemon's notices (it holds the
    metadata, or follows the shared op-log), not only those made through it.  A mount may then
    let its kernel cache names and attributes for long: a notice drops them.  Missing in the
    answers of older daemons, which counts as False."""

    epoch: str
    cursor: int
    reset: bool
    changes: list[Change]
    complete: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "reset": self.reset,
            "changes": [c.to_wire() for c in self.changes],
            "complete": self.complete,
        }

    @classmethod
    def from_wire(cls, raw: Any) -> Answer:
        try:
            return cls(
                str(raw["epoch"]),
                int(raw["cursor"]),
                bool(raw["reset"]),
                [Change.from_wire(c) for c in raw["changes"]],
                raw.get("complete") is True,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed ns.changes answer: {exc}") from None


@dataclass(frozen=True, slots=True)
class Batch:
    """An answer to "what changed after my cursor": the changes (not the reader's own), the
    cursor to ask with next, and whether the reader must drop everything instead."""

    changes: list[Change]
    cursor: int
    reset: bool = False


@dataclass
class _Subscriber:
    acked: int
    seen: float
    polling: int = 0
    lagging: bool = False


@dataclass
class ChangeLog:
    """The ring of recent changes and who has applied how much of it."""

    capacity: int = DEFAULT_CAPACITY
    max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS
    epoch: str = field(default_factory=lambda: secrets.token_hex(8))
    #: The seq of the newest change (0: none yet).
    head: int = 0

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("capacity must be >= 1")
        # Change number s lives in slot s % capacity while it is among the newest `capacity`.
        self._slots: list[tuple[int | None, Change] | None] = [None] * self.capacity
        self._subs: dict[int, _Subscriber] = {}
        self._busy: Counter[int] = Counter()

    # -- the ring ------------------------------------------------------------------------
    @property
    def oldest(self) -> int:
        """The seq of the oldest change still held (head + 1 when none is)."""
        return max(1, self.head - self.capacity + 1)

    def append(self, changes: Iterable[Change], origin: int | None) -> int:
        """Record changes made by ``origin`` (None: not a subscriber); returns the new head."""
        for change in changes:
            self.head += 1
            self._slots[self.head % self.capacity] = (origin, change)
        return self.head

    def read(self, cursor: int, *, reader: int | None, limit: int) -> Batch:
        """Up to ``limit`` changes after ``cursor``, leaving out ``reader``'s own (the cursor
        moves past those too)."""
        if cursor > self.head or cursor < self.oldest - 1:
            return Batch([], self.head, reset=True)
        out: list[Change] = []
        seq = cursor
        while seq < self.head:
            slot = self._slots[(seq + 1) % self.capacity]
            assert slot is not None
            origin, change = slot
            if origin is None or origin != reader:
                if len(out) >= limit:
                    break
                out.append(change)
            seq += 1
        return Batch(out, seq)

    # -- subscribers -----------------------------------------------------------------------
    def attach(self, sub: int, cursor: int, now: float) -> None:
        """``sub`` starts a poll, having applied every change up to ``cursor``."""
        s = self._subs.get(sub)
        if s is None:
            if len(self._subs) >= self.max_subscribers:
                oldest = min(self._subs, key=lambda k: self._subs[k].seen)
                del self._subs[oldest]
            s = self._subs[sub] = _Subscriber(acked=0, seen=now)
        s.polling += 1
        s.seen = now
        self.ack(sub, cursor)

    def ack(self, sub: int, cursor: int) -> None:
        s = self._subs.get(sub)
        if s is None:
            return
        s.acked = max(s.acked, min(cursor, self.head))
        if s.acked >= self.head:
            s.lagging = False  # caught up: worth waiting for again

    def detach(self, sub: int, now: float, *, gone: bool) -> None:
        """A poll by ``sub`` ended; ``gone``: its connection is (its changes no longer matter)."""
        s = self._subs.get(sub)
        if s is None:
            return
        if gone:
            del self._subs[sub]
            return
        s.polling = max(0, s.polling - 1)
        s.seen = now

    def prune(self, now: float, idle_s: float) -> None:
        """Forget subscribers that have not polled for ``idle_s`` (their mount went away
        between polls)."""
        for sub in [k for k, s in self._subs.items() if not s.polling and now - s.seen > idle_s]:
            del self._subs[sub]

    def subscribers(self) -> int:
        return len(self._subs)

    def listeners_besides(self, origin: int | None) -> bool:
        """Whether a subscriber other than ``origin`` is known.  Safe from another thread than
        the one changing the log: the keys are copied in one C-level step, under the GIL."""
        subs = set(self._subs)
        subs.discard(origin)  # type: ignore[arg-type]
        return bool(subs)

    def busy(self, origin: int) -> None:
        """``origin`` has a change in progress (see the module docstring)."""
        self._busy[origin] += 1

    def idle(self, origin: int) -> None:
        self._busy[origin] -= 1
        if self._busy[origin] <= 0:
            del self._busy[origin]

    def news(self, origin: int | None) -> bool:
        """Whether changes just made by ``origin`` are worth waking the polls for: some
        subscriber other than ``origin`` has not read them, or ``origin``'s own unread ones
        fill half the ring (its cursor moves past them only when it reads, and one that falls
        out of the ring must drop everything).  A mount alone on its daemon is then not
        woken for each change it made itself."""
        if origin is None:
            return True
        return any(k != origin or self.head - s.acked >= self.capacity // 2 for k, s in self._subs.items())

    def waiting_on(self, seq: int, origin: int | None) -> list[int]:
        """The subscribers change ``seq`` (made by ``origin``) still waits for."""
        return [
            k
            for k, s in self._subs.items()
            if k != origin and not s.lagging and k not in self._busy and s.acked < seq
        ]

    def give_up_on(self, subs: Iterable[int]) -> None:
        """Stop waiting for these until they catch up."""
        for k in subs:
            s = self._subs.get(k)
            if s is not None:
                s.lagging = True
