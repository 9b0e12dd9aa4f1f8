"""Fixtures for multi-host tests in network namespaces (see tests/netns/harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netns.harness import Net, cleanup_stale, netns_unavailable_reason


@pytest.fixture(scope="session")
def netns_available() -> None:
    """Skip unless we can make namespaces, bridges and veth pairs and mount FUSE (root)."""
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")
    cleanup_stale()


@pytest.fixture
def net(netns_available: None) -> Iterator[Net]:
    """A private switch; add hosts with ``net.add_host(name)``. Everything is removed afterwards."""
    with Net() as n:
        yield n
