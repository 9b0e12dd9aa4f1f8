"""S3 object lock against a real dfsd (boto3): buckets made with object lock, default retention,
per-object retention (GOVERNANCE given way to with the bypass header and the permission,
COMPLIANCE never), legal holds, the lock headers on PUT, copy and multipart and in GET/HEAD,
lifecycle leaving locked versions alone, AWS's refusals; and three key owners with distinct
canonical ids and display names everywhere an Owner is answered.

The daemon's S3 "day" lasts two seconds ([s3] lifecycle_day_s), so a default retention of one
day runs out within the test."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from dfs.core import s3acl
from tests.conftest import Daemon, free_port
from tests.s3.conftest import _serve, make_client

pytestmark = pytest.mark.slow

DAY_S = 2.0
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def lockd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(
        tmp_path_factory.mktemp("objlock") / "var",
        free_port(),
        s3_conf=f"lifecycle_interval_s = 0.25\nlifecycle_day_s = {DAY_S}",
    )
    yield from _serve(d)


@pytest.fixture
def s3(lockd: Daemon) -> Any:
    return make_client(lockd)


def fails(fn: Callable[[], Any], code: str, status: int) -> ClientError:
    with pytest.raises(ClientError) as err:
        fn()
    resp = err.value.response
    assert (resp["Error"]["Code"], resp["ResponseMetadata"]["HTTPStatusCode"]) == (code, status), resp
    return err.value


def ahead(seconds: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def deletable(s3: Any, bucket: str, key: str, vid: str) -> Callable[[], bool]:
    def attempt() -> bool:
        try:
            s3.delete_object(Bucket=bucket, Key=key, VersionId=vid)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "AccessDenied":
                raise
            return False
        return True

    return attempt


def new_key(d: Daemon) -> tuple[str, str]:
    made = json.loads(d.cli("s3", "key", "create", "--json").stdout)
    return made["access_key"], made["secret_key"]


def test_lock_bucket_configuration_and_refusals(s3: Any) -> None:
    s3.create_bucket(Bucket="lk-config", ObjectLockEnabledForBucket=True)
    # Object lock turns versioning on, for good.
    assert s3.get_bucket_versioning(Bucket="lk-config")["Status"] == "Enabled"
    got = s3.get_object_lock_configuration(Bucket="lk-config")["ObjectLockConfiguration"]
    assert got == {"ObjectLockEnabled": "Enabled"}
    fails(
        lambda: s3.put_bucket_versioning(Bucket="lk-config", VersioningConfiguration={"Status": "Suspended"}),
        "InvalidBucketState",
        409,
    )
    rule = {"DefaultRetention": {"Mode": "GOVERNANCE", "Years": 2}}
    s3.put_object_lock_configuration(
        Bucket="lk-config", ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": rule}
    )
    got = s3.get_object_lock_configuration(Bucket="lk-config")["ObjectLockConfiguration"]
    assert got == {"ObjectLockEnabled": "Enabled", "Rule": rule}
    bad = {"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 0}}}
    fails(
        lambda: s3.put_object_lock_configuration(Bucket="lk-config", ObjectLockConfiguration=bad),
        "InvalidArgument",
        400,
    )

    # A bucket without object lock: no configuration, lock headers refused, versioning first.
    s3.create_bucket(Bucket="lk-plain")
    fails(
        lambda: s3.get_object_lock_configuration(Bucket="lk-plain"),
        "ObjectLockConfigurationNotFoundError",
        404,
    )
    fails(
        lambda: s3.put_object(
            Bucket="lk-plain",
            Key="k",
            Body=b"x",
            ObjectLockMode="GOVERNANCE",
            ObjectLockRetainUntilDate=ahead(60),
        ),
        "InvalidRequest",
        400,
    )
    fails(
        lambda: s3.put_object_lock_configuration(
            Bucket="lk-plain", ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}
        ),
        "InvalidBucketState",
        409,
    )
    s3.put_object(Bucket="lk-plain", Key="k", Body=b"x")
    fails(lambda: s3.get_object_retention(Bucket="lk-plain", Key="k"), "InvalidRequest", 400)
    # Once versioning is Enabled, PutObjectLockConfiguration turns object lock on.
    s3.put_bucket_versioning(Bucket="lk-plain", VersioningConfiguration={"Status": "Enabled"})
    s3.put_object_lock_configuration(
        Bucket="lk-plain", ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}
    )
    fails(lambda: s3.get_object_retention(Bucket="lk-plain", Key="k"), "NoSuchObjectLockConfiguration", 404)
    # Headers: mode and date together, a date ahead.
    fails(
        lambda: s3.put_object(Bucket="lk-config", Key="k", Body=b"x", ObjectLockMode="GOVERNANCE"),
        "InvalidArgument",
        400,
    )
    fails(
        lambda: s3.put_object(
            Bucket="lk-config",
            Key="k",
            Body=b"x",
            ObjectLockMode="COMPLIANCE",
            ObjectLockRetainUntilDate=ahead(-60),
        ),
        "InvalidArgument",
        400,
    )


def test_governance_compliance_and_legal_hold(s3: Any) -> None:
    b = "lk-modes"
    s3.create_bucket(Bucket=b, ObjectLockEnabledForBucket=True)
    until = ahead(3600).replace(microsecond=0)
    gov = s3.put_object(
        Bucket=b, Key="gov", Body=b"g", ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until
    )["VersionId"]
    head = s3.head_object(Bucket=b, Key="gov")
    assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"] == until
    assert head["ObjectLockLegalHoldStatus"] == "OFF"
    got = s3.get_object_retention(Bucket=b, Key="gov", VersionId=gov)["Retention"]
    assert got == {"Mode": "GOVERNANCE", "RetainUntilDate": until}

    # The locked version refuses to go; a delete marker is allowed (as on AWS), the version stays.
    fails(lambda: s3.delete_object(Bucket=b, Key="gov", VersionId=gov), "AccessDenied", 403)
    marker = s3.delete_object(Bucket=b, Key="gov")
    assert marker["DeleteMarker"] is True
    assert s3.get_object(Bucket=b, Key="gov", VersionId=gov)["Body"].read() == b"g"
    # Shortening GOVERNANCE needs the bypass header (the root key has the permission).
    sooner = {"Mode": "GOVERNANCE", "RetainUntilDate": ahead(1800)}
    fails(
        lambda: s3.put_object_retention(Bucket=b, Key="gov", VersionId=gov, Retention=sooner),
        "AccessDenied",
        403,
    )
    s3.put_object_retention(
        Bucket=b, Key="gov", VersionId=gov, Retention=sooner, BypassGovernanceRetention=True
    )
    done = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "gov", "VersionId": gov}]})
    assert done.get("Errors", [])[0]["Code"] == "AccessDenied"
    s3.delete_object(Bucket=b, Key="gov", VersionId=gov, BypassGovernanceRetention=True)
    fails(lambda: s3.head_object(Bucket=b, Key="gov", VersionId=gov), "404", 404)

    # COMPLIANCE: only ever extended, never bypassed.
    comp = s3.put_object(
        Bucket=b, Key="comp", Body=b"c", ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=ahead(3600)
    )["VersionId"]
    sooner = {"Mode": "COMPLIANCE", "RetainUntilDate": ahead(1800)}
    fails(
        lambda: s3.put_object_retention(
            Bucket=b, Key="comp", VersionId=comp, Retention=sooner, BypassGovernanceRetention=True
        ),
        "AccessDenied",
        403,
    )
    weaker = {"Mode": "GOVERNANCE", "RetainUntilDate": ahead(7200)}
    fails(lambda: s3.put_object_retention(Bucket=b, Key="comp", Retention=weaker), "AccessDenied", 403)
    later = {"Mode": "COMPLIANCE", "RetainUntilDate": ahead(7200).replace(microsecond=0)}
    s3.put_object_retention(Bucket=b, Key="comp", VersionId=comp, Retention=later)
    assert s3.get_object_retention(Bucket=b, Key="comp")["Retention"] == later
    fails(
        lambda: s3.delete_object(Bucket=b, Key="comp", VersionId=comp, BypassGovernanceRetention=True),
        "AccessDenied",
        403,
    )
    # A new version over a locked one is allowed: the locked one stays, as a non-current version.
    s3.put_object(Bucket=b, Key="comp", Body=b"newer")
    assert s3.get_object(Bucket=b, Key="comp", VersionId=comp)["Body"].read() == b"c"

    # Legal hold: on an object without retention, independent of it; OFF lets it go.
    held = s3.put_object(Bucket=b, Key="held", Body=b"h", ObjectLockLegalHoldStatus="ON")["VersionId"]
    assert s3.get_object_legal_hold(Bucket=b, Key="held")["LegalHold"] == {"Status": "ON"}
    assert s3.get_object(Bucket=b, Key="held")["ObjectLockLegalHoldStatus"] == "ON"
    fails(
        lambda: s3.delete_object(Bucket=b, Key="held", VersionId=held, BypassGovernanceRetention=True),
        "AccessDenied",
        403,
    )
    s3.put_object_legal_hold(Bucket=b, Key="held", LegalHold={"Status": "OFF"})
    s3.delete_object(Bucket=b, Key="held", VersionId=held)
    # Tags may change on a locked object, as on AWS.
    s3.put_object_tagging(
        Bucket=b, Key="comp", VersionId=comp, Tagging={"TagSet": [{"Key": "k", "Value": "v"}]}
    )


def test_bypass_needs_the_permission(lockd: Daemon, s3: Any) -> None:
    b = "lk-bypass"
    s3.create_bucket(Bucket=b, ObjectLockEnabledForBucket=True)
    vid = s3.put_object(
        Bucket=b, Key="k", Body=b"k", ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=ahead(3600)
    )["VersionId"]
    writer = new_key(lockd)
    lockd.cli("s3", "key", "grant", writer[0], f"{b}:rw")
    other = make_client(lockd, keys=writer)
    # Write access is not enough to bypass governance: that needs owner.
    fails(
        lambda: other.delete_object(Bucket=b, Key="k", VersionId=vid, BypassGovernanceRetention=True),
        "AccessDenied",
        403,
    )
    lockd.cli("s3", "key", "grant", writer[0], f"{b}:owner")
    other.delete_object(Bucket=b, Key="k", VersionId=vid, BypassGovernanceRetention=True)


def test_default_retention_copy_multipart_and_expiry(s3: Any) -> None:
    b = "lk-default"
    s3.create_bucket(Bucket=b, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(
        Bucket=b,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}},
        },
    )
    before = datetime.datetime.now(datetime.UTC)
    vid = s3.put_object(Bucket=b, Key="d", Body=b"default")["VersionId"]
    head = s3.head_object(Bucket=b, Key="d")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert before < head["ObjectLockRetainUntilDate"] <= before + datetime.timedelta(seconds=DAY_S + 5)

    # A copy takes its own lock (the headers', else the default), never its source's.
    copied = s3.copy_object(
        Bucket=b,
        Key="c",
        CopySource={"Bucket": b, "Key": "d"},
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=ahead(3600),
    )["VersionId"]
    assert s3.head_object(Bucket=b, Key="c")["ObjectLockMode"] == "GOVERNANCE"
    # Multipart: the lock is asked for at creation and applied at completion.
    up = s3.create_multipart_upload(Bucket=b, Key="m", ObjectLockLegalHoldStatus="ON")["UploadId"]
    part = s3.upload_part(Bucket=b, Key="m", UploadId=up, PartNumber=1, Body=b"part")
    mp = s3.complete_multipart_upload(
        Bucket=b, Key="m", UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
    )["VersionId"]
    head = s3.head_object(Bucket=b, Key="m")
    assert head["ObjectLockLegalHoldStatus"] == "ON" and head["ObjectLockMode"] == "COMPLIANCE"
    fails(lambda: s3.delete_object(Bucket=b, Key="m", VersionId=mp), "AccessDenied", 403)

    # The default retention runs out after a (short) day: then the version may go.
    fails(lambda: s3.delete_object(Bucket=b, Key="d", VersionId=vid), "AccessDenied", 403)
    wait_for("the default retention to end", deletable(s3, b, "d", vid))
    s3.delete_object(Bucket=b, Key="c", VersionId=copied, BypassGovernanceRetention=True)
    s3.put_object_legal_hold(Bucket=b, Key="m", LegalHold={"Status": "OFF"})
    wait_for("the multipart object's retention to end", deletable(s3, b, "m", mp))


def test_lifecycle_leaves_locked_versions(s3: Any) -> None:
    b = "lk-lifecycle"
    s3.create_bucket(Bucket=b, ObjectLockEnabledForBucket=True)
    locked = s3.put_object(
        Bucket=b, Key="a", Body=b"old", ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=ahead(3600)
    )["VersionId"]
    free = s3.put_object(Bucket=b, Key="b", Body=b"old")["VersionId"]
    s3.put_object(Bucket=b, Key="a", Body=b"new")
    s3.put_object(Bucket=b, Key="b", Body=b"new")
    rule = {
        "ID": "old",
        "Filter": {"Prefix": ""},
        "Status": "Enabled",
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
    }
    s3.put_bucket_lifecycle_configuration(Bucket=b, LifecycleConfiguration={"Rules": [rule]})

    def ids() -> set[str]:
        return {v["VersionId"] for v in s3.list_object_versions(Bucket=b).get("Versions", [])}

    wait_for("the unlocked non-current version to expire", lambda: free not in ids())
    assert locked in ids()  # the run went past it: locked data stays
    assert s3.get_object(Bucket=b, Key="a", VersionId=locked)["Body"].read() == b"old"
    s3.delete_bucket_lifecycle(Bucket=b)


def test_three_owners_have_their_own_ids_and_names(lockd: Daemon) -> None:
    clients = [make_client(lockd, keys=new_key(lockd)) for _ in range(3)]
    seen: set[tuple[str, str]] = set()
    for i, client in enumerate(clients):
        b = f"owner{i}-bucket"
        client.create_bucket(Bucket=b)
        client.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
        client.put_object(Bucket=b, Key="k", Body=b"x")
        client.put_object(Bucket=b, Key="k", Body=b"y")
        up = client.create_multipart_upload(Bucket=b, Key="m")["UploadId"]
        client.upload_part(Bucket=b, Key="m", UploadId=up, PartNumber=1, Body=b"p")
        owner = client.list_buckets()["Owner"]
        who = (owner["ID"], owner["DisplayName"])
        assert who[0] != s3acl.ROOT_ID and who[1] and who[1] != who[0]
        acl_owner = client.get_bucket_acl(Bucket=b)["Owner"]
        assert (acl_owner["ID"], acl_owner["DisplayName"]) == who
        listed = client.list_objects_v2(Bucket=b, FetchOwner=True)["Contents"][0]["Owner"]
        assert (listed["ID"], listed["DisplayName"]) == who
        v1 = client.list_objects(Bucket=b)["Contents"][0]["Owner"]
        assert (v1["ID"], v1["DisplayName"]) == who
        for version in client.list_object_versions(Bucket=b)["Versions"]:
            assert (version["Owner"]["ID"], version["Owner"]["DisplayName"]) == who
        parts = client.list_parts(Bucket=b, Key="m", UploadId=up)
        assert (parts["Owner"]["ID"], parts["Owner"]["DisplayName"]) == who
        assert (parts["Initiator"]["ID"], parts["Initiator"]["DisplayName"]) == who
        uploads = client.list_multipart_uploads(Bucket=b)["Uploads"][0]
        assert (uploads["Owner"]["ID"], uploads["Owner"]["DisplayName"]) == who
        client.abort_multipart_upload(Bucket=b, Key="m", UploadId=up)
        seen.add(who)
    assert len(seen) == 3
    assert len({i for i, _ in seen}) == 3 and len({n for _, n in seen}) == 3
