"""S3 object lock through a real FUSE mount: a file under retention or a legal hold refuses rm,
mv (away or over it), truncate, overwrite (`echo x > f`), appending, chmod, touch and hard links
with EPERM, and keeps its content; once its retention ends (a retain-until date a few seconds
ahead, on the metadata's clock) the mount may remove it.  A new version put over it through S3
is allowed (the locked one stays readable by id), as on AWS; removing a tree that holds a
locked file is refused.  fsck at teardown (the mnt fixture)."""

from __future__ import annotations

import datetime
import errno
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, needs_fuse, wait_for
from tests.s3.conftest import make_client

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.slow]

DEADLINE_S = 30.0


def ahead(seconds: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)


def refused(fn: Callable[[], Any]) -> None:
    with pytest.raises(PermissionError) as err:
        fn()
    assert err.value.errno == errno.EPERM, err.value


def overwrite(path: Path) -> None:
    with path.open("w") as f:  # O_TRUNC, as `echo x > f`
        f.write("x\n")


def append(path: Path) -> None:
    with path.open("a") as f:
        f.write("more\n")


def test_locked_files_refuse_every_change_through_the_mount(daemon: Daemon, mnt: Path) -> None:
    s3 = make_client(daemon)
    s3.create_bucket(Bucket="locked", ObjectLockEnabledForBucket=True)
    long_vid = s3.put_object(
        Bucket="locked",
        Key="docs/long.txt",
        Body=b"keep me\n",
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=ahead(3600),
    )["VersionId"]
    s3.put_object(Bucket="locked", Key="docs/held.txt", Body=b"held\n", ObjectLockLegalHoldStatus="ON")
    s3.put_object(
        Bucket="locked",
        Key="short.txt",
        Body=b"short\n",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=ahead(4),
    )
    docs = mnt / "locked" / "docs"
    long, held, short = docs / "long.txt", docs / "held.txt", mnt / "locked" / "short.txt"
    wait_for(lambda: long.exists() and held.exists() and short.exists(), timeout_s=10)
    other = docs / "other.txt"
    other.write_bytes(b"other\n")  # an unlocked file beside them changes freely

    for locked in (long, held):
        refused(locked.unlink)  # rm
        refused(lambda p=locked: p.rename(docs / "moved.txt"))  # mv away
        refused(lambda p=locked: other.rename(p))  # mv over it
        refused(lambda p=locked: os.truncate(p, 0))  # truncate
        refused(lambda p=locked: overwrite(p))  # echo x > f
        refused(lambda p=locked: append(p))
        refused(lambda p=locked: p.chmod(0o600))  # immutable, as chattr +i
        refused(lambda p=locked: os.utime(p))
        refused(lambda p=locked: os.link(p, docs / "hard.txt"))
        refused(lambda p=locked: os.setxattr(p, "user.s3.object-lock", b"{}"))  # the lock's view
    assert long.read_bytes() == b"keep me\n" and held.read_bytes() == b"held\n"
    assert sorted(os.listdir(docs)) == ["held.txt", "long.txt", "other.txt"]
    # Tags and other user xattrs may change, as S3 allows tagging a locked object.
    os.setxattr(long, "user.note", b"reviewed")
    # The locked file's lock is visible (read-only) through the mount.
    assert b"GOVERNANCE" in os.getxattr(long, "user.s3.object-lock")
    # rm -r of the directory stops at the locked files; the unlocked one goes.
    other.unlink()
    refused(lambda: shutil.rmtree(docs))

    # S3 may put a new version over a locked one; the locked one stays, readable by its id.
    s3.put_object(Bucket="locked", Key="docs/long.txt", Body=b"newer\n")
    assert (
        s3.get_object(Bucket="locked", Key="docs/long.txt", VersionId=long_vid)["Body"].read() == b"keep me\n"
    )
    # ...and the new current version is not locked (no default retention here): the mount may rm it.
    wait_for(lambda: long.read_bytes() == b"newer\n", timeout_s=10)
    long.unlink()

    # The short retention runs out on the metadata's clock: then rm works.
    refused(short.unlink)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            short.unlink()
            break
        except PermissionError as exc:
            if exc.errno != errno.EPERM or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert not short.exists()
    # The legal hold lifted, the held file goes too.
    s3.put_object_legal_hold(Bucket="locked", Key="docs/held.txt", LegalHold={"Status": "OFF"})
    held.unlink()
    assert os.listdir(docs) == []
