"""One error tree for dfs, and one table of what each error means at every boundary.

Every failure that crosses a boundary (RPC, FUSE, S3, the admin API, the CLI)
is a :class:`DfsError`.  The RPC layer sends ``(code, errno, message)`` and
the receiving side re-raises the same class via :func:`from_wire`, so a
caller sees ``NotFound`` whether the error was raised locally or on another
host.

:data:`TABLE` maps each class's wire code to its errno (the mount's FUSE
reply), its S3 code and HTTP status (the S3 shim), its admin API status and
the ``dfs`` CLI's exit code.  It is the only place these are decided: a class
takes its ``errno`` from its row, and a class whose code has no row is refused
when it is defined.  A subclass that keeps its parent's code (``NoReply``,
``ConnectFailed``) shares the parent's row.
"""

from __future__ import annotations

import errno as _errno
from typing import Any, ClassVar, NamedTuple


class Row(NamedTuple):
    """What one error class means at each boundary."""

    errno: int  # the FUSE reply and the errno sent on the RPC wire
    s3_code: str  # <Error><Code> from the S3 shim
    s3_status: int  # HTTP status from the S3 shim
    admin_status: int  # HTTP status from the admin API (its body's code is the class's code)
    exit_code: int  # exit status of the dfs CLI


# Exit codes of the dfs CLI, after sysexits(3) where one fits.  0 is success, 1 a failure the
# CLI finds itself (no daemon error behind it), 2 a usage error (click's own, and an argument a
# daemon rejected), 3 `dfs fsck` finding problems without --repair.
EX_FAILURE = 1
EX_USAGE = 2  # not sysexits' 64: click already exits 2 for a bad command line
EX_DATAERR = 65  # the target is not in a state the operation takes (exists, not empty, ...)
EX_NOINPUT = 66  # what the command names does not exist
EX_UNAVAILABLE = 69  # no daemon answered, or the operation is not available
EX_SOFTWARE = 70  # an internal error: a bug, in the CLI or in a daemon
EX_CANTCREAT = 73  # no room for the result (no space, file too big)
EX_IOERR = 74  # stored data is corrupt or missing
EX_TEMPFAIL = 75  # it may work when tried again
EX_PROTOCOL = 76  # the two ends do not speak the same protocol (versions differ?)
EX_NOPERM = 77  # not permitted
EX_CONFIG = 78  # a configuration (dfs.conf, certificates, token) is wrong

