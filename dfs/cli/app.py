"""The ``dfs`` command group and how a command ends: one line on stderr, the error table's exit code.

Every command is a :class:`_Command`: a :class:`~dfs.core.errors.DfsError` that ends it (the CLI's
own or one a daemon answered) prints ``dfs: <command>: <why>`` and exits with the code of
``dfs.core.errors.TABLE``; ``dfs --debug`` (or DFS_DEBUG=1) shows the traceback instead.
Commands run their trio code through :func:`run`.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import trio

from dfs.core.errors import EX_FAILURE, exit_code, only_dfs_error

T = TypeVar("T")


class CliError(click.ClickException):
    """Ends a command with one line on stderr, ``dfs: MESSAGE``, and ``exit_code``.

    Not a DfsError: it is how click ends a command, never raised across a boundary.  A
    DfsError ending a command becomes one in :meth:`_Command.invoke`, with the exit code
    from ``dfs.core.errors.TABLE``; the CLI raises it itself for what it finds wrong locally."""

    def __init__(self, message: str, exit_code: int = EX_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance

    def show(self, file: Any = None) -> None:
        click.echo(f"dfs: {self.message}", err=True)


def _debug(ctx: click.Context) -> bool:
    """``dfs --debug``, or DFS_DEBUG set to anything but empty or 0."""
    return bool(ctx.find_root().params.get("debug")) or os.environ.get("DFS_DEBUG", "") not in ("", "0")


class _Command(click.Command):
    """A dfs command.  A DfsError ending it, the CLI's own or one a daemon answered (which trio
    hands on wrapped in an ExceptionGroup), is one line, ``dfs: <command>: <why>``, and the
    error table's exit code; with --debug or DFS_DEBUG=1, the traceback and the same code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            err = only_dfs_error(exc)
            if err is None:
                raise  # not an error dfs raises on purpose (a bug): its traceback is the report
            code = exit_code(err)
            if _debug(ctx):
                traceback.print_exception(exc)
                raise click.exceptions.Exit(code) from None
            what = ctx.command_path.partition(" ")[2]
            why = " ".join(err.message.split())  # a message from a peer may span lines
            raise CliError(f"{what}: {why}", code) from None


class _Group(click.Group):
    command_class = _Command
    group_class = type  # sub-groups are _Groups too, so every command is a _Command


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``fn(*args)`` under trio; its errors end the command (see :class:`_Command`)."""
    return trio.run(fn, *args)


@click.group(cls=_Group)
@click.version_option(package_name="dfs")
@click.option("--debug", is_flag=True, help="on failure, show the traceback (also: DFS_DEBUG=1)")
def main(debug: bool) -> None:
    """dfs: a FUSE-mountable POSIX distributed filesystem."""
