"""The node removal rule shared by ``dfs node remove`` and ``DELETE /storage/nodes/{id}``
(dfs/core/node_removal.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dfs.core.node_removal import removal_refusal

EPOCH = 7


def done(**extra: Any) -> dict[str, Any]:
    """The repair status of a node whose drain has finished at EPOCH."""
    return {"node_id": "n3", "round_epoch": EPOCH, "misplaced": 0, **extra}


def test_an_active_node_is_refused_even_forced() -> None:
    for status in (None, done()):
        for force in (False, True):
            why = removal_refusal("n3", "active", status, EPOCH, force=force)
            assert why is not None and "drain it first" in why


def test_a_drained_node_may_go() -> None:
    assert removal_refusal("n3", "draining", done(), EPOCH) is None
    assert removal_refusal("n3", "out", done(), EPOCH) is None


def test_a_node_still_holding_chunks_is_refused_unless_forced() -> None:
    why = removal_refusal("n3", "draining", done(misplaced=12), EPOCH)
    assert why is not None and "12 chunk(s)" in why
    assert removal_refusal("n3", "draining", done(misplaced=12), EPOCH, force=True) is None


def test_a_round_at_an_older_epoch_proves_nothing() -> None:
    why = removal_refusal("n3", "draining", done(round_epoch=EPOCH - 1), EPOCH)
    assert why is not None and f"epoch {EPOCH}" in why
    assert removal_refusal("n3", "out", {"node_id": "n3"}, EPOCH) is not None  # no round yet


def test_an_unreachable_node_must_be_out() -> None:
    why = removal_refusal("n3", "draining", None, EPOCH)
    assert why is not None and "does not answer" in why
    assert removal_refusal("n3", "draining", None, EPOCH, force=True) is None
    assert removal_refusal("n3", "out", None, EPOCH) is None


@given(
    state=st.sampled_from(["active", "draining", "out"]),
    reachable=st.booleans(),
    round_epoch=st.integers(EPOCH - 2, EPOCH),
    misplaced=st.integers(0, 3),
    force=st.booleans(),
)
def test_allowed_only_when_nothing_is_lost(
    state: str, reachable: bool, round_epoch: int, misplaced: int, force: bool
) -> None:
    status = {"round_epoch": round_epoch, "misplaced": misplaced} if reachable else None
    allowed = removal_refusal("n3", state, status, EPOCH, force=force) is None
    if state == "active":
        assert not allowed
    elif force:
        assert allowed
    elif reachable:
        assert allowed == (round_epoch == EPOCH and misplaced == 0)
    else:
        assert allowed == (state == "out")
