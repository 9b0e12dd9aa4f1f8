"""dfs/heap.py: glibc's free heap memory goes back to the system once past the threshold."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import trio

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
    trimmed = trio.run(trimmer.step)
    print(json.dumps([before, freed, due, trimmed, rss_mib(), trimmer.trims]))
    """
)


def test_freed_blocks_stay_in_the_rss_until_trimmed() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    before, freed, due, trimmed, after, trims = json.loads(out.stdout)
    assert before >= 200
    assert freed >= before - 20  # free() kept them: the problem this solves
    assert due and trimmed and trims == 1
    assert after <= freed - 150


def test_a_heap_with_little_free_is_left_alone() -> None:
    trimmer = HeapTrimmer(threshold_bytes=1 << 40)
    assert trimmer.available  # Debian's glibc has mallinfo2
    assert 0 <= trimmer.free_bytes() < 1 << 40
    assert not trimmer.due()
    assert trio.run(trimmer.step) is False and trimmer.trims == 0
