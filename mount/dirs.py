"""Directories whose complete list of names this mount knows, under a short lease.

The kernel looks a name up before every create, mkdir, symlink and rename
target; in a directory this mount made (or keeps changing), the answer is
almost always "no such name", and asking the daemon costs a round trip per
file for untar, rsync, cp -a and the like.

Knowledge starts when this mount creates a directory (it is empty).  It is a
claim "while the directory's ctime is C, its names are exactly N".  Every
change this mount makes there reports the ctime just before and after it (a
:class:`DirStamp`), and every lookup this mount sends reports the ctime too;
whenever the reported ctime equals C, the claim is proven current again and
the lease renewed.  A different ctime means someone else changed the
directory: the knowledge is dropped.  ctime, because nobody can set it.

Names come with the inode this mount gave or found them (when it knows it), so
a lookup of a name in such a directory is answered from memory too, with the
inode's held attributes (mount/attrs.py): after the kernel drops its caches,
reading back a tree this mount wrote needs no lookup calls.

Between proofs, negative answers are given from memory for at most the
lease (the entry timeout), so a name another mount creates there shows up here
within that time: the bound the kernel's entry cache already gives.  While the
daemon's change notices are complete, the lease is as long as the kernel's own
caches then (mount/fs.py): another mount's change arrives as a notice, which
drops the directory's knowledge, before that change's call returns.  The lease
is asked at each use, so knowledge proven under a long lease is held to the
short one again as soon as the notices stop being complete.

Pure bookkeeping: no I/O, time is injected.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dfs.client.cluster import DirStamp
from dfs.core.namespace import Attr


@dataclass
class _Known:
    attr: Attr
    proven: float  # when the claim was last proven current
    names: dict[bytes, int | None] = field(default_factory=dict)  # name -> its inode, if known


class CompleteDirs:
    def __init__(
        self,
        lease_s: float | Callable[[], float],
        *,
        max_dirs: int = 4096,
        max_names: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lease = lease_s if callable(lease_s) else lambda: lease_s
        self.max_dirs = max_dirs
        self.max_names = max_names  # per directory
        self._clock = clock
        self._dirs: OrderedDict[int, _Known] = OrderedDict()

    def _current(self, known: _Known | None) -> bool:
        return known is not None and self._clock() < known.proven + self._lease()

    def __len__(self) -> int:
        return len(self._dirs)

    def made(self, attr: Attr) -> None:
        """This mount created the directory with these attributes: it is empty."""
        if self._lease() <= 0:
            return
        ino = attr.ino
        self._dirs[ino] = _Known(attr, self._clock())
        self._dirs.move_to_end(ino)
        while len(self._dirs) > self.max_dirs:
            self._dirs.popitem(last=False)

    def changed(
        self,
        stamps: Iterable[DirStamp],
        *,
        added: Iterable[tuple[int, bytes, int | None]] = (),
        removed: Iterable[tuple[int, bytes]] = (),
    ) -> None:
        """Apply this mount's own change; ``added`` are (dir, name, inode or None if not known)
        triples, ``removed`` (dir, name) pairs."""
        for st in stamps:
            if self.confirm(st.ino, st.ctime_before_ns):
                self._dirs[st.ino].attr = st.after
        for ino, name, child in added:
            known = self._dirs.get(ino)
            if known is not None:
                known.names[name] = child
                if len(known.names) > self.max_names:
                    # Its names would grow with the directory (ten million files written into
                    # one: over a gigabyte kept); past this many, ask the daemon instead.
                    del self._dirs[ino]
        for ino, name in removed:
            known = self._dirs.get(ino)
            if known is not None:
                known.names.pop(name, None)

    def confirm(self, ino: int, ctime_ns: int) -> bool:
        """The directory's ctime was observed: renew the lease if it proves our list current."""
        known = self._dirs.get(ino)
        if known is None:
            return False
        if known.attr.ctime_ns != ctime_ns:
            del self._dirs[ino]  # someone else changed it
            return False
        known.proven = self._clock()
        self._dirs.move_to_end(ino)
        return True

    def attr(self, ino: int) -> Attr | None:
        """The directory's attributes, if proven current within the lease."""
        known = self._dirs.get(ino)
        return known.attr if known is not None and self._current(known) else None

    def forget(self, ino: int) -> None:
        self._dirs.pop(ino, None)

    def clear(self) -> None:
        self._dirs.clear()

    def absent(self, parent: int, name: bytes) -> bool:
        """True if ``name`` is certainly not in ``parent`` (no need to ask the daemon)."""
        known = self._dirs.get(parent)
        if known is None or not self._current(known):
            return False  # unknown, or unproven for too long: ask (the answer may re-prove it)
        return name not in known.names

    def entry(self, parent: int, name: bytes) -> int | None:
        """The inode ``name`` in ``parent`` certainly names (None: not known here, ask)."""
        known = self._dirs.get(parent)
        if known is None or not self._current(known):
            return None
        return known.names.get(name)
