"""Lifeguard local health: how much this node should distrust its own view of others.

A node whose event loop stalls, whose CPU is starved or whose network is lossy misses acks that
were sent on time, and would otherwise accuse healthy peers.  The score counts such evidence:

* +1 when a probe fails and fewer nacks came back than ping_reqs were sent (the indirect
  probers could not even tell us they had failed: the fault is likely on our side);
* +1 when we must refute a suspicion of ourselves (others could not reach us in time);
* −1 for each successful probe.

The score stays in ``[0, max_multiplier − 1]`` and stretches our own probe round to
``probe_interval × (score + 1)``, so an unhealthy node probes (and accuses) less often and waits
longer for answers before it does.
"""

from __future__ import annotations

__all__ = ["Awareness"]


class Awareness:
    """The local health score (0 = healthy)."""

    __slots__ = ("_max_score", "_score")

    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError("awareness max_multiplier must be >= 1")
        self._max_score = max_multiplier - 1
        self._score = 0

    @property
    def score(self) -> int:
        return self._score

    def apply_delta(self, delta: int) -> None:
        self._score = min(self._max_score, max(0, self._score + delta))

    def scale(self, timeout_s: float) -> float:
        """``timeout_s`` stretched by the current score."""
        return timeout_s * (self._score + 1)
