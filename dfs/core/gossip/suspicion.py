"""Lifeguard dynamic suspicion: a suspect's timer that shrinks as others confirm it.

A suspicion starts at its longest, ``max_s``, because a single accuser may itself be the slow or
cut-off one.  Each *independent* confirmation (a suspect message for the same member from a node
that has not confirmed yet) is evidence that the accused is really gone, and pulls the total
timeout down logarithmically towards ``min_s``::

    timeout(n) = max(min_s, max_s − log(n + 1) / log(k + 1) × (max_s − min_s))

reaching ``min_s`` at ``n = k`` confirmations.  With ``k < 1`` (too few members to ever confirm)
the timeout is simply ``min_s``.  The deadline is measured from when the suspicion started, so a
late confirmation can fire it at once.
"""

from __future__ import annotations

import math

__all__ = ["Suspicion", "suspicion_timeout_s"]


def suspicion_timeout_s(confirmations: int, k: int, min_s: float, max_s: float) -> float:
    """Total suspicion time after ``confirmations`` of the ``k`` wanted."""
    if k < 1:
        return min_s
    frac = math.log(confirmations + 1) / math.log(k + 1)
    return max(min_s, max_s - frac * (max_s - min_s))


class Suspicion:
    """The timer for one suspected member."""

    __slots__ = ("_confirmed_by", "confirmations", "deadline_s", "k", "max_s", "min_s", "start_s")

    def __init__(self, accuser: str, *, k: int, min_s: float, max_s: float, start_s: float) -> None:
        self.k = k
        self.min_s = min_s
        self.max_s = max_s
        self.start_s = start_s
        self.confirmations = 0
        # The first accuser is not a confirmation: our own suspicion gossiped back to us would
        # otherwise count twice.
        self._confirmed_by = {accuser}
        self.deadline_s = start_s + suspicion_timeout_s(0, k, min_s, max_s)

    def confirm(self, accuser: str) -> bool:
        """Count ``accuser``'s confirmation; False if it is a repeat or no longer needed."""
        if self.confirmations >= self.k or accuser in self._confirmed_by:
            return False
        self._confirmed_by.add(accuser)
        self.confirmations += 1
        self.deadline_s = self.start_s + suspicion_timeout_s(
            self.confirmations, self.k, self.min_s, self.max_s
        )
        return True
