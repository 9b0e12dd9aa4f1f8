"""Where the daemon's blocking work runs: the one metadata thread, and the chunk-I/O threads.

- :class:`MetaWorker`: every metadata transaction that writes runs in one
  dedicated thread on the writer connection, so commits never block the event
  loop.  The hand-off is a queue plus ``run_sync_soon``, about half the cost of
  ``trio.to_thread``.  The metadata lane's threads (daemon/service/lane.py) run
  their transactions on the same connection under the worker's lock
  (:meth:`MetaWorker.holding`), one at a time with the worker's.
- :class:`ChunkThreads`: chunk I/O (read, verify, write, fsync) runs in worker
  threads under its own limiter (the chunk store is thread-safe); repair and
  hot-chunk copies share the limiter, so together they never take more threads.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

CHUNK_THREADS = 8


class MetaWorker:
    """One thread that runs every metadata call, in arrival order."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], trio.lowlevel.Task] | None] = (
            queue.SimpleQueue()
        )
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        # Called in the metadata thread with (operation, seconds) after each transaction.
        self.observe: Callable[[str, float], None] | None = None
        # Held around every transaction, the worker's and the lane's (one writer at a time).
        self._lock = threading.Lock()

    def _loop(self) -> None:
        token = self._token
        assert token is not None
        while (item := self._queue.get()) is not None:
            fn, task = item
            inner = getattr(fn, "func", fn)
            with self.holding(getattr(inner, "__name__", "call")):
                result = outcome.capture(fn)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                return

    @contextlib.contextmanager
    def holding(self, name: str) -> Iterator[None]:
        """Within: no other transaction runs (in this thread or another); ``observe`` is told
        how long it took, under ``name``."""
        with self._lock:
            started = time.perf_counter()
            try:
                yield
            finally:
                if self.observe is not None:
                    self.observe(name, time.perf_counter() - started)

    async def run(self, fn: Callable[[], T]) -> T:
        if self._thread is None:
            self._token = trio.lowlevel.current_trio_token()
            self._thread = threading.Thread(target=self._loop, name="dfs-meta", daemon=True)
            self._thread.start()
        await trio.lowlevel.checkpoint_if_cancelled()
        self._queue.put((fn, trio.lowlevel.current_task()))

        def abort(_: Any) -> trio.lowlevel.Abort:
            # A metadata transaction is short and must not be torn: it always finishes.
            return trio.lowlevel.Abort.FAILED

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


class ChunkThreads:
    """Worker threads for chunk-store calls, at most ``limit`` at once."""

    def __init__(self, limit: int = CHUNK_THREADS) -> None:
        self.limiter = trio.CapacityLimiter(limit)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args), limiter=self.limiter)
