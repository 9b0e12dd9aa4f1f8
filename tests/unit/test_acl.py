"""dfs/core/acl.py: the ACL xattr format and the rules that tie an ACL to the mode (as ext4 applies them)."""

from __future__ import annotations

import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs.core import acl
from dfs.core.acl import GROUP, GROUP_OBJ, MASK, OTHER, UNDEFINED_ID, USER, USER_OBJ, Entry
from dfs.core.errors import InvalidArgument

U = UNDEFINED_ID


def value(*entries: tuple[int, int, int]) -> bytes:
    return acl.encode(tuple(Entry(*e) for e in entries))


BASE = [(USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 4, U)]
NAMED = [(USER_OBJ, 7, U), (USER, 6, 1000), (GROUP_OBJ, 5, U), (GROUP, 4, 50), (MASK, 6, U), (OTHER, 0, U)]


def test_roundtrip_and_layout() -> None:
    v = value(*NAMED)
    assert v[:4] == b"\x02\x00\x00\x00" and len(v) == 4 + 8 * len(NAMED)
    assert acl.decode(v) == tuple(Entry(*e) for e in NAMED)


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x02\x00\x00",
        b"\x01\x00\x00\x00",  # version 1
        value(*BASE)[:-1],
        value((USER_OBJ, 6, U), (OTHER, 4, U)),  # no group entry
        value((GROUP_OBJ, 4, U), (USER_OBJ, 6, U), (OTHER, 4, U)),  # unsorted
        value((USER_OBJ, 6, U), (USER, 6, 5), (GROUP_OBJ, 4, U), (OTHER, 4, U)),  # named without mask
        value((USER_OBJ, 6, U), (USER, 6, 5), (USER, 6, 5), (GROUP_OBJ, 4, U), (MASK, 6, U), (OTHER, 4, U)),
        value((USER_OBJ, 0o10, U), (GROUP_OBJ, 4, U), (OTHER, 4, U)),  # perm beyond rwx
        value((USER_OBJ, 6, U), (0x40, 4, U), (GROUP_OBJ, 4, U), (OTHER, 4, U)),  # unknown tag
    ],
)
def test_bad_values_are_einval(bad: bytes) -> None:
    with pytest.raises(InvalidArgument):
        acl.decode(bad)


def test_setting_an_acl_sets_the_mode_and_a_minimal_one_is_not_stored() -> None:
    mode, stored = acl.after_set(value(*BASE), stat.S_IFREG | stat.S_ISUID | 0o777)
    assert (mode, stored) == (stat.S_IFREG | stat.S_ISUID | 0o644, None)
    mode, stored = acl.after_set(value(*NAMED), stat.S_IFREG | 0o644)
    assert mode == stat.S_IFREG | 0o760  # group bits show the mask
    assert stored == value(*NAMED)
    assert acl.after_set(value(), 0o100644) == (0o100644, None)


def test_chmod_rewrites_owner_mask_and_other() -> None:
    out = acl.decode(acl.chmod(value(*NAMED), 0o100514))
    assert [e.perm for e in out] == [5, 6, 5, 4, 1, 4]  # owner r-x, mask --x, other r--; named kept
    no_mask = acl.decode(acl.chmod(value(*BASE), 0o700))
    assert [e.perm for e in no_mask] == [7, 0, 0]


def test_inheritance_masks_the_default_by_the_requested_mode() -> None:
    default = value(*NAMED)
    mode, access, carried = acl.inherit(default, stat.S_IFREG | 0o640)
    assert mode == stat.S_IFREG | 0o640
    assert access is not None
    assert [e.perm for e in acl.decode(access)] == [6, 6, 5, 4, 4, 0]  # mask 6 & 4
    assert carried is None  # files do not carry the default on
    mode, access, carried = acl.inherit(default, stat.S_IFDIR | 0o777)
    assert mode == stat.S_IFDIR | 0o760 and carried == default and access is not None
    # A default with only base entries gives a plain mode and no access ACL.
    mode, access, carried = acl.inherit(value(*BASE), stat.S_IFREG | 0o666)
    assert (mode, access, carried) == (stat.S_IFREG | 0o644, None, None)


perms = st.integers(0, 7)


@st.composite
def acls(draw: st.DrawFn) -> bytes:
    users = sorted(draw(st.sets(st.integers(0, 70000), max_size=4)))
    groups = sorted(draw(st.sets(st.integers(0, 70000), max_size=4)))
    entries = [(USER_OBJ, draw(perms), U)]
    entries += [(USER, draw(perms), u) for u in users]
    entries.append((GROUP_OBJ, draw(perms), U))
    entries += [(GROUP, draw(perms), g) for g in groups]
    if users or groups or draw(st.booleans()):
        entries.append((MASK, draw(perms), U))
    entries.append((OTHER, draw(perms), U))
    return value(*entries)


@given(acls(), st.integers(0, 0o7777))
def test_the_mode_always_agrees_with_the_stored_acl(v: bytes, mode: int) -> None:
    new_mode, stored = acl.after_set(v, stat.S_IFREG | mode)
    assert new_mode & ~0o777 == stat.S_IFREG | (mode & ~0o777)
    if stored is None:
        return
    # chmod to the mode the ACL implies changes nothing; any chmod keeps the named entries.
    assert acl.chmod(stored, new_mode) == stored
    after = acl.decode(acl.chmod(stored, 0o751))
    assert [e for e in after if e.tag in (USER, GROUP)] == [
        e for e in acl.decode(stored) if e.tag in (USER, GROUP)
    ]
    assert acl.after_set(acl.chmod(stored, 0o751), new_mode)[0] & 0o777 == 0o751
