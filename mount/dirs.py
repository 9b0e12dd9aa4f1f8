"""Directories whose complete list of names this mount knows, for a short lease.

The kernel looks a name up before every create, mkdir, symlink and rename
target; in a directory this mount made (or keeps changing), the answer is
almost always "no such name", and asking the daemon costs a round trip per
file for untar, rsync, cp -a and the like.

Knowledge starts when this mount creates a directory (it is empty).  Every
change this mount makes there reports the directory's mtime just before and
after the change (a :class:`DirStamp`); if "before" equals the mtime we saw
after our previous change, nobody else touched the directory in between and
our list is still complete, so the lease is renewed.  Any other sign of change
drops the knowledge.  A lease lasts ``lease_s`` (the entry timeout), so a name
another mount creates in such a directory becomes visible here within that
time, the same bound the kernel's own entry cache already gives.

Pure bookkeeping: no I/O, time is injected.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dfs.client import DirStamp


@dataclass
class _Known:
    mtime_ns: int
    expires: float
    names: set[bytes] = field(default_factory=set)


class CompleteDirs:
    def __init__(
        self, lease_s: float, *, max_dirs: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lease_s = lease_s
        self.max_dirs = max_dirs
        self._clock = clock
        self._dirs: OrderedDict[int, _Known] = OrderedDict()

    def __len__(self) -> int:
        return len(self._dirs)

    def made(self, ino: int, mtime_ns: int) -> None:
        """This mount created directory ``ino``: it is empty."""
        if self.lease_s <= 0:
            return
        self._dirs[ino] = _Known(mtime_ns, self._clock() + self.lease_s)
        self._dirs.move_to_end(ino)
        while len(self._dirs) > self.max_dirs:
            self._dirs.popitem(last=False)

    def changed(
        self,
        stamps: Iterable[DirStamp],
        *,
        added: Iterable[tuple[int, bytes]] = (),
        removed: Iterable[tuple[int, bytes]] = (),
    ) -> None:
        """Apply this mount's own change; ``added``/``removed`` are (dir, name) pairs."""
        now = self._clock()
        for st in stamps:
            known = self._dirs.get(st.ino)
            if known is None:
                continue
            if known.mtime_ns != st.mtime_before_ns or known.expires <= now:
                del self._dirs[st.ino]  # someone else changed it, or the lease ran out
                continue
            known.mtime_ns = st.mtime_after_ns
            known.expires = now + self.lease_s
        for ino, name in added:
            known = self._dirs.get(ino)
            if known is not None:
                known.names.add(name)
        for ino, name in removed:
            known = self._dirs.get(ino)
            if known is not None:
                known.names.discard(name)

    def forget(self, ino: int) -> None:
        self._dirs.pop(ino, None)

    def absent(self, parent: int, name: bytes) -> bool:
        """True if ``name`` is certainly not in ``parent`` (no need to ask the daemon)."""
        known = self._dirs.get(parent)
        if known is None:
            return False
        if known.expires <= self._clock():
            del self._dirs[parent]
            return False
        return name not in known.names
