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

Once a second :class:`HeapTrimmer` asks glibc how much it holds free
(``mallinfo2``) and trims past a threshold; when that gives little back it
asks less often, so a process that frees little hardly pays for it.
Without glibc 2.33 (no ``mallinfo2``) it does nothing.

:func:`leave_trimming_to_the_trimmer` makes that trimmer the only one.  Left to
itself glibc raises its mmap threshold to a block's size after the first is
freed, and with it the threshold at which ``free`` shrinks the top of a heap (to
twice that): a burst of blocks freed at the top went back to the system at once,
and the next burst faulted every page in again.  It did not happen in every run:
writing a fresh GiB cost the daemon 41,000-97,000 page faults in four runs
alternating with four with the thresholds fixed (16,000-21,000); of the old
code's thirteen runs that hour the first eight were high, the last five low.
The fixed thresholds (blocks up to 32 MiB from the heaps, no trimming by
``free``) keep the pages for the next blocks; the trimmer still hands back what
stays free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from typing import NoReturn

import trio

log = logging.getLogger("dfs.heap")

MiB = 1024 * 1024
# Trim once glibc holds this much free; below it the pages are likely reused soon anyway.
TRIM_FREE_BYTES = 64 * MiB
TRIM_INTERVAL_S = 1.0
TRIM_MAX_INTERVAL_S = 16.0
# Allocations up to this size come from the heaps (a block, a frame, a buffer), not from mmap.
MMAP_THRESHOLD_BYTES = 32 * MiB
# free() never shrinks a heap: that is the trimmer's job.
FREE_TRIM_THRESHOLD_BYTES = 2**31 - 1  # the largest mallopt takes
_M_TRIM_THRESHOLD = -1  # mallopt(3)
_M_MMAP_THRESHOLD = -3


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE_BYTES


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


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


def _glibc() -> ctypes.CDLL | None:
    """The C library, if it is a glibc with ``mallinfo2`` (2.33 or later)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        libc.mallinfo2.argtypes = []
        libc.malloc_trim.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.restype = ctypes.c_int
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None  # not glibc, or older than 2.33
    return libc


def leave_trimming_to_the_trimmer() -> bool:
    """At a process's start, before it allocates blocks: glibc's thresholds fixed (the module
    docstring), so memory freed goes back only through a :class:`HeapTrimmer`, which the
    process must then run.  Whether glibc took them."""
    libc = _glibc()
    if libc is None:
        return False
    mmap_set: int = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    trim_set: int = libc.mallopt(_M_TRIM_THRESHOLD, FREE_TRIM_THRESHOLD_BYTES)
    return mmap_set == 1 and trim_set == 1


class HeapTrimmer:
    """Trims glibc's heaps when they hold more than ``threshold_bytes`` free."""

    def __init__(self, threshold_bytes: int = TRIM_FREE_BYTES) -> None:
        self.threshold_bytes = threshold_bytes
        self.trims = 0
        self._wait_s = TRIM_INTERVAL_S
        self._next_check = 0.0  # time.monotonic()
        self._rss_checked = 0  # the RSS after the last check: growth past the threshold checks at once
        self._libc = _glibc()

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

    def trim_if_due(self) -> int:
        """:meth:`trim` if :meth:`due`: the bytes of RSS it gave back (0: not due)."""
        if not self.due():
            return 0
        before = _rss_bytes()
        self.trim()
        return max(0, before - _rss_bytes())

    async def step(self) -> int:
        """:meth:`trim_if_due` in a worker thread (asking glibc walks its free lists, no work for
        the event loop).  When the last checks gave little back, checks come less often, up to
        every ``TRIM_MAX_INTERVAL_S`` (a trim of freed memory already given back still walks
        every free chunk: 50 ms for 100,000 of them), unless the process grew by the threshold
        since the last one.  Answers the bytes given back."""
        if time.monotonic() < self._next_check and _rss_bytes() < self._rss_checked + self.threshold_bytes:
            return 0  # backing off, and the process has not grown since the last check
        released = await trio.to_thread.run_sync(self.trim_if_due)
        self._rss_checked = _rss_bytes()
        if released >= self.threshold_bytes // 4:
            self._wait_s = TRIM_INTERVAL_S
        else:
            self._wait_s = min(2 * self._wait_s, TRIM_MAX_INTERVAL_S)
        # Less a margin: step() comes every TRIM_INTERVAL_S, never sooner.
        self._next_check = time.monotonic() + self._wait_s - TRIM_INTERVAL_S / 2
        return released

    async def run(self) -> NoReturn:
        """:meth:`step` every ``TRIM_INTERVAL_S``."""
        while True:
            await trio.sleep(TRIM_INTERVAL_S)
            await self.step()
