"""``dfs disks``: the data disks of the daemon, their usage, health and errors, and
``dfs disks drain|undrain|reset PATH`` (see daemon/disks.py for what each state means).
"""

from __future__ import annotations

from typing import Any

import click

from dfs.cli.app import main, run
from dfs.cli.connect import call, config_for, config_option, dir_option, endpoint_of
from dfs.cli.output import emit_json, human, json_option
from dfs.core.endpoints import SYS_DISKS


@main.group(invoke_without_command=True)
@dir_option
@config_option
@json_option
@click.pass_context
def disks(ctx: click.Context, directory: str | None, config_path: str | None, as_json: bool) -> None:
    """The daemon's data disks: path, weight, state, usage, chunks and errors."""
    if ctx.invoked_subcommand is not None:
        return
    _show(_call(directory, config_path, "list", ""), as_json)


def _call(directory: str | None, config_path: str | None, op: str, path: str) -> list[dict[str, Any]]:
    cfg = config_for(directory, config_path)
    report: list[dict[str, Any]] = run(call, endpoint_of(cfg), SYS_DISKS, op, path)
    return report


def _show(report: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        emit_json(report)
        return
    click.echo(
        f"{'PATH':<32} {'WEIGHT':>6} {'STATE':<9} {'USED':>9} {'FREE':>9} {'CHUNKS':>8} {'IOERR':>5} CSUMERR"
    )
    for d in report:
        click.echo(
            f"{d['path']:<32} {d['weight']:>6g} {d['state']:<9} {human(d['used_bytes']):>9} "
            f"{human(d['free_bytes']):>9} {d['chunk_count']:>8} {d['io_errors']:>5} {d['checksum_errors']}"
        )
        if d.get("reason"):
            click.echo(f"  {d['state']}: {d['reason']}")


def _action(op: str, doc: str) -> None:
    @disks.command(op, help=doc)
    @click.argument("path")
    @dir_option
    @config_option
    @json_option
    def command(path: str, directory: str | None, config_path: str | None, as_json: bool) -> None:
        _show(_call(directory, config_path, op, path), as_json)


_action(
    "drain", "Stop writes to the disk at PATH and move its chunks to the other disks (in the background)."
)
_action("undrain", "Take the draining or drained disk at PATH back into service.")
_action("reset", "Open the failed disk at PATH again (after fixing or replacing it) and clear its errors.")


def disk_lines(members: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``dfs status`` rows for the nodes whose gossip reports a disk not ok."""
    return [
        (f"disks {m['node_id']}", f"{m['disks_not_ok']} of {m.get('disks', '?')} not ok (see `dfs disks`)")
        for m in members
        if int(m.get("disks_not_ok", 0) or 0) > 0
    ]
