"""Which metadata calls a client sends again, to which daemon, and for how long."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from dfs.core import endpoints
from dfs.core.errors import Unavailable
from dfs.net.failover import ONCE, READ_ONLY, FailoverCaller
from dfs.net.rpc import ConnectFailed, NoReply


class Fake:
    def __init__(self, name: str) -> None:
        self.name = name
        self.fail: Exception | None = None
        self.fail_times = -1  # how many calls fail (-1: all, while ``fail`` is set)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def call(self, method: str, *args: Any) -> Any:
        self.calls.append((method, args))
        if self.fail is not None and self.fail_times != 0:
            self.fail_times -= 1
            raise self.fail
        return self.name

    @property
    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]


def caller(n: int = 3, window_s: float = 60.0) -> tuple[FailoverCaller, list[Fake]]:
    fakes = [Fake(f"d{i}") for i in range(n)]
    return FailoverCaller(fakes, [f.name for f in fakes], retry_window_s=window_s), fakes


def test_every_namespace_change_a_mount_makes_goes_exactly_once() -> None:
    assert {"meta.mkdir", "meta.create", "meta.rename", "meta.unlink", "meta.commit_write"} <= ONCE
    assert {"meta.open", "meta.rmdir", "meta.mknod", "meta.removexattr"} <= ONCE
    assert {"meta.setattr", "meta.setxattr", "meta.link", "meta.symlink", "meta.end_session"} <= ONCE
    assert not ONCE & READ_ONLY
    assert "meta.claim_orphans" not in ONCE and "meta.once" not in ONCE  # not through the metadata thread


async def test_a_change_travels_in_meta_once_with_a_fresh_request_id() -> None:
    fo, (a, _, _) = caller()
    assert await fo.call("meta.mkdir", 1, b"x", 0o755, 0, 0) == "d0"
    assert await fo.call("meta.mkdir", 1, b"y", 0o755, 0, 0) == "d0"
    (m1, args1), (m2, args2) = a.calls
    assert m1 == m2 == "meta.once"
    assert args1[1:] == (False, "meta.mkdir", [1, b"x", 0o755, 0, 0])
    assert len(args1[0]) == len(args2[0]) == 16 and args1[0] != args2[0]
    assert endpoints.META_ONCE.check_args(list(args1)) is None


async def test_a_call_that_could_not_connect_goes_to_the_next_daemon() -> None:
    fo, (a, b, _) = caller()
    a.fail = ConnectFailed("refused")
    assert await fo.call("meta.mkdir", 1, b"x", 0o755, 0, 0) == "d1"
    assert fo.current == "d1" and fo.switches == 1
    assert await fo.call("meta.getattr", 1) == "d1"  # and stays there
    assert a.methods == ["meta.once"] and b.methods == ["meta.once", "meta.getattr"]
    # Never sent, so the request went again as new: no record to look for.
    assert a.calls[0][1][:2] == b.calls[0][1][:2] and b.calls[0][1][1] is False


async def test_a_change_whose_reply_was_lost_goes_again_with_the_same_id_marked_retried() -> None:
    fo, (a, b, _) = caller()
    a.fail = NoReply("connection lost")
    assert await fo.call("meta.rename", 1, b"a", 1, b"b", 0) == "d1"
    (_, first), (_, again) = a.calls[0], b.calls[0]
    assert first[0] == again[0] and (first[1], again[1]) == (False, True)
    assert again[2:] == ("meta.rename", [1, b"a", 1, b"b", 0])


async def test_changes_go_over_the_lane_while_it_is_open_and_the_first_daemon_is_current() -> None:
    fo, (a, b, _) = caller()
    lane = Fake("lane")
    fo.lane = lane
    assert await fo.call("meta.mkdir", 1, b"x", 0o755, 0, 0) == "lane"
    assert await fo.call("meta.getattr", 1) == "d0"  # only changes take the lane
    assert lane.methods == ["meta.once"] and lane.calls[0][1][1:] == (
        False,
        "meta.mkdir",
        [1, b"x", 0o755, 0, 0],
    )
    lane.fail = ConnectFailed("the metadata lane is not open")  # nothing sent: as new, over the connection
    assert await fo.call("meta.mkdir", 1, b"y", 0o755, 0, 0) == "d0"
    assert a.calls[-1][1][1:] == (False, "meta.mkdir", [1, b"y", 0o755, 0, 0])
    assert a.calls[-1][1][0] == lane.calls[-1][1][0]
    lane.fail = NoReply("lane lost")  # maybe applied: the same id again, marked retried
    assert await fo.call("meta.rename", 1, b"a", 1, b"b", 0) == "d0"
    assert a.calls[-1][1][:2] == (lane.calls[-1][1][0], True)
    a.fail = ConnectFailed("refused")
    lane.fail = None
    assert await fo.call("meta.mkdir", 1, b"z", 0o755, 0, 0) == "lane"  # the lane's daemon is current
    assert await fo.call("meta.getattr", 1) == "d1"  # the first daemon is gone: moved on...
    lane_calls = len(lane.calls)
    assert await fo.call("meta.mkdir", 1, b"w", 0o755, 0, 0) == "d1"  # ...and its lane is not used
    assert len(lane.calls) == lane_calls and b.methods[-1] == "meta.once"


async def test_one_daemon_is_waited_for_while_it_restarts(autojump_clock: trio.testing.MockClock) -> None:
    fo, (a,) = caller(1)
    a.fail, a.fail_times = NoReply("connection lost"), 5
    started = trio.current_time()
    assert await fo.call("meta.unlink", 1, b"x") == "d0"
    assert len(a.calls) == 6 and {args[0] for _, args in a.calls} == {a.calls[0][1][0]}
    assert [args[1] for _, args in a.calls] == [False] + [True] * 5
    assert fo.switches == 0
    assert trio.current_time() - started < 5.0  # paused between tries, far below the window


async def test_sending_again_stops_after_the_retry_window(autojump_clock: trio.testing.MockClock) -> None:
    fo, fakes = caller(2, window_s=30.0)
    for f in fakes:
        f.fail = NoReply("connection lost")
    started = trio.current_time()
    with pytest.raises(NoReply):
        await fo.call("meta.create", 1, b"x", 0o644, 0, 0, "s")
    assert 30.0 <= trio.current_time() - started < 32.0
    assert min(len(f.calls) for f in fakes) > 5  # both, in turn


async def test_a_change_not_declared_once_is_not_sent_twice_but_the_next_call_moves_on() -> None:
    fo, (a, b, _) = caller()
    a.fail = NoReply("connection lost")
    with pytest.raises(NoReply):
        await fo.call("meta.claim_orphans", [b"c"])
    assert b.calls == []
    assert await fo.call("meta.claim_orphans", [b"c"]) == "d1"


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


async def test_a_change_no_daemon_took_fails_after_each_was_tried_once() -> None:
    fo, fakes = caller()
    for f in fakes:
        f.fail = ConnectFailed("refused")
    with pytest.raises(ConnectFailed):
        await fo.call("meta.claim_orphans", [b"c"])
    assert [len(f.calls) for f in fakes] == [1, 1, 1]
    fakes[0].fail = None
    assert await fo.call("meta.getattr", 1) == "d0"  # wrapped around


async def test_reads_wait_for_a_daemon_to_come_back(autojump_clock: trio.testing.MockClock) -> None:
    fo, fakes = caller()
    for f in fakes:
        f.fail, f.fail_times = ConnectFailed("refused"), 2
    assert await fo.call("meta.getattr", 1) in {"d0", "d1", "d2"}
    assert sum(len(f.calls) for f in fakes) == 7


async def test_one_daemon_never_switches() -> None:
    fo, (a,) = caller(1)
    a.fail, a.fail_times = ConnectFailed("refused"), 1
    assert await fo.call("meta.getattr", 1) == "d0"
    assert fo.switches == 0


async def test_a_client_winding_down_stops_waiting(autojump_clock: trio.testing.MockClock) -> None:
    fo, (a,) = caller(1)
    a.fail = ConnectFailed("refused")
    fo.stop_waiting()
    with pytest.raises(ConnectFailed):
        await fo.call("meta.end_session", "s")
    assert len(a.calls) == 1
