"""dfs/core/s3policy.py: the bucket policy grammar and its evaluation, with no daemon."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs.core import s3policy
from dfs.core.errors import S3Error
from dfs.core.s3policy import Decision, RequestContext, evaluate, parse, wild_match

BUCKET = "pb"


def doc(*statements: dict[str, Any], version: str = "2012-10-17") -> bytes:
    return json.dumps({"Version": version, "Statement": list(statements)}).encode()


def stmt(effect: str = "Allow", **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Effect": effect,
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{BUCKET}/*",
    }
    out.update(fields)
    return {k: v for k, v in out.items() if v is not None}


def ctx(
    action: str = "s3:GetObject", key: str = "a/b.txt", access_key: str | None = None, **values: str
) -> RequestContext:
    resource = s3policy.resource_of(BUCKET, key, action)
    return RequestContext(action, resource, access_key, "", {k.lower(): v for k, v in values.items()})


def decide(policy_doc: bytes, context: RequestContext) -> Decision:
    return evaluate(parse(policy_doc, BUCKET), context)


def malformed(document: bytes, needle: str = "") -> None:
    with pytest.raises(S3Error) as err:
        parse(document, BUCKET)
    assert err.value.s3_code == "MalformedPolicy", err.value.s3_code
    assert needle in err.value.message, err.value.message


# -- grammar ----------
def test_valid_versions_and_statement_shapes() -> None:
    assert decide(doc(stmt()), ctx()) is Decision.ALLOW
    assert decide(doc(stmt(), version="2008-10-17"), ctx()) is Decision.ALLOW
    single = json.dumps({"Version": "2012-10-17", "Statement": stmt()}).encode()
    assert decide(single, ctx()) is Decision.ALLOW


@pytest.mark.parametrize(
    ("document", "needle"),
    [
        (b"{not json", "valid JSON"),
        (b"[]", "JSON object"),
        (doc(stmt(), version="2020-01-01"), "Version"),
        (json.dumps({"Version": "2012-10-17"}).encode(), "Statement"),
        (doc(stmt(effect="Maybe")), "Effect"),
        (doc(stmt(Principal=None, NotPrincipal="*")), "NotPrincipal"),
        (doc(stmt(Principal=None)), "Principal"),
        (doc(stmt(Principal={"Service": "x"})), "principal type"),
        (doc(stmt(NotAction="s3:PutObject")), "Action"),
        (doc(stmt(Action=None)), "Action"),
        (doc(stmt(Action="ec2:RunInstances")), "action"),
        (doc(stmt(Resource="arn:aws:s3:::other/*")), "not in bucket"),
        (doc(stmt(Resource="pb/*")), "invalid resource"),
        (doc(stmt(Condition={"StringEquals": {"aws:Nonsense": "x"}})), "aws:Nonsense"),
        (doc(stmt(Condition={"StringSounds": {"s3:prefix": "x"}})), "operator"),
        (doc(stmt(Condition={"IpAddress": {"aws:SourceIp": "not-an-ip"}})), "IP"),
        (doc(stmt(Condition={"NumericLessThan": {"s3:max-keys": "ten"}})), "numeric"),
        (doc(stmt(Condition={"DateLessThan": {"aws:CurrentTime": "someday"}})), "date"),
        (doc(stmt(Condition={"Bool": {"aws:SecureTransport": "maybe"}})), "boolean"),
        (doc(stmt(Extra=1)), "unknown field"),
    ],
)
def test_malformed_policies_refused(document: bytes, needle: str) -> None:
    malformed(document, needle)


def test_too_large_refused() -> None:
    big = doc(*[stmt(Sid="x" * 300) for _ in range(80)])
    assert len(big) > s3policy.MAX_POLICY_BYTES
    with pytest.raises(S3Error) as err:
        parse(big, BUCKET)
    assert err.value.s3_code == "PolicyTooLarge"


# -- matching ----------
def test_wildcards() -> None:
    assert wild_match("a/*", "a/b/c")
    assert wild_match("a/?.txt", "a/b.txt")
    assert not wild_match("a/?.txt", "a/bb.txt")
    assert not wild_match("a/*", "b/a")
    assert wild_match("a.b", "a.b") and not wild_match("a.b", "axb")  # regex characters are literal
    assert wild_match("s3:get*", "s3:GetObject", ignore_case=True)


@given(st.text(max_size=20), st.text(max_size=20))
def test_star_matches_any_text_with_its_prefix(prefix: str, rest: str) -> None:
    pattern = prefix.replace("*", "").replace("?", "")
    assert wild_match(pattern + "*", pattern + rest)
    assert wild_match(pattern, pattern)


def test_action_and_resource_matching() -> None:
    policy = doc(stmt(Action=["s3:Get*", "s3:List*"], Resource=[f"arn:aws:s3:::{BUCKET}/pub/*"]))
    assert decide(policy, ctx(key="pub/x")) is Decision.ALLOW
    assert decide(policy, ctx(key="priv/x")) is Decision.NONE
    assert decide(policy, ctx("s3:PutObject", key="pub/x")) is Decision.NONE
    # s3:ListBucket acts on the bucket ARN, which pb/pub/* does not name.
    assert decide(policy, ctx("s3:ListBucket")) is Decision.NONE


def test_not_action_and_not_resource() -> None:
    not_action = doc(stmt(Action=None, NotAction="s3:DeleteObject"))
    assert decide(not_action, ctx("s3:PutObject")) is Decision.ALLOW
    assert decide(not_action, ctx("s3:DeleteObject")) is Decision.NONE
    not_resource = doc(stmt(Resource=None, NotResource=f"arn:aws:s3:::{BUCKET}/secret/*"))
    assert decide(not_resource, ctx(key="open/x")) is Decision.ALLOW
    assert decide(not_resource, ctx(key="secret/x")) is Decision.NONE


def test_explicit_deny_wins_in_any_order() -> None:
    allow = stmt()
    deny = stmt("Deny", Resource=f"arn:aws:s3:::{BUCKET}/private/*")
    for order in ((allow, deny), (deny, allow)):
        assert decide(doc(*order), ctx(key="private/x")) is Decision.DENY
        assert decide(doc(*order), ctx(key="public/x")) is Decision.ALLOW


def test_principals() -> None:
    named = doc(stmt(Principal={"AWS": ["AKALICE", "arn:aws:iam::123456789012:user/AKBOB"]}))
    assert decide(named, ctx(access_key="AKALICE")) is Decision.ALLOW
    assert decide(named, ctx(access_key="AKBOB")) is Decision.ALLOW
    assert decide(named, ctx(access_key="AKCAROL")) is Decision.NONE
    assert decide(named, ctx(access_key=None)) is Decision.NONE  # anonymous is only "*"
    everyone = doc(stmt(Principal={"AWS": "*"}))
    assert decide(everyone, ctx(access_key=None)) is Decision.ALLOW
    canonical = doc(stmt(Principal={"CanonicalUser": "abc123"}))
    by_id = RequestContext("s3:GetObject", "arn:aws:s3:::pb/k", "AK", "abc123")
    assert evaluate(parse(canonical, BUCKET), by_id) is Decision.ALLOW
    assert evaluate(parse(canonical, BUCKET), ctx(access_key="AK")) is Decision.NONE


# -- conditions ----------
def cond(operator: str, key: str, values: Any) -> bytes:
    resources = [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]
    return doc(stmt(Action="s3:*", Resource=resources, Condition={operator: {key: values}}))


def test_string_operators() -> None:
    eq = cond("StringEquals", "s3:prefix", ["home/", "pub/"])
    assert decide(eq, ctx("s3:ListBucket", **{"s3:prefix": "pub/"})) is Decision.ALLOW
    assert decide(eq, ctx("s3:ListBucket", **{"s3:prefix": "etc/"})) is Decision.NONE
    assert decide(eq, ctx("s3:ListBucket")) is Decision.NONE  # absent key: no match
    ne = cond("StringNotEquals", "s3:prefix", ["home/", "pub/"])
    assert decide(ne, ctx("s3:ListBucket", **{"s3:prefix": "etc/"})) is Decision.ALLOW
    assert decide(ne, ctx("s3:ListBucket", **{"s3:prefix": "pub/"})) is Decision.NONE
    assert decide(ne, ctx("s3:ListBucket")) is Decision.ALLOW  # absent key: a negation holds
    like = cond("StringLike", "aws:UserAgent", "curl/*")
    assert decide(like, ctx(**{"aws:useragent": "curl/8.0"})) is Decision.ALLOW
    assert decide(like, ctx(**{"aws:useragent": "wget"})) is Decision.NONE
    not_like = cond("StringNotLike", "aws:UserAgent", "curl/*")
    assert decide(not_like, ctx(**{"aws:useragent": "wget"})) is Decision.ALLOW
    assert decide(not_like, ctx(**{"aws:useragent": "curl/8"})) is Decision.NONE
    ignore_case = cond("StringEqualsIgnoreCase", "s3:x-amz-acl", "PUBLIC-READ")
    assert decide(ignore_case, ctx(**{"s3:x-amz-acl": "public-read"})) is Decision.ALLOW
    if_exists = cond("StringEqualsIfExists", "s3:x-amz-acl", "private")
    assert decide(if_exists, ctx()) is Decision.ALLOW
    assert decide(if_exists, ctx(**{"s3:x-amz-acl": "public-read"})) is Decision.NONE
    null = cond("Null", "s3:x-amz-acl", "true")
    assert decide(null, ctx()) is Decision.ALLOW
    assert decide(null, ctx(**{"s3:x-amz-acl": "private"})) is Decision.NONE


def test_ip_operators() -> None:
    inside = cond("IpAddress", "aws:SourceIp", ["10.0.0.0/8", "2001:db8::/32"])
    assert decide(inside, ctx(**{"aws:sourceip": "10.1.2.3"})) is Decision.ALLOW
    assert decide(inside, ctx(**{"aws:sourceip": "2001:db8::1"})) is Decision.ALLOW
    assert decide(inside, ctx(**{"aws:sourceip": "127.0.0.1"})) is Decision.NONE
    outside = cond("NotIpAddress", "aws:SourceIp", "10.0.0.0/8")
    assert decide(outside, ctx(**{"aws:sourceip": "127.0.0.1"})) is Decision.ALLOW
    assert decide(outside, ctx(**{"aws:sourceip": "10.9.9.9"})) is Decision.NONE


def test_bool_numeric_and_date_operators() -> None:
    secure = cond("Bool", "aws:SecureTransport", False)
    assert decide(secure, ctx(**{"aws:securetransport": "false"})) is Decision.ALLOW
    assert decide(secure, ctx(**{"aws:securetransport": "true"})) is Decision.NONE
    table = [
        ("NumericEquals", "10", ["10"], ["9"]),
        ("NumericNotEquals", "10", ["9"], ["10"]),
        ("NumericLessThan", "10", ["9"], ["10"]),
        ("NumericLessThanEquals", "10", ["10"], ["11"]),
        ("NumericGreaterThan", "10", ["11"], ["10"]),
        ("NumericGreaterThanEquals", "10", ["10"], ["9"]),
    ]
    for operator, limit, yes, no in table:
        policy = cond(operator, "s3:max-keys", limit)
        for value in yes:
            assert decide(policy, ctx("s3:ListBucket", **{"s3:max-keys": value})) is Decision.ALLOW, operator
        for value in no:
            assert decide(policy, ctx("s3:ListBucket", **{"s3:max-keys": value})) is Decision.NONE, operator
    before = cond("DateLessThan", "aws:CurrentTime", "2030-01-01T00:00:00Z")
    assert decide(before, ctx(**{"aws:currenttime": "2026-06-01T00:00:00Z"})) is Decision.ALLOW
    assert decide(before, ctx(**{"aws:currenttime": "2031-06-01T00:00:00Z"})) is Decision.NONE
    after = cond("DateGreaterThanEquals", "aws:CurrentTime", "2030-01-01")
    assert decide(after, ctx(**{"aws:currenttime": "2031-01-01T00:00:00Z"})) is Decision.ALLOW
    assert decide(after, ctx(**{"aws:currenttime": "2029-01-01T00:00:00Z"})) is Decision.NONE


def test_all_conditions_must_hold() -> None:
    both = doc(
        stmt(
            Condition={
                "IpAddress": {"aws:SourceIp": "127.0.0.0/8"},
                "StringEquals": {"aws:username": "AKALICE"},
            }
        )
    )
    good = {"aws:sourceip": "127.0.0.1", "aws:username": "AKALICE"}
    assert decide(both, ctx(**good)) is Decision.ALLOW
    assert decide(both, ctx(**{**good, "aws:username": "AKBOB"})) is Decision.NONE
    assert decide(both, ctx(**{**good, "aws:sourceip": "10.0.0.1"})) is Decision.NONE


def test_public_policies_and_restrict() -> None:
    assert parse(doc(stmt()), BUCKET).public
    assert not parse(doc(stmt("Deny")), BUCKET).public
    assert not parse(doc(stmt(Principal={"AWS": "AKALICE"})), BUCKET).public
    assert not parse(cond("IpAddress", "aws:SourceIp", "10.0.0.0/8"), BUCKET).public
    assert parse(cond("IpAddress", "aws:SourceIp", "0.0.0.0/0"), BUCKET).public
    policy = parse(doc(stmt()), BUCKET)
    assert evaluate(policy, ctx(), ignore_everyone=True) is Decision.NONE
    deny = parse(doc(stmt("Deny")), BUCKET)
    assert evaluate(deny, ctx(), ignore_everyone=True) is Decision.DENY


def test_action_table() -> None:
    assert s3policy.action_of("HeadObject") == "s3:GetObject"
    assert s3policy.action_of("ListObjectsV2") == "s3:ListBucket"
    assert s3policy.action_of("SomethingNew") == "s3:SomethingNew"
    assert s3policy.resource_of("b", "k/x", "s3:GetObject") == "arn:aws:s3:::b/k/x"
    assert s3policy.resource_of("b", "", "s3:ListBucket") == "arn:aws:s3:::b"


@given(st.binary(max_size=300))
def test_any_document_parses_or_is_refused(raw: bytes) -> None:
    code = ""
    try:
        parse(raw, BUCKET)
    except S3Error as exc:
        code = exc.s3_code
    assert code in ("", "MalformedPolicy", "PolicyTooLarge")


@given(
    st.dictionaries(
        st.sampled_from(["Effect", "Principal", "Action", "Resource", "Condition", "Sid"]),
        st.one_of(st.text(max_size=8), st.lists(st.text(max_size=8), max_size=3), st.just("*")),
    )
)
def test_any_statement_parses_or_is_refused(fields: dict[str, Any]) -> None:
    try:
        policy = parse(doc(fields), BUCKET)
    except S3Error as exc:
        code = exc.s3_code
    else:
        code = "parsed"
        assert evaluate(policy, ctx()) in Decision
    assert code in ("parsed", "MalformedPolicy")
