"""The gossip runner: a thin trio adapter that moves :mod:`dfs.core.gossip`'s bytes.

One UDP socket (probes, acks, piggybacked updates) and one TCP listener
(push-pull full-state exchanges) on the same ``[gossip] listen`` port.  The
state machine is driven from one task: datagrams, stream replies and timer
deadlines are fed to it in arrival order, and after each step its outgoing
datagrams and stream requests are sent.  Nothing here decides anything: the
protocol lives in :class:`dfs.core.gossip.Gossip`.

Concurrency: the state machine is only touched from tasks of this event loop
between awaits, so it needs no locks.  A push-pull request to a peer runs in
its own task with a timeout; its reply is fed back like any other input.
Every stream is bounded (frame size, time), and a malformed datagram or
frame is counted by the state machine and otherwise ignored.

Every datagram and every push-pull frame (request and reply) is sealed with the
node's gossip keyring (:mod:`dfs.core.gossip.seal`, AES-256-GCM, stamped with
the wall clock) and opened before the state machine sees it: what does not
open (forged, under a key we do not hold, outside the time window, replayed)
is dropped and counted in :attr:`Membership.packets_dropped`.

The daemon's own advertised state (zone, RPC and S3 addresses, capacity, free
space, CPU and memory load, layout epoch) is refreshed every
``meta_interval_s``; psutil and statvfs are read in a worker thread.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

import psutil
import trio

from dfs.core.config import Config
from dfs.core.errors import ConfigError
from dfs.core.gossip import Gossip, GossipConfig, Member
from dfs.core.gossip.seal import SEAL_OVERHEAD_BYTES, Keyring, Sealer
from dfs.net.rpc import parse_address

log = logging.getLogger("dfs.membership")

_MAX_DATAGRAM = 65536
# A push-pull message of the state machine's largest (max_stream_bytes), once sealed.
_MAX_FRAME = 16 * 1024 * 1024 + SEAL_OVERHEAD_BYTES
_STREAM_TIMEOUT_S = 10.0
_LEN = struct.Struct(">I")

PRESETS: dict[str, Callable[[], GossipConfig]] = {
    "lan": GossipConfig.lan,
    "local": GossipConfig.local,
    "wan": GossipConfig.wan,
    "fast_test": GossipConfig.fast_test,
}


def _clock() -> float:
    return time.monotonic()


def _wall_s() -> float:
    # Sealed packets carry wall-clock time: it is the one clock members share (roughly).
    return time.time()


class LinkFaults(Protocol):
    """The fate of each message this node sends: how the in-process cluster tests inject loss,
    delay and partitions into real sockets without touching the protocol.

    ``delay`` is asked once per datagram and once per push-pull exchange (``stream=True``, which
    covers the reply too).  It returns None for a lost message (a push-pull then fails as a
    refused connection would) or the seconds to hold it back.
    """

    def delay(self, src: str, dst: str, *, stream: bool) -> float | None: ...


class Membership:
    """Runs one node's gossip over real sockets."""

    def __init__(
        self,
        cfg: Config,
        meta_source: Callable[[], dict[str, Any]],
        faults: LinkFaults | None = None,
        *,
        keyring: Keyring,
    ) -> None:
        g = cfg.gossip
        self._faults = faults
        self._sealer = Sealer(keyring)
        self.cfg = cfg
        self.address = g.advertise or g.listen
        self._meta_source = meta_source
        config = PRESETS[g.preset]()
        self.gossip = Gossip(
            cfg.node_id, self.address, meta_source(), config, now_s=_clock(), rng=random.Random()
        )
        self._seeds = [s.strip() for s in g.seeds.split(",") if s.strip()]
        self._wake = trio.Event()
        self._meta_nudge = trio.Event()
        self._udp: socket.socket | None = None
        self._nursery: trio.Nursery | None = None
        self.events_seen = 0
        self.event_counts: dict[str, int] = {}  # per event kind (join, suspect, dead...): metrics

    # -- keys --------------------------------------------------------------------------
    @property
    def keyring(self) -> Keyring:
        """The keys gossip seals with (the primary) and opens with (all)."""
        return self._sealer.keyring

    @keyring.setter
    def keyring(self, keyring: Keyring) -> None:
        # Takes effect with the next packet; the replay cache and counters carry on.
        self._sealer.keyring = keyring

    @property
    def packets_dropped(self) -> dict[str, int]:
        """Packets that did not open, by reason: ``bad`` (forged, corrupt, or sealed under a key
        not in the keyring), ``stale`` (stamped outside the time window), ``replayed``."""
        return dict(self._sealer.dropped)

    # -- views -----------------------------------------------------------------------
    def members(self) -> list[dict[str, Any]]:
        """Every known member, for `dfs nodes` and the admin API."""
        now = _clock()
        out = []
        for m in self.gossip.members.values():
            out.append(
                {
                    "node_id": m.node_id,
                    "gossip_address": m.address,
                    "status": str(m.status),
                    "incarnation": m.incarnation,
                    "for_s": round(now - m.status_since_s, 1),
                    "self": m.node_id == self.gossip.node_id,
                    **{k: v for k, v in m.meta.items() if k not in ("node_id", "status")},
                }
            )
        return sorted(out, key=lambda d: d["node_id"])

    # -- the runner --------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        addr = parse_address(self.cfg.gossip.listen, 7401)
        host = addr.host or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # A plain non-blocking socket: a datagram send never needs to wait (a full buffer just
        # drops it, which SWIM tolerates), so the state machine's output is sent synchronously.
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.setblocking(False)
        try:
            udp.bind((host, addr.port))
            listeners = await trio.open_tcp_listeners(addr.port, host=host)
            self._udp = udp
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._receive_datagrams, udp)
                    nursery.start_soon(trio.serve_listeners, self._serve_stream, listeners)
                    nursery.start_soon(self._refresh_meta)
                    self.gossip.join(self._seeds, _clock())
                    self._flush()
                    task_status.started()
                    await self._timers()
            finally:
                self._nursery = None  # closed: the goodbye below is sent at once, no streams
                # Shutting down (SIGTERM): say goodbye so peers mark us LEFT at once.
                with trio.CancelScope(shield=True):
                    await self.leave()
        finally:
            self._udp = None
            trio.lowlevel.notify_closing(udp)
            udp.close()

    async def leave(self) -> None:
        """Say goodbye, so peers see LEFT rather than having to detect a death."""
        self.gossip.leave(_clock())
        with trio.move_on_after(1.0):
            while self.gossip.leave_broadcast_pending:
                self.gossip.tick(_clock())
                self._flush()
                await trio.sleep(0.05)

    async def _timers(self) -> None:
        while True:
            delay = max(0.0, self.gossip.next_deadline() - _clock())
            with trio.move_on_after(min(delay, 1.0)):
                await self._wake.wait()
            self._wake = trio.Event()
            self.gossip.tick(_clock())
            self._flush()

    async def _receive_datagrams(self, udp: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(udp)
            try:
                data, source = udp.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:  # e.g. ECONNREFUSED reported for an earlier send
                log.debug("gossip receive: %s", exc)
                continue
            plain = self._sealer.open(data, _wall_s())
            if plain is None:
                continue  # counted; not logged, or a flood of forgeries would flood the log
            self.gossip.receive(_fmt(source), plain, _clock())
            self._flush()

    def _flush(self) -> None:
        """Send what the state machine queued, and report its events."""
        for address, data in self.gossip.outgoing():
            if self._udp is None:
                break
            if self._faults is not None:
                delay = self._faults.delay(self.address, address, stream=False)
                if delay is None:
                    continue
                if delay > 0 and self._nursery is not None:
                    self._nursery.start_soon(self._send_later, address, data, delay)
                    continue
            self._send(address, data)
        if self._nursery is not None:
            for address, data in self.gossip.outgoing_streams():
                self._nursery.start_soon(self._push_pull, address, data)
        for event in self.gossip.events():
            self.events_seen += 1
            kind = str(event.kind)
            self.event_counts[kind] = self.event_counts.get(kind, 0) + 1
            m: Member = event.member
            # Updates (free space, layout epoch) come every few seconds from every member: debug only.
            level = {"dead": logging.WARNING, "suspect": logging.WARNING, "update": logging.DEBUG}.get(
                kind, logging.INFO
            )
            log.log(level, "member %s %s", m.node_id, event.kind, extra={"ctx": {"address": m.address}})
        if self.gossip.next_deadline() <= _clock():
            self._wake.set()

    def _send(self, address: str, data: bytes) -> None:
        if self._udp is None:
            return
        try:
            target = parse_address(address, 7401)
            # Sealed when it leaves, not when queued: a delayed datagram carries its send time.
            self._udp.sendto(self._sealer.seal(data, _wall_s()), (target.host, target.port))
        # Addresses come from peers' messages: one that does not parse (ConfigError) or whose host
        # the socket cannot encode (TypeError: an IDNA label over 63 characters, an empty label)
        # is dropped like an unreachable one - it must never stop the receive loop.
        except (OSError, ValueError, TypeError, ConfigError) as exc:  # unreachable, buffer full, bad address
            log.debug("gossip send to %s failed: %s", address, exc)

    async def _send_later(self, address: str, data: bytes, delay: float) -> None:
        await trio.sleep(delay)
        self._send(address, data)

    async def _push_pull(self, address: str, request: bytes) -> None:
        if self._faults is not None:
            delay = self._faults.delay(self.address, address, stream=True)
            if delay is None:
                log.debug("gossip push-pull with %s failed: link down", address)
                return
            await trio.sleep(delay)
        try:
            target = parse_address(address, 7401)
            with trio.fail_after(_STREAM_TIMEOUT_S):
                stream = await trio.open_tcp_stream(target.host or "127.0.0.1", target.port)
                async with stream:
                    sealed = self._sealer.seal(request, _wall_s())
                    await stream.send_all(_LEN.pack(len(sealed)) + sealed)
                    reply = await _read_frame(stream)
        except (
            OSError,
            trio.TooSlowError,
            trio.BrokenResourceError,
            ValueError,
            TypeError,
            ConfigError,
        ) as exc:
            log.debug("gossip push-pull with %s failed: %s", address, exc)
            return
        plain = self._sealer.open(reply, _wall_s())
        if plain is None:
            log.debug("gossip push-pull with %s: the reply did not open (dropped)", address)
            return
        self.gossip.receive_stream(address, plain, _clock())
        self._flush()

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        try:
            peer = _fmt(stream.socket.getpeername())
            with trio.fail_after(_STREAM_TIMEOUT_S):
                request = self._sealer.open(await _read_frame(stream), _wall_s())
                if request is None:
                    return  # counted; closed without a word (the finally below)
                reply = self.gossip.receive_stream(peer, request, _clock())
                self._flush()
                if reply is not None:
                    sealed = self._sealer.seal(reply, _wall_s())
                    await stream.send_all(_LEN.pack(len(sealed)) + sealed)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ValueError) as exc:
            log.debug("gossip push-pull from a peer failed: %s", exc)
        finally:
            await trio.aclose_forcefully(stream)

    def refresh_meta_soon(self) -> None:
        """Re-advertise this node's state now rather than at the next interval."""
        self._meta_nudge.set()

    async def _refresh_meta(self) -> None:
        while True:
            with trio.move_on_after(self.cfg.gossip.meta_interval_s):
                await self._meta_nudge.wait()
            self._meta_nudge = trio.Event()
            try:
                meta = await trio.to_thread.run_sync(self._meta_source)
            except Exception:
                log.exception("gossip: reading this node's state failed")
                continue
            self.gossip.update_meta(meta, _clock())
            self._flush()


