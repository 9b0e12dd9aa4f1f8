"""pyfuse3 Operations for dfs: kernel requests translated into dfs.client calls.

Every handler is wrapped by :func:`_handler`: a :class:`DfsError` becomes
``FUSEError(errno)``; anything else is logged and becomes EIO, because any
other exception escaping a handler would end ``pyfuse3.main`` and leave a
dead mount.

Inode numbers are the daemon's (never reused).  When a subdirectory is
mounted, kernel inode 1 stands for that directory.

Caching: entries and attributes are cached by the kernel for
``attr_timeout_s`` (1 s by default), and for :data:`COHERENT_TIMEOUT_S` while
the daemon's change notices cover every change (``coherent``, set by
mount/coherence.py): a notice then drops what changed, and every name handed to
the kernel is remembered (``names``) so that a reset can drop them all, and
getattr of an inode not open here is answered from what the daemon last said
(mount/attrs.py), which every change drops.
Attributes of a file open here are never cached for long (its size, times and
blocks are settled by the commit at close).  Page cache is kept across opens only
when the daemon reports the same size and mtime this mount last saw
(close-to-open consistency between mounts).  Within the same bound the mount
answers some requests itself: negative lookups and getattr in directories
whose complete contents it has proven (mount/dirs.py), and getattr of files
it holds open.  Read-only opens and all releases are registered with the
daemon in ordered batches (``send_open_events``), flushed before any change
that could remove a name.  Data a file's last close could not store (the
daemon unreachable) is tried again in the background for ``unstored_keep_s``
(``retry_unstored``), then dropped.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from dfs.client.cluster import Client, DirStamp
from dfs.core.config import MountConfig
from dfs.core.errors import DfsError, Exists, NoAttribute, NotFound, StaleHandle, Unavailable
from dfs.core.keys import volume_of
from dfs.core.namespace import NAME_MAX, RENAME_EXCHANGE, ROOT_INO, Attr, DirEntry, FileMap, StatFs
from dfs.core.quotas import QUOTA_XATTR_PREFIX, QUOTA_XATTRS, parse_xattr_value, statfs_within
from mount.attrs import AttrCache
from mount.dirs import CompleteDirs
from mount.files import BlockCache, DirtyBudget, OpenFile

log = logging.getLogger("dfs.mount")
Ctx = pyfuse3.RequestContext
P = ParamSpec("P")
R = TypeVar("R")

_READDIR_BATCH = 512
_OPEN_EVENTS_BATCH_S = 0.02
#: How long a batch of releases alone may wait.  Nothing waits for a release: a late one only
#: delays the purge of a file unlinked while open here, and one that matters sooner is sent
#: first (``_register_opens``).  Writing a tree file after file then costs one call a second
#: instead of one every 20 ms (untar of 6,798 files: 1,849 calls of ~1 ms each).
_RELEASES_BATCH_S = 1.0
#: A queue this long is sent without waiting further.
_OPEN_EVENTS_MAX = 1024
#: How often the mount tries again to store what the last close of a file could not.
_UNSTORED_RETRY_S = 2.0
_CAPABILITY = b"security.capability"
# How long the kernel may cache names and attributes while change notices cover every change.
# Not forever: a bound on the cost of a bug in the notices.  Long enough that a tree written
# by untar or rsync is still cached when it is walked again (rsync's second run).
COHERENT_TIMEOUT_S = 300.0
# Entries kept in the xattr caches at most (past it they are dropped: asked again).
_XATTR_CACHE_MAX = 100_000
# Remembered names are pruned of forgotten inodes when they outnumber those by this factor.
_NAMES_SLACK = 2
_ACL_PREFIX = b"system.posix_acl_"


# (operation, seconds, errno or None) for each answered kernel request; set by -o metrics=.
_observe: Callable[[str, float, int | None], None] | None = None


def set_op_observer(observe: Callable[[str, float, int | None], None] | None) -> None:
    global _observe
    _observe = observe


def _handler(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    op = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        started = time.perf_counter()
        err: int | None = None
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError as exc:
            err = exc.errno
            raise
        except DfsError as exc:
            err = exc.errno
            if exc.errno == errno.EIO:
                log.warning("%s failed: %s", op, exc.message)
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            err = errno.EIO
            log.exception("%s failed unexpectedly", op)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if _observe is not None:
                _observe(op, time.perf_counter() - started, err)

    return wrapper


@dataclass
class _Handle:
    ino: int
    file: OpenFile


@dataclass
class _DirHandle:
    ino: int
    cookie: int = -1
    entries: list[DirEntry] | None = None
    exhausted: bool = False


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    # Off: in writeback mode the kernel trusts its own size and times of a cached file over
    # ours (another mount's append would stay invisible here), and it measured slower on
    # sequential, parallel and delete-heavy work (README, "The kernel's writeback cache").
    enable_writeback_cache = False
    # The kernel enforces POSIX ACLs and caches them per inode; the daemon stores them
    # and keeps each inode's mode and ACL in step (dfs/core/acl.py).
    enable_acl = True

    def __init__(self, client: Client, cfg: MountConfig, *, root_ino: int = ROOT_INO) -> None:
        super().__init__()
        self.client = client
        self.cfg = cfg
        self.root_ino = root_ino
        self.session = secrets.token_hex(16)
        self.budget = DirtyBudget(cfg.dirty_bytes)
        self.cache = BlockCache(cfg.cache_bytes, written=self.budget)
        self.lookups: dict[int, int] = {}
        # A directory each known file was reached through: its policy (replicas, consistency)
        # applies to the file's writes, and metadata cannot find a file's parent cheaply.
        self.parents: dict[int, int] = {}
        self.files: dict[int, OpenFile] = {}
        self.handles: dict[int, _Handle] = {}
        self.dirs: dict[int, _DirHandle] = {}
        self._next_fh = 1
        # (size, mtime_ns) this mount last saw for an inode's page cache contents.
        self.seen: dict[int, tuple[int, int]] = {}
        self.nursery: trio.Nursery | None = None
        # Knowledge of whole directories, for as long as the kernel may cache their entries.
        self.known = CompleteDirs(lambda: self._timeout_s(cfg.entry_timeout_s))
        # ("open"|"release", ino) registrations not yet sent, in order (see send_open_events).
        self._open_events: list[tuple[str, int]] = []
        self._open_events_inos: set[int] = set()  # the inodes in _open_events
        self._open_events_ready = trio.Event()  # something is queued
        self._open_events_due = trio.Event()  # an open is queued, or the queue is full
        # inode -> monotonic time to give up: files whose last close could not store their
        # data (the daemon unreachable), tried again in the background (retry_unstored_loop).
        self.unstored: dict[int, float] = {}
        self._unstored_ready = trio.Event()
        # inode -> monotonic expiry of a cached "no security.capability" answer
        self.no_capability: dict[int, float] = {}
        # The daemon's change notices cover every change (mount/coherence.py keeps this current):
        # the kernel may cache entries and attributes for COHERENT_TIMEOUT_S.
        self.coherent = False
        # inode -> (monotonic expiry, directory it was made in or 0) of "it has no xattrs at all":
        # made here where nothing could be inherited, or an empty listxattr.  The kernel asks for
        # security.capability before writes and chown, and for the access ACL after every
        # setattr and attribute refresh: untar and rsync ask several times per file.
        self.no_xattrs: dict[int, tuple[float, int]] = {}
        # (directory, name) -> inode of every entry handed to the kernel (as far as it may still
        # cache it): what a reset must drop.  Pruned lazily of inodes the kernel forgot.
        self.names: dict[tuple[int, bytes], int] = {}
        # Attributes of inodes not open here, for getattr while ``coherent`` (mount/attrs.py).
        self.attrs = AttrCache()

    # -- helpers ------------------------------------------------------------------
    def _d(self, ino: int) -> int:
        """Kernel inode -> daemon inode."""
        return self.root_ino if ino == pyfuse3.ROOT_INODE else ino

    def _k(self, ino: int) -> int:
        """Daemon inode -> kernel inode."""
        return pyfuse3.ROOT_INODE if ino == self.root_ino else ino

    def _timeout_s(self, configured_s: float) -> float:
        """How long the kernel may cache what this reply says (a timeout of 0 stays 0)."""
        if self.coherent and configured_s > 0:
            return max(configured_s, COHERENT_TIMEOUT_S)
        return configured_s

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        f = self.files.get(attr.ino)
        e = pyfuse3.EntryAttributes()
        e.entry_timeout = self._timeout_s(self.cfg.entry_timeout_s)
        if attr.ino == self.root_ino:
            # stat(2) of the mount point must reach us soon, or a dead mount (its process
            # gone) would look alive from the kernel's cache (`dfs up` looks for those).
            e.attr_timeout = self.cfg.attr_timeout_s
        elif f is not None:
            attr = f.overlay(attr)
            # Provisional until the commit at close (blocks, ctime): ask again soon.
            e.attr_timeout = self.cfg.attr_timeout_s
        else:
            e.attr_timeout = self._timeout_s(self.cfg.attr_timeout_s)
        e.st_ino = self._k(attr.ino)
        e.generation = attr.generation
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = 128 * 1024
        e.st_blocks = attr.blocks
        e.st_atime_ns = attr.atime_ns
        e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.ctime_ns
        return e

    def _stale_open_attrs(self) -> None:
        """This mount is changing inode metadata: stop answering getattr from OpenFiles."""
        for f in self.files.values():
            f.attr_fresh_until = 0.0

    def _settled(self, ino: int) -> bool:
        """Whether what the daemon says of ``ino`` now may be kept in ``attrs``: notices are
        complete and nothing of it waits here for a commit (which drops it again)."""
        f = self.files.get(ino)
        return self.coherent and (f is None or not (f.is_dirty or f.pending_attrs))

    def _xattrs_known_empty(self, ino: int) -> bool:
        known = self.no_xattrs.get(ino)
        if known is None:
            return False
        expiry_s, parent = known
        # Made in ``parent`` while it had no default ACL: unless that knowledge was dropped since
        # (a default ACL set there just before the create would then have been inherited).
        return expiry_s > time.monotonic() and (parent == 0 or parent in self.no_xattrs)

    def _no_capability(self, ino: int) -> None:
        if len(self.no_capability) >= _XATTR_CACHE_MAX:
            self.no_capability.clear()  # (each create added one, and nothing took them out)
        self.no_capability[ino] = time.monotonic() + self.cfg.attr_timeout_s

    def _no_xattrs(self, ino: int, parent: int = 0) -> None:
        if len(self.no_xattrs) >= _XATTR_CACHE_MAX:
            self.no_xattrs.clear()
        self.no_xattrs[ino] = (time.monotonic() + self._timeout_s(self.cfg.attr_timeout_s), parent)

    def _made(self, parent: int, ino: int) -> None:
        """``ino`` was just made in ``parent``: it inherited nothing if ``parent`` has no xattrs
        (a default ACL is the only thing a new inode inherits as xattrs)."""
        if self._xattrs_known_empty(parent):
            self._no_xattrs(ino, parent)

    async def _learn_xattrs(self, ino: int) -> None:
        """Find out (one call) whether directory ``ino`` has no xattrs, before making in it a
        directory whose whole subtree then needs no xattr probes."""
        if self._xattrs_known_empty(ino):
            return
        try:
            names = await self.client.listxattr(ino)
        except DfsError:
            return  # the mkdir will say what is wrong
        if not names:
            self._no_xattrs(ino)

    def _looked_up(self, ino: int, parent: int | None = None, name: bytes | None = None) -> None:
        self.lookups[ino] = self.lookups.get(ino, 0) + 1
        if parent is not None:
            self.parents[ino] = parent
            if name is not None:
                self._named(parent, name, ino)

    def _named(self, parent: int, name: bytes, ino: int) -> None:
        """The kernel may now cache ``name`` in ``parent`` (see ``names``)."""
        if name in (b".", b".."):
            return
        self.names[(parent, name)] = ino
        if len(self.names) > _NAMES_SLACK * len(self.lookups) + 1024:
            lookups = self.lookups
            self.names = {key: i for key, i in self.names.items() if i in lookups}

    def _dirs_changed(
        self,
        stamps: Sequence[DirStamp],
        *,
        added: Sequence[tuple[int, bytes, int | None]] = (),
        removed: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        """This mount changed these directories (and these names in them, with their inodes)."""
        self.known.changed(stamps, added=added, removed=removed)
        for st in stamps:
            self.attrs.drop(st.ino)
        for parent, name in removed:
            gone = self.names.pop((parent, name), None)
            if gone is not None:
                self.attrs.drop(gone)  # its link count and ctime changed

    def _renamed(self, old: int, name_old: bytes, new: int, name_new: bytes, flags: int) -> None:
        """Keep ``names`` in step with a rename made here (the kernel moved its entry)."""
        moved = self.names.pop((old, name_old), None)
        if flags & RENAME_EXCHANGE:
            other = self.names.pop((new, name_new), None)
            if other is not None:
                self.names[(old, name_old)] = other
        else:
            self.names.pop((new, name_new), None)
        if moved is not None:
            self.names[(new, name_new)] = moved

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    @property
    def _bg(self) -> trio.Nursery:
        assert self.nursery is not None, "Operations used before run()"
        return self.nursery

    # -- lifecycle ----------------------------------------------------------------
    async def heartbeat(self, interval_s: float) -> None:
        while True:
            try:
                await self.client.session_heartbeat(self.session)
            except DfsError as exc:
                log.warning("session heartbeat failed: %s", exc.message)
            await trio.sleep(interval_s)

    # -- namespace ------------------------------------------------------------------
    @_handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: Ctx) -> pyfuse3.EntryAttributes:
        parent = self._d(parent_inode)
        if name in (b".", b".."):
            # The daemon resolves both; ".." of the mounted directory must not leave it.
            if name == b".." and parent == self.root_ino:
                attr = await self.client.getattr(parent)
            else:
                attr = await self.client.lookup(parent, name)
        else:
            if len(name) > NAME_MAX:
                # Before the negative cache: an over-long name is not merely absent.
                raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
            if self.known.absent(parent, name):
                raise pyfuse3.FUSEError(errno.ENOENT)
            held = self._held_entry(parent, name)
            if held is not None:
                self._looked_up(held.ino, parent, name)
                return self._entry(held)
            found, dir_ctime_ns = await self.client.lookup_versioned(parent, name)
            self.known.confirm(parent, dir_ctime_ns)
            if found is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            attr = found
        self._looked_up(attr.ino, parent, None if name in (b".", b"..") else name)
        return self._entry(attr)

    def _held_entry(self, parent: int, name: bytes) -> Attr | None:
        """What ``name`` in ``parent`` is, from memory: a directory whose names this mount knows
        (mount/dirs.py) and the held attributes of the inode it names, while notices are
        complete (each of the two is dropped by any change to it).  Not for a file open here,
        whose attributes come from its OpenFile."""
        if not self.coherent:
            return None
        ino = self.known.entry(parent, name)
        if ino is None or ino in self.files:
            return None
        return self.attrs.get(ino) or self.known.attr(ino)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups.pop(ino, None)
                self.parents.pop(ino, None)
                # The kernel let go of the inode, and of its page cache with it.  (Kept, an
                # entry per inode ever opened here grew without bound: about 200 bytes each,
                # so some 2 GB for a backup reading 10 million files.)
                self.seen.pop(ino, None)

    @_handler
    async def getattr(self, inode: int, ctx: Ctx) -> pyfuse3.EntryAttributes:
        ino = self._d(inode)
        known = self.known.attr(ino)
        if known is not None:
            # A directory whose state this mount proved within the lease (the kernel
            # asks before every create in it, having dropped its cache after the last).
            return self._entry(known)
        f = self.files.get(ino)
        if f is not None and f.attr_fresh_until > time.monotonic():
            # Open here and fetched within the attribute timeout: the same answer
            # the kernel's attribute cache could have given.
            return self._entry(f.attr)
        held = self.attrs.get(ino) if self.coherent and f is None else None
        if held is not None:
            return self._entry(held)
        self.attrs.begin(ino)
        attr: Attr | None = None
        try:
            attr = await self.client.getattr(ino)
        finally:
            self.attrs.end(ino, attr if self._settled(ino) else None)
        return self._entry(attr)

    @_handler
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: Ctx,
    ) -> pyfuse3.EntryAttributes:
        ino = self._d(inode)
        changes: dict[str, int] = {}
        if fields.update_mode:
            changes["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
        f = self.files.get(ino)
        if f is not None and f.fresh and not fields.update_size:
            return self._entry(f.hold_attrs(changes, time.time_ns()))
        if fields.update_size:
            changes["size"] = attr.st_size
            self.attrs.drop_map(ino)
            if f is not None:
                # Committed state first, so the daemon truncates exactly what we wrote.
                await f.commit(self._bg)
        elif f is not None and f.is_dirty and ("mtime_ns" in changes or "atime_ns" in changes):
            await f.commit(self._bg)
        self.attrs.begin(ino)
        new: Attr | None = None
        try:
            new, stamps = await self.client.setattr(ino, **changes)
        finally:
            keep = new if self._settled(ino) else None
            self.attrs.end(ino, keep)
            if keep is None:
                self.attrs.drop(ino)
        self.known.changed(stamps)  # a directory's own attributes changed
        for st in stamps:
            if st.ino != ino:  # (its own stamp says what ``new`` says)
                self.attrs.drop(st.ino)
        if f is not None and "mtime_ns" in changes:
            f.mtime_set(new)
        elif f is not None:
            f.set_attr(new)
        if f is not None and fields.update_size:
            asked = self._asked(ino)
            fmap = await self.client.read_map(ino)
            if self._asked(ino) == asked:
                # Not when a commit through another handle landed while the daemon answered:
                # this map may then be older than what the mount holds (see _open_file).
                f.refresh(fmap)
        self.seen[ino] = (new.size, new.mtime_ns)
        return self._entry(new)

    @_handler
    async def readlink(self, inode: int, ctx: Ctx) -> bytes:
        return await self.client.readlink(self._d(inode))

    @_handler
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Ctx
    ) -> pyfuse3.EntryAttributes:
        parent = self._d(parent_inode)
        attr, stamps = await self.client.mknod(parent, name, mode, rdev, ctx.uid, ctx.gid)
        self._dirs_changed(stamps, added=[(parent, name, attr.ino)])
        self._made(parent, attr.ino)
        self._looked_up(attr.ino, parent, name)
        return self._entry(attr)

    @_handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Ctx) -> pyfuse3.EntryAttributes:
        parent = self._d(parent_inode)
        await self._learn_xattrs(parent)
        attr, stamps = await self.client.mkdir(parent, name, mode, ctx.uid, ctx.gid)
        self._dirs_changed(stamps, added=[(parent, name, attr.ino)])
        self._made(parent, attr.ino)
        self.known.made(attr)
        # With its parent: files made below then know their volume (its codec) without a call.
        self._looked_up(attr.ino, parent, name)
        return self._entry(attr)

    @_handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: Ctx) -> None:
        parent = self._d(parent_inode)
        await self._register_opens(parent, name)  # an open file must be registered before it loses a name
        self._stale_open_attrs()  # the unlinked file's nlink changes
        self._dirs_changed(await self.client.unlink(parent, name), removed=[(parent, name)])

    @_handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Ctx) -> None:
        parent = self._d(parent_inode)
        self._stale_open_attrs()
        self._dirs_changed(await self.client.rmdir(parent, name), removed=[(parent, name)])

    @_handler
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: Ctx
    ) -> pyfuse3.EntryAttributes:
        parent = self._d(parent_inode)
        attr, stamps = await self.client.symlink(parent, name, target, ctx.uid, ctx.gid)
        self._dirs_changed(stamps, added=[(parent, name, attr.ino)])
        self._made(parent, attr.ino)
        self._looked_up(attr.ino, parent, name)
        return self._entry(attr)

    @_handler
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Ctx,
    ) -> None:
        old, new = self._d(parent_inode_old), self._d(parent_inode_new)
        if not flags & RENAME_EXCHANGE:
            await self._register_opens(new, name_new)  # a replaced target may be open here
        self._stale_open_attrs()  # ctime of the moved file, nlink of a replaced one
        moved = self.names.get((old, name_old))
        replaced = self.names.get((new, name_new))
        if moved is not None:
            self.attrs.begin(moved)
        after: Attr | None = None
        try:
            stamps = await self.client.rename(old, name_old, new, name_new, flags)
            held = None if moved is None else self.attrs.get(moved)
            if held is not None and stamps and not flags & RENAME_EXCHANGE:
                # The moved inode's ctime is the rename's time, which its directories show.
                after = held._replace(ctime_ns=stamps[0].after.ctime_ns)
        finally:
            if moved is not None:
                self.attrs.end(moved, after if self.coherent else None)
                if after is None:
                    self.attrs.drop(moved)
        if replaced is not None:
            self.attrs.drop(replaced)  # unlinked by the rename, or (exchange) its ctime changed
        self._renamed(old, name_old, new, name_new, flags)
        for st in stamps:
            self.attrs.drop(st.ino)
        if flags & RENAME_EXCHANGE:
            # Both names still exist, each now naming the other's inode.
            self.known.changed(stamps, added=[(old, name_old, replaced), (new, name_new, moved)])
        else:
            self.known.changed(stamps, added=[(new, name_new, moved)], removed=[(old, name_old)])

    @_handler
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Ctx
    ) -> pyfuse3.EntryAttributes:
        parent = self._d(new_parent_inode)
        self._stale_open_attrs()
        attr, stamps = await self.client.link(self._d(inode), parent, new_name)
        self.attrs.drop(attr.ino)
        self._dirs_changed(stamps, added=[(parent, new_name, attr.ino)])
        self._looked_up(attr.ino, parent, new_name)
        return self._entry(attr)

    # -- directories ----------------------------------------------------------------
    @_handler
    async def opendir(self, inode: int, ctx: Ctx) -> int:
        ino = self._d(inode)
        # The kernel only opens what it knows as a directory; ask the daemon unless this mount
        # holds its current attributes (rsync opens every directory it made to chmod it).
        held = (self.known.attr(ino) or self.attrs.get(ino)) if self.coherent else None
        attr = held if held is not None else await self.client.getattr(ino)
        if not attr.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._new_fh()
        self.dirs[fh] = _DirHandle(ino)
        return fh

    @_handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self.dirs[fh]
        cookie = start_id
        while True:
            if d.entries is None or d.cookie != cookie:
                d.entries = await self.client.readdir(d.ino, cookie, _READDIR_BATCH)
                d.cookie = cookie
                d.exhausted = len(d.entries) < _READDIR_BATCH
            if not d.entries:
                return
            for i, entry in enumerate(d.entries):
                if not pyfuse3.readdir_reply(token, entry.name, self._entry(entry.attr), entry.cookie):
                    d.entries = d.entries[i:]
                    d.cookie = cookie
                    return
                self._looked_up(entry.attr.ino, d.ino, entry.name)
                cookie = entry.cookie
            exhausted = d.exhausted
            d.entries = None
            if exhausted:
                return

    @_handler
    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    @_handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.client.sync()

    # -- files ------------------------------------------------------------------------
    def _asked(self, ino: int) -> tuple[OpenFile, Attr] | None:
        """What this mount holds for ``ino`` as it asks the daemon for its map (see _open_file)."""
        f = self.files.get(ino)
        return None if f is None else (f, f.attr)

    def _open_file(self, fmap: FileMap, asked: tuple[OpenFile, Attr] | None) -> tuple[OpenFile, bool]:
        """The inode's OpenFile (created on first open) and whether page cache may be kept.

        ``asked``: :meth:`_asked` just before the daemon was asked for ``fmap``.

        Synchronous on purpose: the lookup and the insert must not be split by
        an await, or two concurrent opens would create two OpenFiles whose
        commits overwrite each other.
        """
        attr = fmap.attr
        ino = attr.ino
        f = self.files.get(ino)
        if f is not None and (asked is None or asked[0] is not f or asked[1] != f.attr):
            # The file changed here while the daemon answered, typically a commit through
            # another handle that the daemon applied just after answering us and whose reply
            # trio resumed first (tasks woken together run in either order).  ``fmap`` may
            # then be older than what this mount holds and has in page cache: adopting it
            # rolled the file back a commit, and the next writes were built on the old
            # blocks (issue 13: sqlite databases corrupted under a concurrent reader).
            # This open takes effect before that change instead.
            f.handles += 1
            return f, True
        keep = self.seen.get(ino) == (attr.size, attr.mtime_ns)
        if f is None:
            f = OpenFile(
                ino, fmap, self.client, self.cache, self.budget, attr_timeout_s=self.cfg.attr_timeout_s
            )
            self.files[ino] = f
        if f.parent is None:
            f.parent = self.parents.get(ino)
        if not f.volume_known and self.root_ino == ROOT_INO:
            # Its volume from the parents this mount knows (the kernel keeps a cached file's
            # directories looked up): no metadata call per file.  A broken chain asks later.
            f.volume = volume_of(self.parents, ino, ROOT_INO)
            f.volume_known = f.volume is not None
        if not f.is_dirty and (f.attr.size, f.attr.mtime_ns) != (attr.size, attr.mtime_ns):
            f.refresh(fmap)
        if f.is_dirty:
            keep = True  # our own unflushed writes are in the page cache already
        f.handles += 1
        self.seen[ino] = (attr.size, attr.mtime_ns)
        return f, keep

    def _register(self, ino: int, f: OpenFile) -> int:
        fh = self._new_fh()
        self.handles[fh] = _Handle(ino, f)
        return fh

    @_handler
    async def open(self, inode: int, flags: int, ctx: Ctx) -> pyfuse3.FileInfo:
        ino = self._d(inode)
        truncate = bool(flags & os.O_TRUNC)
        if (flags & os.O_ACCMODE) == os.O_RDONLY and not truncate:
            # A read-only open needs fresh attributes and the block map (one cheap read);
            # its registration (which keeps the file alive if unlinked, and relatime)
            # follows in the next batch of open events.
            asked = self._asked(ino)
            fmap = self.attrs.file_map(ino) if self.coherent and asked is None else None
            if fmap is None:
                self.attrs.begin(ino)
                try:
                    fmap = await self.client.read_map(ino)
                finally:
                    kept = fmap.attr if fmap is not None and self._settled(ino) else None
                    self.attrs.end(ino, kept)
            reader, keep = self._open_file(fmap, asked)
            self._queue_open_event("open", ino)
            return pyfuse3.FileInfo(fh=self._register(ino, reader), keep_cache=keep)
        self.attrs.drop(ino)  # it may change now: its attributes come from the OpenFile
        current = self.files.get(ino)
        if truncate and current is not None:
            await current.commit(self._bg)
        asked = self._asked(ino)
        fmap = await self.client.open(
            ino, self.session, truncate=truncate, read=(flags & os.O_ACCMODE) != os.O_WRONLY
        )
        if truncate and current is not None:
            current.refresh(fmap)
        if truncate:
            asked = self._asked(ino)  # the truncation is this open's own change: adopt it
        f, keep = self._open_file(fmap, asked)
        return pyfuse3.FileInfo(fh=self._register(ino, f), keep_cache=keep)

    @_handler
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Ctx
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._d(parent_inode)
        try:
            attr, stamps = await self.client.create(parent, name, mode, ctx.uid, ctx.gid, self.session)
        except Exists:
            # Another mount made the name while we answered "absent" from our lease:
            # open(O_CREAT) without O_EXCL must then open the existing file.
            self.known.forget(parent)
            if flags & os.O_EXCL:
                raise
            return await self._open_existing(parent, name, flags)
        self._dirs_changed(stamps, added=[(parent, name, attr.ino)])
        # A new file has no xattrs: spare the capability probe before its first write.
        self._no_capability(attr.ino)
        self._made(parent, attr.ino)
        self.parents[attr.ino] = parent
        f, _ = self._open_file(FileMap(attr, None, []), None)
        f.fresh = True
        self._looked_up(attr.ino, parent, name)
        fh = self._register(attr.ino, f)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._entry(attr)

    async def _open_existing(
        self, parent: int, name: bytes, flags: int
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        attr = await self.client.lookup(parent, name)
        if attr.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        self.attrs.drop(attr.ino)
        asked = self._asked(attr.ino)
        fmap = await self.client.open(
            attr.ino,
            self.session,
            truncate=bool(flags & os.O_TRUNC),
            read=(flags & os.O_ACCMODE) != os.O_WRONLY,
        )
        if flags & os.O_TRUNC:
            asked = self._asked(attr.ino)  # the truncation is this open's own change: adopt it
        self.parents[attr.ino] = parent
        f, keep = self._open_file(fmap, asked)
        self._looked_up(attr.ino, parent, name)
        fh = self._register(attr.ino, f)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep), self._entry(fmap.attr)

    @_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        f = self.handles[fh].file
        data = await f.read(off, size)
        if len(data) == size:
            f.prefetch(self._bg, off + size)
        # pyfuse3 takes any contiguous buffer (PyObject_GetBuffer), though it declares bytes.
        return data  # type: ignore[return-value]

    @_handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles[fh]
        await h.file.write(off, buf, self._bg)
        return len(buf)

    async def _commit(self, f: OpenFile) -> None:
        ino = f.ino
        self.attrs.drop(ino)
        self.attrs.begin(ino)
        attr: Attr | None = None
        try:
            attr = await f.commit(self._bg)
        finally:
            # What the commit answered is what getattr after close(2) needs (rsync, tar and
            # cp stat every file they wrote), unless a change came in meanwhile.
            self.attrs.end(ino, attr if self._settled(ino) else None)
        if attr is not None:
            self.seen[ino] = (attr.size, attr.mtime_ns)

    @_handler
    async def flush(self, fh: int) -> None:
        h = self.handles.get(fh)
        if h is not None:
            # close(2): a chmod or utime from now on no longer comes through the descriptor
            # being written.  RELEASE follows later (not at all while an mmap or a dup holds
            # the file); held until then, such a change was invisible to other mounts after
            # its call returned, and lost with this mount.
            h.file.fresh = False
        if h is not None and h.file.is_dirty:
            try:
                await self._commit(h.file)
            except DfsError:
                if h.file.handles == 1:  # the last close: no one left to retry it
                    self._drop_unstorable(h.file)
                raise

    def _drop_unstorable(self, f: OpenFile) -> None:
        """Let go of what a full store refused, once close(2) or fsync(2) has said so and no
        one is left to retry it: kept, every file written into a full store stayed in memory
        for good (and failed the close of every later handle to it)."""
        if f.is_dirty and f.full_error is not None:
            log.warning(
                "data not stored, dropped at the last close: %s",
                f.full_error.message,
                extra={"ctx": {"ino": f.ino}},
            )
            f.discard()
            self.attrs.drop(f.ino)

    @_handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self.handles[fh]
        await self._commit(h.file)
        await self.client.sync()

    @_handler
    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        f = h.file
        try:
            if f.is_dirty:
                # mmap writeback can arrive after the last close(2): commit it here.
                await self._commit(f)
        finally:
            f.handles -= 1
            if f.handles <= 0:
                self._drop_unstorable(f)
                if f.is_dirty:
                    self._keep_unstored(f)
                else:
                    self._let_go(f)
            # The kernel does not wait for RELEASE; batch them into one transaction.
            self._queue_open_event("release", h.ino)

    def _let_go(self, f: OpenFile) -> None:
        """A file closed everywhere here with nothing left to store: forget it."""
        self.files.pop(f.ino, None)
        if self.coherent:
            self.attrs.park_map(f.ino, f.size, f.inline, list(f.blocks.values()))

    def _keep_unstored(self, f: OpenFile) -> None:
        """The last close could not store ``f``'s data (close(2) reported it): try again in the
        background for ``unstored_keep_s``, so a daemon restart or a short outage costs
        nothing; then let it go.  Kept without retries it stayed in memory until the file's
        next close here, which then committed it over whatever the file had become."""
        keep_s = self.cfg.unstored_keep_s
        if keep_s <= 0:
            self._drop_unstored(f, "not kept ([mount] unstored_keep_s = 0)")
            return
        self.unstored.setdefault(f.ino, time.monotonic() + keep_s)
        self._unstored_ready.set()

    def _drop_unstored(self, f: OpenFile, why: str) -> None:
        log.error("data of a closed file not stored, dropped: %s", why, extra={"ctx": {"ino": f.ino}})
        self.unstored.pop(f.ino, None)
        f.discard()
        self.attrs.drop(f.ino)
        self.files.pop(f.ino, None)

    async def retry_unstored_loop(self) -> None:
        """Try again, every few seconds, to store what the last close of a file could not."""
        while True:
            await self._unstored_ready.wait()
            await trio.sleep(_UNSTORED_RETRY_S)
            await self.retry_unstored()

    async def retry_unstored(self) -> None:
        """One pass over the files whose last close could not store their data.  Once one of
        them finds the daemon (or the nodes its blocks go to) unreachable, the others are not
        tried in this pass: each try would wait out the same connect timeouts.  Those past
        their time are still dropped.  A file whose try failed goes last, so the next pass
        starts with another one and every file is tried in turn."""
        unreachable: Unavailable | None = None
        for ino, give_up_at in list(self.unstored.items()):
            f = self.files.get(ino)
            if f is None or f.handles > 0 or not f.is_dirty:
                # Reopened here (that handle's close stores it, or keeps it again), or stored.
                del self.unstored[ino]
                if f is not None and f.handles <= 0:
                    self._let_go(f)
                continue
            if unreachable is not None:
                if time.monotonic() >= give_up_at:
                    self._drop_unstored(
                        f, f"still failing after {self.cfg.unstored_keep_s:g} s: {unreachable.message}"
                    )
                continue
            try:
                await self._commit(f)
            except DfsError as exc:
                if isinstance(exc, Unavailable):
                    unreachable = exc
                if f.handles > 0 or self.unstored.get(ino) != give_up_at:
                    continue  # reopened meanwhile: the next pass leaves it to that handle
                if isinstance(exc, (NotFound, StaleHandle)):
                    self._drop_unstored(f, f"the file is gone ({exc.message})")
                elif f.full_error is not None:
                    del self.unstored[ino]
                    self._drop_unstorable(f)
                    self._let_go(f)
                elif time.monotonic() >= give_up_at:
                    self._drop_unstored(
                        f, f"still failing after {self.cfg.unstored_keep_s:g} s: {exc.message}"
                    )
                else:
                    self.unstored[ino] = self.unstored.pop(ino)  # last in the next pass
                continue
            if f.handles <= 0 and f.is_dirty:
                continue  # written again meanwhile (mmap writeback after close): next pass
            log.info("data of a closed file stored on a later try", extra={"ctx": {"ino": ino}})
            self.unstored.pop(ino, None)
            if f.handles <= 0:
                self._let_go(f)
        if not self.unstored:
            self._unstored_ready = trio.Event()

    def _queue_open_event(self, kind: str, ino: int) -> None:
        events = self._open_events
        covered = kind == "open" and ino in self._open_events_inos and self._open_before_release(ino)
        if not covered:
            events.append((kind, ino))
        self._open_events_inos.add(ino)
        self._open_events_ready.set()
        # An open not yet registered lets another mount's unlink purge the file under this
        # one's reader: those go within _OPEN_EVENTS_BATCH_S, releases may wait longer.
        if (kind == "open" and not covered) or len(events) >= _OPEN_EVENTS_MAX:
            self._open_events_due.set()

    def _open_before_release(self, ino: int) -> bool:
        """Queue an open of ``ino`` just ahead of a release of it still queued, if there is one.

        That release means the daemon still counts an earlier open here, so nobody can purge
        the file yet: the open may wait with the releases.  Ahead of the release, the count
        never touches zero in between (rsync opens each file it just wrote and closed, to
        chmod it, before renaming it: one call per file when each open went within 20 ms).
        """
        events = self._open_events
        for i in range(len(events) - 1, -1, -1):
            if events[i] == ("release", ino):
                events.insert(i, ("open", ino))
                return True
        return False

    async def _register_opens(self, parent: int, name: bytes) -> None:
        """Before ``name`` in ``parent`` loses its inode (unlink, rename over it): send the queued
        open events if any is that inode's, so the daemon keeps it while open here (and purges
        it at once if it is not).  Only the inode that loses its name matters: rsync renaming
        a new file to a name not taken, after its open-fchmod-close, then costs no extra round
        trip for the events queued meanwhile."""
        if not self._open_events:
            return
        if self.coherent:
            if self.known.absent(parent, name):
                return  # nothing loses a name
            ino = self.names.get((parent, name))
            if ino is not None and ino not in self._open_events_inos:
                return
        await self.send_open_events()

    async def open_events_loop(self) -> None:
        """Send queued open/release registrations in batches, one transaction per batch."""
        while True:
            await self._open_events_ready.wait()
            with trio.move_on_after(_RELEASES_BATCH_S):
                await self._open_events_due.wait()
            # Nobody waits for these: collect a few milliseconds' worth per transaction.
            await trio.sleep(_OPEN_EVENTS_BATCH_S)
            await self.send_open_events()

    async def send_open_events(self) -> None:
        """Send what is queued now; namespace changes call this first, so the daemon
        knows about every file this mount holds open before a name can vanish."""
        while self._open_events:
            self._open_events_ready = trio.Event()
            if self._open_events_due.is_set():  # (an unset one may be what the loop waits on)
                self._open_events_due = trio.Event()
            batch, self._open_events = self._open_events, []
            self._open_events_inos = set()
            try:
                with trio.CancelScope(shield=True):
                    await self.client.open_events(batch, self.session)
            except DfsError as exc:
                # Releases are also implied when the session lease expires.
                log.warning("registering %d open/release event(s) failed: %s", len(batch), exc.message)

    # -- xattrs ------------------------------------------------------------------------
    @_handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Ctx) -> None:
        ino = self._d(inode)
        f = self.files.get(ino)
        if name.startswith(_ACL_PREFIX) and f is not None and f.pending_attrs:
            # A held chmod must reach the daemon before the ACL, not after it, or it
            # would overwrite the ACL's mask with the older mode (tar: fchmod, then ACL).
            await f.commit(self._bg)
        self.no_capability.pop(ino, None)
        self.no_xattrs.pop(ino, None)
        self.attrs.drop(ino)
        self._stale_open_attrs()
        # The inode's ctime changes, and an ACL can change its mode: no answers from memory.
        self.known.forget(ino)
        await self.client.setxattr(ino, name, value, 0)
        self.attrs.drop(ino)

    @_handler
    async def getxattr(self, inode: int, name: bytes, ctx: Ctx) -> bytes:
        ino = self._d(inode)
        if not name.startswith(QUOTA_XATTR_PREFIX) and self._xattrs_known_empty(ino):
            # (A quota's view appears without a change notice: always asked.)
            raise pyfuse3.FUSEError(errno.ENODATA)
        if name == _CAPABILITY:
            # The kernel asks before every write(2); answer repeats from memory.
            expiry = self.no_capability.get(ino)
            if expiry is not None and expiry > time.monotonic():
                raise pyfuse3.FUSEError(errno.ENODATA)
            try:
                return await self.client.getxattr(ino, name)
            except NoAttribute:
                self._no_capability(ino)
                raise
        return await self.client.getxattr(ino, name)

    @_handler
    async def listxattr(self, inode: int, ctx: Ctx) -> Sequence[bytes]:
        ino = self._d(inode)
        names = await self.client.listxattr(ino)
        if not names:
            self._no_xattrs(ino)
        return names

    @_handler
    async def removexattr(self, inode: int, name: bytes, ctx: Ctx) -> None:
        ino = self._d(inode)
        self.no_capability.pop(ino, None)
        self.no_xattrs.pop(ino, None)
        self._stale_open_attrs()
        self.known.forget(ino)
        await self.client.removexattr(ino, name)
        self.attrs.drop(ino)

    # -- misc ----------------------------------------------------------------------------
    @_handler
    async def statfs(self, ctx: Ctx) -> pyfuse3.StatvfsData:
        st = await self.client.statfs()
        if self.root_ino != ROOT_INO:  # a subdirectory mount: its quota, if it has one, is df's size
            st = await self._quota_statfs(st)
        s = pyfuse3.StatvfsData()
        s.f_bsize = st.block_size
        s.f_frsize = st.block_size
        s.f_blocks = st.total_bytes // st.block_size
        s.f_bfree = st.free_bytes // st.block_size
        s.f_bavail = st.avail_bytes // st.block_size
        s.f_files = st.files
        s.f_ffree = st.files_free
        s.f_favail = st.files_free
        s.f_namemax = NAME_MAX
        return s

    async def _quota_statfs(self, st: StatFs) -> StatFs:
        """``st`` seen through the quota of the mounted directory (dfs/core/quotas.py)."""
        values: dict[str, int | None] = {}
        for name, field in QUOTA_XATTRS.items():
            try:
                values[field] = parse_xattr_value(await self.client.getxattr(self.root_ino, name))
            except NoAttribute:
                return st  # not a quota directory
            except ValueError:
                return st
        return statfs_within(
            st,
            max_bytes=values["max_bytes"],
            used_bytes=values["used_bytes"] or 0,
            max_inodes=values["max_inodes"],
            used_inodes=values["used_inodes"] or 0,
        )

    async def shutdown(self) -> None:
        """After unmount: commit what is dirty, release every open, end the session."""
        await self.flush_all()
        await self.send_open_events()
        try:
            await self.client.end_session(self.session)
        except DfsError as exc:
            log.warning("ending session failed: %s", exc.message)

    async def flush_all(self) -> None:
        """Commit every dirty file (used on unmount)."""
        for f in list(self.files.values()):
            if f.is_dirty:
                try:
                    await self._commit(f)
                except DfsError as exc:
                    log.error("could not commit inode %d at unmount: %s", f.ino, exc.message)
