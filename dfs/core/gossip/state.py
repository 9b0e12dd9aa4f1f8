"""The SWIM + Lifeguard membership state machine (sans-IO; see the package docstring for the rules).

A :class:`Gossip` is driven by its owner: inputs are method calls carrying the current time
(``receive``, ``receive_stream``, ``tick``, ``join``, ``update_meta``, ``leave``), outputs are queues
the owner drains (``outgoing``, ``outgoing_streams``, ``events``), and ``next_deadline`` says when
``tick`` must run next.  Every input first runs the timers that are already due, so the result of
a call never depends on whether the owner happened to call ``tick`` just before it: an ack that is
handed over after its probe's deadline is late, however the owner orders its calls.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import msgpack

from dfs.core.errors import ProtocolError
from dfs.core.gossip.awareness import Awareness
from dfs.core.gossip.broadcast import BroadcastQueue
from dfs.core.gossip.config import GossipConfig
from dfs.core.gossip.member import EventKind, Member, MemberEvent, Status
from dfs.core.gossip.messages import (
    DATAGRAM_OVERHEAD_BYTES,
    MAX_INCARNATION,
    MAX_SEQ,
    Ack,
    Alive,
    Dead,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    StateEntry,
    Suspect,
    check_address,
    check_node_id,
    decode_datagram,
    decode_push_pull,
    encode_datagram,
    encode_message,
    encode_push_pull,
    pack_meta,
)
from dfs.core.gossip.suspicion import Suspicion

__all__ = ["Gossip", "GossipStats"]

#: Seed addresses remembered for re-joining when every known member is gone.
_MAX_SEEDS = 64
#: Push-pull requests not yet taken by the owner (each carries the full table, so keep few).
_MAX_QUEUED_STREAMS = 16
#: Random member picks scan the whole table below this size, and sample by rejection above it.
_SAMPLE_SCAN_BELOW = 64
#: Rejection-sampling draws per wanted member before falling back to a scan.
_SAMPLE_DRAWS_PER_PICK = 8


@dataclass(slots=True)
class GossipStats:
    """Counters since start (read a copy via :attr:`Gossip.stats`)."""

    probes: int = 0  # probe rounds started (direct pings)
    acks: int = 0  # probes answered in time, directly or via a relay
    probe_failures: int = 0  # probes unanswered by the end of their round
    indirect_probes: int = 0  # ping_reqs sent
    nacks: int = 0  # nacks received for our probes
    relays: int = 0  # ping_reqs served for others
    relays_dropped: int = 0  # ping_reqs refused because max_pending_relays were in flight
    suspicions: int = 0  # members we marked SUSPECT
    refutations: int = 0  # times we raised our incarnation to deny an accusation
    reasserts: int = 0  # stale accusations answered by re-sending our current alive
    deaths: int = 0  # members we marked DEAD
    leaves: int = 0  # members we marked LEFT
    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    datagrams_dropped: int = 0  # outgoing datagrams dropped because the owner did not drain them
    malformed: int = 0  # undecodable datagrams, streams, messages or rows (ignored)
    misdirected: int = 0  # pings for another node id (a stranger at a reused address)
    stale_acks: int = 0  # acks for no pending probe or relay (late, or duplicated)
    push_pulls: int = 0  # push-pull requests we queued
    streams_in: int = 0  # push-pull requests and replies received
    members_rejected: int = 0  # new members refused because the table was full
    broadcasts_dropped: int = 0  # queued updates dropped because the queue was full
    events_dropped: int = 0  # events dropped because the owner did not drain them


@dataclass(slots=True)
class _Probe:
    """Our one probe in flight (SWIM probes one member per round)."""

    seq: int
    target: str
    timeout_at_s: float  # no direct ack by then: ask for indirect probes
    deadline_s: float  # no ack at all by then: the target becomes suspect
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    """A ping we send on behalf of another member's ping_req."""

    origin_address: str
    origin_seq: int
    nack_at_s: float
    expires_s: float
    nacked: bool = False


