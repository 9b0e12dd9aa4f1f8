"""The in-process caller (daemon/service/local.py): handlers see what a socket would deliver."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.service.local import LocalCaller
from dfs.core import wire
from dfs.core.errors import UnknownMethod


async def test_pieces_reach_a_handler_as_bytes() -> None:
    seen: list[Any] = []

    async def put(chunk_id: bytes, blob: bytes) -> bool:
        seen.append(blob)
        return True

    caller = LocalCaller({"chunk.put": put}, {"chunk.has": lambda ids: [False for _ in ids]})
    assert await caller.call("chunk.put", b"i" * 32, wire.Pieces([b"head", b"body" * 100]))
    assert seen == [b"head" + b"body" * 100] and type(seen[0]) is bytes
    assert await caller.call("chunk.has", [b"i" * 32]) == [False]
    with pytest.raises(UnknownMethod):
        await caller.call("no.such.method")
