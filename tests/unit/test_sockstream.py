"""dfs/net/sockstream.py and the outbox's write-at-once path, on real socket pairs."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from dfs.core import wire
from dfs.core.wire import FrameDecoder
from dfs.net import sockstream
from dfs.net.rpc import _Outbox, _Outgoing, _Waiter
from dfs.net.sockstream import DirectSocketStream, direct


def _pair() -> tuple[DirectSocketStream, DirectSocketStream]:
    a, b = trio.socket.socketpair()
    left, right = direct(trio.SocketStream(a)), direct(trio.SocketStream(b))
    assert isinstance(left, DirectSocketStream) and isinstance(right, DirectSocketStream)
    return left, right


async def test_only_plain_sockets_are_wrapped() -> None:
    left, right = trio.testing.memory_stream_pair()
    assert direct(left) is left
    a, b = _pair()
    assert direct(a) is a  # already direct: a DirectSocketStream is not a SocketStream
    await a.aclose()
    await b.aclose()


async def test_bytes_arrive_whole_and_in_order_past_full_buffers() -> None:
    # Far more than a socket buffer holds: the sender has to wait for the reader many times.
    a, b = _pair()
    payload = os.urandom(8 * 1024 * 1024)
    got = bytearray()

    async def read() -> None:
        while len(got) < len(payload):
            data = await b.receive_some(100_000)
            assert data
            got.extend(data)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await a.send_all(memoryview(payload)[:1000])
            await a.send_all(bytearray(payload[1000:5000]))
            await a.send_all(payload[5000:])
    assert bytes(got) == payload
    await a.send_eof()
    assert await b.receive_some(10) == b""  # end of stream after a half-close
    await a.aclose()
    await b.aclose()


async def test_closed_and_broken_streams_raise_trio_errors() -> None:
    a, b = _pair()
    await a.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await a.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await a.receive_some(10)
    with pytest.raises(trio.ClosedResourceError):
        a.write_nowait(b"x")
    with pytest.raises(trio.BrokenResourceError):
        # The peer is gone: EPIPE (Python ignores SIGPIPE), whether at once or once the
        # buffer is full.
        for _ in range(1000):
            await b.send_all(bytes(65536))
    with pytest.raises(ValueError):
        await b.receive_some(0)
    await b.aclose()


async def test_a_reader_waiting_is_woken_by_a_close_from_another_task() -> None:
    a, b = _pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await b.receive_some(10)

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await b.aclose()
    await a.aclose()


async def _receives_before_another_task_runs(sent_bytes: int, receive_bytes: int) -> int:
    """How many receives of ``receive_bytes``, none of which has to wait (``sent_bytes`` are all
    there), a task makes before another task it started gets to run."""
    a, b = _pair()
    await a.send_all(bytes(sent_bytes))
    ran = []

    async def other() -> None:
        ran.append(True)

    calls = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        while not ran:
            assert len(await b.receive_some(receive_bytes)) == receive_bytes
            calls += 1
    await a.aclose()
    await b.aclose()
    return calls


# trio runs the tasks of one scheduling batch in random order: the other task has run by the
# end of the batch after the first yield, hence the factor 2 below.


async def test_calls_that_never_wait_still_yield_to_other_tasks() -> None:
    # A peer that keeps the socket full must not starve the rest of the event loop.
    assert await _receives_before_another_task_runs(200_000, 1) <= 2 * sockstream.YIELD_EVERY


async def test_a_large_receive_that_never_waited_yields_at_once() -> None:
    # A reader flooded with pipelined requests: each large buffer brings much work, so it
    # yields after every one (as trio's streams do), not only every YIELD_EVERY calls.
    size = sockstream.YIELD_BYTES
    assert await _receives_before_another_task_runs(2 * size, size) <= 2


async def test_outbox_writes_a_small_frame_at_once_and_queues_the_rest_of_a_large_one() -> None:
    a, b = _pair()
    outbox = _Outbox(a)
    assert outbox.direct
    sent: list[int] = []
    small = _Outgoing(wire.encode_request_parts(1, "a", []), on_sent=lambda: sent.append(1))
    assert outbox.write_now(small)
    assert sent == [1] and outbox.idle

    # Larger than the socket buffer: part goes out now, the rest is queued first, and is
    # written even though its caller then gives up (half a frame must never stay on the wire).
    waiter = _Waiter()
    big = _Outgoing([wire.encode_request(2, "b", [bytes(4 * 1024 * 1024)])], waiter, lambda: sent.append(2))
    assert not outbox.write_now(big)
    waiter.gone = True
    later = _Outgoing(wire.encode_request_parts(3, "c", []), on_sent=lambda: sent.append(3))
    assert not outbox.write_now(later)  # not idle: queued behind the rest of the big frame
    decoder = FrameDecoder()
    got: list[int] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run)
            outbox.wake()
            while len(got) < 3:
                decoder.feed(await b.receive_some())
                while (event := decoder.next_event()) is not None:
                    got.append(event.msgid)
            nursery.cancel_scope.cancel()
    assert got == [1, 2, 3]
    assert sent == [1, 2, 3]
    await a.aclose()
    await b.aclose()


async def test_outbox_over_tls_or_memory_only_queues() -> None:
    left, right = trio.testing.memory_stream_pair()
    outbox = _Outbox(left)
    assert not outbox.direct
    assert not outbox.write_now(_Outgoing(wire.encode_request_parts(1, "a", [])))
    assert not outbox.idle
