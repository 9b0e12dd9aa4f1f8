"""S3 bucket policies: parse a policy document, and evaluate one request against it.

Pure: no I/O, no clock (the request's time is part of its context).  The
daemon (daemon/s3/policy.py) stores the document, builds a
:class:`RequestContext` per request and combines :func:`evaluate`'s answer
with the key's grants and the ACLs as AWS does in a single account: an
explicit Deny wins, then any Allow (grant, policy or ACL), else no access.

Grammar accepted (anything else is MalformedPolicy, naming what is wrong):
Version ``2012-10-17`` or ``2008-10-17``; Statement an object or a list;
Effect ``Allow``/``Deny``; Principal ``"*"`` or ``{"AWS": ...}`` /
``{"CanonicalUser": ...}`` (NotPrincipal is refused: it is rarely what is
meant and easy to get wrong); Action/NotAction ``s3:...`` with ``*``/``?``;
Resource/NotResource ``arn:aws:s3:::bucket[/key-pattern]`` in this bucket;
Condition with the operators of :data:`_OPERATORS` (optionally
``...IfExists``) over the keys of :data:`CONDITION_KEYS`.

Invariants: :func:`parse` either answers a :class:`Policy` whose every
statement :func:`evaluate` can judge, or raises MalformedPolicy; evaluate
never raises on any context.
"""

from __future__ import annotations

import datetime
import enum
import functools
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from dfs.core.errors import S3Error

#: AWS's limit on a bucket policy document.
MAX_POLICY_BYTES = 20 * 1024
# Bounds on what one document may hold (far above any real policy; they keep evaluation cheap).
MAX_STATEMENTS = 100
MAX_VALUES = 200
VERSIONS = ("2012-10-17", "2008-10-17")
ARN_PREFIX = "arn:aws:s3:::"

# dfs's operation names (as daemon/s3/router.py names them) -> the AWS action a policy names.
# An operation missing here is judged as "s3:<operation>": only a wildcard Action reaches it.
ACTIONS: Mapping[str, str] = MappingProxyType(
    {
        "ListBuckets": "s3:ListAllMyBuckets",
        "CreateBucket": "s3:CreateBucket",
        "DeleteBucket": "s3:DeleteBucket",
        "HeadBucket": "s3:ListBucket",
        "ListObjects": "s3:ListBucket",
        "ListObjectsV2": "s3:ListBucket",
        "ListObjectVersions": "s3:ListBucketVersions",
        "ListMultipartUploads": "s3:ListBucketMultipartUploads",
        "GetObject": "s3:GetObject",
        "HeadObject": "s3:GetObject",
        "PutObject": "s3:PutObject",
        "CopyObject": "s3:PutObject",
        "CreateMultipartUpload": "s3:PutObject",
        "UploadPart": "s3:PutObject",
        "UploadPartCopy": "s3:PutObject",
        "CompleteMultipartUpload": "s3:PutObject",
        "AbortMultipartUpload": "s3:AbortMultipartUpload",
        "ListParts": "s3:ListMultipartUploadParts",
        "DeleteObject": "s3:DeleteObject",
        "DeleteObjects": "s3:DeleteObject",
        "GetObjectAcl": "s3:GetObjectAcl",
        "PutObjectAcl": "s3:PutObjectAcl",
        "GetObjectTagging": "s3:GetObjectTagging",
        "PutObjectTagging": "s3:PutObjectTagging",
        "DeleteObjectTagging": "s3:DeleteObjectTagging",
        "GetBucketTagging": "s3:GetBucketTagging",
        "PutBucketTagging": "s3:PutBucketTagging",
        "DeleteBucketTagging": "s3:PutBucketTagging",
        "GetBucketCors": "s3:GetBucketCORS",
        "PutBucketCors": "s3:PutBucketCORS",
        "DeleteBucketCors": "s3:PutBucketCORS",
        "GetBucketPolicy": "s3:GetBucketPolicy",
        "PutBucketPolicy": "s3:PutBucketPolicy",
        "DeleteBucketPolicy": "s3:DeleteBucketPolicy",
        "GetBucketAcl": "s3:GetBucketAcl",
        "PutBucketAcl": "s3:PutBucketAcl",
        "GetPublicAccessBlock": "s3:GetBucketPublicAccessBlock",
        "PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
        "DeletePublicAccessBlock": "s3:PutBucketPublicAccessBlock",
        "PutBucketVersioning": "s3:PutBucketVersioning",
        # IAM's names for lifecycle: delete is a put of no rules.
        "GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
        "PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
        "DeleteBucketLifecycle": "s3:PutLifecycleConfiguration",
        "GetBucket.versioning": "s3:GetBucketVersioning",
        "GetBucket.location": "s3:GetBucketLocation",
        "GetBucket.acl": "s3:GetBucketAcl",
        "GetBucket.policy": "s3:GetBucketPolicy",
        "GetObjectLockConfiguration": "s3:GetBucketObjectLockConfiguration",
        "PutObjectLockConfiguration": "s3:PutBucketObjectLockConfiguration",
    }
)
# The action of an operation on one version (a request with ``versionId``), as AWS names it: a
# policy may let a caller read the current object but not old versions, or delete objects (a
# delete marker) but never a version for good.  A copy's source named with ``?versionId=`` and
# each key of DeleteObjects with a VersionId are judged as GetObject / DeleteObject on that
# version (daemon/s3/objects.py).  Operations missing here keep their action.
VERSION_ACTIONS: Mapping[str, str] = MappingProxyType(
    {
        "GetObject": "s3:GetObjectVersion",
        "HeadObject": "s3:GetObjectVersion",
        "DeleteObject": "s3:DeleteObjectVersion",
        "GetObjectAcl": "s3:GetObjectVersionAcl",
        "PutObjectAcl": "s3:PutObjectVersionAcl",
        "GetObjectTagging": "s3:GetObjectVersionTagging",
        "PutObjectTagging": "s3:PutObjectVersionTagging",
        "DeleteObjectTagging": "s3:DeleteObjectVersionTagging",
    }
)
# Operations whose resource is the object (arn:aws:s3:::bucket/key), not the bucket.
OBJECT_ACTIONS = frozenset(
    {
        "s3:GetObject",
        "s3:GetObjectVersion",
        "s3:DeleteObjectVersion",
        "s3:GetObjectVersionAcl",
        "s3:PutObjectVersionAcl",
        "s3:GetObjectVersionTagging",
        "s3:PutObjectVersionTagging",
        "s3:DeleteObjectVersionTagging",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
        "s3:GetObjectAcl",
        "s3:PutObjectAcl",
        "s3:GetObjectTagging",
        "s3:PutObjectTagging",
        "s3:DeleteObjectTagging",
        "s3:GetObjectRetention",
        "s3:PutObjectRetention",
        "s3:GetObjectLegalHold",
        "s3:PutObjectLegalHold",
        "s3:BypassGovernanceRetention",
    }
)


