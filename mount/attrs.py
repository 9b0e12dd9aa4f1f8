"""Attributes of inodes not open here, as the daemon last reported them.

While the daemon's change notices are complete (``Operations.coherent``), the
mount answers the kernel's getattr from here: after a rename made here the
kernel drops the moved inode's attributes (its ctime changed, and the rename's
directory stamps say to what), and rsync's second run would otherwise ask the
daemon once per file.

Every change drops what it touches: notices from elsewhere (mount/coherence.py)
and this mount's own changes (mount/fs.py).  A fetch that was in flight when
its inode was dropped is not kept (:meth:`begin`/:meth:`end`), so an answer
older than a change can never be stored after it.

Pure bookkeeping: no I/O.
"""

from __future__ import annotations

from dfs.core.namespace import Attr


class AttrCache:
    def __init__(self, *, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._attrs: dict[int, Attr] = {}
        self._inflight: dict[int, int] = {}  # inode -> fetches begun and not ended
        self._spoiled: set[int] = set()  # in flight, and dropped since they began

    def __len__(self) -> int:
        return len(self._attrs)

    def get(self, ino: int) -> Attr | None:
        return self._attrs.get(ino)

    def begin(self, ino: int) -> None:
        """A call that will report ``ino``'s attributes is about to be sent."""
        self._inflight[ino] = self._inflight.get(ino, 0) + 1

    def end(self, ino: int, attr: Attr | None) -> None:
        """That call ended: keep ``attr`` (None: nothing to keep) unless ``ino`` was dropped
        meanwhile.  Call it exactly once per :meth:`begin`, also on failure."""
        left = self._inflight[ino] - 1
        if attr is not None and ino not in self._spoiled:
            if len(self._attrs) >= self.max_entries:
                self._attrs.clear()
            self._attrs[ino] = attr
        if left:
            self._inflight[ino] = left
        else:
            del self._inflight[ino]
            self._spoiled.discard(ino)

    def drop(self, ino: int) -> None:
        self._attrs.pop(ino, None)
        if ino in self._inflight:
            self._spoiled.add(ino)

    def clear(self) -> None:
        self._attrs.clear()
        self._spoiled.update(self._inflight)
