"""The one error table (dfs/core/errors.py): every error class has a complete row, every row a class,
and the S3 shim, the admin API and the CLI answer from it."""

from __future__ import annotations

import errno
import importlib
import pkgutil

import pytest

import daemon
import dfs
import mount
from dfs.core import errors
from dfs.core.errors import (
    TABLE,
    ConfigError,
    DfsError,
    FileTooBig,
    InternalError,
    NotFound,
    NotSupported,
    S3Error,
    TooManyLinks,
    Unavailable,
    admin_status,
    exit_code,
    from_wire,
    s3_code,
)


def _every_error_class() -> list[type[DfsError]]:
    """DfsError and every subclass, wherever defined: all of dfs, daemon and mount imported first."""
    for package in (dfs, daemon, mount):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            importlib.import_module(info.name)
    out: list[type[DfsError]] = [DfsError]
    for cls in out:  # grows while it is walked: a breadth-first walk of the tree
        out.extend(sub for sub in cls.__subclasses__() if sub not in out)
    return out


CLASSES = _every_error_class()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_error_class_has_a_complete_row(cls: type[DfsError]) -> None:
    row = TABLE[cls.code]
    assert row.errno in errno.errorcode
    assert cls.errno == row.errno, "a class's errno comes from its row"
    assert row.s3_code and row.s3_code.isalnum()
    assert 400 <= row.s3_status <= 599 and 400 <= row.admin_status <= 599
    assert 1 <= row.exit_code <= 125 and row.exit_code != 3, "3 is dfs fsck's 'problems found'"


def test_each_code_names_one_class_and_each_row_a_class() -> None:
    # A class keeping its parent's code (NoReply, ConnectFailed: refinements of Unavailable
    # raised on the client) shares the parent's row; every other class declares its own code.
    declared = [c for c in CLASSES if "code" in vars(c) and c is not DfsError]
    codes = [c.code for c in declared]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    assert DfsError.code == InternalError.code, "a bare DfsError travels as an internal error"
    assert set(TABLE) == set(codes), "a row without a class, or a class without a row"


def test_a_class_without_a_row_is_refused_when_defined() -> None:
    with pytest.raises(TypeError, match="no row"):

        class Unlisted(DfsError):
            code = "Unlisted"


def test_the_s3_shim_reads_the_table() -> None:
    assert s3_code(NotFound("k")) == ("NoSuchKey", 404)
    assert s3_code(Unavailable("down")) == ("ServiceUnavailable", 503)
    assert s3_code(TooManyLinks("d")) == ("TooManyLinks", 409)  # was a 500: no retry fixes it
    assert s3_code(ConfigError("c")) == ("InternalError", 500)  # the server's configuration
    assert s3_code(DfsError("bare")) == ("InternalError", 500)
    assert s3_code(S3Error("SlowDown", "later", 503)) == ("SlowDown", 503)  # its own, not the row


def test_the_admin_api_reads_the_table() -> None:
    assert admin_status(NotFound("n")) == 404
    assert admin_status(TooManyLinks("d")) == 409
    assert admin_status(ConfigError("c")) == 400  # a configuration the client sent
    assert admin_status(NotSupported("x")) == 501
    assert admin_status(FileTooBig("x")) == 400
    assert admin_status(S3Error("AccessDenied", "no", 403)) == 403


def test_the_cli_reads_the_table() -> None:
    from dfs.net.rpc import ConnectFailed

    assert exit_code(NotFound("n")) == errors.EX_NOINPUT == 66
    assert exit_code(ConnectFailed("refused")) == exit_code(Unavailable("u")) == errors.EX_UNAVAILABLE == 69
    assert exit_code(errors.InvalidArgument("bad")) == errors.EX_USAGE == 2
    assert exit_code(DfsError("bare")) == errors.EX_SOFTWARE


@pytest.mark.parametrize(
    "cls", [c for c in CLASSES if c.__module__ == "dfs.core.errors" and c is not S3Error]
)
def test_the_wire_keeps_class_and_errno(cls: type[DfsError]) -> None:
    back = from_wire(cls("m").to_wire())
    sent_as = InternalError if cls is DfsError else cls  # the base travels under InternalError's code
    assert (type(back), back.errno, back.message) == (sent_as, cls.errno, "m")
