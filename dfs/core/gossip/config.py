"""Gossip timing and limits: one frozen dataclass, with presets and the scaling formulas.

Every timeout is a named field with its unit last.  The defaults are memberlist's LAN values; the
``local`` preset is memberlist's loopback profile and ``fast_test`` shrinks every period about tenfold
so simulated clusters converge in a few simulated seconds.  The formulas that scale timeouts with
the cluster size live here as methods, next to the fields they scale, so the state machine and the
tests compute bounds the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dfs.core.errors import ConfigError

__all__ = ["GossipConfig"]

#: The largest UDP payload IPv4 can carry; a packet limit above it could never be sent.
MAX_UDP_PAYLOAD_BYTES = 65_507
#: Room an ``alive`` message needs besides its meta (type, ids, address, incarnation, headers).
_ALIVE_OVERHEAD_BYTES = 512


@dataclass(frozen=True)
class GossipConfig:
    """SWIM + Lifeguard parameters (field names follow memberlist's ``Config``).

    Failure detection:

    * ``probe_interval_s``: one probe round per interval, stretched by the local health score
      (``interval × (score + 1)``).  A probe that is still unanswered at the end of its round
      makes the target suspect.
    * ``probe_timeout_s``: how long to wait for a direct ack before asking ``indirect_checks``
      other members to ping the target.  Never scaled: it is a bound on the network round trip
      (plus the peer's loop lag), and must be shorter than ``probe_interval_s``.
    * ``suspicion_mult`` / ``suspicion_max_timeout_mult``: a suspect is declared dead after a
      timeout between ``min = suspicion_mult × max(1, log10 N) × probe_interval_s`` and
      ``max = suspicion_max_timeout_mult × min``; it starts at ``max`` and shrinks towards ``min``
      as other members independently confirm the suspicion.
    * ``awareness_max_multiplier``: cap on the local health score (score ∈ [0, cap − 1]).

    Dissemination:

    * ``retransmit_mult``: each queued update is piggybacked ``retransmit_mult × ceil(log10(N + 1))``
      times before it is dropped.
    * ``gossip_interval_s`` / ``gossip_nodes``: every interval, queued updates go to this many
      random members, including members dead for less than ``gossip_to_the_dead_s`` so that a
      wrongly accused member can still hear about it and refute.
    * ``push_pull_interval_s``: full-state exchange over TCP with one random member (scaled up
      above 32 members).  ``reconnect_interval_s``: full-state exchange with one random *dead*
      member (Serf's reconnect), so that both sides of a healed partition find each other even
      after every live member was declared dead.

    Limits (everything is bounded; excess input is dropped and counted, never buffered):
    ``max_packet_bytes`` per UDP datagram, ``max_meta_bytes`` per member's packed meta,
    ``max_members`` in the table, ``max_broadcasts`` queued updates, ``max_pending_relays``
    indirect pings served at once, ``max_queued_datagrams`` / ``max_queued_events`` not yet
    drained by the driver, ``max_stream_bytes`` per push-pull message.  Dead and left members
    are forgotten ``reap_after_s`` after their last status change.
    """

    probe_interval_s: float = 1.0
    probe_timeout_s: float = 0.5
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    gossip_interval_s: float = 0.2
    gossip_nodes: int = 3
    push_pull_interval_s: float = 30.0
    gossip_to_the_dead_s: float = 30.0
    awareness_max_multiplier: int = 8
    max_packet_bytes: int = 1400
    reconnect_interval_s: float = 30.0
    reap_after_s: float = 24 * 3600.0
    max_members: int = 10_000
    max_meta_bytes: int = 512
    max_broadcasts: int = 1024
    max_pending_relays: int = 256
    max_queued_datagrams: int = 4096
    max_queued_events: int = 10_000
    max_stream_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        positive = (
            "probe_interval_s",
            "probe_timeout_s",
            "gossip_interval_s",
            "push_pull_interval_s",
            "reconnect_interval_s",
        )
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"gossip.{name} must be a positive number of seconds, got {value!r}")
        at_least_one = (
            "suspicion_mult",
            "suspicion_max_timeout_mult",
            "retransmit_mult",
            "gossip_nodes",
            "awareness_max_multiplier",
            "max_members",
            "max_broadcasts",
            "max_pending_relays",
            "max_queued_datagrams",
            "max_queued_events",
        )
        for name in at_least_one:
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"gossip.{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.indirect_checks, int) and self.indirect_checks >= 0):
            raise ConfigError(f"gossip.indirect_checks must be >= 0, got {self.indirect_checks!r}")
        if self.probe_timeout_s >= self.probe_interval_s:
            raise ConfigError("gossip.probe_timeout_s must be shorter than gossip.probe_interval_s")
        if not (self.gossip_to_the_dead_s >= 0 and self.reap_after_s >= self.gossip_to_the_dead_s):
            raise ConfigError("gossip.reap_after_s must be >= gossip.gossip_to_the_dead_s >= 0")
        if not (
            self.max_meta_bytes > 0 and self.max_meta_bytes + _ALIVE_OVERHEAD_BYTES <= self.max_packet_bytes
        ):
            raise ConfigError(
                f"gossip.max_meta_bytes must leave {_ALIVE_OVERHEAD_BYTES} bytes of gossip.max_packet_bytes"
            )
        if self.max_packet_bytes > MAX_UDP_PAYLOAD_BYTES:
            raise ConfigError(f"gossip.max_packet_bytes must be <= {MAX_UDP_PAYLOAD_BYTES}")
        if self.max_stream_bytes < self.max_packet_bytes:
            raise ConfigError("gossip.max_stream_bytes must be >= gossip.max_packet_bytes")

    # ------------------------------------------------------------------ presets

    @classmethod
    def lan(cls) -> GossipConfig:
        """memberlist ``DefaultLANConfig``: hosts on one LAN (the defaults)."""
        return cls()

    @classmethod
    def wan(cls) -> GossipConfig:
        """memberlist ``DefaultWANConfig``: higher latency, more loss."""
        return cls(
            probe_interval_s=5.0,
            probe_timeout_s=3.0,
            suspicion_mult=6,
            gossip_interval_s=0.5,
            gossip_nodes=4,
            push_pull_interval_s=60.0,
            gossip_to_the_dead_s=60.0,
            reconnect_interval_s=60.0,
        )

    @classmethod
    def local(cls) -> GossipConfig:
        """memberlist ``DefaultLocalConfig``: every member on one host (loopback)."""
        return cls(
            probe_timeout_s=0.2,
            suspicion_mult=3,
            retransmit_mult=2,
            gossip_interval_s=0.1,
            push_pull_interval_s=15.0,
            gossip_to_the_dead_s=15.0,
            reconnect_interval_s=15.0,
        )

    @classmethod
    def fast_test(cls) -> GossipConfig:
        """LAN ratios at a tenth of the periods, for simulated and loopback test clusters."""
        return cls(
            probe_interval_s=0.1,
            probe_timeout_s=0.05,
            gossip_interval_s=0.02,
            push_pull_interval_s=3.0,
            gossip_to_the_dead_s=3.0,
            reconnect_interval_s=1.0,
            reap_after_s=60.0,
        )

    # ------------------------------------------------------------------ formulas (memberlist util.go)

    def suspicion_min_s(self, n_members: int) -> float:
        """Shortest suspicion: ``suspicion_mult × max(1, log10 N) × probe_interval_s``."""
        node_scale = max(1.0, math.log10(max(1, n_members)))
        return self.suspicion_mult * node_scale * self.probe_interval_s

    def suspicion_max_s(self, n_members: int) -> float:
        """Longest suspicion (no confirmations): ``suspicion_max_timeout_mult × min``."""
        return self.suspicion_max_timeout_mult * self.suspicion_min_s(n_members)

    def suspicion_confirmations(self, n_members: int) -> int:
        """Independent confirmations that drive a suspicion to its minimum (k).

        ``suspicion_mult − 2``, or 0 when there are too few other members to ever send that
        many (then a suspicion simply lasts the minimum).
        """
        k = self.suspicion_mult - 2
        return 0 if n_members - 2 < k else max(0, k)

    def retransmit_limit(self, n_members: int) -> int:
        """How many times one update is piggybacked: ``retransmit_mult × ceil(log10(N + 1))``."""
        return self.retransmit_mult * math.ceil(math.log10(max(1, n_members) + 1))

    def scaled_push_pull_interval_s(self, n_members: int) -> float:
        """Push-pull period: unchanged up to 32 members, then ×(ceil(log2 N − 5) + 1).

        Full-state exchanges cost O(N) each, so large clusters do them less often.
        """
        if n_members <= 32:
            return self.push_pull_interval_s
        multiplier = math.ceil(math.log2(n_members) - math.log2(32)) + 1
        return self.push_pull_interval_s * multiplier
