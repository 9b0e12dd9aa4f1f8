"""``dfs quota set|get|list|clear``: directory quotas (bytes and inodes) kept by the metadata service.

PATH is a namespace path such as ``/vol/dir`` (a volume's quota is the quota of ``/vol``).
Sizes take K, M, G, T suffixes (powers of 1024).  See daemon/meta/quotas.py for the model:
usage is st_size of the regular files plus every inode, charged to the nearest directory
with a quota; a rename or hard link between two quota domains fails with EXDEV."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from dfs.cli.app import main, run
from dfs.cli.connect import call, config_for, config_option, dir_option, endpoint_of
from dfs.core.endpoints import QUOTA_CLEAR, QUOTA_GET, QUOTA_LIST, QUOTA_SET

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)([KMGTP]?)(?:I?B)?", re.IGNORECASE)
_LIMIT_MAX = 2**63 - 1


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional K/M/G/T/P suffix (1024-based); ValueError if not."""
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not a size: {text!r} (a number with an optional K, M, G or T suffix)")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()] if "." in m.group(1) else None
    exact = int(m.group(1)) * _UNITS[m.group(2).upper()] if value is None else int(value)
    if exact > _LIMIT_MAX:
        raise ValueError(f"size {text!r} is too large")
    return exact


def format_size(value: int | None) -> str:
    """A byte count for people: ``1.5K``, ``10``; ``-`` for none."""
    if value is None:
        return "-"
    for suffix in ("P", "T", "G", "M", "K"):
        unit = _UNITS[suffix]
        if value >= unit:
            return f"{value / unit:.1f}".rstrip("0").rstrip(".") + suffix
    return str(value)


def provisioned_bytes(quotas: list[dict[str, Any]]) -> int:
    """The byte limits promised in all: each domain's limit unless an enclosing domain has one
    (that one bounds it already).  ``quotas``: rows with ino, parent and max_bytes."""
    by_ino = {q["ino"]: q for q in quotas}
    total = 0
    for q in quotas:
        if q["max_bytes"] is None:
            continue
        parent, seen = q["parent"], {q["ino"]}
        while parent is not None and parent not in seen and parent in by_ino:
            if by_ino[parent]["max_bytes"] is not None:
                break
            seen.add(parent)
            parent = by_ino[parent]["parent"]
        else:
            total += int(q["max_bytes"])
    return total


def overcommit_warning(provisioned: int, capacity: int, ratio: float) -> str | None:
    """The warning `dfs status` prints when quotas promise more than ``ratio`` x capacity."""
    if capacity <= 0 or provisioned <= ratio * capacity:
        return None
    return (
        f"quotas promise {format_size(provisioned)}, {provisioned / capacity:.2f}x the capacity of "
        f"{format_size(capacity)} (warning above {ratio:g}x: [storage] overcommit_warn_ratio)"
    )


def _size_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None | str:
    if value is None:
        return None
    if value.lower() in ("none", "unlimited"):
        return "none"
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _count_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None | str:
    if value is None:
        return None
    if value.lower() in ("none", "unlimited"):
        return "none"
    if not value.isdigit() or int(value) > _LIMIT_MAX:
        raise click.BadParameter(f"not a count: {value!r}")
    return int(value)


def _line(q: dict[str, Any]) -> str:
    stored = q["used_stored_bytes"]
    ratio = f"{q['used_bytes'] / stored:.2f}" if stored else "-"
    return (
        f"{q['path']:<30}  {format_size(q['used_bytes']):>8} / {format_size(q['max_bytes']):<8}  "
        f"{q['used_inodes']:>9} / {q['max_inodes'] if q['max_inodes'] is not None else '-':<9}  {ratio:>5}"
    )


_HEADER = f"{'PATH':<30}  {'BYTES USED / LIMIT':>19}  {'INODES USED / LIMIT':>21}  RATIO"


def _show(q: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(q, indent=2, sort_keys=True))
    else:
        click.echo(_HEADER)
        click.echo(_line(q))


@main.group()
def quota() -> None:
    """Directory quotas: limits on bytes (st_size) and inodes, enforced on every write path."""


@quota.command("set")
@click.argument("path")
@click.option("--bytes", "max_bytes", callback=_size_option, help="byte limit (K/M/G/T suffixes; none)")
@click.option("--inodes", "max_inodes", callback=_count_option, help="inode limit (none: no limit)")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def quota_set(
    path: str,
    max_bytes: int | str | None,
    max_inodes: int | str | None,
    directory: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Set the quota of directory PATH (limits not given keep their value).

    The first quota on a non-empty directory counts its tree once (one transaction)."""
    limits: dict[str, int | None] = {}
    for key, value in (("max_bytes", max_bytes), ("max_inodes", max_inodes)):
        if value is not None:
            limits[key] = None if value == "none" else int(value)
    if not limits:
        raise click.UsageError("give --bytes and/or --inodes")
    cfg = config_for(directory, config_path)
    _show(run(call, endpoint_of(cfg), QUOTA_SET, path, limits), as_json)


@quota.command("get")
@click.argument("path")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def quota_get(path: str, directory: str | None, config_path: str | None, as_json: bool) -> None:
    """The quota and usage of directory PATH."""
    cfg = config_for(directory, config_path)
    _show(run(call, endpoint_of(cfg), QUOTA_GET, path), as_json)


@quota.command("list")
@dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def quota_list(directory: str | None, config_path: str | None, as_json: bool) -> None:
    """Every quota domain (each volume has one, limits or not) with its usage."""
    cfg = config_for(directory, config_path)
    found: list[dict[str, Any]] = run(call, endpoint_of(cfg), QUOTA_LIST)
    if as_json:
        click.echo(json.dumps(found, indent=2, sort_keys=True))
        return
    click.echo(_HEADER)
    for q in found:
        click.echo(_line(q))


@quota.command("clear")
@click.argument("path")
@dir_option
@config_option
def quota_clear(path: str, directory: str | None, config_path: str | None) -> None:
    """Remove the quota of directory PATH (a volume keeps its usage accounting, without limits)."""
    cfg = config_for(directory, config_path)
    run(call, endpoint_of(cfg), QUOTA_CLEAR, path)
    click.echo(f"cleared the quota of {path}")
