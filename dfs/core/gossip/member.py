"""Members as one node sees them, and the events that report changes to them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["EventKind", "Member", "MemberEvent", "Status"]


class Status(StrEnum):
    """A member's liveness as this node believes it.

    ALIVE and SUSPECT members are probed and count towards N (the cluster size used by every
    scaling formula); DEAD and LEFT members are not probed.  DEAD is an accusation the member
    may refute by coming back with a higher incarnation; LEFT is the member's own goodbye.
    """

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"

    @property
    def is_live(self) -> bool:
        """ALIVE or SUSPECT: still probed and counted as part of the cluster."""
        return self is Status.ALIVE or self is Status.SUSPECT


@dataclass(frozen=True, slots=True)
class Member:
    """One member's last known state.  Immutable: every change stores a new Member.

    ``address`` is the member's gossip ``host:port`` (UDP and TCP).  ``meta`` is the member's own
    small, opaque, msgpack-able dict (zone, capacity, free space, load, layout epoch...); only the
    member itself changes it, and treat it as read-only.  ``status_since_s`` is this node's clock
    when the status last changed.
    """

    node_id: str
    address: str
    incarnation: int
    status: Status
    meta: dict[str, Any]
    status_since_s: float


class EventKind(StrEnum):
    """What happened to a member (never emitted about the local node itself)."""

    JOIN = "join"  # first heard of, or back from DEAD/LEFT
    UPDATE = "update"  # still alive, with new meta or address
    SUSPECT = "suspect"  # ALIVE → SUSPECT
    ALIVE = "alive"  # SUSPECT → ALIVE (it refuted the suspicion)
    DEAD = "dead"  # → DEAD (suspicion expired, or we heard so)
    LEFT = "left"  # → LEFT (graceful leave)
    REAP = "reap"  # a DEAD/LEFT member forgotten after reap_after_s


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A change to one member, with the member's state just after it."""

    kind: EventKind
    member: Member
    at_s: float
