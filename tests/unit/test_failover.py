"""Which metadata calls a client sends again to the next daemon, and when it moves on."""

from __future__ import annotations

from typing import Any

import pytest

from dfs.core.errors import Unavailable
from dfs.net.failover import FailoverCaller
from dfs.net.rpc import ConnectFailed, NoReply


class Fake:
    def __init__(self, name: str) -> None:
        self.name = name
        self.fail: Exception | None = None
        self.calls: list[str] = []

    async def call(self, method: str, *args: Any) -> Any:
        self.calls.append(method)
        if self.fail is not None:
            raise self.fail
        return self.name


def caller(n: int = 3) -> tuple[FailoverCaller, list[Fake]]:
    fakes = [Fake(f"d{i}") for i in range(n)]
    return FailoverCaller(fakes, [f.name for f in fakes]), fakes


async def test_a_call_that_could_not_connect_goes_to_the_next_daemon() -> None:
    fo, (a, b, _) = caller()
    a.fail = ConnectFailed("refused")
    assert await fo.call("meta.mkdir", 1, b"x") == "d1"
    assert fo.current == "d1" and fo.switches == 1
    assert await fo.call("meta.getattr", 1) == "d1"  # and stays there
    assert a.calls == ["meta.mkdir"] and b.calls == ["meta.mkdir", "meta.getattr"]


async def test_a_change_whose_reply_was_lost_is_not_sent_twice_but_the_next_call_moves_on() -> None:
    fo, (a, b, _) = caller()
    a.fail = NoReply("connection lost")
    with pytest.raises(NoReply):
        await fo.call("meta.rename", 1, b"a", 1, b"b")
    assert b.calls == []
    assert await fo.call("meta.rename", 1, b"a", 1, b"b") == "d1"


async def test_a_read_whose_reply_was_lost_is_asked_again_elsewhere() -> None:
    fo, (a, b, _) = caller()
    a.fail = NoReply("no reply within 60s")
    assert await fo.call("meta.lookup", 1, b"x") == "d1"


async def test_a_daemons_own_error_is_its_answer() -> None:
    fo, (a, b, _) = caller()
    a.fail = Unavailable("the metadata primary is down")
    with pytest.raises(Unavailable):
        await fo.call("meta.lookup", 1, b"x")
    assert fo.current == "d0" and b.calls == []


async def test_every_daemon_is_tried_once_then_the_error_is_raised() -> None:
    fo, fakes = caller()
    for f in fakes:
        f.fail = ConnectFailed("refused")
    with pytest.raises(ConnectFailed):
        await fo.call("meta.getattr", 1)
    assert [len(f.calls) for f in fakes] == [1, 1, 1]
    fakes[0].fail = None
    assert await fo.call("meta.getattr", 1) == "d0"  # wrapped around


async def test_one_daemon_never_switches() -> None:
    fo, (a,) = caller(1)
    a.fail = ConnectFailed("refused")
    with pytest.raises(ConnectFailed):
        await fo.call("meta.getattr", 1)
    assert fo.switches == 0
