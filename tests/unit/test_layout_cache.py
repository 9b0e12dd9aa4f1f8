"""A daemon whose metadata database is away (a PostgreSQL failover) keeps placing chunks by
the layout it last read, rather than by none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.service import Service
from daemon.service.cluster_runner import _NEVER
from dfs.core import config as config_mod
from dfs.core.errors import NotFound, Unavailable


class AwayReader:
    def layout(self) -> dict[str, Any]:
        raise Unavailable("metadata database unreachable")


async def test_the_last_layout_outlives_a_database_outage(tmp_path: Path) -> None:
    cfg = config_mod.replace(
        config_mod.parse("", env={}, origin="test"), node={"data_dir": str(tmp_path / "var"), "id": "a"}
    )
    service = Service(cfg)
    try:
        runner = service.cluster_runner
        await service._m(service.meta.register_node, "a", "default", "127.0.0.1:7400")
        known = await runner.layout_wire()
        assert [n["node_id"] for n in known["nodes"]] == ["a"]
        real = service.metacalls.reader
        service.metacalls.reader = AwayReader()  # type: ignore[assignment]
        try:
            runner._layout_at = _NEVER  # due for a refresh
            assert await runner.layout_wire() == known
            runner._layout_wire = None  # nothing read yet: the outage shows
            with pytest.raises(Unavailable):
                await runner.layout_wire()
        finally:
            service.metacalls.reader = real
    finally:
        service.close()


async def test_a_layout_change_made_here_is_read_at_once(tmp_path: Path) -> None:
    """The cache's refresh_s bounds how stale another host's change may look, never one made
    here: ``dfs node remove`` then ``dfs layout`` must not show the node still there."""
    cfg = config_mod.replace(
        config_mod.parse("", env={}, origin="test"),
        node={"data_dir": str(tmp_path / "var"), "id": "a"},
        cluster={"refresh_s": 3600.0},
    )
    service = Service(cfg)
    try:
        runner, meta = service.cluster_runner, service.meta

        async def states() -> dict[str, str]:
            return {n["node_id"]: n["state"] for n in (await runner.layout_wire())["nodes"]}

        await service._m(meta.register_node, "a", "default", "127.0.0.1:7400")
        assert await states() == {"a": "active"}
        await service._m(meta.register_node, "b", "default", "127.0.0.1:7401")
        assert await states() == {"a": "active", "b": "active"}
        await service._m(meta.set_node, "b", state="draining")
        assert await states() == {"a": "active", "b": "draining"}
        await service._m(meta.remove_node, "b")
        assert await states() == {"a": "active"}
        # A change that is refused (or rolled back) commits nothing: the cache stays.
        commits = meta.layout_commits
        with pytest.raises(NotFound):
            await service._m(meta.remove_node, "b")
        await service._m(meta.register_node, "a", "default", "127.0.0.1:7400")  # unchanged
        assert meta.layout_commits == commits
    finally:
        service.close()
