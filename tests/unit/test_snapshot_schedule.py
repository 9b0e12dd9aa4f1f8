"""The snapshot schedule: parsing, periods, names, and the planner's properties."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.core.changes import ALL, ENTRY, NEW, Change, changes_of
from dfs.core.namespace import ROOT_INO
from dfs.core.snapshot_schedule import (
    MANUAL,
    TIERS,
    Snap,
    auto_name,
    format_schedule,
    parse_schedule,
    period_start_ns,
    plan,
)

NS = 10**9
T0 = calendar.timegm((2026, 12, 5, 9, 30, 15)) * NS  # a Saturday


def test_parse_and_format() -> None:
    assert parse_schedule("hourly=24,daily=7,weekly=4") == {"hourly": 24, "daily": 7, "weekly": 4}
    assert parse_schedule(" weekly = 4 , minutely=2") == {"minutely": 2, "weekly": 4}
    assert format_schedule(parse_schedule("monthly=12,hourly=1")) == "hourly=1,monthly=12"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "daily",
        "daily=",
        "daily=0",
        "daily=-1",
        "daily=x",
        "yearly=3",
        "daily=1,daily=2",
        "daily=7;",
        "a" * 300,
    ],
)
def test_bad_schedules_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(text)


def test_periods_and_names() -> None:
    assert auto_name("hourly", period_start_ns("hourly", T0)) == "auto-hourly-20261205T0900Z"
    assert auto_name("minutely", period_start_ns("minutely", T0)) == "auto-minutely-20261205T0930Z"
    assert auto_name("daily", period_start_ns("daily", T0)) == "auto-daily-20261205T0000Z"
    assert auto_name("weekly", period_start_ns("weekly", T0)) == "auto-weekly-20261130T0000Z"  # Monday
    assert auto_name("monthly", period_start_ns("monthly", T0)) == "auto-monthly-20261201T0000Z"


def apply(snaps: list[Snap], now: int, schedule: dict[str, int]) -> list[Snap]:
    p = plan(now, schedule, snaps)
    gone = set(p.delete)
    return [s for s in snaps if s.name not in gone] + [Snap(name, now, tier) for tier, name in p.create]


schedules = st.dictionaries(st.sampled_from(TIERS), st.integers(1, 6), max_size=len(TIERS))
manual = st.lists(
    st.builds(Snap, st.text("abc", min_size=1, max_size=6), st.integers(0, T0), st.just(MANUAL)),
    max_size=5,
    unique_by=lambda s: s.name,
)
steps = st.lists(st.integers(1, 40 * 86400 * NS), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(schedules, manual, steps)
def test_never_deletes_manual_and_is_idempotent(
    schedule: dict[str, int], manual_snaps: list[Snap], gaps: list[int]
) -> None:
    snaps = list(manual_snaps)
    now = T0
    for gap in gaps:
        now += gap
        p = plan(now, schedule, snaps)
        assert not set(p.delete) & {s.name for s in manual_snaps}
        snaps = apply(snaps, now, schedule)
        again = plan(now, schedule, snaps)
        assert again.create == [] and again.delete == []
        assert all(s in snaps for s in manual_snaps)
        for tier in TIERS:
            assert sum(s.origin == tier for s in snaps) <= schedule.get(tier, 0)


@settings(max_examples=100, deadline=None)
@given(schedules, st.integers(0, 31 * 86400 * NS))
def test_keeps_exactly_n_per_tier_at_steady_state(schedule: dict[str, int], offset: int) -> None:
    """Every tier takes one snapshot per call in a new period of its own: stepping 32 days (a
    new period of every tier) N+1 times, each tier holds exactly its N, the newest."""
    snaps: list[Snap] = []
    now = T0 + offset
    times = []
    for _ in range(max(schedule.values(), default=0) + 2):
        snaps = apply(snaps, now, schedule)
        times.append(now)
        now += 32 * 86400 * NS
    for tier in TIERS:
        n = schedule.get(tier, 0)
        mine = sorted(s.created_ns for s in snaps if s.origin == tier)
        assert mine == (times[-n:] if n else [])


def test_dropping_a_tier_expires_its_snapshots_and_nothing_manual() -> None:
    snaps = [Snap("mine", 1, MANUAL), Snap("auto-hourly-x", 2, "hourly")]
    p = plan(T0, {"daily": 1}, snaps)
    assert p.delete == ["auto-hourly-x"]
    assert p.create == [("daily", "auto-daily-20261205T0000Z")]


def test_a_taken_name_is_not_taken_again() -> None:
    snaps = [Snap("auto-daily-20261205T0000Z", 1, MANUAL)]
    assert plan(T0, {"daily": 1}, snaps).create == []


def test_change_notices_of_the_snapshot_operations() -> None:
    """What mounts hear (dfs/core/changes.py): a restore drops every cache (the whole subtree
    of the volume changed); the others name the entries they add or remove."""
    assert changes_of("snapshot_create", ["data", "s1", "manual", 5, 6, 7]) == [
        Change(NEW, ROOT_INO, (b".snapshots",)),
        Change(NEW, 5, (b"data",)),
        Change(NEW, 6, (b"s1",)),
    ]
    assert changes_of("snapshot_delete", ["data", "s1", 6, 7]) == [Change(ENTRY, 6, (b"s1",))]
    assert changes_of("snapshot_restore", ["data", "s1", 3]) == [Change(ALL)]
    assert changes_of("snapshot_restore_path", ["data", "s1", [b"a"], 3, b"b", 9]) == [
        Change(NEW, 3, (b"b",))
    ]
    assert changes_of("snapshot_clone", ["data", "s1", "copy", 9]) == [Change(NEW, ROOT_INO, (b"copy",))]
