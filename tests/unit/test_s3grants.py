"""The S3 authorization decision (dfs/core/s3grants.py) and the owners and grants metadata keeps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.meta import MetaStore
from dfs.core.errors import Exists, InvalidArgument, NotFound
from dfs.core.namespace import ROOT_INO
from dfs.core.s3grants import (
    COPY_SOURCE,
    NEEDS,
    Perm,
    Principal,
    allowed,
    allowed_op,
    need_of,
    parse_allow,
    parse_perm,
    perm_name,
    visible,
)

ROOT = Principal("ROOT", root=True)
NOBODY = Principal("K0")
READER = Principal("K1", grants={"b": Perm.READ})
WRITER = Principal("K2", grants={"b": Perm.WRITE})
RW = Principal("K3", grants={"b": Perm.READ | Perm.WRITE})
OWNER = Principal("K4", grants={"b": Perm.OWNER})

READS = [
    "HeadBucket",
    "ListObjects",
    "ListObjectsV2",
    "ListObjectVersions",
    "ListMultipartUploads",
    "GetObject",
    "HeadObject",
    "GetObjectAcl",
    "GetObjectTagging",
    "ListParts",
    "GetBucketTagging",
    "GetBucketCors",
    "GetBucketLifecycleConfiguration",
    "GetObjectLockConfiguration",
    "GetObjectRetention",
    "GetObjectLegalHold",
    "GetBucket.location",
]
WRITES = [
    "PutObject",
    "CopyObject",
    "DeleteObject",
    "DeleteObjects",
    "CreateMultipartUpload",
    "UploadPart",
    "UploadPartCopy",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "PutObjectTagging",
    "DeleteObjectTagging",
    "PutObjectRetention",
    "PutObjectLegalHold",
]
OWNERS = [
    "DeleteBucket",
    "PutBucketVersioning",
    "PutBucketTagging",
    "DeleteBucketTagging",
    "PutBucketCors",
    "DeleteBucketCors",
    "PutBucketLifecycleConfiguration",
    "DeleteBucketLifecycle",
    "PutObjectLockConfiguration",
    "BypassGovernanceRetention",
    "SomethingNew",
]


@pytest.mark.parametrize("op", READS + WRITES + OWNERS)
def test_root_may_do_anything_anywhere(op: str) -> None:
    assert allowed_op(ROOT, "b", op)
    assert allowed_op(ROOT, "unowned", op)


@pytest.mark.parametrize("op", READS + WRITES + OWNERS)
def test_a_key_without_a_grant_may_do_nothing(op: str) -> None:
    assert not allowed_op(NOBODY, "b", op)
    for p in (READER, WRITER, RW, OWNER):
        assert not allowed_op(p, "other", op)


@pytest.mark.parametrize("op", READS)
def test_reads_need_read(op: str) -> None:
    assert need_of(op) == Perm.READ
    assert allowed_op(READER, "b", op) and allowed_op(RW, "b", op) and allowed_op(OWNER, "b", op)
    assert not allowed_op(WRITER, "b", op)


@pytest.mark.parametrize("op", WRITES)
def test_writes_need_write(op: str) -> None:
    assert need_of(op) == Perm.WRITE
    assert allowed_op(WRITER, "b", op) and allowed_op(RW, "b", op) and allowed_op(OWNER, "b", op)
    assert not allowed_op(READER, "b", op)


@pytest.mark.parametrize("op", OWNERS)
def test_bucket_deletion_and_settings_are_the_owners(op: str) -> None:
    assert allowed_op(OWNER, "b", op)
    for p in (READER, WRITER, RW):
        assert not allowed_op(p, "b", op)


def test_listing_buckets_and_creating_need_nothing_but_show_only_what_the_key_may_see() -> None:
    assert allowed_op(NOBODY, "", "ListBuckets") and allowed_op(NOBODY, "new", "CreateBucket")
    assert visible(ROOT, "anything")
    assert not visible(NOBODY, "b")
    for p in (READER, WRITER, RW, OWNER):
        assert visible(p, "b") and not visible(p, "other")


def test_copy_source_needs_read() -> None:
    assert COPY_SOURCE == Perm.READ
    assert allowed(READER, "b", COPY_SOURCE) and not allowed(WRITER, "b", COPY_SOURCE)


def test_every_named_operation_needs_something_declared() -> None:
    assert set(READS[:-1] + WRITES + OWNERS[:-1]) | {"ListBuckets", "CreateBucket"} == set(NEEDS)


def test_permission_spellings() -> None:
    assert parse_perm("r") == parse_perm("read") == Perm.READ
    assert parse_perm("w") == parse_perm("WRITE") == Perm.WRITE
    assert parse_perm("rw") == Perm.READ | Perm.WRITE
    assert parse_perm("owner") == Perm.OWNER
    assert [perm_name(parse_perm(n)) for n in ("r", "w", "rw", "owner")] == ["r", "w", "rw", "owner"]
    with pytest.raises(ValueError):
        parse_perm("x")
    assert parse_allow("photos:rw") == ("photos", Perm.READ | Perm.WRITE)
    for bad in ("photos", ":rw", "photos:"):
        with pytest.raises(ValueError):
            parse_allow(bad)
    assert Principal.from_wire("K", {"b": "owner"}).grants == {"b": Perm.OWNER}


# -- metadata ----------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Iterator[MetaStore]:
    s = MetaStore(tmp_path / "meta.db", block_size=1 << 20)
    yield s
    s.close()


def _bucket(store: MetaStore, name: str) -> int:
    return store.mkdir(ROOT_INO, name.encode(), 0o755, 0, 0).ino


def test_owners_and_grants_follow_the_bucket_directory(store: MetaStore) -> None:
    _bucket(store, "mine")
    _bucket(store, "theirs")
    store.s3_key_put("K1", "s1", "one")
    store.s3_key_put("K2", "s2", "two", [["theirs", "r"]])
    store.s3_bucket_own("mine", "K1")
    store.s3_bucket_own("mine", "K1")  # again: nothing changes
    with pytest.raises(Exists):
        store.s3_bucket_own("mine", "K2")
    assert store.s3_access("K1") == {"mine": "owner"}
    assert store.s3_access("K2") == {"theirs": "r"}
    assert store.s3_grant("K2", "mine", "rw") == {"mine": "rw", "theirs": "r"}
    assert store.s3_grant("K2", "mine", "write") == {"mine": "w", "theirs": "r"}
    assert store.s3_revoke_grant("K2", "mine") == {"theirs": "r"}
    with pytest.raises(NotFound):
        store.s3_revoke_grant("K2", "mine")
    with pytest.raises(NotFound):
        store.s3_grant("K2", "nope", "r")
    with pytest.raises(NotFound):
        store.s3_grant("NOKEY", "mine", "r")
    with pytest.raises(InvalidArgument):
        store.s3_grant("K2", "mine", "all")
    with pytest.raises(NotFound):
        store.s3_key_put("K3", "s3", "", [["nope", "r"]])
    assert store.s3_key_get("K3") is None  # refused whole
    listed = {k["access_key"]: k["grants"] for k in store.s3_key_list()}
    assert listed == {"K1": {"mine": "owner"}, "K2": {"theirs": "r"}}
    # A rename keeps the owner; a bucket removed and made again has none.
    store.rename(ROOT_INO, b"mine", ROOT_INO, b"renamed", 0)
    assert store.s3_access("K1") == {"renamed": "owner"}
    store.rmdir(ROOT_INO, b"renamed")
    _bucket(store, "renamed")
    assert store.s3_access("K1") == {}
    store.s3_key_delete("K2")
    assert store.s3_access("K2") == {}
