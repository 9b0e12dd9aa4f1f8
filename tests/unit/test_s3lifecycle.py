"""Lifecycle rules (dfs/core/s3lifecycle.py, their XML in dfs/core/s3xml.py): parsing and AWS's
validation, the stored form, which objects a rule selects, and when they are due."""

from __future__ import annotations

import pytest

from dfs.core import s3lifecycle, s3xml
from dfs.core.errors import S3Error
from dfs.core.s3lifecycle import LifecycleRule, RuleFilter

NS = 1_000_000_000
DAY_S = 86400


def doc(*rules: str) -> bytes:
    return (
        '<LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        + "".join(rules)
        + "</LifecycleConfiguration>"
    ).encode()


def rule(body: str, *, status: str = "Enabled", rule_id: str | None = "r") -> str:
    ident = f"<ID>{rule_id}</ID>" if rule_id is not None else ""
    return f"<Rule>{ident}<Status>{status}</Status>{body}</Rule>"


def refused(body: bytes) -> S3Error:
    with pytest.raises(S3Error) as err:
        s3xml.parse_lifecycle(body)
    return err.value


def test_parse_every_filter_form_and_render_it_back() -> None:
    body = doc(
        rule("<Prefix>logs/</Prefix><Expiration><Days>3</Days></Expiration>", rule_id="legacy"),
        rule("<Filter><Prefix>tmp/</Prefix></Filter><Expiration><Days>1</Days></Expiration>", rule_id="p"),
        rule(
            "<Filter><Tag><Key>k</Key><Value>v</Value></Tag></Filter>"
            "<Expiration><Date>2030-01-02T00:00:00.000Z</Date></Expiration>",
            rule_id="t",
        ),
        rule(
            "<Filter><And><Prefix>a/</Prefix><Tag><Key>x</Key><Value>1</Value></Tag>"
            "<ObjectSizeGreaterThan>10</ObjectSizeGreaterThan><ObjectSizeLessThan>100</ObjectSizeLessThan>"
            "</And></Filter><Expiration><Days>7</Days></Expiration>",
            rule_id="and",
        ),
        rule(
            "<Filter></Filter><AbortIncompleteMultipartUpload><DaysAfterInitiation>2"
            "</DaysAfterInitiation></AbortIncompleteMultipartUpload>",
            rule_id="mpu",
            status="Disabled",
        ),
        rule(
            "<Filter><ObjectSizeLessThan>5</ObjectSizeLessThan></Filter>"
            "<NoncurrentVersionExpiration><NoncurrentDays>4</NoncurrentDays>"
            "<NewerNoncurrentVersions>2</NewerNoncurrentVersions></NoncurrentVersionExpiration>",
            rule_id="nc",
        ),
        rule(
            "<Filter><Prefix>m/</Prefix></Filter>"
            "<Expiration><ExpiredObjectDeleteMarker>true</ExpiredObjectDeleteMarker></Expiration>",
            rule_id="dm",
        ),
    )
    rules = s3xml.parse_lifecycle(body)
    assert [r.rule_id for r in rules] == ["legacy", "p", "t", "and", "mpu", "nc", "dm"]
    legacy, p, t, both, mpu, nc, dm = rules
    assert legacy.filter == RuleFilter(prefix="logs/", form="prefix") and legacy.expiration_days == 3
    assert p.filter.prefix == "tmp/" and p.enabled
    assert t.filter.tags == (("k", "v"),) and t.expiration_date_s == 1893542400
    assert both.filter == RuleFilter("a/", (("x", "1"),), 10, 100, form="and")
    assert not mpu.enabled and mpu.abort_upload_days == 2 and mpu.filter.conditions() == 0
    assert nc.noncurrent_days == 4 and nc.newer_noncurrent_versions == 2
    assert dm.expired_object_delete_marker is True
    # The stored form and the rendered XML both give back the same rules.
    assert s3lifecycle.decode(s3lifecycle.encode(rules)) == rules
    assert s3xml.parse_lifecycle(s3xml.lifecycle(rules)) == rules
    rendered = s3xml.lifecycle(rules).decode()
    assert "<Rule><ID>legacy</ID><Prefix>logs/</Prefix>" in rendered
    assert "<Date>2030-01-02T00:00:00.000Z</Date>" in rendered