TABLE: dict[str, Row] = {
    "InternalError": Row(_errno.EIO, "InternalError", 500, 500, EX_SOFTWARE),
    "NotFound": Row(_errno.ENOENT, "NoSuchKey", 404, 404, EX_NOINPUT),
    "Exists": Row(_errno.EEXIST, "PathConflict", 409, 409, EX_DATAERR),
    "NotADirectory": Row(_errno.ENOTDIR, "PathConflict", 409, 409, EX_DATAERR),
    "IsADirectory": Row(_errno.EISDIR, "PathConflict", 409, 409, EX_DATAERR),
    "NotEmpty": Row(_errno.ENOTEMPTY, "PathConflict", 409, 409, EX_DATAERR),
    # The directory (or inode) is at its link limit: a conflict with the tree as it is, which
    # no retry fixes (a 5xx would invite one).  S3 has no code for it: dfs's own, like PathConflict.
    "TooManyLinks": Row(_errno.EMLINK, "TooManyLinks", 409, 409, EX_DATAERR),
    "PermissionDenied": Row(_errno.EACCES, "AccessDenied", 403, 403, EX_NOPERM),
    # A change inside a read-only snapshot tree.  S3's own AccessDenied (403), as S3 answers a
    # write to a bucket whose policy denies writes: clients know not to retry it (a 409 would
    # read as a conflict a retry might resolve).  Admin 409: the target's state refuses it.
    "ReadOnly": Row(_errno.EROFS, "AccessDenied", 403, 409, EX_NOPERM),
    "NotPermitted": Row(_errno.EPERM, "AccessDenied", 403, 403, EX_NOPERM),
    # A caller that did not authenticate (RPC handshake, credential file): the connection ends.
    "AuthFailed": Row(_errno.EACCES, "AccessDenied", 403, 401, EX_NOPERM),
    # An authenticated caller whose class may not call this endpoint (dfs/core/endpoints.py).
    "CallerNotAllowed": Row(_errno.EPERM, "AccessDenied", 403, 403, EX_NOPERM),
    "InvalidArgument": Row(_errno.EINVAL, "InvalidArgument", 400, 400, EX_USAGE),
    "NameTooLong": Row(_errno.ENAMETOOLONG, "KeyTooLongError", 400, 400, EX_USAGE),
    # A missing xattr is never the answer to an HTTP request by itself: one escaping is a bug.
    "NoAttribute": Row(_errno.ENODATA, "InternalError", 500, 500, EX_NOINPUT),
    "RangeError": Row(_errno.ERANGE, "InternalError", 500, 500, EX_SOFTWARE),
    "NoSpace": Row(_errno.ENOSPC, "InsufficientStorage", 507, 507, EX_CANTCREAT),
    "FileTooBig": Row(_errno.EFBIG, "EntityTooLarge", 400, 400, EX_CANTCREAT),
    # A directory quota (daemon/meta/quotas.py) refused growth.  S3's own code and 403 (clients
    # must not retry it).  Admin 507 like NoSpace: it is a storage limit of the target, not a
    # refusal of the caller's credentials, which is what the admin API's 403 means.
    "QuotaExceeded": Row(_errno.EDQUOT, "QuotaExceeded", 403, 507, EX_CANTCREAT),
    # A rename or hard link across quota domains: EXDEV, as XFS project quotas (mv then copies).
    "CrossDevice": Row(_errno.EXDEV, "InvalidRequest", 400, 409, EX_DATAERR),
    "StaleHandle": Row(_errno.ESTALE, "InternalError", 500, 500, EX_TEMPFAIL),
    "NotSupported": Row(_errno.EOPNOTSUPP, "NotImplemented", 501, 501, EX_UNAVAILABLE),
    "CorruptChunk": Row(_errno.EIO, "InternalError", 500, 500, EX_IOERR),
    "ChunkMissing": Row(_errno.EIO, "InternalError", 500, 500, EX_IOERR),
    "Unavailable": Row(_errno.EIO, "ServiceUnavailable", 503, 503, EX_UNAVAILABLE),
    "ProtocolError": Row(_errno.EPROTO, "InternalError", 500, 500, EX_PROTOCOL),
    "FrameTooLarge": Row(_errno.EPROTO, "InternalError", 500, 500, EX_PROTOCOL),
    "UnknownMethod": Row(_errno.ENOSYS, "InternalError", 500, 500, EX_PROTOCOL),
    "PreconditionFailed": Row(_errno.ECANCELED, "PreconditionFailed", 412, 412, EX_TEMPFAIL),
    # Admin: the configuration a client sent is invalid (PUT /storage/config), the client's fault.
    # S3: no request carries configuration, so one reaching the shim is the server's own fault.
    "ConfigError": Row(_errno.EINVAL, "InternalError", 500, 400, EX_CONFIG),
    # The row of an S3Error only where no instance is at hand: each instance carries its own
    # S3 code and status, which s3_code() and admin_status() answer.
    "S3Error": Row(_errno.EINVAL, "InvalidRequest", 400, 400, EX_DATAERR),
    # The benchmark harnesses' own (dfs/bench/mount.py, dfs/bench/cluster.py), raised only in the CLI.
    "BenchMismatch": Row(_errno.EIO, "InternalError", 500, 500, EX_IOERR),
    "ClusterBenchError": Row(_errno.EIO, "InternalError", 500, 500, EX_TEMPFAIL),
}


