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

Beside the attributes, the block map of a file closed here (:meth:`park_map`),
valid exactly as long as its attributes are held: a read-only open of it (rsync's
open-fchmod before its rename, a reader after the kernel dropped its caches) then
needs no call.  A map is dropped as soon as a held size differs from the size it
was parked with, and by a truncation here (:meth:`drop_map`), since truncating
and growing back would keep the size but not the bytes.

Pure bookkeeping: no I/O.
"""

from __future__ import annotations

from collections import OrderedDict

from dfs.core.namespace import Attr, BlockRef, FileMap


class AttrCache:
    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        max_maps: int = 16_384,
        max_inline_bytes: int = 32 << 20,
        max_map_blocks: int = 1024,
    ) -> None:
        self.max_entries = max_entries
        self.max_maps = max_maps
        # A larger file's map is asked for again: one call is nothing beside reading it, and
        # a few thousand maps of very large files would hold a lot of memory.
        self.max_map_blocks = max_map_blocks
        self.max_inline_bytes = max_inline_bytes
        self._attrs: dict[int, Attr] = {}
        # inode -> (size, inline bytes, blocks) of a file closed here, least recently used first
        self._maps: OrderedDict[int, tuple[int, bytes | None, list[BlockRef]]] = OrderedDict()
        self._inline_bytes = 0
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
                self._clear_maps()
            self._attrs[ino] = attr
            parked = self._maps.get(ino)
            if parked is not None and parked[0] != attr.size:
                self.drop_map(ino)  # the bytes changed somehow: never trust this map again
        if left:
            self._inflight[ino] = left
        else:
            del self._inflight[ino]
            self._spoiled.discard(ino)

    def drop(self, ino: int) -> None:
        self._attrs.pop(ino, None)
        self.drop_map(ino)
        if ino in self._inflight:
            self._spoiled.add(ino)

    def clear(self) -> None:
        self._attrs.clear()
        self._clear_maps()
        self._spoiled.update(self._inflight)

    def park_map(self, ino: int, size: int, inline: bytes | None, blocks: list[BlockRef]) -> None:
        """``ino`` was closed here with this content; kept while its held attributes say
        ``size`` (not if they are not held, or a fetch of them is in flight)."""
        self.drop_map(ino)
        attr = self._attrs.get(ino)
        if attr is None or attr.size != size or ino in self._inflight or len(blocks) > self.max_map_blocks:
            return
        self._maps[ino] = (size, inline, blocks)
        self._inline_bytes += len(inline or b"")
        while len(self._maps) > self.max_maps or self._inline_bytes > self.max_inline_bytes:
            _, (_, old, _) = self._maps.popitem(last=False)
            self._inline_bytes -= len(old or b"")

    def file_map(self, ino: int) -> FileMap | None:
        """The parked map of ``ino`` with its held attributes, if both are still current."""
        parked = self._maps.get(ino)
        attr = self._attrs.get(ino)
        if parked is None or attr is None or attr.size != parked[0]:
            return None
        self._maps.move_to_end(ino)
        return FileMap(attr, parked[1], parked[2])

    def drop_map(self, ino: int) -> None:
        parked = self._maps.pop(ino, None)
        if parked is not None:
            self._inline_bytes -= len(parked[1] or b"")

    def _clear_maps(self) -> None:
        self._maps.clear()
        self._inline_bytes = 0
