"""The per-volume trash seen through S3 (boto3 against the real S3 port) and the admin API:
DeleteObject, DeleteObjects, PutObject and CopyObject over an existing key move the old object
to the bucket's trash; the admin API lists, restores (refusing a taken key unless given a new
path) and empties it."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Daemon
from tests.conftest import admin_call as admin


def ok(d: Daemon, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    status, doc = admin(d, method, path, body)
    assert 200 <= status < 300, (status, doc)
    return doc


def entries(d: Daemon) -> dict[str, dict[str, Any]]:
    """path -> entry of the bucket's trash (several versions of one key: the newest wins)."""
    return {e["path"]: e for e in ok(d, "GET", "/storage/trash?volume=trashy")["entries"]}


def test_delete_and_overwrite_go_to_trash_and_restore(s3d: Daemon, s3: Any) -> None:
    ok(s3d, "POST", "/storage/volumes", {"name": "trashy", "trash_days": 1})
    s3.put_object(Bucket="trashy", Key="a/one.txt", Body=b"one")
    s3.put_object(Bucket="trashy", Key="two.bin", Body=bytes(range(256)) * 4096)
    s3.put_object(Bucket="trashy", Key="three", Body=b"3")
    s3.put_object(Bucket="trashy", Key="four", Body=b"4")

    s3.put_object(Bucket="trashy", Key="a/one.txt", Body=b"one, again")  # overwrite
    s3.delete_object(Bucket="trashy", Key="two.bin")
    s3.delete_objects(Bucket="trashy", Delete={"Objects": [{"Key": "three"}]})
    s3.copy_object(Bucket="trashy", Key="four", CopySource={"Bucket": "trashy", "Key": "a/one.txt"})
    found = entries(s3d)
    assert set(found) == {"/trashy/a/one.txt", "/trashy/two.bin", "/trashy/three", "/trashy/four"}
    assert found["/trashy/two.bin"]["size"] == 256 * 4096
    with pytest.raises(ClientError):
        s3.head_object(Bucket="trashy", Key="two.bin")

    # Restore to the original key; a taken key is refused (409) unless a new path is given.
    ok(s3d, "POST", f"/storage/trash/trashy/{found['/trashy/two.bin']['id']}/restore")
    assert s3.get_object(Bucket="trashy", Key="two.bin")["Body"].read() == bytes(range(256)) * 4096
    status, doc = admin(s3d, "POST", f"/storage/trash/trashy/{found['/trashy/a/one.txt']['id']}/restore")
    assert status == 409, doc
    ok(
        s3d,
        "POST",
        f"/storage/trash/trashy/{found['/trashy/a/one.txt']['id']}/restore",
        {"to": "/trashy/a/one.old"},
    )
    assert s3.get_object(Bucket="trashy", Key="a/one.old")["Body"].read() == b"one"
    assert s3.get_object(Bucket="trashy", Key="a/one.txt")["Body"].read() == b"one, again"

    # Empty: what is left goes for good.
    assert ok(s3d, "DELETE", "/storage/trash?volume=trashy")["purged"] == 2
    assert entries(s3d) == {}
    status, _ = admin(s3d, "DELETE", "/storage/trash?volume=trashy&older_than_days=-1")
    assert status == 400