class DfsError(Exception):
    """Base of every error dfs raises on purpose.  A bare DfsError is an internal error."""

    errno: ClassVar[int] = TABLE["InternalError"].errno
    code: ClassVar[str] = "InternalError"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        row = TABLE.get(cls.code)
        if row is None:
            raise TypeError(
                f"{cls.__qualname__}: error code {cls.code!r} has no row in dfs.core.errors.TABLE"
            )
        cls.errno = row.errno

    def __init__(self, message: str = "", *, errno: int | None = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        if errno is not None:
            # Instance override: used for errors that arrive as a bare errno.
            self.errno = errno  # type: ignore[misc]

    def to_wire(self) -> list[object]:
        return [self.code, self.errno, self.message]


class NotFound(DfsError):
    code = "NotFound"


class Exists(DfsError):
    code = "Exists"


class NotADirectory(DfsError):
    code = "NotADirectory"


class IsADirectory(DfsError):
    code = "IsADirectory"


class NotEmpty(DfsError):
    code = "NotEmpty"


class PermissionDenied(DfsError):
    code = "PermissionDenied"


class NotPermitted(DfsError):
    code = "NotPermitted"


class ReadOnly(DfsError):
    """A change to an inode or a name inside a read-only snapshot tree (EROFS)."""

    code = "ReadOnly"


class AuthFailed(DfsError):
    """The caller did not prove who it is (a missing, wrong or unreadable credential)."""

    code = "AuthFailed"


class CallerNotAllowed(NotPermitted):
    """The caller's class (dfs/core/auth.py) may not call this endpoint."""

    code = "CallerNotAllowed"


class InvalidArgument(DfsError):
    code = "InvalidArgument"


class NameTooLong(DfsError):
    code = "NameTooLong"


class TooManyLinks(DfsError):
    code = "TooManyLinks"


class NoAttribute(DfsError):
    """Extended attribute absent (ENODATA, which Linux also calls ENOATTR)."""

    code = "NoAttribute"


class RangeError(DfsError):
    """A caller's buffer is too small (getxattr/listxattr size probing)."""

    code = "RangeError"


class NoSpace(DfsError):
    code = "NoSpace"


class FileTooBig(DfsError):
    code = "FileTooBig"


class QuotaExceeded(DfsError):
    """A write, truncate or create would grow a quota domain past its byte or inode limit."""

    code = "QuotaExceeded"


class CrossDevice(DfsError):
    """A rename or hard link between two quota domains (EXDEV)."""

    code = "CrossDevice"


class StaleHandle(DfsError):
    code = "StaleHandle"


class NotSupported(DfsError):
    code = "NotSupported"


class CorruptChunk(DfsError):
    """A stored chunk failed its checksum or could not be decoded."""

    code = "CorruptChunk"


class ChunkMissing(DfsError):
    """Metadata references a chunk that no store holds."""

    code = "ChunkMissing"


class Unavailable(DfsError):
    """The peer could not be reached or did not answer in time."""

    code = "Unavailable"


class ProtocolError(DfsError):
    """The peer sent bytes that are not a valid frame or message."""

    code = "ProtocolError"


class FrameTooLarge(ProtocolError):
    code = "FrameTooLarge"


class UnknownMethod(DfsError):
    code = "UnknownMethod"


class PreconditionFailed(DfsError):
    """A conditional change found the target not in the state the caller required."""

    code = "PreconditionFailed"


class ConfigError(DfsError):
    code = "ConfigError"


class InternalError(DfsError):
    code = "InternalError"


class S3Error(DfsError):
    """An S3 API error with its own S3 code and HTTP status.

    Raised by the pure S3 modules (SigV4, XML, key mapping) and the S3 shim;
    the shim renders it as ``<Error><Code>`` XML.  ``extra`` adds elements to
    the error body (e.g. ``Region`` for AuthorizationHeaderMalformed).
    """

    code = "S3Error"

    def __init__(self, s3_code: str, message: str = "", status: int = 400, **extra: str) -> None:
        super().__init__(message or s3_code)
        self.s3_code = s3_code
        self.status = status
        self.extra = extra


def row(exc: DfsError) -> Row:
    """The table's row for ``exc`` (every class has one: see :meth:`DfsError.__init_subclass__`)."""
    return TABLE[exc.code]


def s3_code(exc: DfsError) -> tuple[str, int]:
    """(S3 error code, HTTP status) for any dfs error reaching the S3 shim."""
    if isinstance(exc, S3Error):
        return exc.s3_code, exc.status
    r = row(exc)
    return r.s3_code, r.s3_status


def admin_status(exc: DfsError) -> int:
    """The admin API's HTTP status for a dfs error (the body names ``exc.code``)."""
    if isinstance(exc, S3Error):
        return exc.status
    return row(exc).admin_status


def exit_code(exc: DfsError) -> int:
    """The dfs CLI's exit status when a command fails with ``exc``."""
    return row(exc).exit_code


def _all_subclasses(cls: type[DfsError]) -> list[type[DfsError]]:
    out: list[type[DfsError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


_ALL: list[type[DfsError]] = [DfsError, *_all_subclasses(DfsError)]
BY_CODE: dict[str, type[DfsError]] = {c.code: c for c in _ALL}

# errno -> the class to raise when only an errno is known (OSError from disk I/O).
_BY_ERRNO: dict[int, type[DfsError]] = {}
for _cls in _all_subclasses(DfsError):
    _BY_ERRNO.setdefault(_cls.errno, _cls)
_BY_ERRNO[_errno.EIO] = InternalError
_BY_ERRNO[_errno.EDQUOT] = NoSpace
# A disk remounted read-only is a server fault, not a client's write into a snapshot.
_BY_ERRNO.pop(_errno.EROFS, None)


def only_dfs_error(exc: BaseException) -> DfsError | None:
    """*exc* itself if it is a DfsError; if it is an ExceptionGroup (what trio's nurseries
    raise) holding only DfsErrors, the first of them; else None."""
    if isinstance(exc, DfsError):
        return exc
    if not isinstance(exc, ExceptionGroup):
        return None
    match, rest = exc.split(DfsError)
    if match is None or rest is not None:
        return None
    leaf: BaseException = match
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf if isinstance(leaf, DfsError) else None


def from_wire(payload: object) -> DfsError:
    """Rebuild the error a peer sent as ``[code, errno, message]``.

    Anything malformed becomes a :class:`ProtocolError` rather than a crash.
    """
    if not (isinstance(payload, (list, tuple)) and len(payload) == 3):
        return ProtocolError(f"malformed error payload: {payload!r:.200}")
    code, err, message = payload
    if not isinstance(code, str) or not isinstance(err, int) or not isinstance(message, str):
        return ProtocolError(f"malformed error payload: {payload!r:.200}")
    cls = BY_CODE.get(code)
    if cls is None:
        return DfsError(message, errno=err)
    exc = cls(message)
    if exc.errno != err:
        exc.errno = err  # type: ignore[misc]
    return exc


def from_errno(err: int, message: str) -> DfsError:
    cls = _BY_ERRNO.get(err)
    if cls is None:
        return DfsError(message, errno=err)
    return cls(message)


def from_oserror(exc: OSError, context: str) -> DfsError:
    """Translate an OSError from local I/O, keeping its errno and adding context."""
    err = exc.errno if exc.errno is not None else _errno.EIO
    return from_errno(err, f"{context}: {exc.strerror or exc}")