class Gossip:
    """One node's membership view, failure detector and disseminator.

    ``address`` is this node's gossip ``host:port`` (the same port for UDP and TCP).  ``meta`` is
    this node's small msgpack-able dict; see :class:`~dfs.core.gossip.member.Member`.  ``rng`` supplies
    every random choice, so a seeded ``random.Random`` makes a run reproducible.
    """

    def __init__(
        self,
        node_id: str,
        address: str,
        meta: Mapping[str, Any],
        config: GossipConfig,
        *,
        now_s: float,
        rng: random.Random,
    ) -> None:
        self._config = config
        self._rng = rng
        self._node_id = check_node_id(node_id)
        self._address = check_address(address)
        self._meta_packed = pack_meta(meta, config.max_meta_bytes)
        # A restarted node always begins at 0: if the cluster remembers a higher incarnation it
        # tells us (push-pull, or an accusation about ourselves) and we refute above it.
        self._incarnation = 0
        self._left = False
        self._now_s = now_s
        self._members: dict[str, Member] = {}
        self._node_at: dict[str, str] = {}  # address -> node id, to find who a reply goes to
        self._member_ids: list[str] = []  # the keys of _members, indexable for random sampling
        self._id_index: dict[str, int] = {}
        self._n_live = 0
        self._store(Member(self._node_id, self._address, 0, Status.ALIVE, dict(meta), now_s))

        self._awareness = Awareness(config.awareness_max_multiplier)
        self._suspicions: dict[str, Suspicion] = {}
        self._broadcasts = BroadcastQueue(config.max_broadcasts)
        self._outgoing: list[tuple[str, bytes]] = []
        self._outgoing_streams: list[tuple[str, bytes]] = []
        self._events: deque[MemberEvent] = deque()
        self._stats = GossipStats()

        # A random start makes a stale ack from a previous life of this node unlikely to match.
        self._seq = rng.randrange(MAX_SEQ + 1)
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._relays: dict[int, _Relay] = {}
        self._seeds: list[str] = []

        # Random phases: nodes started together must not probe and gossip in lockstep.
        self._next_probe_s = now_s + rng.uniform(0.0, config.probe_interval_s)
        self._next_gossip_s = now_s + rng.uniform(0.0, config.gossip_interval_s)
        self._next_push_pull_s = now_s + rng.uniform(0.0, config.push_pull_interval_s)
        self._next_reconnect_s = now_s + config.reconnect_interval_s
        self._broadcast_self()

    # ------------------------------------------------------------------ read-only state

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def address(self) -> str:
        return self._address

    @property
    def config(self) -> GossipConfig:
        return self._config

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def members(self) -> Mapping[str, Member]:
        """Every known member, this node included, by node id (a live read-only view)."""
        return MappingProxyType(self._members)

    @property
    def live_count(self) -> int:
        """N: ALIVE and SUSPECT members, this node included (the size every formula scales with)."""
        return self._n_live

    @property
    def local_health(self) -> int:
        """Lifeguard awareness score: 0 is healthy, up to ``awareness_max_multiplier − 1``."""
        return self._awareness.score

    @property
    def probe_interval_s(self) -> float:
        """The current probe round length, stretched by the local health score."""
        return self._awareness.scale(self._config.probe_interval_s)

    @property
    def stats(self) -> GossipStats:
        return dataclasses.replace(self._stats, broadcasts_dropped=self._broadcasts.dropped)

    @property
    def left(self) -> bool:
        return self._left

    @property
    def leave_broadcast_pending(self) -> bool:
        """After :meth:`leave`: our goodbye has not yet been sent its full number of times.

        An owner shutting down keeps ticking (and draining) until this is False or its own
        shutdown timeout passes, so that the others see LEFT instead of having to detect a death.
        """
        return self._left and self._node_id in self._broadcasts

    # ------------------------------------------------------------------ inputs

    def join(self, seeds: list[str], now_s: float) -> None:
        """Ask each seed (``host:port``) for a full-state exchange; remembered for re-joining."""
        self._advance(now_s)
        for seed in seeds:
            address = check_address(seed)
            if address != self._address and address not in self._seeds and len(self._seeds) < _MAX_SEEDS:
                self._seeds.append(address)
        for address in self._seeds:
            self._request_push_pull(address)

    def receive(self, from_address: str, data: bytes, now_s: float) -> None:
        """A UDP datagram from ``from_address``; malformed input is counted and ignored."""
        now = self._advance(now_s)
        self._stats.datagrams_in += 1
        self._stats.bytes_in += len(data)
        try:
            messages, malformed = decode_datagram(data, max_meta_bytes=self._config.max_meta_bytes)
        except ProtocolError:
            self._stats.malformed += 1
            return
        self._stats.malformed += malformed
        # Membership news first: a ping that carries a suspicion of us (the buddy system) is then
        # answered with an ack that already piggybacks our refutation.
        messages.sort(key=lambda m: not isinstance(m, Alive | Suspect | Dead))
        for msg in messages:
            self._handle(from_address, msg, now)

    def receive_stream(self, from_address: str, data: bytes, now_s: float) -> bytes | None:
        """A push-pull message over TCP: the reply to send back for a request, None for a reply."""
        now = self._advance(now_s)
        self._stats.streams_in += 1
        try:
            exchange, malformed = decode_push_pull(
                data,
                max_meta_bytes=self._config.max_meta_bytes,
                max_members=self._config.max_members,
                max_stream_bytes=self._config.max_stream_bytes,
            )
        except ProtocolError:
            self._stats.malformed += 1
            return None
        self._stats.malformed += malformed
        self._merge(exchange, now)
        if exchange.is_reply:
            return None
        # Built after merging, so a refutation the request provoked is already in the reply.
        return encode_push_pull(PushPull(True, self._node_id, self._state_entries()))

    def tick(self, now_s: float) -> None:
        """Run every timer due by ``now_s`` (probes, suspicions, gossip, push-pull, reconnect)."""
        self._advance(now_s)

    def update_meta(self, meta: Mapping[str, Any], now_s: float) -> None:
        """Replace our meta: a new incarnation, gossiped like any alive message.

        Raises :class:`~dfs.core.errors.InvalidArgument` for meta that is not a small str-keyed
        msgpack-able dict.
        Unchanged meta is a no-op (an owner may refresh it periodically without spending
        incarnations and bandwidth), and so is any update after :meth:`leave`.
        """
        self._advance(now_s)
        packed = pack_meta(meta, self._config.max_meta_bytes)
        if self._left or packed == self._meta_packed:
            return
        self._meta_packed = packed
        self._incarnation = min(MAX_INCARNATION, self._incarnation + 1)
        me = self._members[self._node_id]
        self._store(dataclasses.replace(me, incarnation=self._incarnation, meta=dict(meta)))
        self._broadcast_self()

    def leave(self, now_s: float) -> None:
        """Leave gracefully: broadcast LEFT, stop probing; keep ticking while the goodbye spreads."""
        now = self._advance(now_s)
        if self._left:
            return
        self._left = True
        self._probe = None
        me = self._members[self._node_id]
        self._store(dataclasses.replace(me, status=Status.LEFT, status_since_s=now))
        self._push_broadcast(Dead(self._node_id, self._incarnation, self._node_id))
        # Send it right away instead of waiting for the next gossip round.
        self._gossip_round(now)
        self._next_gossip_s = now + self._config.gossip_interval_s

    # ------------------------------------------------------------------ outputs

    def outgoing(self) -> list[tuple[str, bytes]]:
        """Datagrams to send over UDP, as (address, bytes); drains the queue."""
        out, self._outgoing = self._outgoing, []
        return out

    def outgoing_streams(self) -> list[tuple[str, bytes]]:
        """Push-pull requests to send over TCP, as (address, bytes); drains the queue.

        The owner hands the peer's answer to :meth:`receive_stream` and drops it on any error.
        """
        out, self._outgoing_streams = self._outgoing_streams, []
        return out

    def events(self) -> list[MemberEvent]:
        """Changes to other members since the last call, oldest first; drains the queue."""
        out = list(self._events)
        self._events.clear()
        return out

    def next_deadline(self) -> float:
        """When :meth:`tick` must next be called: may be in the past (call it now), or ``math.inf``
        once a node that left has nothing more to send."""
        deadline = math.inf
        if not self._left:
            deadline = min(self._next_probe_s, self._next_push_pull_s, self._next_reconnect_s)
        probe = self._probe
        if probe is not None:
            deadline = min(deadline, probe.deadline_s)
            if not probe.indirect_sent:
                deadline = min(deadline, probe.timeout_at_s)
        for relay in self._relays.values():
            deadline = min(deadline, relay.expires_s if relay.nacked else relay.nack_at_s)
        for suspicion in self._suspicions.values():
            deadline = min(deadline, suspicion.deadline_s)
        if self._broadcasts:
            deadline = min(deadline, self._next_gossip_s)
        return deadline

    # ------------------------------------------------------------------ timers

    def _advance(self, now_s: float) -> float:
        # A clock that steps back (the owner's bug, or a wall clock) must not re-run timers.
        now = max(now_s, self._now_s)
        self._now_s = now
        probe = self._probe
        if probe is not None:
            if now >= probe.deadline_s:
                self._probe = None
                self._probe_failed(probe, now)
            elif not probe.indirect_sent and now >= probe.timeout_at_s:
                self._send_indirect(probe)
        if not self._left and self._probe is None and now >= self._next_probe_s:
            self._start_probe(now)
        if self._relays:
            self._service_relays(now)
        if self._suspicions:
            self._expire_suspicions(now)
        if self._broadcasts and now >= self._next_gossip_s:
            self._gossip_round(now)
            self._next_gossip_s = now + self._config.gossip_interval_s
        if not self._left and now >= self._next_push_pull_s:
            self._next_push_pull_s = now + self._config.scaled_push_pull_interval_s(self._n_live)
            self._push_pull_round()
        if not self._left and now >= self._next_reconnect_s:
            self._next_reconnect_s = now + self._config.reconnect_interval_s
            self._reconnect_round()
        return now

    def _start_probe(self, now: float) -> None:
        round_s = self._awareness.scale(self._config.probe_interval_s)
        self._next_probe_s = now + round_s
        target = self._next_probe_target(now)
        if target is None:
            return
        seq = self._next_seq()
        self._probe = _Probe(seq, target.node_id, now + self._config.probe_timeout_s, now + round_s)
        self._stats.probes += 1
        # A suspect's ping also carries the suspicion (the buddy system, done in _send).
        self._send(target.address, [encode_message(Ping(seq, target.node_id))])

    def _next_probe_target(self, now: float) -> Member | None:
        # Round-robin over a shuffled list bounds the time until every member is probed (SWIM's
        # "time-bounded completeness") while staying random across rounds.
        checked = 0
        while checked <= len(self._probe_order):
            if self._probe_index >= len(self._probe_order):
                self._rebuild_probe_order(now)
                if not self._probe_order:
                    return None
            node_id = self._probe_order[self._probe_index]
            self._probe_index += 1
            member = self._members.get(node_id)
            if member is not None and member.status.is_live and node_id != self._node_id:
                return member
            checked += 1
        return None

    def _rebuild_probe_order(self, now: float) -> None:
        self._reap(now)
        order = [n for n, m in self._members.items() if m.status.is_live and n != self._node_id]
        self._rng.shuffle(order)
        self._probe_order = order
        self._probe_index = 0

    def _add_to_probe_order(self, node_id: str) -> None:
        # A random slot, not the end: appending would make newcomers wait for a full pass.
        if node_id not in self._probe_order:
            self._probe_order.insert(self._rng.randint(0, len(self._probe_order)), node_id)

    def _reap(self, now: float) -> None:
        horizon = self._config.reap_after_s
        for node_id, member in list(self._members.items()):
            if (
                not member.status.is_live
                and node_id != self._node_id
                and now - member.status_since_s >= horizon
            ):
                self._forget(member)
                self._emit(EventKind.REAP, member, now)

    def _send_indirect(self, probe: _Probe) -> None:
        probe.indirect_sent = True
        target = self._members.get(probe.target)
        if target is None or not target.status.is_live:
            return
        excluded = (self._node_id, target.node_id)
        peers = self._random_members(
            self._config.indirect_checks,
            lambda m: m.status is Status.ALIVE and m.node_id not in excluded,
        )
        request = encode_message(PingReq(probe.seq, target.node_id, target.address))
        for peer in peers:
            self._send(peer.address, [request])
        probe.expected_nacks = len(peers)
        self._stats.indirect_probes += len(peers)

    def _probe_failed(self, probe: _Probe, now: float) -> None:
        self._stats.probe_failures += 1
        # Nacks prove that our indirect probers heard us and answered in time; when some are
        # missing (or we could not even ask anyone), we may be the slow or cut-off one.
        if probe.expected_nacks == 0 or probe.nacks < probe.expected_nacks:
            self._awareness.apply_delta(1)
        target = self._members.get(probe.target)
        if target is not None and target.status.is_live:
            self._on_suspect(Suspect(target.node_id, target.incarnation, self._node_id), now)

    def _service_relays(self, now: float) -> None:
        for seq, relay in list(self._relays.items()):
            if not relay.nacked and now >= relay.nack_at_s:
                relay.nacked = True
                self._send(relay.origin_address, [encode_message(Nack(relay.origin_seq))])
            if now >= relay.expires_s:
                del self._relays[seq]

    def _expire_suspicions(self, now: float) -> None:
        for node_id, suspicion in list(self._suspicions.items()):
            if now < suspicion.deadline_s:
                continue
            del self._suspicions[node_id]
            member = self._members.get(node_id)
            if member is not None and member.status is Status.SUSPECT:
                self._on_dead(Dead(node_id, member.incarnation, self._node_id), now)

    def _gossip_round(self, now: float) -> None:
        horizon = self._config.gossip_to_the_dead_s

        def eligible(m: Member) -> bool:
            # Recently dead members still get gossip: if they are alive after all (a partition,
            # a long pause) they learn of the accusation and can refute it.
            if m.node_id == self._node_id:
                return False
            return m.status.is_live or (m.status is Status.DEAD and now - m.status_since_s <= horizon)

        limit = self._config.retransmit_limit(self._n_live)
        for member in self._random_members(self._config.gossip_nodes, eligible):
            parts = self._broadcasts.take(self._config.max_packet_bytes - DATAGRAM_OVERHEAD_BYTES, limit)
            if not parts:
                break
            self._queue_datagram(member.address, encode_datagram(self._buddy(member.address) + parts))

    def _push_pull_round(self) -> None:
        peers = self._random_members(1, lambda m: m.status is Status.ALIVE and m.node_id != self._node_id)
        if peers:
            self._request_push_pull(peers[0].address)
        elif self._seeds:
            # Alone (never joined, or everyone else looks dead): try a seed again.
            self._request_push_pull(self._rng.choice(self._seeds))

    def _reconnect_round(self) -> None:
        # Serf's reconnect: after a partition both sides may have declared each other dead and
        # stopped talking; a full-state exchange with one dead member lets a live one refute.
        dead = self._random_members(1, lambda m: m.status is Status.DEAD)
        if dead:
            self._request_push_pull(dead[0].address)

    # ------------------------------------------------------------------ message handling

    def _handle(self, from_address: str, msg: Message, now: float) -> None:
        match msg:
            case Alive():
                self._on_alive(msg, now)
            case Suspect():
                self._on_suspect(msg, now)
            case Dead():
                self._on_dead(msg, now)
            case Ping(seq, target):
                if target != self._node_id:
                    self._stats.misdirected += 1
                    return
                self._send(from_address, [encode_message(Ack(seq))])
            case PingReq():
                self._on_ping_req(from_address, msg, now)
            case Ack(seq):
                self._on_ack(seq, now)
            case Nack(seq):
                if self._probe is not None and self._probe.seq == seq:
                    self._probe.nacks += 1
                    self._stats.nacks += 1

    def _on_ping_req(self, from_address: str, msg: PingReq, now: float) -> None:
        if msg.target == self._node_id:
            # Asked to check on ourselves: we are evidently alive.
            self._send(from_address, [encode_message(Ack(msg.seq))])
            return
        if len(self._relays) >= self._config.max_pending_relays:
            self._stats.relays_dropped += 1
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(
            origin_address=from_address,
            origin_seq=msg.seq,
            nack_at_s=now + self._config.probe_timeout_s,
            # Past the asker's own round (at least one probe interval) the ack is useless to it.
            expires_s=now + self._config.probe_interval_s,
        )
        self._stats.relays += 1
        self._send(msg.target_address, [encode_message(Ping(seq, msg.target))])

    def _on_ack(self, seq: int, now: float) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq and now <= probe.deadline_s:
            self._probe = None
            self._stats.acks += 1
            self._awareness.apply_delta(-1)
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send(relay.origin_address, [encode_message(Ack(relay.origin_seq))])
            return
        self._stats.stale_acks += 1

    def _on_alive(self, msg: Alive, now: float) -> None:
        if msg.node == self._node_id:
            self._on_alive_about_self(msg)
            return
        member = self._members.get(msg.node)
        if member is None:
            if len(self._members) >= self._config.max_members:
                self._stats.members_rejected += 1
                return
            joined = Member(msg.node, msg.address, msg.incarnation, Status.ALIVE, msg.meta, now)
            self._store(joined)
            self._probe_order.insert(self._rng.randint(0, len(self._probe_order)), msg.node)
            self._push_broadcast(msg)
            self._emit(EventKind.JOIN, joined, now)
            return
        # alive(i) beats alive(j), suspect(j), dead(j) and left(j) only when i > j.
        if msg.incarnation <= member.incarnation:
            return
        since = member.status_since_s if member.status is Status.ALIVE else now
        updated = Member(msg.node, msg.address, msg.incarnation, Status.ALIVE, msg.meta, since)
        self._store(updated)
        self._suspicions.pop(msg.node, None)
        self._push_broadcast(msg)
        if not member.status.is_live:
            self._add_to_probe_order(msg.node)
            self._emit(EventKind.JOIN, updated, now)
        elif member.status is Status.SUSPECT:
            self._emit(EventKind.ALIVE, updated, now)
        elif member.meta != msg.meta or member.address != msg.address:
            self._emit(EventKind.UPDATE, updated, now)

    def _on_alive_about_self(self, msg: Alive) -> None:
        if self._left or msg.incarnation < self._incarnation:
            return
        if (
            msg.incarnation == self._incarnation
            and msg.address == self._address
            and msgpack.packb(msg.meta, use_bin_type=True) == self._meta_packed
        ):
            return  # our own news, gossiped back to us
        # Someone holds a different version of us at our incarnation or above: a previous life
        # of this node (we restarted at 0), or a stale copy.  Only we may move our incarnation.
        self._refute(msg.incarnation)

    def _on_suspect(self, msg: Suspect, now: float) -> None:
        if msg.node == self._node_id:
            self._on_accusation_about_self(msg.incarnation)
            return
        member = self._members.get(msg.node)
        # suspect(i) beats alive(j) when i >= j, and never beats dead or left.
        if member is None or not member.status.is_live or msg.incarnation < member.incarnation:
            return
        if member.status is Status.SUSPECT and msg.incarnation == member.incarnation:
            suspicion = self._suspicions[msg.node]
            if suspicion.confirm(msg.source):
                self._push_broadcast(msg)  # spread the confirmation so others shorten theirs too
            return
        # A new suspicion: of an ALIVE member, or of a SUSPECT one at a higher incarnation.  The
        # latter means the member refuted the old suspicion and we missed its alive (only it
        # raises its incarnation), so the old timer and its confirmations are stale: start over.
        since = member.status_since_s if member.status is Status.SUSPECT else now
        suspected = dataclasses.replace(
            member, incarnation=msg.incarnation, status=Status.SUSPECT, status_since_s=since
        )
        self._store(suspected)
        n = self._n_live
        min_s = self._config.suspicion_min_s(n)
        self._suspicions[msg.node] = Suspicion(
            msg.source,
            k=self._config.suspicion_confirmations(n),
            min_s=min_s,
            max_s=self._config.suspicion_max_timeout_mult * min_s,
            start_s=now,
        )
        self._push_broadcast(msg)
        if member.status is Status.SUSPECT:
            return  # still suspect, as already reported
        self._stats.suspicions += 1
        self._emit(EventKind.SUSPECT, suspected, now)

    def _on_dead(self, msg: Dead, now: float) -> None:
        if msg.node == self._node_id:
            # Even our own LEFT from a previous life is refuted; only while leaving is it ours.
            self._on_accusation_about_self(msg.incarnation)
            return
        member = self._members.get(msg.node)
        # dead(i) beats alive(j) and suspect(j) when i >= j.
        if member is None or msg.incarnation < member.incarnation:
            return
        if not member.status.is_live:
            if msg.incarnation > member.incarnation:
                # Remember the higher accusation, so an alive between the two stays rejected.
                self._store(dataclasses.replace(member, incarnation=msg.incarnation))
            return
        left = msg.source == msg.node
        status = Status.LEFT if left else Status.DEAD
        gone = dataclasses.replace(member, incarnation=msg.incarnation, status=status, status_since_s=now)
        self._store(gone)
        self._suspicions.pop(msg.node, None)
        self._push_broadcast(msg)
        if left:
            self._stats.leaves += 1
        else:
            self._stats.deaths += 1
        self._emit(EventKind.LEFT if left else EventKind.DEAD, gone, now)

    def _on_accusation_about_self(self, incarnation: int) -> None:
        if self._left:
            return
        if incarnation >= self._incarnation:
            self._refute(incarnation)
        elif self._node_id not in self._broadcasts:
            # A stale accusation: its sender missed our refutation, whose retransmits may all
            # be spent.  Queue our current alive again (no new incarnation, no health penalty)
            # so it rides on the reply we are about to send, typically the ack to a buddy ping.
            self._stats.reasserts += 1
            self._broadcast_self()

    def _merge(self, exchange: PushPull, now: float) -> None:
        for entry in exchange.entries:
            if entry.status is Status.ALIVE:
                self._on_alive(Alive(entry.node_id, entry.incarnation, entry.address, entry.meta), now)
            elif entry.status is Status.LEFT:
                self._on_dead(Dead(entry.node_id, entry.incarnation, entry.node_id), now)
            else:
                # A remote DEAD only makes us suspect (as memberlist does): the member gets a
                # suspicion window to refute in, instead of dying on second-hand news.
                self._on_suspect(Suspect(entry.node_id, entry.incarnation, exchange.sender), now)

    def _refute(self, accused_incarnation: int) -> None:
        self._incarnation = min(MAX_INCARNATION, max(self._incarnation, accused_incarnation) + 1)
        me = self._members[self._node_id]
        self._store(dataclasses.replace(me, incarnation=self._incarnation))
        # Being accused means others could not hear us in time: distrust our own timing too.
        self._awareness.apply_delta(1)
        self._stats.refutations += 1
        self._broadcast_self()

    # ------------------------------------------------------------------ helpers

    def _store(self, member: Member) -> None:
        old = self._members.get(member.node_id)
        if old is not None:
            if old.status.is_live:
                self._n_live -= 1
            if old.address != member.address and self._node_at.get(old.address) == member.node_id:
                del self._node_at[old.address]
        else:
            self._id_index[member.node_id] = len(self._member_ids)
            self._member_ids.append(member.node_id)
        if member.status.is_live:
            self._n_live += 1
        self._members[member.node_id] = member
        self._node_at[member.address] = member.node_id

    def _forget(self, member: Member) -> None:
        del self._members[member.node_id]
        if self._node_at.get(member.address) == member.node_id:
            del self._node_at[member.address]
        # Swap-remove from the sampling list: O(1), order does not matter.
        index = self._id_index.pop(member.node_id)
        last = self._member_ids.pop()
        if index < len(self._member_ids):
            self._member_ids[index] = last
            self._id_index[last] = index

    def _broadcast_self(self) -> None:
        me = self._members[self._node_id]
        self._push_broadcast(Alive(self._node_id, self._incarnation, self._address, me.meta))

    def _push_broadcast(self, msg: Alive | Suspect | Dead) -> None:
        self._broadcasts.push(msg.node, encode_message(msg))

    def _send(self, address: str, parts: list[bytes]) -> None:
        """A datagram of ``parts``, filled up with queued broadcasts to max_packet_bytes."""
        parts = self._buddy(address) + parts
        budget = self._config.max_packet_bytes - DATAGRAM_OVERHEAD_BYTES - sum(map(len, parts))
        parts += self._broadcasts.take(budget, self._config.retransmit_limit(self._n_live))
        self._queue_datagram(address, encode_datagram(parts))

    def _buddy(self, address: str) -> list[bytes]:
        """The suspicion to tell a member we suspect, in anything we send it.

        Lifeguard's buddy system puts it in pings; we also put it in acks and gossip, because
        after a partition heals the suspicion's own retransmits are long spent, and the suspect's
        first successful probe of anyone should be enough for it to hear and refute.
        """
        member = self._members.get(self._node_at.get(address, ""))
        if member is None or member.status is not Status.SUSPECT or member.address != address:
            return []
        return [encode_message(Suspect(member.node_id, member.incarnation, self._node_id))]

    def _queue_datagram(self, address: str, datagram: bytes) -> None:
        if len(self._outgoing) >= self._config.max_queued_datagrams:
            self._stats.datagrams_dropped += 1  # as a full socket buffer would
            return
        self._outgoing.append((address, datagram))
        self._stats.datagrams_out += 1
        self._stats.bytes_out += len(datagram)

    def _request_push_pull(self, address: str) -> None:
        if address == self._address or len(self._outgoing_streams) >= _MAX_QUEUED_STREAMS:
            return
        request = encode_push_pull(PushPull(False, self._node_id, self._state_entries()))
        self._outgoing_streams.append((address, request))
        self._stats.push_pulls += 1

    def _state_entries(self) -> list[StateEntry]:
        return [
            StateEntry(m.node_id, m.address, m.incarnation, m.status, m.meta) for m in self._members.values()
        ]

    def _random_members(self, k: int, predicate: Callable[[Member], bool]) -> list[Member]:
        """Up to ``k`` distinct members satisfying ``predicate``, uniformly at random.

        Rejection sampling from the id list keeps a gossip round O(k) in a large cluster; when
        eligible members are scarce (the draws keep missing) it falls back to one full scan.
        """
        ids = self._member_ids
        if len(ids) > _SAMPLE_SCAN_BELOW:
            chosen: dict[str, Member] = {}
            for _ in range(_SAMPLE_DRAWS_PER_PICK * k):
                member = self._members[ids[self._rng.randrange(len(ids))]]
                if member.node_id not in chosen and predicate(member):
                    chosen[member.node_id] = member
                    if len(chosen) == k:
                        return list(chosen.values())
        candidates = [m for m in self._members.values() if predicate(m)]
        return self._rng.sample(candidates, min(k, len(candidates)))

    def _emit(self, kind: EventKind, member: Member, now: float) -> None:
        if len(self._events) >= self._config.max_queued_events:
            self._events.popleft()  # the owner stopped draining: keep the newest news
            self._stats.events_dropped += 1
        self._events.append(MemberEvent(kind, member, now))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & MAX_SEQ
        return self._seq