def test_rules_without_an_id_get_distinct_ones() -> None:
    exp = "<Filter></Filter><Expiration><Days>1</Days></Expiration>"
    rules = s3xml.parse_lifecycle(
        doc(rule(exp, rule_id=None), rule(exp, rule_id="rule-1"), rule(exp, rule_id=None))
    )
    ids = [r.rule_id for r in rules]
    assert ids[1] == "rule-1" and len(set(ids)) == 3


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (doc(), "MalformedXML"),
        (b"<LifecycleConfiguration><Rule>", "MalformedXML"),
        (doc(rule("<Expiration><Days>1</Days></Expiration>")), "MalformedXML"),  # no Filter/Prefix
        (doc(rule("<Prefix/><Filter/><Expiration><Days>1</Days></Expiration>")), "MalformedXML"),
        (doc(rule("<Filter/><Expiration><Days>1</Days></Expiration>", status="On")), "MalformedXML"),
        (doc(rule("<Filter/>")), "InvalidRequest"),  # no action
        (doc(rule("<Filter/><Expiration><Days>0</Days></Expiration>")), "InvalidArgument"),
        (doc(rule("<Filter/><Expiration><Days>-3</Days></Expiration>")), "InvalidArgument"),
        (doc(rule("<Filter/><Expiration><Days>x</Days></Expiration>")), "MalformedXML"),
        (doc(rule("<Filter/><Expiration></Expiration>")), "MalformedXML"),
        (
            doc(rule("<Filter/><Expiration><Days>1</Days><Date>2030-01-01</Date></Expiration>")),
            "MalformedXML",
        ),
        (doc(rule("<Filter/><Expiration><Date>2030-01-01T10:00:00Z</Date></Expiration>")), "InvalidArgument"),
        (doc(rule("<Filter/><Expiration><Date>2030-02-30</Date></Expiration>")), "InvalidArgument"),
        (
            doc(
                rule(
                    "<Filter><Prefix>a</Prefix><Tag><Key>k</Key><Value>v</Value></Tag></Filter>"
                    "<Expiration><Days>1</Days></Expiration>"
                )
            ),
            "MalformedXML",
        ),  # two without And
        (
            doc(
                rule(
                    "<Filter><And><Tag><Key>k</Key><Value>v</Value></Tag><Tag><Key>k</Key><Value>w</Value>"
                    "</Tag></And></Filter><Expiration><Days>1</Days></Expiration>"
                )
            ),
            "InvalidArgument",
        ),
        (
            doc(
                rule(
                    "<Filter><And><ObjectSizeGreaterThan>9</ObjectSizeGreaterThan><ObjectSizeLessThan>9"
                    "</ObjectSizeLessThan></And></Filter><Expiration><Days>1</Days></Expiration>"
                )
            ),
            "InvalidArgument",
        ),
        (
            doc(
                rule(
                    "<Filter><Tag><Key>k</Key><Value>v</Value></Tag></Filter><AbortIncompleteMultipartUpload>"
                    "<DaysAfterInitiation>1</DaysAfterInitiation></AbortIncompleteMultipartUpload>"
                )
            ),
            "InvalidRequest",
        ),
        (
            doc(
                rule(
                    "<Filter><Tag><Key>k</Key><Value>v</Value></Tag></Filter><Expiration>"
                    "<ExpiredObjectDeleteMarker>true</ExpiredObjectDeleteMarker></Expiration>"
                )
            ),
            "InvalidRequest",
        ),
        (doc(rule("<Filter/><Expiration><Days>1</Days></Expiration>", rule_id="x" * 256)), "InvalidArgument"),
        (
            doc(
                rule("<Filter/><Expiration><Days>1</Days></Expiration>", rule_id="same"),
                rule("<Filter/><Expiration><Days>2</Days></Expiration>", rule_id="same"),
            ),
            "InvalidArgument",
        ),
        (
            doc(
                *[
                    rule("<Filter/><Expiration><Days>1</Days></Expiration>", rule_id=str(i))
                    for i in range(1001)
                ]
            ),
            "MalformedXML",
        ),
    ],
)
def test_refused_as_aws_refuses(body: bytes, code: str) -> None:
    err = refused(body)
    assert (err.s3_code, err.status) == (code, 400)


