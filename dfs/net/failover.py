"""Metadata calls that outlive the daemon a client talks to (``mount.dfs h1,h2,h3:/``), and a
daemon's restart or its metadata database's failover.

A client named several daemons switches to the next one when its daemon goes
away; a client of one daemon waits for it to come back.  Either way a call is
sent again only when that cannot apply it twice:

- its connection could not be made (the request never left);
- it only reads, or repeating it changes nothing more (declared ``repeatable``);
- it is a change declared ``once``: it travels inside ``meta.once`` with a
  request id this caller made, and a repeat (``retried``) of that id is answered
  with the first run's result by whichever daemon gets it (the database keeps the
  record, see daemon/meta/requests.py).

Other changes whose connection was lost after sending fail (the caller sees
EIO); the next call goes to the next daemon.  Calls are sent again for at most
``retry_window_s`` ([meta] failover_timeout_s): longer than a daemon restart or a
PostgreSQL failover takes, and far shorter than the daemons keep request records.

Only metadata goes through here.  Chunk copies stay tied to the node they
are addressed to (:class:`dfs.client.chunks.ChunkIO`), so a copy counted as being
on one host is never stored on another.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Sequence
from typing import Any

import trio

from dfs.core import endpoints
from dfs.core.endpoints import Caller
from dfs.net.rpc import ConnectFailed, NoReply

log = logging.getLogger("dfs.failover")
# Its own generator: the process-wide one belongs to whoever seeded it (tests, hypothesis),
# and draws from worker threads would perturb it.
_JITTER = random.Random()

# Calls safe to repeat on another daemon after a lost reply: those that only read, and those
# whose repetition changes nothing more (declared in dfs/core/endpoints.py).
READ_ONLY = frozenset(name for name, ep in endpoints.ALL.items() if ep.repeatable)
# Changes sent inside meta.once, with a request id: exactly once however often they are sent.
ONCE = frozenset(name for name, ep in endpoints.ALL.items() if ep.once)
_ONCE_METHOD = endpoints.META_ONCE.name
_REQUEST_ID_BYTES = endpoints.REQUEST_ID_BYTES[0]  # the shortest id a daemon takes
# The pause before a call goes again to a daemon that was just tried: doubles up to the last.
_PAUSE_FIRST_S = 0.05
_PAUSE_MAX_S = 1.0


class FailoverCaller:
    """Calls the current daemon of ``clients``; moves to the next when it is unreachable."""

    def __init__(
        self, clients: Sequence[Caller], names: Sequence[str], *, retry_window_s: float = 60.0
    ) -> None:
        if not clients or len(clients) != len(names):
            raise ValueError("one name per client, at least one client")
        self._clients = list(clients)
        self._names = list(names)
        self._index = 0
        self._retry_window_s = retry_window_s
        self._waiting = True
        self.switches = 0
        #: The metadata lane of the first daemon (dfs/net/lane.py), when it has one: changes
        #: go there while it is open and that daemon is the current one.
        self.lane: Caller | None = None

    @property
    def current(self) -> str:
        return self._names[self._index]

    def stop_waiting(self) -> None:
        """From now on a call that found no daemon fails at once (as the client winds down: an
        unmount while its daemon stops too must not wait out the retry window)."""
        self._waiting = False

    def _move_on(self, failed: int, reason: str) -> None:
        if self._index != failed or len(self._clients) == 1:
            return  # another call already moved on, or there is nowhere to go
        self._index = (failed + 1) % len(self._clients)
        self.switches += 1
        log.warning(
            "daemon %s unreachable (%s): metadata calls go to %s now",
            self._names[failed],
            reason,
            self._names[self._index],
        )

    async def call(self, method: str, *args: Any) -> Any:
        once = method in ONCE
        repeatable = once or method in READ_ONLY
        if once:
            wire_args: tuple[Any, ...] = (secrets.token_bytes(_REQUEST_ID_BYTES), False, method, list(args))
            method = _ONCE_METHOD
            if self.lane is not None and self._index == 0:
                try:
                    return await self.lane.call(method, *wire_args)
                except ConnectFailed:
                    pass  # not sent: over the connection
                except NoReply:
                    # Maybe applied: over the connection, as a repeat (answered from the record).
                    wire_args = (wire_args[0], True, *wire_args[2:])
        else:
            wire_args = args
        deadline = trio.current_time() + self._retry_window_s
        pause_s = _PAUSE_FIRST_S
        tried = 0
        while True:
            index = self._index
            try:
                return await self._clients[index].call(method, *wire_args)
            except ConnectFailed as exc:
                error: NoReply = exc
                sent = False
            except NoReply as exc:  # lost connection or timeout (the daemon's own errors pass)
                error = exc
                sent = True
            tried += 1
            self._move_on(index, error.message)
            if sent and not repeatable:
                raise error
            if sent and once:
                wire_args = (wire_args[0], True, *wire_args[2:])  # a record may exist now
            if not repeatable and tried >= len(self._clients):
                raise error  # every daemon refused the connection: nothing to wait for
            if not self._waiting or trio.current_time() >= deadline:
                raise error
            if tried % len(self._clients) == 0:
                # Every daemon was tried since the last pause: wait for one to come back.
                await trio.sleep(min(_JITTER.uniform(0.5, 1.0) * pause_s, deadline - trio.current_time()))
                pause_s = min(2 * pause_s, _PAUSE_MAX_S)