def action_of(operation: str, *, versioned: bool = False) -> str:
    """The AWS action a policy names for a dfs operation; ``versioned``: on one version of the
    object (the request names a ``versionId``), e.g. s3:GetObjectVersion for GetObject."""
    if versioned and operation in VERSION_ACTIONS:
        return VERSION_ACTIONS[operation]
    return ACTIONS.get(operation, "s3:" + operation)


def resource_of(bucket: str, key: str, action: str) -> str:
    """The ARN a request acts on: the object for object actions, else the bucket."""
    if action in OBJECT_ACTIONS:
        return f"{ARN_PREFIX}{bucket}/{key}"
    return ARN_PREFIX + bucket


# The condition keys a policy may test (lower-case: AWS matches key names without case).
CONDITION_KEYS = frozenset(
    {
        "aws:sourceip",
        "aws:securetransport",
        "aws:currenttime",
        "aws:epochtime",
        "aws:username",
        "aws:userid",
        "aws:referer",
        "aws:useragent",
        "s3:prefix",
        "s3:delimiter",
        "s3:max-keys",
        "s3:x-amz-acl",
    }
)


class Decision(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    #: No statement applies: the policy neither allows nor denies.
    NONE = "none"


@dataclass(frozen=True)
class RequestContext:
    """One request as a policy sees it."""

    action: str  # "s3:GetObject"
    resource: str  # "arn:aws:s3:::bucket/key"
    # The access key that signed it (None: anonymous) and its canonical user id.
    access_key: str | None
    canonical_id: str = ""
    # Condition values by lower-case key; a key absent here is absent from the request.
    values: Mapping[str, str] = field(default_factory=dict)


# -- matching ----------
@functools.lru_cache(maxsize=4096)
def _wild_re(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = [".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern]
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def wild_match(pattern: str, text: str, *, ignore_case: bool = False) -> bool:
    """``*`` matches any run of characters (``/`` included), ``?`` any one character."""
    return _wild_re(pattern, ignore_case).fullmatch(text) is not None


def _malformed(message: str) -> S3Error:
    return S3Error("MalformedPolicy", message, 400)


# -- conditions ----------
def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _as_time(text: str) -> float | None:
    """An ISO 8601 date/time or epoch seconds -> epoch seconds."""
    number = _as_float(text)
    if number is not None:
        return number
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _ip_in(value: str, cidr: str) -> bool:
    try:
        addr = ipaddress.ip_address(value)
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    return addr.version == net.version and addr in net


def _cmp(
    parse: Callable[[str], float | None], test: Callable[[float, float], bool]
) -> Callable[[str, str], bool]:
    def match(value: str, wanted: str) -> bool:
        a, b = parse(value), parse(wanted)
        return a is not None and b is not None and test(a, b)

    return match


def _check_number(text: str) -> None:
    if _as_float(text) is None:
        raise _malformed(f"Invalid numeric value {text!r} in Condition")


def _check_time(text: str) -> None:
    if _as_time(text) is None:
        raise _malformed(f"Invalid date value {text!r} in Condition")


def _check_cidr(text: str) -> None:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _malformed(f"Invalid IP address or range {text!r} in Condition") from None


def _check_bool(text: str) -> None:
    if text.lower() not in ("true", "false"):
        raise _malformed(f"Invalid boolean value {text!r} in Condition")


def _no_check(text: str) -> None:
    return None


@dataclass(frozen=True)
class _Operator:
    match: Callable[[str, str], bool]  # (request value, policy value) -> matches?
    negated: bool  # true when any policy value matching means the condition fails
    check: Callable[[str], None]  # validates a policy value at parse time


_OPERATORS: Mapping[str, _Operator] = MappingProxyType(
    {
        "stringequals": _Operator(lambda v, w: v == w, False, _no_check),
        "stringnotequals": _Operator(lambda v, w: v == w, True, _no_check),
        "stringequalsignorecase": _Operator(lambda v, w: v.lower() == w.lower(), False, _no_check),
        "stringnotequalsignorecase": _Operator(lambda v, w: v.lower() == w.lower(), True, _no_check),
        "stringlike": _Operator(lambda v, w: wild_match(w, v), False, _no_check),
        "stringnotlike": _Operator(lambda v, w: wild_match(w, v), True, _no_check),
        "numericequals": _Operator(_cmp(_as_float, lambda a, b: a == b), False, _check_number),
        "numericnotequals": _Operator(_cmp(_as_float, lambda a, b: a == b), True, _check_number),
        "numericlessthan": _Operator(_cmp(_as_float, lambda a, b: a < b), False, _check_number),
        "numericlessthanequals": _Operator(_cmp(_as_float, lambda a, b: a <= b), False, _check_number),
        "numericgreaterthan": _Operator(_cmp(_as_float, lambda a, b: a > b), False, _check_number),
        "numericgreaterthanequals": _Operator(_cmp(_as_float, lambda a, b: a >= b), False, _check_number),
        "dateequals": _Operator(_cmp(_as_time, lambda a, b: a == b), False, _check_time),
        "datenotequals": _Operator(_cmp(_as_time, lambda a, b: a == b), True, _check_time),
        "datelessthan": _Operator(_cmp(_as_time, lambda a, b: a < b), False, _check_time),
        "datelessthanequals": _Operator(_cmp(_as_time, lambda a, b: a <= b), False, _check_time),
        "dategreaterthan": _Operator(_cmp(_as_time, lambda a, b: a > b), False, _check_time),
        "dategreaterthanequals": _Operator(_cmp(_as_time, lambda a, b: a >= b), False, _check_time),
        "bool": _Operator(lambda v, w: v.lower() == w.lower(), False, _check_bool),
        "ipaddress": _Operator(_ip_in, False, _check_cidr),
        "notipaddress": _Operator(_ip_in, True, _check_cidr),
    }
)


@dataclass(frozen=True)
class Condition:
    """One ``operator: {key: [values]}`` test."""

    operator: str  # lower-case, without IfExists
    if_exists: bool
    null: bool  # the Null operator: tests presence, not value
    key: str  # lower-case
    values: tuple[str, ...]

    def holds(self, ctx: Mapping[str, str]) -> bool:
        value = ctx.get(self.key)
        if self.null:
            # Null: true means "the key is absent".
            return any((value is None) == (w.lower() == "true") for w in self.values)
        op = _OPERATORS[self.operator]
        if value is None:
            # AWS: a missing key matches nothing, so a negated operator holds; IfExists holds.
            return self.if_exists or op.negated
        hit = any(op.match(value, w) for w in self.values)
        return not hit if op.negated else hit


@dataclass(frozen=True)
class Statement:
    sid: str
    allow: bool
    # Principal "*" (everyone, anonymous included) or the ids named.
    everyone: bool
    principals: frozenset[str]
    actions: tuple[str, ...]
    not_action: bool
    resources: tuple[str, ...]
    not_resource: bool
    conditions: tuple[Condition, ...]

    def applies(self, ctx: RequestContext) -> bool:
        if not self.everyone and not _principal_named(self.principals, ctx):
            return False
        hit = any(wild_match(a, ctx.action, ignore_case=True) for a in self.actions)
        if hit == self.not_action:
            return False
        hit = any(wild_match(r, ctx.resource) for r in self.resources)
        if hit == self.not_resource:
            return False
        return all(c.holds(ctx.values) for c in self.conditions)

    @property
    def public(self) -> bool:
        """Does it allow everyone with no condition pinning who or from where (AWS's "public")?"""
        if not self.allow or not self.everyone:
            return False
        for c in self.conditions:
            pinned_ip = c.key == "aws:sourceip" and c.operator == "ipaddress" and not c.if_exists
            if pinned_ip and all(ipaddress.ip_network(v, strict=False).prefixlen >= 8 for v in c.values):
                return False
            if c.key in ("aws:userid", "aws:username") and c.operator == "stringequals":
                return False
        return True


def _principal_named(principals: frozenset[str], ctx: RequestContext) -> bool:
    if ctx.access_key is None:
        return False  # only "*" names the anonymous caller
    return ctx.access_key in principals or (bool(ctx.canonical_id) and ctx.canonical_id in principals)


@dataclass(frozen=True)
class Policy:
    version: str
    statements: tuple[Statement, ...]

    @property
    def public(self) -> bool:
        return any(s.public for s in self.statements)


def evaluate(policy: Policy, ctx: RequestContext, *, ignore_everyone: bool = False) -> Decision:
    """Deny if any Deny statement applies, else Allow if any Allow does, else NONE.

    ``ignore_everyone`` drops the Allow statements to Principal "*" (RestrictPublicBuckets on a
    bucket whose policy is public, for an anonymous caller); Deny statements always count."""
    allowed = False
    for s in policy.statements:
        if not s.allow:
            if s.applies(ctx):
                return Decision.DENY
        elif not allowed and not (ignore_everyone and s.everyone) and s.applies(ctx):
            allowed = True
    return Decision.ALLOW if allowed else Decision.NONE


# -- parsing ----------
def _strings(value: object, what: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > MAX_VALUES:
        raise _malformed(f"{what} must hold 1 to {MAX_VALUES} values")
    out: list[str] = []
    for item in items:
        if isinstance(item, bool):
            out.append("true" if item else "false")
        elif isinstance(item, (str, int, float)):
            out.append(str(item))
        else:
            raise _malformed(f"{what} values must be strings")
    return tuple(out)


def _principal_id(text: str) -> str:
    """An ARN of an IAM user names the key by its user name; anything else is taken as is."""
    if text.startswith("arn:aws:iam::") and ":user/" in text:
        return text.rsplit("/", 1)[1]
    return text


def _parse_principal(value: object) -> tuple[bool, frozenset[str]]:
    if value == "*":
        return True, frozenset()
    if not isinstance(value, dict) or not value:
        raise _malformed('Principal must be "*" or an object such as {"AWS": [...]}')
    ids: set[str] = set()
    everyone = False
    for kind, names in value.items():
        if kind not in ("AWS", "CanonicalUser"):
            raise _malformed(f"Invalid principal type {kind!r}: use AWS or CanonicalUser")
        for name in _strings(names, f"Principal {kind}"):
            if name == "*":
                everyone = True
            else:
                ids.add(_principal_id(name))
    return everyone, frozenset(ids)


def _parse_conditions(value: object) -> tuple[Condition, ...]:
    if not isinstance(value, dict):
        raise _malformed("Condition must be an object")
    out: list[Condition] = []
    for op_name, tests in value.items():
        lower = str(op_name).lower()
        if lower.startswith(("forallvalues:", "foranyvalue:")):
            raise _malformed(f"Set operators are not supported: {op_name}")
        if_exists = lower.endswith("ifexists")
        base = lower.removesuffix("ifexists")
        null = base == "null"
        if not null and base not in _OPERATORS:
            raise _malformed(f"Invalid Condition operator {op_name!r}")
        if not isinstance(tests, dict) or not tests:
            raise _malformed(f"Condition {op_name} must map keys to values")
        for key, raw in tests.items():
            key_lower = str(key).lower()
            if key_lower not in CONDITION_KEYS:
                raise _malformed(f"Policy has an invalid condition key: {key}")
            values = _strings(raw, f"Condition {op_name} {key}")
            for v in values:
                (_check_bool if null else _OPERATORS[base].check)(v)
            out.append(Condition(base, if_exists, null, key_lower, values))
    return tuple(out)


def _check_resource(resource: str, bucket: str) -> None:
    if not resource.startswith(ARN_PREFIX):
        raise _malformed(f"Policy has invalid resource {resource!r}: use arn:aws:s3:::{bucket}[/key]")
    named = resource[len(ARN_PREFIX) :].partition("/")[0]
    if not wild_match(named, bucket):
        raise _malformed(f"Policy has invalid resource {resource!r}: it is not in bucket {bucket}")


def _check_action(action: str) -> None:
    if action != "*" and not action.lower().startswith("s3:"):
        raise _malformed(f"Policy has invalid action {action!r}: use s3:...")


def _pick(stmt: Mapping[str, object], name: str, sid: str) -> tuple[object, bool]:
    plain, negated = stmt.get(name), stmt.get("Not" + name)
    if (plain is None) == (negated is None):
        raise _malformed(f"Statement {sid!r} needs exactly one of {name} and Not{name}")
    return (negated, True) if plain is None else (plain, False)


_STATEMENT_FIELDS = frozenset(
    {
        "Sid",
        "Effect",
        "Principal",
        "NotPrincipal",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
    }
)


def _parse_statement(stmt: object, bucket: str, index: int) -> Statement:
    if not isinstance(stmt, dict):
        raise _malformed("Each Statement must be an object")
    sid = str(stmt.get("Sid", f"#{index}"))
    unknown = set(stmt) - _STATEMENT_FIELDS
    if unknown:
        raise _malformed(f"Statement {sid!r} has unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    effect = stmt.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise _malformed(f"Statement {sid!r}: Effect must be Allow or Deny")
    if "NotPrincipal" in stmt:
        raise _malformed(f"Statement {sid!r}: NotPrincipal is not supported by dfs; name the Principal")
    if "Principal" not in stmt:
        raise _malformed(f"Statement {sid!r}: a bucket policy statement needs a Principal")
    everyone, principals = _parse_principal(stmt["Principal"])
    raw_actions, not_action = _pick(stmt, "Action", sid)
    actions = _strings(raw_actions, "Action")
    for a in actions:
        _check_action(a)
    raw_resources, not_resource = _pick(stmt, "Resource", sid)
    resources = _strings(raw_resources, "Resource")
    for r in resources:
        _check_resource(r, bucket)
    conditions = _parse_conditions(stmt.get("Condition", {}))
    return Statement(
        sid, effect == "Allow", everyone, principals, actions, not_action, resources, not_resource, conditions
    )


def parse(document: bytes, bucket: str) -> Policy:
    """A bucket policy from its JSON document; MalformedPolicy (400) saying what is wrong."""
    if len(document) > MAX_POLICY_BYTES:
        raise S3Error("PolicyTooLarge", f"Policies must be at most {MAX_POLICY_BYTES} bytes", 400)
    try:
        doc = json.loads(document)
    except (ValueError, UnicodeDecodeError):
        raise _malformed("Policies must be valid JSON") from None
    if not isinstance(doc, dict):
        raise _malformed("A policy must be a JSON object")
    unknown = set(doc) - {"Version", "Id", "Statement"}
    if unknown:
        raise _malformed(f"Unknown field(s) in policy: {', '.join(sorted(unknown))}")
    version = doc.get("Version", "2008-10-17")
    if version not in VERSIONS:
        raise _malformed(f"Invalid policy Version {version!r}: use 2012-10-17")
    raw = doc.get("Statement")
    stmts: Sequence[object] = raw if isinstance(raw, list) else [raw] if isinstance(raw, dict) else []
    if not stmts:
        raise _malformed("Missing required field Statement")
    if len(stmts) > MAX_STATEMENTS:
        raise _malformed(f"A policy may hold at most {MAX_STATEMENTS} statements")
    return Policy(str(version), tuple(_parse_statement(s, bucket, i) for i, s in enumerate(stmts)))
