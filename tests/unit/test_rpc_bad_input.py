"""RPC edge cases the fuzz tier (tests/fuzz) found: declared argument counts and types checked at
dispatch, and a peer address whose host name cannot even be encoded."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio

from dfs.core import endpoints
from dfs.core.errors import InvalidArgument, Unavailable
from dfs.net.rpc import RpcServer, open_client, open_listeners


async def test_validators_refuse_bad_arguments_before_the_handler_runs_inline_or_in_a_task() -> None:
    ran: list[tuple[Any, ...]] = []

    async def in_task(*args: Any) -> str:
        ran.append(args)
        return "ok"

    def inline(*args: Any) -> str:
        ran.append(args)
        return "ok"

    # Real declarations: meta.getattr (ino:int), chunk.has (chunk_ids:list[bytes]).
    getattr_, has = endpoints.META_GETATTR, endpoints.CHUNK_HAS
    server = RpcServer(
        {has.name: in_task},
        inline_handlers={getattr_.name: inline},
        validators={ep.name: ep.check_args for ep in (getattr_, has)},
    )
    listeners = await open_listeners("127.0.0.1:0")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        async with open_client(f"127.0.0.1:{port}") as client:
            for method, args, why in [
                (getattr_.name, ("x",), r"meta\.getattr: ino must be int, not str"),
                (getattr_.name, (True,), r"meta\.getattr: ino must be int, not bool"),
                (getattr_.name, (), r"meta\.getattr: takes 1 arguments, got 0"),
                (has.name, (b"x",), r"chunk\.has: chunk_ids must be list\[bytes\], not bytes"),
                (has.name, ([b"x", 5],), r"chunk\.has: chunk_ids .* holding int \(at 1\)"),
            ]:
                with pytest.raises(InvalidArgument, match=why):
                    await client.call(method, *args)
            assert ran == []
            assert await client.call(getattr_.name, 1) == "ok"
            assert await client.call(has.name, [b"x", b"y"]) == "ok"
        nursery.cancel_scope.cancel()
    assert server.stats.error_codes["InvalidArgument"] == 5
    assert server.stats.error_codes["InternalError"] == 0


async def test_declared_arities_refuse_a_wrong_count_before_the_handler_runs() -> None:
    ran: list[tuple[Any, ...]] = []

    async def forwards(*args: Any) -> str:
        # Like a handler that hands its arguments to another thread: a wrong count would only
        # fail there, as an internal error.
        ran.append(args)
        return "ok"

    def inline(*args: Any) -> str:
        ran.append(args)
        return "ok"

    server = RpcServer(
        {"two": forwards},
        inline_handlers={"one_or_two": inline},
        validators={
            "two": lambda args: None if len(args) == 2 else "two: takes 2 arguments",
            "one_or_two": lambda args: None if 1 <= len(args) <= 2 else "one_or_two: takes 1 to 2 arguments",
        },
    )
    listeners = await open_listeners("127.0.0.1:0")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        async with open_client(f"127.0.0.1:{port}") as client:
            for method, args in [
                ("two", (1,)),
                ("two", (1, 2, 3)),
                ("one_or_two", ()),
                ("one_or_two", (1, 2, 3)),
            ]:
                with pytest.raises(InvalidArgument, match="takes"):
                    await client.call(method, *args)
            assert ran == []
            assert await client.call("two", 1, 2) == "ok"
            assert await client.call("one_or_two", 1) == "ok"
            assert await client.call("one_or_two", 1, 2) == "ok"
        nursery.cancel_scope.cancel()
    assert server.stats.error_codes["InvalidArgument"] == 4


@pytest.mark.parametrize("host", ["é" * 70, "a..é", "\x8c"])
async def test_connecting_to_a_host_name_that_cannot_be_encoded_fails_like_an_unreachable_peer(
    host: str,
) -> None:
    # Such names reach clients from the layout (meta.register_node takes any string); the error
    # escaped _connect_with_retry as a UnicodeError and crashed `dfs fsck`.
    with trio.fail_after(5):
        async with open_client(f"{host}:7400", connect_timeout_s=math.inf) as client:
            with pytest.raises(Unavailable, match="bad host name"):
                await client.call("sys.ping")
