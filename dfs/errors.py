"""One error tree for dfs.

Every failure that crosses a boundary (RPC, FUSE, CLI, later S3) is a
:class:`DfsError`.  Each class carries one errno; the RPC layer sends
``(code, errno, message)`` and the receiving side re-raises the same class
via :func:`from_wire`, so a caller sees ``NotFound`` whether the error was
raised locally or on another host.  The mount turns any ``DfsError`` into
``FUSEError(err.errno)``; the CLI prints ``err.message`` and exits with
:data:`EXIT_CODE`.
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar


class DfsError(Exception):
    """Base of every error dfs raises on purpose."""

    errno: ClassVar[int] = _errno.EIO
    code: ClassVar[str] = "InternalError"

    def __init__(self, message: str = "", *, errno: int | None = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        if errno is not None:
            # Instance override: used for errors that arrive as a bare errno.
            self.errno = errno  # type: ignore[misc]

    def to_wire(self) -> list[object]:
        return [self.code, self.errno, self.message]


class NotFound(DfsError):
    errno = _errno.ENOENT
    code = "NotFound"


class Exists(DfsError):
    errno = _errno.EEXIST
    code = "Exists"


class NotADirectory(DfsError):
    errno = _errno.ENOTDIR
    code = "NotADirectory"


class IsADirectory(DfsError):
    errno = _errno.EISDIR
    code = "IsADirectory"


class NotEmpty(DfsError):
    errno = _errno.ENOTEMPTY
    code = "NotEmpty"


class PermissionDenied(DfsError):
    errno = _errno.EACCES
    code = "PermissionDenied"


class NotPermitted(DfsError):
    errno = _errno.EPERM
    code = "NotPermitted"


class InvalidArgument(DfsError):
    errno = _errno.EINVAL
    code = "InvalidArgument"


class NameTooLong(DfsError):
    errno = _errno.ENAMETOOLONG
    code = "NameTooLong"


class TooManyLinks(DfsError):
    errno = _errno.EMLINK
    code = "TooManyLinks"


class NoAttribute(DfsError):
    """Extended attribute absent (ENODATA, which Linux also calls ENOATTR)."""

    errno = _errno.ENODATA
    code = "NoAttribute"


class RangeError(DfsError):
    """A caller's buffer is too small (getxattr/listxattr size probing)."""

    errno = _errno.ERANGE
    code = "RangeError"


class NoSpace(DfsError):
    errno = _errno.ENOSPC
    code = "NoSpace"


class FileTooBig(DfsError):
    errno = _errno.EFBIG
    code = "FileTooBig"


class StaleHandle(DfsError):
    errno = _errno.ESTALE
    code = "StaleHandle"


class NotSupported(DfsError):
    errno = _errno.EOPNOTSUPP
    code = "NotSupported"


class CorruptChunk(DfsError):
    """A stored chunk failed its checksum or could not be decoded."""

    errno = _errno.EIO
    code = "CorruptChunk"


class ChunkMissing(DfsError):
    """Metadata references a chunk that no store holds."""

    errno = _errno.EIO
    code = "ChunkMissing"


class Unavailable(DfsError):
    """The peer could not be reached or did not answer in time."""

    errno = _errno.EIO
    code = "Unavailable"


class ProtocolError(DfsError):
    """The peer sent bytes that are not a valid frame or message."""

    errno = _errno.EPROTO
    code = "ProtocolError"


class FrameTooLarge(ProtocolError):
    code = "FrameTooLarge"


class UnknownMethod(DfsError):
    errno = _errno.ENOSYS
    code = "UnknownMethod"


class PreconditionFailed(DfsError):
    """A conditional change found the target not in the state the caller required."""

    errno = _errno.ECANCELED
    code = "PreconditionFailed"


class ConfigError(DfsError):
    errno = _errno.EINVAL
    code = "ConfigError"


class InternalError(DfsError):
    errno = _errno.EIO
    code = "InternalError"


class S3Error(DfsError):
    """An S3 API error with its own S3 code and HTTP status.

    Raised by the pure S3 modules (SigV4, XML, key mapping) and the S3 shim;
    the shim renders it as ``<Error><Code>`` XML.  ``extra`` adds elements to
    the error body (e.g. ``Region`` for AuthorizationHeaderMalformed).
    """

    errno = _errno.EINVAL
    code = "S3Error"

    def __init__(self, s3_code: str, message: str = "", status: int = 400, **extra: str) -> None:
        super().__init__(message or s3_code)
        self.s3_code = s3_code
        self.status = status
        self.extra = extra


# The S3 code and HTTP status for filesystem errors reaching the S3 shim on an object path.
S3_BY_CODE: dict[str, tuple[str, int]] = {
    "NotFound": ("NoSuchKey", 404),
    "Exists": ("PathConflict", 409),
    "NotADirectory": ("PathConflict", 409),
    "IsADirectory": ("PathConflict", 409),
    "NotEmpty": ("PathConflict", 409),
    "PermissionDenied": ("AccessDenied", 403),
    "NotPermitted": ("AccessDenied", 403),
    "InvalidArgument": ("InvalidArgument", 400),
    "NameTooLong": ("KeyTooLongError", 400),
    "NoSpace": ("InsufficientStorage", 507),
    "FileTooBig": ("EntityTooLarge", 400),
    "NotSupported": ("NotImplemented", 501),
    "Unavailable": ("ServiceUnavailable", 503),
    "PreconditionFailed": ("PreconditionFailed", 412),
}


def s3_code(exc: DfsError) -> tuple[str, int]:
    """(S3 error code, HTTP status) for any dfs error."""
    if isinstance(exc, S3Error):
        return exc.s3_code, exc.status
    return S3_BY_CODE.get(exc.code, ("InternalError", 500))


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

EXIT_CODE = 1


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
