"""Giving memory the process freed back to the system.

glibc serves the large allocations a block's life is made of (4 MiB frames,
buffers, encoded chunks) from its heaps once they have been freed a few times
(its mmap threshold rises to fit them), and keeps what is freed in the middle
of a heap for the next allocation instead of returning it.  A mount whose
cache and write buffers let go of hundreds of MiB so kept them in its RSS: in
the benchmark workload's fio and parallel steps the mount's RSS was 700 MiB
while the blocks it held came to about 400.  ``malloc_trim`` hands the free
pages back (their address space stays, so a later allocation there faults
them in again).

:class:`HeapTrimmer` asks glibc how much it holds free (``mallinfo2``, cheap)
and trims only past a threshold, so a process that frees little never pays
for it.  Without glibc 2.33 (no ``mallinfo2``) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from typing import NoReturn

import trio

log = logging.getLogger("dfs.heap")

MiB = 1024 * 1024
# Trim once glibc holds this much free; below it the pages are likely reused soon anyway.
TRIM_FREE_BYTES = 64 * MiB
TRIM_INTERVAL_S = 1.0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",  # free bytes in the heaps
            "keepcost",
        )
    ]


class HeapTrimmer:
    """Trims glibc's heaps when they hold more than ``threshold_bytes`` free."""

    def __init__(self, threshold_bytes: int = TRIM_FREE_BYTES) -> None:
        self.threshold_bytes = threshold_bytes
        self.trims = 0
        self._libc: ctypes.CDLL | None = None
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6")
            libc.mallinfo2.restype = _MallInfo2
            libc.mallinfo2.argtypes = []
            libc.malloc_trim.restype = ctypes.c_int
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            return  # not glibc, or older than 2.33
        self._libc = libc

    @property
    def available(self) -> bool:
        return self._libc is not None

    def free_bytes(self) -> int:
        """Bytes glibc's heaps hold free (released pages among them); 0 without glibc."""
        if self._libc is None:
            return 0
        return int(self._libc.mallinfo2().fordblks)

    def trim(self) -> None:
        """Hand the heaps' free pages back to the system (blocks other threads' allocations
        for as long as it runs: up to about 20 ms after a few hundred MiB were freed)."""
        if self._libc is not None:
            started = time.perf_counter()
            self._libc.malloc_trim(0)
            self.trims += 1
            log.debug("heap trimmed in %.1f ms", (time.perf_counter() - started) * 1000)

    def due(self) -> bool:
        return self.free_bytes() > self.threshold_bytes

    async def step(self) -> bool:
        """Trim (in a worker thread) if due; True if it did."""
        if not self.due():
            return False
        await trio.to_thread.run_sync(self.trim)
        return True

    async def run(self, interval_s: float = TRIM_INTERVAL_S) -> NoReturn:
        """:meth:`step` every ``interval_s``."""
        while True:
            await trio.sleep(interval_s)
            await self.step()
