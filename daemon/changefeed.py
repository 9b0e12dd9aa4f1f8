"""The daemon's side of change notices (:mod:`dfs.core.changes`): a thin trio adapter.

``record`` + ``settle`` run after each metadata change (MetaCalls.run on the
primary, the forwarders on a secondary); ``poll`` serves ``ns.changes``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import trio

from dfs.core.changes import Answer, Change, ChangeLog
from dfs.core.errors import InvalidArgument

log = logging.getLogger("dfs.daemon")

#: How long a change waits for mounts to apply it.  A mount slower than that (stuck, or on
#: a starved machine) is not waited for until it catches up, and until it has applied the
#: change its kernel may still answer from what it cached before: a bounded stall for
#: everyone else is worth more than that window.
ACK_WAIT_S = 1.0
#: The longest a poll may hang; mounts ask for less than their RPC call timeout.
MAX_POLL_S = 60.0
#: Changes per answer, so an answer stays well below the frame limit.
BATCH = 1024
#: A subscriber that has not polled for this long is forgotten.
IDLE_S = 120.0


class ChangeFeed:
    def __init__(
        self, changelog: ChangeLog | None = None, *, ack_wait_s: float = ACK_WAIT_S, complete: bool = False
    ) -> None:
        self.log = changelog if changelog is not None else ChangeLog()
        self.ack_wait_s = ack_wait_s
        # Every namespace change reaches this feed (see Answer.complete), not only this daemon's.
        self.complete = complete
        self._appended = trio.Event()  # set (and replaced) when changes are recorded
        self._progress = trio.Event()  # set (and replaced) when a wait may be over

    def _wake_polls(self) -> None:
        self._appended.set()
        self._appended = trio.Event()

    def _wake_waiters(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def record(self, changes: list[Change], origin: int | None) -> int | None:
        """Publish changes ``origin`` made; the seq to :meth:`settle` on (None: nothing to wait for)."""
        if not changes:
            return None
        seq = self.log.append(changes, origin)
        if self.log.news(origin):
            self._wake_polls()
        return seq

    def others_listening(self, origin: int | None) -> bool:
        """Whether a change by ``origin`` may have to wait for another mount (any thread may ask:
        see ChangeLog.listeners_besides)."""
        return self.log.listeners_besides(origin)

    @contextlib.contextmanager
    def busy(self, origin: int | None) -> Iterator[None]:
        """Around a change by ``origin``: nobody waits for its acknowledgements meanwhile."""
        if origin is None:
            yield
            return
        self.log.busy(origin)
        self._wake_waiters()
        try:
            yield
        finally:
            self.log.idle(origin)
            self._wake_waiters()

    async def settle(self, seq: int, origin: int | None) -> None:
        """Return once every attached mount (but ``origin``) has applied change ``seq``."""
        if not self.log.waiting_on(seq, origin):
            return  # the common case (no other mount): no cancel scope to set up
        with trio.move_on_after(self.ack_wait_s):
            while self.log.waiting_on(seq, origin):
                await self._progress.wait()
            return
        late = self.log.waiting_on(seq, origin)
        if late:
            log.info(
                "%d mount(s) did not apply a change within %gs: not waiting for them",
                len(late),
                self.ack_wait_s,
            )
            self.log.give_up_on(late)

    async def poll(self, sub: int | None, epoch: str, cursor: int, wait_s: float) -> dict[str, Any]:
        """``ns.changes``: the changes after ``cursor`` (acknowledging those before), waiting up
        to ``wait_s`` for some to happen."""
        if sub is None:
            raise InvalidArgument("ns.changes is served to RPC clients only")
        changelog = self.log
        now = trio.current_time()
        changelog.prune(now, IDLE_S)
        if epoch != changelog.epoch:
            # A new subscriber, or one that knew another daemon run: it drops all it caches.
            changelog.attach(sub, 0, now)
            changelog.detach(sub, now, gone=False)
            return Answer(changelog.epoch, changelog.head, True, [], self.complete).to_wire()
        changelog.attach(sub, cursor, now)
        self._wake_waiters()
        gone = True
        try:
            with trio.move_on_after(min(max(wait_s, 0.0), MAX_POLL_S)):
                while True:
                    batch = changelog.read(cursor, reader=sub, limit=BATCH)
                    if batch.reset or batch.changes:
                        break
                    if batch.cursor != cursor:
                        # Only the subscriber's own changes: nothing to tell, but they count as applied.
                        cursor = batch.cursor
                        changelog.ack(sub, cursor)
                        self._wake_waiters()
                    await self._appended.wait()
            batch = changelog.read(cursor, reader=sub, limit=BATCH)
            gone = False
        finally:
            # Cancelled: the connection closed (or the daemon stops), so nobody waits for it.
            changelog.detach(sub, trio.current_time(), gone=gone)
        return Answer(changelog.epoch, batch.cursor, batch.reset, batch.changes, self.complete).to_wire()
