"""Apply the daemon's change notices (dfs/core/changes.py) to this mount's caches.

One task in the mount's nursery long-polls ``ns.changes`` and, for each
change made elsewhere (S3, the admin API, another mount of the daemon), drops
what this mount and its kernel cache about it: the kernel's entry for a name,
its attributes and page cache for an inode, and the mount's own leases
(mount/dirs.py), open-file attributes and "no capability" answers.

The kernel is told in a worker thread: ``pyfuse3.invalidate_entry`` blocks
until requests on the same directory finish, and those need the event loop.
Only once the kernel has been told does the next poll acknowledge the
changes; the daemon holds the change's reply until then, which is what makes
it visible here at once.

The kernel only caches what this mount told it about, and everything below a
directory pins that directory: a change in a directory the kernel does not
know needs no kernel call (``Operations.lookups`` says which it knows).

A ``reset`` (the daemon restarted, failed over, or we fell too far behind)
drops every cache the mount has, and every name the mount handed to the
kernel (``Operations.names``), one by one.

While the daemon's answers say its notices are ``complete`` (it holds the
metadata), the mount lets the kernel cache names and attributes for long
(``Operations.coherent``, mount/fs.py); a failed poll ends that until the next
answer, which either carries what changed meanwhile or is a reset.

Errors never end the task (or the mount): it retries with backoff, and a
daemon without ``ns.changes`` leaves the mount as it was before this existed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace

import pyfuse3
import trio

from dfs.core.changes import ALL, ATTR, DATA, ENTRY, NEW, Change
from dfs.core.errors import DfsError, UnknownMethod
from dfs.core.namespace import ROOT_INO
from mount.fs import Operations

log = logging.getLogger("dfs.mount")

_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 2.0


@dataclass(frozen=True, slots=True)
class KernelOp:
    """Drop the kernel's entry ``name`` in directory ``ino``, or (no name) the cached
    attributes of ``ino`` and, unless ``attr_only``, its page cache.  Kernel inode numbers."""

    ino: int
    name: bytes | None = None
    attr_only: bool = True


def kernel_ops(
    changes: Iterable[Change],
    kernel_ino: Callable[[int], int | None],
    known: Collection[int],
    names: Iterable[tuple[int, bytes]] = (),
) -> list[KernelOp]:
    """What to tell the kernel for ``changes`` (single-name entries: see :meth:`Coherence.expand`).
    ``kernel_ino`` maps a daemon inode to the kernel's, None when the kernel cannot know it;
    ``known`` lists every daemon inode the kernel may know and ``names`` every (directory,
    name) it may cache (both for ALL)."""
    out: dict[KernelOp, None] = {}  # ordered, without repeats
    for change in changes:
        if change.kind == ALL:
            for ino in known:
                k = kernel_ino(ino)
                if k is not None:
                    out[KernelOp(k, attr_only=False)] = None
            for parent, name in names:
                k = kernel_ino(parent)
                if k is not None:
                    out[KernelOp(k, name)] = None
            continue
        k = kernel_ino(change.ino)
        if k is None:
            continue
        if change.kind == ENTRY:
            for name in change.names[:1]:
                out[KernelOp(k, name)] = None
            out[KernelOp(k)] = None  # the directory's times, size and link count changed too
        elif change.kind == NEW:
            # The kernel holds no entry for a name that did not exist (a failed lookup leaves
            # one it always asks again about): only the directory's attributes changed.
            out[KernelOp(k)] = None
        elif change.kind == ATTR:
            out[KernelOp(k)] = None
        elif change.kind == DATA:
            out[KernelOp(k, attr_only=False)] = None
    return list(out)


def blocks(op: KernelOp) -> bool:
    """Whether telling the kernel may wait for requests in progress (for the directory's lock,
    or for pages being read), which need the event loop: those go to a worker thread."""
    return op.name is not None or not op.attr_only


def invalidate(todo: list[KernelOp]) -> None:
    """Tell the kernel (see :func:`blocks`)."""
    for op in todo:
        try:
            if op.name is not None:
                pyfuse3.invalidate_entry(op.ino, op.name)
            else:
                pyfuse3.invalidate_inode(op.ino, op.attr_only)
        except FileNotFoundError:
            pass  # the kernel does not (or no longer) cache it
        except OSError as exc:
            log.debug("invalidating %s failed: %s", op, exc)


class Coherence:
    def __init__(
        self,
        ops: Operations,
        *,
        wait_s: float = 20.0,
        kernel: Callable[[list[KernelOp]], None] = invalidate,
    ) -> None:
        self.ops = ops
        self.wait_s = wait_s
        self._kernel = kernel
        self.applied = 0  # changes applied (for tests and debugging)

    def kernel_ino(self, ino: int) -> int | None:
        ops = self.ops
        if ino == ops.root_ino:
            return pyfuse3.ROOT_INODE
        if ino == ROOT_INO:
            return None  # above the mounted subdirectory (kernel inode 1 is that directory)
        return ino if ino in ops.lookups else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll and apply until cancelled.  Reports started after the first answer (or the
        first failure), so a mount that reports ready is already being told of changes."""
        epoch, cursor = "", 0
        delay = _RETRY_MIN_S
        started = False
        failing = False
        while True:
            try:
                answer = await self.ops.client.changes(epoch, cursor, self.wait_s)
            except UnknownMethod:
                log.info(
                    "the daemon sends no change notices: changes made elsewhere show within the timeouts"
                )
                if not started:
                    task_status.started()
                return
            except (DfsError, ValueError) as exc:
                # Changes may go unheard until the next answer: short timeouts meanwhile.
                self.ops.coherent = False
                if not started:
                    task_status.started()
                    started = True
                if not failing:
                    log.info("change notices unavailable, retrying: %s", getattr(exc, "message", exc))
                    failing = True
                await trio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            if failing:
                log.info("change notices resumed")
                failing = False
            delay = _RETRY_MIN_S
            try:
                if answer.reset:
                    if epoch:  # not on the first answer: nothing was cached before it
                        await self.apply([Change(ALL)])
                elif answer.changes:
                    await self.apply(answer.changes)
            except Exception:
                # A bug here must not end the mount: forget what we can and carry on.
                log.exception("applying %d change notice(s) failed", len(answer.changes))
                self.drop_caches([Change(ALL)])
                answer = replace(answer, complete=False)  # what the kernel caches is unknown now
            self.ops.coherent = answer.complete
            epoch, cursor = answer.epoch, answer.cursor
            if not started:
                task_status.started()
                started = True

    async def apply(self, changes: list[Change]) -> None:
        ops = self.ops
        if any(change.kind == ALL for change in changes):
            ops.coherent = False  # until the reset is applied (run() sets it again)
        expanded: list[Change] = []
        for change in changes:
            expanded.extend(await self.expand(change))
        for change in list(expanded):
            if change.kind == ENTRY and change.names:
                # The inode that had the name: its link count and ctime changed too.
                had = ops.names.pop((change.ino, change.names[0]), None)
                if had is not None:
                    expanded.append(Change(ATTR, had))
        self.drop_caches(expanded)
        # A reset: every name the kernel may cache, read before any await lets new ones in.
        everything = any(change.kind == ALL for change in expanded)
        names = list(ops.names) if everything else []
        todo = kernel_ops(expanded, self.kernel_ino, [*ops.lookups, ops.root_ino], names)
        now = [op for op in todo if not blocks(op)]
        later = [op for op in todo if blocks(op)]
        if now:
            self._kernel(now)  # saves a thread hop on the most common path: a file made elsewhere
        if later:
            await trio.to_thread.run_sync(self._kernel, later)
        # ``names`` stay: one looked up again meanwhile is cached anew, and one told twice costs
        # an ENOENT; they go with their inodes (Operations._named).
        self.applied += len(changes)

    async def expand(self, change: Change) -> list[Change]:
        """A path notice (a daemon that could not resolve it) as one entry per step, walked
        while the kernel can know the directory (nothing below an unknown one is cached)."""
        if change.kind not in (ENTRY, NEW) or len(change.names) <= 1:
            return [change]
        out = []
        here = change.ino
        for i, name in enumerate(change.names):
            out.append(Change(change.kind, here, (name,)))
            if i + 1 == len(change.names) or self.kernel_ino(here) is None:
                break
            try:
                here = (await self.ops.client.lookup(here, name)).ino
            except DfsError:
                break  # gone (dropping its name drops everything below it) or unreachable
        return out

    def drop_caches(self, changes: Iterable[Change]) -> None:
        """The mount's own caches (see mount/fs.py) for these changes."""
        ops = self.ops
        for change in changes:
            if change.kind == ALL:
                ops.known.clear()
                ops.seen.clear()
                ops.no_capability.clear()
                ops.no_xattrs.clear()
                ops.attrs.clear()
                for f in ops.files.values():
                    f.attr_fresh_until = 0.0
                continue
            ops.known.forget(change.ino)
            ops.attrs.drop(change.ino)
            if change.kind == NEW:
                continue
            if change.kind == ENTRY:
                # A name went or came: some open file's link count may have changed.
                for f in ops.files.values():
                    f.attr_fresh_until = 0.0
                continue
            ops.no_capability.pop(change.ino, None)
            ops.no_xattrs.pop(change.ino, None)
            held = ops.files.get(change.ino)
            if held is not None:
                held.attr_fresh_until = 0.0
            if change.kind == DATA:
                ops.seen.pop(change.ino, None)  # do not keep page cache at the next open
