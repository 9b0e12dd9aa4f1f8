"""Change notices in a cluster: a change shows at once in mounts of the daemon it was made
through and in mounts of the metadata primary (elsewhere at the next open, as before)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.test_replication import CLUSTER, loopback_cluster, s3_client
from tests.conftest import Daemon, Mount, needs_fuse

pytestmark = [pytest.mark.slow, needs_fuse]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon, Path, Path]]:
    """A primary and a secondary, each with a mount (default cache timeouts)."""
    with loopback_cluster(tmp_path, 2, CLUSTER.format(replicas=1)) as (n1, n2):
        mounts = [Mount(n1, tmp_path / "m1"), Mount(n2, tmp_path / "m2")]
        try:
            for m in mounts:
                m.start()
            yield n1, n2, mounts[0].path, mounts[1].path
        finally:
            for m in mounts:
                m.stop()
        n1.assert_clean()


def test_s3_on_a_secondary_shows_at_once_there_and_on_the_primary(
    pair: tuple[Daemon, Daemon, Path, Path],
) -> None:
    n1, n2, on_primary, on_secondary = pair
    s3: Any = s3_client(n2, *n2.root_key())
    s3.create_bucket(Bucket="bkt")
    (on_secondary / "bkt" / "d").mkdir()  # made there: that mount answers lookups in it itself
    for mnt in (on_primary, on_secondary):
        assert not (mnt / "bkt" / "d" / "obj").exists()
        assert not (mnt / "bkt" / "d" / "x").exists()
    s3.put_object(Bucket="bkt", Key="d/obj", Body=b"12345")
    s3.put_object(Bucket="bkt", Key="d/x/y/deep", Body=b"678")  # a path the secondary cannot resolve
    for mnt in (on_primary, on_secondary):
        assert (mnt / "bkt" / "d" / "obj").stat().st_size == 5
        assert (mnt / "bkt" / "d" / "x" / "y" / "deep").read_bytes() == b"678"

    # A mount of the secondary removes a file the primary's mount has cached.
    os.unlink(on_secondary / "bkt" / "d" / "obj")
    assert not (on_primary / "bkt" / "d" / "obj").exists()

    for key in ("d/x/y/deep",):
        s3.delete_object(Bucket="bkt", Key=key)
    os.rmdir(on_primary / "bkt" / "d")
    for mnt in (on_primary, on_secondary):
        assert (mnt / "bkt").is_dir()
    s3.delete_bucket(Bucket="bkt")
    for mnt in (on_primary, on_secondary):
        assert not (mnt / "bkt").exists()
