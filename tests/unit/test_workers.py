"""daemon.workers: background loops keep running through failures and report what they last did."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from daemon.service import Service
from daemon.workers import Periodic, Retrying
from dfs.core import config as config_mod
from dfs.core.errors import Unavailable


async def test_periodic_runs_after_each_interval_and_survives_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answers: list[object] = [3, Unavailable("primary away"), RuntimeError("bug"), 5]

    async def step() -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, int)
        return answer

    worker = Periodic("gc", 10.0, step)
    assert worker.status()["runs"] == 0 and worker.status()["interval_s"] == 10.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(9.0)
        assert worker.status()["runs"] == 0  # the first run waits one interval
        await trio.sleep(2.0)
        assert worker.status()["last_result"] == 3 and worker.status()["last_error"] is None
        await trio.sleep(10.0)
        assert worker.status()["last_error"] == "primary away"
        await trio.sleep(10.0)
        assert worker.status()["last_error"] == "RuntimeError: bug"
        await trio.sleep(10.0)
        nursery.cancel_scope.cancel()
    st = worker.status()
    assert (st["name"], st["runs"], st["failures"], st["last_result"], st["last_error"]) == (
        "gc",
        4,
        2,
        5,
        None,
    )
    assert st["last_started"] is not None and st["last_seconds"] is not None


async def test_retrying_backs_off_until_a_success_then_waits_long(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[float] = []
    outcomes = [False, Unavailable("no"), False, True, True]

    async def step() -> bool:
        calls.append(trio.current_time())
        answer = outcomes.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    worker = Retrying(
        "registering in the layout", step, ok_interval_s=30.0, first_retry_s=0.2, max_retry_s=1.0
    )
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(40.0)
        nursery.cancel_scope.cancel()
    gaps = [round(b - a, 3) for a, b in zip([start, *calls], calls, strict=False)]
    assert gaps == [0.0, 0.4, 0.8, 1.0, 30.0]
    assert worker.status()["failures"] == 1 and worker.status()["last_result"] is True


async def test_run_once_reports_failure() -> None:
    async def broken() -> None:
        raise Unavailable("down")

    worker = Retrying("x", broken, ok_interval_s=1.0)
    assert await worker.run_once() is False
    assert worker.status()["last_error"] == "down"


def test_a_node_runs_its_housekeeping_as_workers(tmp_path: Path) -> None:
    def names(text: str) -> list[str]:
        service = Service(
            config_mod.parse(f'[node]\ndata_dir = "{tmp_path / "var"}"\n' + text, env={}, origin="t")
        )
        try:
            assert all(st["runs"] == 0 for st in service.worker_status().values())
            return sorted(service.worker_status())
        finally:
            service.close()

    assert names("") == sorted(
        [
            "gc",
            "session expiry",
            "oplog trim",
            "request trim",
            "policy re-mark",
            "trash expiry",
            "metadata backup",
            "snapshots",
            "tiering",
            "orphan sweep",
            "heap trim",  # freed block buffers back to the system
            "wal checkpoint",  # SQLite's log, copied back off the metadata thread
            "registering in the layout",
            "layout controller",
        ]
    )
    # [meta] backup_interval_s = 0: no automatic backups.
    assert "metadata backup" not in names("[meta]\nbackup_interval_s = 0\n")
    # [snapshots] check_interval_s = 0: schedules are not run.
    assert "snapshots" not in names("[snapshots]\ncheck_interval_s = 0\n")
    # [tiers] interval_s = 0: no tiering passes (tiers still serve reads).
    assert "tiering" not in names("[tiers]\ninterval_s = 0\n")
    # A secondary keeps no metadata: it only sweeps its own chunks and registers.
    assert names('[cluster]\nmeta = "127.0.0.1:1"\n') == [
        "heap trim",
        "orphan sweep",
        "registering in the layout",
    ]
