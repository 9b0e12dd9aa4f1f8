"""The in-process caller: the S3 shim and the admin API call the service's handlers through it
as their ``dfs.client.Client`` transport, skipping serialization and sockets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from dfs.core import wire
from dfs.core.errors import UnknownMethod

Handler = Callable[..., Awaitable[Any]]


class LocalCaller:
    """Calls a handler table directly: inline reads at once, the rest as the RPC server would."""

    def __init__(self, handlers: dict[str, Handler], inline: dict[str, Callable[..., Any]]) -> None:
        self._handlers = handlers
        self._inline = inline

    async def call(self, method: str, *args: Any) -> Any:
        if any(type(a) is wire.Pieces for a in args):
            # A chunk encoded in parts for a socket (see wire.Pieces): handlers take bytes.
            args = tuple(bytes(a) if type(a) is wire.Pieces else a for a in args)
        fn = self._inline.get(method)
        if fn is not None:
            await trio.lowlevel.checkpoint()
            return fn(*args)
        handler = self._handlers.get(method)
        if handler is None:
            raise UnknownMethod(f"unknown method {method!r}")
        return await handler(*args)
