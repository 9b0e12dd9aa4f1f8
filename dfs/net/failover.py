"""Metadata calls that outlive the daemon a client talks to (``mount.dfs h1,h2,h3:/``).

Any daemon forwards metadata calls to the metadata primary, so a client
named several may switch to the next one when its daemon goes away.  A call
is sent again elsewhere only when that cannot apply it twice: its connection
could not be made (the request never left), or it only reads.  A call that
changes something and lost its connection after sending fails (the caller
sees EIO, as after any daemon crash); the next call goes to the next daemon.

Only metadata goes through here.  Chunk copies stay tied to the node they
are addressed to (:class:`dfs.client.chunks.ChunkIO`), so a copy counted as being
on one host is never stored on another.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from dfs.core import endpoints
from dfs.core.endpoints import Caller
from dfs.net.rpc import ConnectFailed, NoReply

log = logging.getLogger("dfs.failover")

# Calls safe to repeat on another daemon after a lost reply: those that only read, and those
# whose repetition changes nothing more (declared in dfs/core/endpoints.py).
READ_ONLY = frozenset(name for name, ep in endpoints.ALL.items() if ep.repeatable)


class FailoverCaller:
    """Calls the current daemon of ``clients``; moves to the next when it is unreachable."""

    def __init__(self, clients: Sequence[Caller], names: Sequence[str]) -> None:
        if not clients or len(clients) != len(names):
            raise ValueError("one name per client, at least one client")
        self._clients = list(clients)
        self._names = list(names)
        self._index = 0
        self.switches = 0

    @property
    def current(self) -> str:
        return self._names[self._index]

    def _move_on(self, failed: int, reason: str) -> None:
        if self._index != failed:
            return  # another call already moved on
        self._index = (failed + 1) % len(self._clients)
        self.switches += 1
        log.warning(
            "daemon %s unreachable (%s): metadata calls go to %s now",
            self._names[failed],
            reason,
            self._names[self._index],
        )

    async def call(self, method: str, *args: Any) -> Any:
        tries = 0
        while True:
            index = self._index
            try:
                return await self._clients[index].call(method, *args)
            except ConnectFailed as exc:
                error: NoReply = exc
                sent = False
            except NoReply as exc:  # lost connection or timeout (the daemon's own errors pass)
                error = exc
                sent = True
            tries += 1
            if len(self._clients) == 1:
                raise error
            self._move_on(index, error.message)
            if tries >= len(self._clients) or (sent and method not in READ_ONLY):
                raise error
