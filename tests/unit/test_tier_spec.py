"""dfs/core/tiers.py: TierSpec validation and round trip, chunk keys, the token bucket."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs.core.errors import InvalidArgument
from dfs.core.tiers import TierSpec, TokenBucket, chunk_id_of_key, chunk_key

BASE: dict[str, Any] = {"name": "cold-1", "kind": "s3", "bucket": "my-bucket"}


def spec(**fields: Any) -> TierSpec:
    return TierSpec(**{**BASE, **fields})


def test_defaults_and_round_trip() -> None:
    s = spec()
    assert (s.prefix, s.endpoint, s.region, s.credentials_file, s.allow_http) == ("", None, None, None, False)
    assert (s.request_timeout_s, s.max_retries, s.bandwidth_bytes_per_s) == (30.0, 3, None)
    full = spec(
        prefix="dfs/prod",
        endpoint="http://minio:9000",
        allow_http=True,
        region="eu-west-1",
        credentials_file="/etc/dfs/tier.json",
        bandwidth_bytes_per_s=10_000_000,
        cost_per_gib_month=0.004,
        cost_per_1k_requests=0,
        request_timeout_s=5,
        max_retries=0,
    )
    assert isinstance(full.request_timeout_s, float) and isinstance(full.cost_per_1k_requests, float)
    for s in (spec(), full, TierSpec(name="nfs", kind="dir", bucket="/mnt/cold")):
        assert TierSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "Cold"}, "name"),
        ({"name": "-cold"}, "name"),
        ({"name": "c" * 64}, "name"),
        ({"name": ""}, "name"),
        ({"name": 3}, "name"),
        ({"kind": "ftp"}, "kind"),
        ({"bucket": "ab"}, "bucket"),
        ({"bucket": "My_Bucket"}, "bucket"),
        ({"kind": "azure", "bucket": "a--b"}, "bucket"),
        ({"kind": "dir", "bucket": "relative/path"}, "bucket"),
        ({"kind": "dir", "bucket": "/mnt/../etc"}, "bucket"),
        ({"kind": "dir", "bucket": "/mnt/cold/"}, "bucket"),
        ({"prefix": "/lead"}, "prefix"),
        ({"prefix": "trail/"}, "prefix"),
        ({"prefix": "a//b"}, "prefix"),
        ({"prefix": "a/../b"}, "prefix"),
        ({"prefix": "a\nb"}, "prefix"),
        ({"prefix": "p" * 513}, "prefix"),
        ({"endpoint": "http://minio:9000"}, "endpoint"),  # http without allow_http
        ({"endpoint": "ftp://x"}, "endpoint"),
        ({"endpoint": "https://user:pw@host"}, "endpoint"),
        ({"endpoint": "https://"}, "endpoint"),
        ({"kind": "dir", "bucket": "/mnt", "endpoint": "https://x"}, "endpoint"),
        ({"allow_http": "yes"}, "allow_http"),
        ({"region": "EU West"}, "region"),
        ({"kind": "gcs", "region": "europe-west1"}, "region"),
        ({"credentials_file": "relative.json"}, "credentials_file"),
        ({"kind": "dir", "bucket": "/mnt", "credentials_file": "/c.json"}, "credentials_file"),
        ({"bandwidth_bytes_per_s": 0}, "bandwidth_bytes_per_s"),
        ({"bandwidth_bytes_per_s": 1.5}, "bandwidth_bytes_per_s"),
        ({"bandwidth_bytes_per_s": True}, "bandwidth_bytes_per_s"),
        ({"cost_per_gib_month": -1}, "cost_per_gib_month"),
        ({"cost_per_1k_requests": math.nan}, "cost_per_1k_requests"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
        ({"request_timeout_s": math.inf}, "request_timeout_s"),
        ({"request_timeout_s": "30"}, "request_timeout_s"),
        ({"max_retries": 11}, "max_retries"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": False}, "max_retries"),
    ],
)
def test_bad_field_is_refused_in_one_line(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        spec(**fields)
    message = str(info.value)
    assert message.startswith(f"tier {field}: ") and "\n" not in message


def test_from_dict_refuses_unknown_missing_and_non_mappings() -> None:
    with pytest.raises(InvalidArgument, match="unknown field.*secret_access_key"):
        TierSpec.from_dict({**BASE, "secret_access_key": "x"})
    with pytest.raises(InvalidArgument, match="missing field.*bucket"):
        TierSpec.from_dict({"name": "a", "kind": "s3"})
    with pytest.raises(InvalidArgument, match="mapping"):
        TierSpec.from_dict(["s3"])
    with pytest.raises(InvalidArgument, match="tier kind"):
        TierSpec.from_dict({**BASE, "kind": "nope"})


def test_provider_bucket_names() -> None:
    TierSpec(name="a", kind="azure", bucket="dfs-cold-1")
    TierSpec(name="g", kind="gcs", bucket="dfs_cold.example.com")
    TierSpec(name="s", kind="s3", bucket="dfs.cold-1")
    with pytest.raises(InvalidArgument):
        TierSpec(name="a", kind="azure", bucket="dfs_cold")


def test_chunk_key_layout() -> None:
    cid = bytes(range(32))
    hexid = cid.hex()
    assert chunk_key(spec(), cid) == f"chunks/00/01/{hexid}"
    assert chunk_key(spec(prefix="a/b"), cid) == f"a/b/chunks/00/01/{hexid}"
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(InvalidArgument):
            chunk_key(spec(), bad)


prefixes = st.lists(st.from_regex(r"[a-z0-9._-]{1,8}", fullmatch=True).filter(lambda p: p not in (".", "..")),
                    max_size=3).map("/".join)  # fmt: skip


@given(cid=st.binary(min_size=32, max_size=32), prefix=prefixes)
def test_chunk_id_of_key_inverts_chunk_key(cid: bytes, prefix: str) -> None:
    s = spec(prefix=prefix)
    key = chunk_key(s, cid)
    assert chunk_id_of_key(s, key) == cid
    assert chunk_id_of_key(spec(prefix=(prefix + "/x").lstrip("/")), key) is None


@pytest.mark.parametrize(
    "key",
    [
        "chunks/00/01/" + bytes(range(32)).hex().upper(),
        "chunks/01/01/" + bytes(range(32)).hex(),  # fan-out does not match the name
        "chunks/00/" + bytes(range(32)).hex(),
        "chunks/00/01/" + bytes(range(32)).hex() + "/x",
        "chunks/00/01/" + bytes(range(31)).hex(),
        "chunks/00/01/" + bytes(range(32)).hex() + ".tmp",
        "other/chunks/00/01/" + bytes(range(32)).hex(),
        ".dfs-probe/check",
        "",
    ],
)
def test_chunk_id_of_key_is_none_for_foreign_keys(key: str) -> None:
    assert chunk_id_of_key(spec(), key) is None


# --- TokenBucket ------------------------------------------------------------------------------

rates = st.integers(min_value=1, max_value=10**9)
bursts = st.integers(min_value=1, max_value=10**8)
sends = st.lists(st.tuples(st.floats(min_value=0, max_value=10), st.integers(0, 10**8)), max_size=40)


@given(rate=st.sampled_from([None, 0]), burst=bursts, calls=sends)
def test_unlimited_bucket_never_waits(rate: int | None, burst: int, calls: list[tuple[float, int]]) -> None:
    bucket = TokenBucket(rate, burst)
    now = 0.0
    for gap_s, nbytes in calls:
        now += gap_s
        assert bucket.delay_s(now, nbytes) == 0.0


@given(rate=rates, burst=bursts, calls=sends)
def test_sends_stay_within_rate_and_in_order(rate: int, burst: int, calls: list[tuple[float, int]]) -> None:
    """With a clock that does not go back: every prefix of the sends fits in burst + rate *
    elapsed at its send time, and send times keep the order of the calls (FIFO)."""
    bucket = TokenBucket(rate, burst)
    now = t0 = 1000.0
    sent = 0
    last_send = t0
    for gap_s, nbytes in calls:
        now += gap_s
        delay = bucket.delay_s(now, nbytes)
        assert delay >= 0
        send = now + delay
        sent += nbytes
        assert sent <= burst + rate * (send - t0) + 1e-6 * (sent + 1)
        assert send >= last_send - 1e-9 * send
        last_send = send


@given(rate=rates, burst=bursts, sizes=st.lists(st.integers(0, 10**8), min_size=1, max_size=40))
def test_back_to_back_callers_get_the_full_rate(rate: int, burst: int, sizes: list[int]) -> None:
    """A caller that sends as soon as allowed is never slowed below the rate."""
    bucket = TokenBucket(rate, burst)
    t0 = now = 50.0
    for nbytes in sizes:
        now += bucket.delay_s(now, nbytes)
    expected = t0 + max(0, sum(sizes) - burst) / rate
    assert math.isclose(now, expected, rel_tol=1e-9, abs_tol=1e-6)


def test_idle_refill_is_capped_at_the_burst() -> None:
    bucket = TokenBucket(1000, 500)
    assert bucket.delay_s(0.0, 500) == 0.0
    assert bucket.delay_s(0.0, 100) == pytest.approx(0.1)
    assert bucket.delay_s(3600.0, 500) == 0.0  # an hour idle refills only the burst
    assert bucket.delay_s(3600.0, 1) == pytest.approx(0.001)
    assert bucket.delay_s(3600.0, 5000) == pytest.approx(5.001)  # more than the burst: waits, passes


def test_clock_going_back_refills_nothing() -> None:
    bucket = TokenBucket(100, 100)
    assert bucket.delay_s(10.0, 100) == 0.0
    # Earlier than the last call: the wait counts from the last call's time.
    assert bucket.delay_s(9.0, 50) == pytest.approx(1.0 + 0.5)


@pytest.mark.parametrize(("rate", "burst"), [(-1, 10), (math.nan, 10), (10, 0), (10, 1.5), (10, True)])
def test_bad_bucket_parameters(rate: float, burst: int) -> None:
    with pytest.raises(InvalidArgument):
        TokenBucket(rate, burst)
    with pytest.raises(InvalidArgument):
        TokenBucket(10, 10).delay_s(0.0, -1)
