"""Background loops as worker objects: each runs one short step at a time and remembers what
it last did, for ``status()``.

Every daemon runs a few loops (garbage collection, session expiry, op-log
trimming, the orphan sweep, multipart upload expiry, layout registration and
the layout controller).  They share one shape: wait, do one bounded unit of
work, and never let a failure end the loop, since the next run may well
succeed.  A :class:`Periodic` waits a fixed interval before each step; a
:class:`Retrying` runs its step at once and retries a failed one soon (with
backoff), a successful one only now and then.  The node starts each in its
nursery; cancelling the nursery stops them.

``status()`` answers what an operator asks of a loop: has it run, when, how
long did it take, what did it find, and what went wrong last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

import trio

from dfs.core.errors import DfsError

log = logging.getLogger("dfs.daemon")


@dataclass
class WorkerStatus:
    """What a worker last did (times are Unix seconds; None: not yet)."""

    name: str
    runs: int = 0
    failures: int = 0
    last_started: float | None = None
    last_seconds: float | None = None
    last_result: Any = None  # the step's answer when it is a plain value (a count, a flag)
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plain(value: Any) -> Any:
    """A step's result as status reports it: plain values as they are, anything else by type."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str | int) for v in value):
        return list(value)
    return type(value).__name__


class _Worker:
    """One loop's step and its record; subclasses decide when the step runs."""

    def __init__(self, name: str, step: Callable[[], Awaitable[Any]]) -> None:
        self.name = name
        self._step = step
        self._status = WorkerStatus(name)

    def status(self) -> dict[str, Any]:
        return self._status.as_dict()

    async def run_once(self) -> bool:
        """One step now, outside the loop's schedule; True if it finished and did not answer False."""
        finished, result = await self._attempt()
        return finished and result is not False

    async def _attempt(self) -> tuple[bool, Any]:
        """Run the step once: (it finished without an error, its result)."""
        st = self._status
        st.runs += 1
        st.last_started = time.time()
        started = time.perf_counter()
        try:
            result = await self._step()
        except DfsError as exc:
            log.warning("%s failed: %s", self.name, exc.message)
            return self._failed(exc.message, started)
        except Exception as exc:
            # Never end the loop: the next step may succeed (a peer is back, a disk has room).
            log.exception("%s failed", self.name)
            return self._failed(f"{type(exc).__name__}: {exc}", started)
        st.last_seconds = time.perf_counter() - started
        st.last_result = _plain(result)
        st.last_error = None
        return True, result

    def _failed(self, error: str, started: float) -> tuple[bool, Any]:
        st = self._status
        st.failures += 1
        st.last_seconds = time.perf_counter() - started
        st.last_result = None
        st.last_error = error
        return False, None


class Periodic(_Worker):
    """Runs ``step`` every ``interval_s``, the first time one interval after it starts."""

    def __init__(self, name: str, interval_s: float, step: Callable[[], Awaitable[Any]]) -> None:
        super().__init__(name, step)
        self.interval_s = interval_s

    def status(self) -> dict[str, Any]:
        return {**super().status(), "interval_s": self.interval_s}

    async def run(self) -> NoReturn:
        while True:
            await trio.sleep(self.interval_s)
            await self._attempt()


class Retrying(_Worker):
    """Runs ``step`` at once; after a success again every ``ok_interval_s``, after a failure (it
    raised, or answered False) sooner: ``first_retry_s`` doubled each time, up to ``max_retry_s``."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[bool]],
        *,
        ok_interval_s: float,
        first_retry_s: float = 0.2,
        max_retry_s: float = 5.0,
    ) -> None:
        super().__init__(name, step)
        self.ok_interval_s = ok_interval_s
        self.first_retry_s = first_retry_s
        self.max_retry_s = max_retry_s

    async def run(self) -> NoReturn:
        delay = self.first_retry_s
        while True:
            if await self.run_once():
                delay = self.ok_interval_s
            else:
                delay = min(delay * 2, self.max_retry_s)
            await trio.sleep(delay)
