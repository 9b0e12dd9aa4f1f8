"""Writing small files that must survive a crash whole: keys, credentials, backup descriptions.

One way to do it, used everywhere such a file is written: a temp file in the same directory
(``mkstemp``: O_EXCL, mode 0600 from the start), its final mode set before any byte, written,
fsynced, renamed (or hard-linked, to refuse an existing file) into place, and the directory
fsynced so the rename itself survives.  A crash leaves the old file or the new one, never half
of one, and a world-readable predecessor never lends its mode to a secret.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["fsync_dir", "write_atomic", "write_private"]


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600 from the first byte."""
    write_atomic(path, data, 0o600, overwrite=True)


def write_atomic(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Put ``data`` at ``path`` with ``mode``; FileExistsError if it exists and not ``overwrite``."""
    path = Path(path)
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        try:
            # mkstemp already made it 0600; set the final mode before any byte is
            # written, and exactly (a umask may only have removed bits).
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails with EEXIST where rename() would replace: an atomic no-clobber.
            os.link(tmp, path)
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """Make the names created, renamed or removed in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
