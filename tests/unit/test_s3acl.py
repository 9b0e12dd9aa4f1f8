"""dfs/core/s3acl.py: canned ACLs, grant headers, the stored encoding and what an ACL permits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs.core import s3acl
from dfs.core.errors import S3Error
from dfs.core.s3acl import ALL_USERS, AUTHENTICATED_USERS, Acl, Grant

OWNER = s3acl.canonical_id("AKOWNER")
OTHER = s3acl.canonical_id("AKOTHER")


def test_canonical_ids_are_stable_and_distinct() -> None:
    assert s3acl.canonical_id("AK1") == s3acl.canonical_id("AK1") != s3acl.canonical_id("AK2")
    assert s3acl.canonical_id("anything", root=True) == s3acl.ROOT_ID
    assert len(OWNER) == 64 and int(OWNER, 16) >= 0


def test_canned_acls() -> None:
    private = s3acl.canned("private", OWNER, OTHER)
    assert private.grants == (Grant(False, OWNER, "FULL_CONTROL"),) and not private.public
    public = s3acl.canned("public-read", OWNER, OTHER)
    assert public.public and public.permits(None, "READ") and not public.permits(None, "WRITE")
    rw = s3acl.canned("public-read-write", OWNER, OTHER)
    assert rw.permits(None, "WRITE") and not rw.permits(None, "READ_ACP")
    auth = s3acl.canned("authenticated-read", OWNER, OTHER)
    assert auth.permits(OTHER, "READ") and not auth.permits(None, "READ")
    assert s3acl.canned("bucket-owner-read", OWNER, OTHER).permits(OTHER, "READ")
    assert not s3acl.canned("bucket-owner-read", OWNER, OTHER).permits(OTHER, "WRITE")
    full = s3acl.canned("bucket-owner-full-control", OWNER, OTHER)
    assert all(full.permits(OTHER, p) for p in s3acl.PERMISSIONS)
    assert s3acl.canned("bucket-owner-full-control", OWNER, OWNER).grants == private.grants
    with pytest.raises(S3Error) as err:
        s3acl.canned("everyone", OWNER, OTHER)
    assert err.value.s3_code == "InvalidArgument"


def test_ignore_public_drops_group_grants_only() -> None:
    acl = Acl(OWNER, (Grant(True, ALL_USERS, "READ"), Grant(False, OTHER, "READ")))
    assert acl.permits(None, "READ") and not acl.permits(None, "READ", ignore_public=True)
    assert acl.permits(OTHER, "READ", ignore_public=True)


def test_grant_headers() -> None:
    acl = s3acl.from_headers(
        {"x-amz-grant-read": f'uri="{ALL_USERS}", id="{OTHER}"', "x-amz-grant-write-acp": f"id={OTHER}"},
        OWNER,
        OWNER,
    )
    assert acl is not None
    assert set(acl.grants) == {
        Grant(True, ALL_USERS, "READ"),
        Grant(False, OTHER, "READ"),
        Grant(False, OTHER, "WRITE_ACP"),
    }
    assert s3acl.from_headers({}, OWNER, OWNER) is None
    for headers, code in [
        ({"x-amz-acl": "private", "x-amz-grant-read": f"id={OTHER}"}, "InvalidRequest"),
        ({"x-amz-grant-read": 'emailAddress="a@b.c"'}, "NotImplemented"),
        ({"x-amz-grant-read": 'uri="http://example.com/group"'}, "InvalidArgument"),
        ({"x-amz-grant-read": "id="}, "InvalidArgument"),
    ]:
        with pytest.raises(S3Error) as err:
            s3acl.from_headers(headers, OWNER, OWNER)
        assert err.value.s3_code == code, headers


def test_xml_grants() -> None:
    acl = s3acl.from_xml_grants(OWNER, [("Group", AUTHENTICATED_USERS, "READ")], OWNER)
    assert acl.permits(OTHER, "READ") and acl.owner == OWNER
    for owner, grants, code in [
        (OTHER, [], "AccessDenied"),
        (None, [("AmazonCustomerByEmail", "a@b.c", "READ")], "NotImplemented"),
        (None, [("CanonicalUser", OTHER, "EVERYTHING")], "MalformedACLError"),
    ]:
        with pytest.raises(S3Error) as err:
            s3acl.from_xml_grants(owner, grants, OWNER)
        assert err.value.s3_code == code


_grants = st.lists(
    st.builds(
        Grant,
        st.just(False),
        st.text(min_size=1, max_size=20),
        st.sampled_from(s3acl.PERMISSIONS),
    )
    | st.builds(
        Grant, st.just(True), st.sampled_from(sorted(s3acl.GROUPS)), st.sampled_from(s3acl.PERMISSIONS)
    ),
    max_size=10,
)


@given(st.text(max_size=70), _grants)
def test_encoding_round_trips(owner: str, grants: list[Grant]) -> None:
    acl = Acl(owner, tuple(grants))
    assert s3acl.decode(s3acl.encode(acl)) == acl


@given(st.binary(max_size=200))
def test_decode_refuses_junk_with_value_error(raw: bytes) -> None:
    try:
        s3acl.decode(raw)
    except ValueError:
        pass
