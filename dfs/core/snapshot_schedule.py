"""Scheduled volume snapshots: the schedule format and what to take and expire at a given time.

A volume's ``snapshot_schedule`` is a comma-separated list of ``tier=N`` (e.g.
``"hourly=24,daily=7,weekly=4"``): for each tier one snapshot is taken per
period (a UTC minute, hour, day, ISO week from Monday, calendar month), and the
newest N of that tier are kept.  Snapshots taken by hand (origin ``manual``)
are never expired.  A tier left out of a schedule keeps none (its automatic
snapshots expire); a volume without a schedule is left alone.

:func:`plan` is pure: given the time, the schedule and the volume's snapshots
(name, created, origin) it answers which to create and which to delete.
Applying its answer and asking again at the same time answers nothing more.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "MANUAL",
    "NAME_RE",
    "ORIGINS",
    "TIERS",
    "Plan",
    "Snap",
    "auto_name",
    "format_schedule",
    "parse_schedule",
    "period_start_ns",
    "plan",
]

#: Snapshot names, manual or automatic: a directory name every tool quotes easily.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
TIERS = ("minutely", "hourly", "daily", "weekly", "monthly")
MANUAL = "manual"
ORIGINS = (MANUAL, *TIERS)
MAX_KEEP = 10_000  # per tier: bounds what one volume's schedule can hold
MAX_SCHEDULE_CHARS = 200
_NS = 10**9
_SECONDS = {"minutely": 60, "hourly": 3600, "daily": 86400}
_EPOCH_MONDAY_S = 4 * 86400  # 1970-01-01 was a Thursday: Mondays are 4 days later modulo 7


def parse_schedule(text: str) -> dict[str, int]:
    """``"hourly=24,daily=7"`` -> ``{"hourly": 24, "daily": 7}`` (tiers in :data:`TIERS` order).

    ValueError, saying what is wrong, for anything else: unknown or repeated
    tiers, counts outside 1..MAX_KEEP, an empty schedule.
    """
    if not isinstance(text, str):
        raise ValueError(
            f"a snapshot schedule is a string like 'hourly=24,daily=7', not {type(text).__name__}"
        )
    if len(text) > MAX_SCHEDULE_CHARS:
        raise ValueError(f"a snapshot schedule has at most {MAX_SCHEDULE_CHARS} characters")
    found: dict[str, int] = {}
    for item in text.split(","):
        tier, sep, count = item.strip().partition("=")
        tier = tier.strip()
        if not sep or tier not in TIERS:
            raise ValueError(
                f"snapshot schedule item {item.strip()!r:.40} is not tier=N "
                f"with tier one of {', '.join(TIERS)}"
            )
        if tier in found:
            raise ValueError(f"snapshot schedule names tier {tier!r} twice")
        count = count.strip()
        if not count.isdigit() or not 1 <= int(count) <= MAX_KEEP:
            raise ValueError(
                f"snapshot schedule: {tier} must keep 1..{MAX_KEEP} snapshots, not {count!r:.20}"
            )
        found[tier] = int(count)
    return {tier: found[tier] for tier in TIERS if tier in found}


def format_schedule(schedule: Mapping[str, int]) -> str:
    """The canonical text of a parsed schedule (what :func:`parse_schedule` gives back)."""
    return ",".join(f"{tier}={schedule[tier]}" for tier in TIERS if tier in schedule)


def period_start_ns(tier: str, now_ns: int) -> int:
    """The start (UTC) of the ``tier`` period that ``now_ns`` falls in."""
    secs = now_ns // _NS
    if tier in _SECONDS:
        step = _SECONDS[tier]
        return secs // step * step * _NS
    if tier == "weekly":
        week = 7 * 86400
        return ((secs - _EPOCH_MONDAY_S) // week * week + _EPOCH_MONDAY_S) * _NS
    if tier == "monthly":
        t = time.gmtime(secs)
        return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)) * _NS
    raise ValueError(f"unknown snapshot tier {tier!r}")


def auto_name(tier: str, period_ns: int) -> str:
    """``auto-hourly-20261205T0900Z``: the name of ``tier``'s snapshot of the period starting then."""
    return f"auto-{tier}-{time.strftime('%Y%m%dT%H%MZ', time.gmtime(period_ns // _NS))}"


@dataclass(frozen=True, slots=True)
class Snap:
    """One existing snapshot as the planner sees it."""

    name: str
    created_ns: int
    origin: str  # MANUAL or a tier


@dataclass(frozen=True, slots=True)
class Plan:
    """``create``: (tier, name) to take now; ``delete``: names to expire."""

    create: list[tuple[str, str]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)


def plan(now_ns: int, schedule: Mapping[str, int], existing: Iterable[Snap]) -> Plan:
    """What to take and what to expire at ``now_ns`` under ``schedule`` (tier -> how many to keep).

    A tier takes a snapshot when it has none created in the current period (and
    its name is free).  Each tier keeps its newest ``schedule[tier]`` snapshots,
    counting the one about to be taken; a tier not in ``schedule`` keeps none.
    Manual snapshots are never deleted.
    """
    snaps = list(existing)
    names = {s.name for s in snaps}
    out = Plan()
    for tier in TIERS:
        keep = schedule.get(tier, 0)
        mine = sorted(
            (s for s in snaps if s.origin == tier), key=lambda s: (s.created_ns, s.name), reverse=True
        )
        kept = 0
        if keep > 0:
            start = period_start_ns(tier, now_ns)
            name = auto_name(tier, start)
            if not any(s.created_ns >= start for s in mine) and name not in names:
                out.create.append((tier, name))
                kept = 1
        for s in mine:
            if kept < keep:
                kept += 1
            else:
                out.delete.append(s.name)
    return out