async def _read_frame(stream: trio.abc.ReceiveStream) -> bytes:
    head = await _read_exactly(stream, _LEN.size)
    (size,) = _LEN.unpack(head)
    if size > _MAX_FRAME:
        raise ValueError(f"push-pull frame of {size} bytes is over the limit")
    return await _read_exactly(stream, size)


async def _read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        piece = await stream.receive_some(n - len(buf))
        if not piece:
            raise ValueError("peer closed the stream early")
        buf += piece
    return bytes(buf)


def _fmt(source: Any) -> str:
    host, port = source[0], source[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def node_meta(
    cfg: Config,
    stats: Callable[[], dict[str, int]],
    layout_epoch: Callable[[], int],
    hot: Callable[[], list[str]] = list,
) -> dict[str, Any]:
    """What this node advertises: who it is, where to reach it, how full and how busy it is,
    and which chunks it has given extra copies for their read load (hot chunks)."""
    st = stats()
    vm = psutil.virtual_memory()
    hot_ids = hot()
    extra = {"hot": hot_ids, "hot_extra": cfg.cluster.hot_extra_copies} if hot_ids else {}
    return {
        **extra,
        "zone": cfg.node.zone,
        "rpc": cfg.rpc.advertise or cfg.rpc.listen,
        "s3": cfg.s3.listen if cfg.s3.enabled else "",
        "capacity_bytes": st.get("total_bytes", 0),
        "free_bytes": st.get("avail_bytes", 0),
        "cpu_percent": round(psutil.cpu_percent(interval=None), 1),
        "mem_percent": round(vm.percent, 1),
        "layout_epoch": layout_epoch(),
        # Data disks (daemon/disks.py): `dfs status` names the nodes with one not ok.
        "disks": st.get("disks", 1),
        "disks_not_ok": st.get("disks_not_ok", 0),
    }
