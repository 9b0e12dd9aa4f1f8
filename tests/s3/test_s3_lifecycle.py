"""Bucket lifecycle against a real dfsd whose lifecycle day lasts one second: the configuration
through boto3, rules expiring exactly the objects their filters select, aborted uploads,
Disabled rules, refused transitions and the x-amz-expiration header."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Daemon, free_port
from tests.s3.conftest import _serve, make_client

DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def lcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(
        tmp_path_factory.mktemp("lifecycle") / "var",
        free_port(),
        s3_conf="lifecycle_interval_s = 0.25\nlifecycle_day_s = 1.0",
    )
    yield from _serve(d)


@pytest.fixture
def s3(lcd: Daemon) -> Any:
    return make_client(lcd)


def code(err: ClientError) -> str:
    return str(err.response["Error"]["Code"])


def keys(s3: Any, bucket: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def days(n: int) -> dict[str, int]:
    return {"Days": n}


def test_configuration_round_trip_and_refusals(s3: Any) -> None:
    s3.create_bucket(Bucket="lc-config")
    with pytest.raises(ClientError) as err:
        s3.get_bucket_lifecycle_configuration(Bucket="lc-config")
    assert code(err.value) == "NoSuchLifecycleConfiguration"
    rules = [
        {"ID": "logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": days(30)},
        {
            "ID": "tagged",
            "Filter": {"And": {"Prefix": "t/", "Tags": [{"Key": "k", "Value": "v"}]}},
            "Status": "Disabled",
            "Expiration": {"Date": "2031-01-01T00:00:00Z"},
        },
        {
            "ID": "uploads",
            "Filter": {"Prefix": ""},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 5},
        },
    ]
    s3.put_bucket_lifecycle_configuration(Bucket="lc-config", LifecycleConfiguration={"Rules": rules})
    got = s3.get_bucket_lifecycle_configuration(Bucket="lc-config")["Rules"]
    assert [r["ID"] for r in got] == ["logs", "tagged", "uploads"]
    assert got[0]["Filter"] == {"Prefix": "logs/"} and got[0]["Expiration"] == {"Days": 30}
    assert got[1]["Filter"]["And"]["Tags"] == [{"Key": "k", "Value": "v"}]
    assert got[1]["Status"] == "Disabled" and got[1]["Expiration"]["Date"].year == 2031
    assert got[2]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}
    assert got[2]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 5
    # Transitions have nowhere to go: refused, and the stored configuration is left as it was.
    transition = {
        "ID": "cold",
        "Filter": {},
        "Status": "Enabled",
        "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}],
    }
    with pytest.raises(ClientError) as err:
        s3.put_bucket_lifecycle_configuration(
            Bucket="lc-config", LifecycleConfiguration={"Rules": [transition]}
        )
    assert code(err.value) == "NotImplemented"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
    bad = {"ID": "zero", "Filter": {}, "Status": "Enabled", "Expiration": days(0)}
    with pytest.raises(ClientError) as err:
        s3.put_bucket_lifecycle_configuration(Bucket="lc-config", LifecycleConfiguration={"Rules": [bad]})
    assert code(err.value) == "InvalidArgument"
    assert len(s3.get_bucket_lifecycle_configuration(Bucket="lc-config")["Rules"]) == 3
    s3.delete_bucket_lifecycle(Bucket="lc-config")
    with pytest.raises(ClientError) as err:
        s3.get_bucket_lifecycle_configuration(Bucket="lc-config")
    assert code(err.value) == "NoSuchLifecycleConfiguration"
    s3.delete_bucket(Bucket="lc-config")


@pytest.mark.slow
def test_rules_expire_exactly_what_they_select(s3: Any) -> None:
    b = "lc-expire"
    s3.create_bucket(Bucket=b)
    objects = {
        "tmp/a": (b"1", ""),
        "tmp/sub/b": (b"2", ""),
        "keep/a": (b"3", ""),
        "tagged/x": (b"4", "expire=yes"),
        "tagged/y": (b"5", "expire=no"),
        "tagged/z": (b"6", ""),
        "big/blob": (b"x" * 200, ""),
        "big/small": (b"x" * 10, ""),
        "off/a": (b"7", ""),
        "later/a": (b"8", ""),
    }
    for key, (body, tags) in objects.items():
        s3.put_object(Bucket=b, Key=key, Body=body, Tagging=tags)
    rules = [
        {"ID": "tmp", "Filter": {"Prefix": "tmp/"}, "Status": "Enabled", "Expiration": days(1)},
        {
            "ID": "tags",
            "Filter": {"And": {"Prefix": "tagged/", "Tags": [{"Key": "expire", "Value": "yes"}]}},
            "Status": "Enabled",
            "Expiration": days(1),
        },
        {
            "ID": "big",
            "Filter": {"And": {"Prefix": "big/", "ObjectSizeGreaterThan": 100}},
            "Status": "Enabled",
            "Expiration": days(1),
        },
        {"ID": "off", "Filter": {"Prefix": "off/"}, "Status": "Disabled", "Expiration": days(1)},
        {"ID": "later", "Filter": {"Prefix": "later/"}, "Status": "Enabled", "Expiration": days(100000)},
    ]
    s3.put_bucket_lifecycle_configuration(Bucket=b, LifecycleConfiguration={"Rules": rules})
    expired = {"tmp/a", "tmp/sub/b", "tagged/x", "big/blob"}
    wait_for("the due objects to expire", lambda: not keys(s3, b) & expired)
    # A canary written now expires a day later, at the end of the key order: once it is gone a
    # whole pass has run with everything else long due, so what is left is left for good.
    s3.put_object(Bucket=b, Key="tmp/zz-canary", Body=b"c")
    wait_for("the canary to expire", lambda: "tmp/zz-canary" not in keys(s3, b))
    assert keys(s3, b) == set(objects) - expired
    # A rule that will expire an object says so on GET, HEAD and PUT.
    head = s3.head_object(Bucket=b, Key="later/a")
    assert 'rule-id="later"' in head["Expiration"] and "expiry-date=" in head["Expiration"]
    put = s3.put_object(Bucket=b, Key="later/b", Body=b"9")
    assert 'rule-id="later"' in put["Expiration"]
    assert "Expiration" not in s3.head_object(Bucket=b, Key="keep/a")
    s3.delete_bucket_lifecycle(Bucket=b)
    for key in keys(s3, b):
        s3.delete_object(Bucket=b, Key=key)
    s3.delete_bucket(Bucket=b)


@pytest.mark.slow
def test_incomplete_uploads_aborted_by_prefix(s3: Any) -> None:
    b = "lc-uploads"
    s3.create_bucket(Bucket=b)
    old = s3.create_multipart_upload(Bucket=b, Key="scratch/big")["UploadId"]
    s3.upload_part(Bucket=b, Key="scratch/big", UploadId=old, PartNumber=1, Body=b"p" * 1000)
    kept = s3.create_multipart_upload(Bucket=b, Key="kept/big")["UploadId"]
    rules = [
        {
            "ID": "abort",
            "Filter": {"Prefix": "scratch/"},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        },
        {
            "ID": "off",
            "Filter": {"Prefix": "kept/"},
            "Status": "Disabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        },
    ]
    s3.put_bucket_lifecycle_configuration(Bucket=b, LifecycleConfiguration={"Rules": rules})

    def uploads() -> set[str]:
        return {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=b).get("Uploads", [])}

    wait_for("the old upload to be aborted", lambda: old not in uploads())
    # As with objects, a canary begun later and aborted later proves the Disabled rule had its turn.
    canary = s3.create_multipart_upload(Bucket=b, Key="scratch/canary")["UploadId"]
    wait_for("the canary upload to be aborted", lambda: canary not in uploads())
    assert uploads() == {kept}
    with pytest.raises(ClientError) as err:
        s3.list_parts(Bucket=b, Key="scratch/big", UploadId=old)
    assert code(err.value) == "NoSuchUpload"
    s3.abort_multipart_upload(Bucket=b, Key="kept/big", UploadId=kept)
    s3.delete_bucket(Bucket=b)


@pytest.mark.slow
def test_versioned_bucket_expiration(s3: Any) -> None:
    """In a versioned bucket expiring the current version leaves a delete marker (AWS), old
    versions go after NoncurrentDays, and a delete marker left alone goes too."""
    b = "lc-versions"
    s3.create_bucket(Bucket=b)
    s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket=b, Key="v/a", Body=b"1")["VersionId"]
    second = s3.put_object(Bucket=b, Key="v/a", Body=b"2")["VersionId"]
    s3.put_object(Bucket=b, Key="m/x", Body=b"3")
    s3.delete_object(Bucket=b, Key="m/x")  # a marker, with the object behind it
    kept = {s3.put_object(Bucket=b, Key="keep/k", Body=body)["VersionId"] for body in (b"4", b"5")}
    current = s3.put_object(Bucket=b, Key="cur/b", Body=b"6")["VersionId"]
    nc = {"NoncurrentDays": 1}
    rules = [
        {"ID": "nc", "Filter": {"Prefix": "v/"}, "Status": "Enabled", "NoncurrentVersionExpiration": nc},
        {
            "ID": "markers",
            "Filter": {"Prefix": "m/"},
            "Status": "Enabled",
            "NoncurrentVersionExpiration": nc,
            "Expiration": {"ExpiredObjectDeleteMarker": True},
        },
        {"ID": "cur", "Filter": {"Prefix": "cur/"}, "Status": "Enabled", "Expiration": days(1)},
    ]
    s3.put_bucket_lifecycle_configuration(Bucket=b, LifecycleConfiguration={"Rules": rules})

    def versions() -> dict[str, list[tuple[str, bool]]]:
        got = s3.list_object_versions(Bucket=b)
        out: dict[str, list[tuple[str, bool]]] = {}
        for v in got.get("Versions", []):
            out.setdefault(v["Key"], []).append((v["VersionId"], False))
        for m in got.get("DeleteMarkers", []):
            out.setdefault(m["Key"], []).append((m["VersionId"], True))
        return out

    def settled() -> bool:
        now = versions()
        return (
            now.get("v/a") == [(second, False)]
            and "m/x" not in now
            and any(marker for _, marker in now.get("cur/b", []))
        )

    wait_for("versions to expire", settled)
    now = versions()
    assert {vid for vid, _ in now["keep/k"]} == kept
    # The expired current version is now a non-current one behind a delete marker.
    assert (current, False) in now["cur/b"] and len(now["cur/b"]) == 2
    assert first not in {vid for vid, _ in now["v/a"]}
    s3.delete_bucket_lifecycle(Bucket=b)
    for key, listed in now.items():
        for vid, _ in listed:
            s3.delete_object(Bucket=b, Key=key, VersionId=vid)
    assert versions() == {}