@pytest.mark.parametrize("element", ["Transition", "NoncurrentVersionTransition"])
def test_transitions_refused_with_a_clear_error(element: str) -> None:
    err = refused(
        doc(rule(f"<Filter/><{element}><Days>30</Days><StorageClass>GLACIER</StorageClass></{element}>"))
    )
    assert (err.s3_code, err.status) == ("NotImplemented", 501)
    assert "storage classes" in err.message


def test_decode_refuses_what_is_not_a_stored_configuration() -> None:
    for raw in (b"nope", b"{}", b'[{"enabled": true}]', b'[{"id": "a", "enabled": true, "days": "1"}]'):
        with pytest.raises(ValueError, match="lifecycle"):
            s3lifecycle.decode(raw)


def test_matching_by_prefix_tags_and_size() -> None:
    r = LifecycleRule("r", True, RuleFilter("logs/", (("a", "1"), ("b", "2")), 10, 100), expiration_days=1)
    tags = [("a", "1"), ("b", "2"), ("c", "3")]
    assert s3lifecycle.matches(r, "logs/x", 50, tags)
    assert not s3lifecycle.matches(r, "other/x", 50, tags)
    assert not s3lifecycle.matches(r, "logs/x", 50, [("a", "1")])
    assert not s3lifecycle.matches(r, "logs/x", 50, [("a", "1"), ("b", "other")])
    assert not s3lifecycle.matches(r, "logs/x", 10, tags)  # strictly greater than
    assert not s3lifecycle.matches(r, "logs/x", 100, tags)  # strictly less than
    assert s3lifecycle.matches(LifecycleRule("all", True, expiration_days=1), "anything", 0, [])


def test_days_round_up_to_the_next_day_boundary() -> None:
    mtime = (10 * DAY_S + 3600) * NS  # 01:00 on day 10
    assert s3lifecycle.due_after_days_ns(mtime, 1, DAY_S) == 12 * DAY_S * NS  # midnight starting day 12
    assert s3lifecycle.due_after_days_ns(10 * DAY_S * NS, 1, DAY_S) == 11 * DAY_S * NS  # exactly midnight
    # A one-second test day: a 1-day rule is due within two seconds.
    assert s3lifecycle.due_after_days_ns(5_500_000_000, 1, 1.0) == 7 * NS


def test_first_expiry_picks_the_earliest_enabled_matching_rule() -> None:
    rules = [
        LifecycleRule("late", True, RuleFilter("a/"), expiration_days=30),
        LifecycleRule("soon", True, RuleFilter("a/b"), expiration_days=2),
        LifecycleRule("off", False, RuleFilter("a/"), expiration_days=1),
        LifecycleRule("tagged", True, RuleFilter("", (("t", "1"),)), expiration_date_s=DAY_S),
        LifecycleRule("uploads", True, RuleFilter("a/"), abort_upload_days=1),
    ]
    assert s3lifecycle.first_expiry(rules, "a/bc", 1, 0, [], DAY_S) == (2 * DAY_S * NS, "soon")
    assert s3lifecycle.first_expiry(rules, "a/x", 1, 0, [], DAY_S) == (30 * DAY_S * NS, "late")
    assert s3lifecycle.first_expiry(rules, "a/x", 1, 0, [("t", "1")], DAY_S) == (DAY_S * NS, "tagged")
    assert s3lifecycle.first_expiry(rules, "z", 1, 0, [], DAY_S) is None
    assert s3lifecycle.first_expiry(rules, "a/dir/", 0, 0, [], DAY_S) is None  # directories stay
    assert s3lifecycle.upload_abort_ns(rules, "a/k", 0, DAY_S) == (DAY_S * NS, "uploads")
    assert s3lifecycle.upload_abort_ns(rules, "b/k", 0, DAY_S) is None
    assert s3lifecycle.needs_tags(rules)
    assert s3lifecycle.scan_prefix(rules) == ""
    assert s3lifecycle.scan_prefix(rules[:2]) == "a/"
    assert s3lifecycle.scan_prefix(rules[2:3]) is None


def test_dates_parse_only_at_midnight_utc() -> None:
    assert s3lifecycle.parse_date("1970-01-01") == 0
    assert s3lifecycle.parse_date("2000-03-01T00:00:00Z") == 951868800
    assert s3lifecycle.parse_date("2024-02-29T00:00:00.000Z") == 1709164800
    for bad in ("2023-02-29", "2030-01-01T00:00:01Z", "yesterday", "2030-13-01"):
        with pytest.raises(S3Error):
            s3lifecycle.parse_date(bad)
