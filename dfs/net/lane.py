"""A mount's side of the metadata lane (daemon/service/lane.py).

While the lane is open, :class:`dfs.net.failover.FailoverCaller` sends the
mount's ``meta.once`` calls (its namespace changes) over it; everything else,
and every call while the lane is not open, goes over the mount's connection as
before.  The lane is opened in the background, never in a call's path: ask the
daemon on that connection where the lane is and for a ticket (``meta.lane``),
connect, show the ticket.  A lane that breaks is dropped; the next call finds it
gone and takes the connection, and the lane is opened again.  After a failed
attempt the next waits :data:`RETRY_FIRST_S`, doubling up to :data:`RETRY_MAX_S`
(a daemon on another host names a socket this host does not have, or another
daemon's, which refuses its ticket).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import trio

from dfs.core import endpoints, wire
from dfs.core.endpoints import Caller
from dfs.core.errors import DfsError
from dfs.net.rpc import ConnectFailed, NoReply, RpcClient, parse_address

log = logging.getLogger("dfs.failover")

#: The wait after a failed attempt to open the lane; it doubles with each failure, up to the last.
RETRY_FIRST_S = 10.0
RETRY_MAX_S = 3600.0
_LANE = endpoints.META_LANE.name


class LaneClient:
    """The metadata lane of the daemon behind ``main`` (the mount's connection to it)."""

    def __init__(
        self,
        main: Caller,
        nursery: trio.Nursery,
        *,
        call_timeout_s: float,
        max_frame_bytes: int = wire.MAX_FRAME_BYTES,
    ) -> None:
        self._main = main
        self._nursery = nursery
        self._call_timeout_s = call_timeout_s
        self._max_frame_bytes = max_frame_bytes
        self._client: RpcClient | None = None
        self._opening = False
        self._retry_at = -math.inf
        self._retry_s = RETRY_FIRST_S

    async def call(self, method: str, *args: Any) -> Any:
        """``method(*args)`` over the lane.  ConnectFailed when it is not open (nothing was
        sent: the caller goes over its connection); NoReply when it broke with the call sent."""
        client = self._client
        if client is None or not client.connected:
            # A lane client must not reconnect by itself: its first call must be the ticket.
            self._drop("closed")
            self.reopen()
            raise ConnectFailed("the metadata lane is not open")
        try:
            return await client.call(method, *args)
        except NoReply as exc:
            self._drop(exc.message)
            raise

    def reopen(self) -> None:
        """Open the lane in the background, unless it is open, opening, or failed lately."""
        if self._client is None and not self._opening and trio.current_time() >= self._retry_at:
            self._opening = True
            self._nursery.start_soon(self._open)

    async def _open(self) -> None:
        client: RpcClient | None = None
        try:
            where = await self._main.call(_LANE)
            if not where:
                log.info("the daemon serves no metadata lane: changes go over the connection")
                self._retry_at = math.inf
                return
            client = RpcClient(
                parse_address(f"unix:{where['socket']}", 0),
                self._nursery,
                call_timeout_s=self._call_timeout_s,
                max_frame_bytes=self._max_frame_bytes,
            )
            await client.call(_LANE, where["ticket"])
            self._client, client = client, None
            self._retry_s = RETRY_FIRST_S
            log.debug("metadata lane open at %s", where["socket"])
        except (DfsError, KeyError, TypeError) as exc:
            log.info("cannot open the metadata lane (changes go over the connection): %s", exc)
            self._retry_at = trio.current_time() + self._retry_s
            self._retry_s = min(2 * self._retry_s, RETRY_MAX_S)
        finally:
            self._opening = False
            if client is not None:
                await client.aclose()

    def _drop(self, reason: str) -> None:
        client, self._client = self._client, None
        if client is not None:
            log.info("metadata lane closed (%s): changes go over the connection", reason)
            self._nursery.start_soon(client.aclose)
