"""dfs/heap.py: glibc's free heap memory goes back to the system once past the threshold."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import trio

from dfs import heap
from dfs.heap import HeapTrimmer

# In a process of its own (the test runner's heap is not ours to judge): fragment the heap with
# 1 MiB blocks pinned apart by small long-lived ones, free the blocks, then trim.
_SCRIPT = textwrap.dedent(
    """
    import json
    import trio
    from dfs.heap import HeapTrimmer

    def rss_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024

    big = bytearray(4 << 20)
    del big  # a freed mmapped block raises glibc's threshold: smaller blocks come from the heap
    blocks, pins = [], []
    for _ in range(200):
        blocks.append(bytearray(1 << 20))
        blocks[-1][:] = b"x" * (1 << 20)  # touched: in the RSS
        pins.append(bytearray(2000))  # keeps the freed blocks in the middle of the heap
    before = rss_mib()
    blocks.clear()
    trimmer = HeapTrimmer(threshold_bytes=64 << 20)
    freed = rss_mib()
    due = trimmer.due()
    released = trio.run(trimmer.step)
    again = trio.run(trimmer.step)  # within the interval: no second look
    print(json.dumps([before, freed, due, released >> 20, again, rss_mib(), trimmer.trims]))
    """
)


def test_freed_blocks_stay_in_the_rss_until_trimmed() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    before, freed, due, released_mib, again, after, trims = json.loads(out.stdout)
    assert before >= 200
    assert freed >= before - 20  # free() kept them: the problem this solves
    assert due and trims == 1 and again == 0
    assert after <= freed - 150 and released_mib >= 150


def test_a_heap_with_little_free_is_left_alone() -> None:
    trimmer = HeapTrimmer(threshold_bytes=1 << 40)
    assert trimmer.available  # Debian's glibc has mallinfo2
    assert 0 <= trimmer.free_bytes() < 1 << 40
    assert not trimmer.due()
    assert trio.run(trimmer.step) == 0 and trimmer.trims == 0


def test_checks_that_give_nothing_back_come_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(heap.time, "monotonic", lambda: now[0])
    trimmer = HeapTrimmer(threshold_bytes=1 << 40)
    looked: list[float] = []
    monkeypatch.setattr(trimmer, "trim_if_due", lambda: looked.append(now[0]) or 0)
    for _ in range(40):  # forty seconds of steps, one a second
        trio.run(trimmer.step)
        now[0] += heap.TRIM_INTERVAL_S
    # Waits of 2, 4, 8, then 16 s.
    assert [t - 1000 for t in looked] == [0, 2, 6, 14, 30]
    # Unless the process grew by the threshold since the last look.
    trimmer.threshold_bytes = 1 << 20
    grown = heap._rss_bytes() + (4 << 20)
    monkeypatch.setattr(heap, "_rss_bytes", lambda: grown)
    looked.clear()
    for _ in range(3):
        trio.run(trimmer.step)
        now[0] += heap.TRIM_INTERVAL_S
    assert [t - 1000 for t in looked] == [40]  # then it stays the same size: backing off again


# Bursts of 4 MiB blocks allocated and freed together, as a write fills and stores them; the
# page faults of the bursts after the first, in a process of its own.
_BURSTS = textwrap.dedent(
    """
    import resource, sys
    from dfs import heap

    took = heap.leave_trimming_to_the_trimmer() if sys.argv[1] == "fixed" else None

    def burst():
        blocks = [bytearray(4 << 20) for _ in range(16)]  # zeroed: every page touched
        del blocks

    burst()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        burst()
    print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _burst_faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _BURSTS, mode], capture_output=True, text=True, check=True, timeout=60
    )
    took, faults = out.stdout.split()
    return took, int(faults)


def test_freed_blocks_are_reused_without_faulting_them_in_again() -> None:
    # glibc alone hands a burst freed at the top of the heap back at once: each next burst
    # faults all its 16,384 pages in again.
    assert _burst_faults("glibc")[1] >= 10 * 16 * 1024 // 2
    # With the thresholds fixed, the next bursts reuse the pages (the trimmer gives back what
    # stays free).
    took, faults = _burst_faults("fixed")
    assert took == "True"
    assert faults < 16 * 1024 // 4
