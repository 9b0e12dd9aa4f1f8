"""Cluster membership: SWIM failure detection and gossip, with HashiCorp's Lifeguard refinements.

Purpose: every daemon knows which others are alive, and their small advertised state (zone,
capacity, free space, load, layout epoch) rides along.  Gossip never decides placement: the
authoritative layout lives in metadata; gossip only tells a daemon that a peer is up, down, or
advertises a newer layout epoch.

Shape (memberlist's, one noun per module): :mod:`~dfs.core.gossip.config` (timeouts, limits, presets,
scaling formulas), :mod:`~dfs.core.gossip.member` (Status, Member, events), :mod:`~dfs.core.gossip.messages`
(the wire format), :mod:`~dfs.core.gossip.awareness` (local health), :mod:`~dfs.core.gossip.suspicion`
(dynamic suspicion timers), :mod:`~dfs.core.gossip.broadcast` (the piggyback queue) and
:mod:`~dfs.core.gossip.state` (the :class:`Gossip` state machine).  Everything here is sans-IO: no
sockets, no trio, no threads, no clock; time arrives as ``now_s`` arguments and every random choice
comes from an injected ``random.Random``.  A thin trio adapter moves the bytes.

Protocol, one probe round per ``probe_interval × (local_health + 1)``:

1. ping the next member of a shuffled round-robin list (a suspect's ping also carries the
   suspicion, so it can refute at once);
2. no ack within ``probe_timeout_s``: ask ``indirect_checks`` random members to ping it
   (``ping_req``); each relays the ack, or answers ``nack`` if the target stayed silent;
3. still no ack at the end of the round: the member becomes SUSPECT and the suspicion is gossiped.
   The suspicion expires into DEAD after a timeout that starts at its maximum and shrinks as
   other members independently confirm it.

Updates (alive, suspect, dead) piggyback on every datagram and on gossip rounds to a few random
members, each a bounded number of times; a periodic TCP push-pull exchanges full tables to repair
whatever the gossip lost.

Incarnation rules (only a member raises its own incarnation; i, j are incarnations):

* alive(i) overrides alive(j), suspect(j), dead(j) and left(j) iff i > j;
* suspect(i) overrides alive(j) iff i >= j; it never overrides dead or left;
* dead(i) and left(i) override alive(j) and suspect(j) iff i >= j;
* a member that hears suspect(i) or dead(i) about itself with i >= its own incarnation (or alive(i)
  that differs from what it is at i >= its own) refutes: it sets its incarnation to i + 1 and
  gossips alive.  A restarted member starts at 0 and wins the same way, as soon as it learns the
  incarnation of its previous life (from a push-pull or an accusation about itself);
* a push-pull row that says DEAD is merged as a suspicion, so the member can still refute.

Where we depart from memberlist, each time because a simulated run showed the difference:

* A stale accusation about ourselves (suspect/dead below our incarnation) is answered by queueing
  our current alive again.  Its sender missed our refutation, whose retransmits may all be spent;
  memberlist ignores it, and under 10 % loss that let one member's old suspicion run out into a
  false DEAD in about one 60 s run in five.
* Everything we send to a member we suspect carries the suspicion, not just pings, so a member
  whose partition heals hears it with the first ack it gets and refutes at once.
* A suspicion at a higher incarnation of a member already SUSPECT restarts its timer: the member
  refuted in between (we missed the alive), so the old timer and its confirmations are stale.
* A periodic push-pull with one DEAD member (Serf's reconnect, ``reconnect_interval_s``) lets the
  two sides of a long partition find each other again; a node with no live peers retries its seeds.
* Timers are not goroutines: every input first runs the timers due by its ``now_s``, so an ack
  handed over after its probe's deadline counts as late whatever order the owner calls things in.

Invariants:

* A member is SUSPECT exactly while a suspicion timer exists for it.
* The local node is always in its own table, ALIVE (or LEFT after :meth:`Gossip.leave`), and
  never emits events about itself.
* Every UDP datagram built here is at most ``max_packet_bytes``; everything that grows with the
  input is bounded by a config limit, and what exceeds it is dropped and counted, never buffered.
* Remote input never raises: malformed datagrams, streams, messages and rows are counted in
  ``stats.malformed`` and ignored.  Local misuse (bad node id, oversized meta) raises
  :class:`~dfs.core.errors.InvalidArgument`; a bad config raises :class:`~dfs.core.errors.ConfigError`.
"""

from __future__ import annotations

from dfs.core.gossip.config import GossipConfig
from dfs.core.gossip.member import EventKind, Member, MemberEvent, Status
from dfs.core.gossip.messages import (
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
    decode_datagram,
    decode_push_pull,
    encode_datagram,
    encode_message,
    encode_push_pull,
)
from dfs.core.gossip.state import Gossip, GossipStats

__all__ = [
    "Ack",
    "Alive",
    "Dead",
    "EventKind",
    "Gossip",
    "GossipConfig",
    "GossipStats",
    "Member",
    "MemberEvent",
    "Message",
    "Nack",
    "Ping",
    "PingReq",
    "PushPull",
    "StateEntry",
    "Status",
    "Suspect",
    "decode_datagram",
    "decode_push_pull",
    "encode_datagram",
    "encode_message",
    "encode_push_pull",
]
