"""POSIX ACLs as Linux stores them in xattrs, and the rules that tie them to the mode.

The kernel enforces ACLs (the mount asks for FUSE_POSIX_ACL) and hands the
daemon the ``system.posix_acl_access`` / ``system.posix_acl_default`` xattr
values; the filesystem must do the rest, as ext4 does in fs/posix_acl.c:

* setting an access ACL sets the mode's permission bits from it, and an ACL
  that says no more than the mode is not stored at all (:func:`after_set`);
* chmod rewrites the owner, mask (or group) and other entries (:func:`chmod`);
* a new inode in a directory with a default ACL gets the default ACL masked
  by the requested mode as its access ACL, and directories inherit the
  default itself (:func:`inherit`).

Pure functions over bytes and modes: the metadata store applies them inside
the transaction that changes the inode, so the mode and its ACL never
disagree, not even after a crash.

Format (little-endian): a u32 version (2), then entries of u16 tag, u16 perm,
u32 id, sorted by tag then id.
"""

from __future__ import annotations

import stat
import struct
from typing import NamedTuple

from dfs.core.errors import InvalidArgument

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
NAMES = (ACCESS, DEFAULT)

VERSION = 2
USER_OBJ = 0x01
USER = 0x02
GROUP_OBJ = 0x04
GROUP = 0x08
MASK = 0x10
OTHER = 0x20
UNDEFINED_ID = 0xFFFFFFFF

_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
_PERMS = 0o777
_MAX_ENTRIES = 8192  # far beyond any real ACL; bounds the work a bad value can cause


class Entry(NamedTuple):
    tag: int
    perm: int
    id: int


Acl = tuple[Entry, ...]


def decode(value: bytes) -> Acl:
    """Parse and validate an ACL xattr value (the kernel's posix_acl_valid rules)."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise InvalidArgument(f"ACL value of {len(value)} bytes is not a whole number of entries")
    (version,) = _HEADER.unpack_from(value)
    if version != VERSION:
        raise InvalidArgument(f"ACL version {version}, expected {VERSION}")
    count = (len(value) - _HEADER.size) // _ENTRY.size
    if count > _MAX_ENTRIES:
        raise InvalidArgument(f"ACL of {count} entries")
    acl = tuple(Entry(*_ENTRY.unpack_from(value, _HEADER.size + i * _ENTRY.size)) for i in range(count))
    _validate(acl)
    return acl


def _validate(acl: Acl) -> None:
    if not acl:
        return  # an empty ACL means "none" (the kernel removes the xattr)
    seen: dict[int, int] = {}
    last: tuple[int, int] = (0, -1)
    named = False
    for e in acl:
        if e.perm & ~0o7:
            raise InvalidArgument(f"ACL entry permission {e.perm:#o}")
        if e.tag in (USER, GROUP):
            named = True
            if e.id == UNDEFINED_ID:
                raise InvalidArgument("named ACL entry without an id")
            key = (e.tag, e.id)
        elif e.tag in (USER_OBJ, GROUP_OBJ, MASK, OTHER):
            key = (e.tag, -1)
            if e.tag in seen:
                raise InvalidArgument(f"ACL has two entries of tag {e.tag:#x}")
        else:
            raise InvalidArgument(f"ACL entry tag {e.tag:#x}")
        if key <= last:
            raise InvalidArgument("ACL entries are not sorted by tag and id")
        last = key
        seen[e.tag] = seen.get(e.tag, 0) + 1
    if USER_OBJ not in seen or GROUP_OBJ not in seen or OTHER not in seen:
        raise InvalidArgument("ACL lacks an owner, group or other entry")
    if named and MASK not in seen:
        raise InvalidArgument("ACL with named entries lacks a mask")


def encode(acl: Acl) -> bytes:
    return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(*e) for e in acl)


def _equiv_mode(acl: Acl, mode: int) -> tuple[int, bool]:
    """The mode the ACL implies (special bits of ``mode`` kept) and whether the ACL says more."""
    perms = 0
    extended = False
    for e in acl:
        if e.tag == USER_OBJ:
            perms |= e.perm << 6
        elif e.tag == GROUP_OBJ:
            perms |= e.perm << 3
        elif e.tag == OTHER:
            perms |= e.perm
        elif e.tag == MASK:
            # Sorted after the group entry: the mask is what the group bits show.
            perms = (perms & ~0o70) | (e.perm << 3)
            extended = True
        else:
            extended = True
    return (mode & ~_PERMS) | perms, extended


def after_set(value: bytes, mode: int) -> tuple[int, bytes | None]:
    """Setting an access ACL: (the new mode, the value to store, or None for no xattr).

    An ACL with only the three base entries is the mode itself: ext4 stores
    nothing then, and neither do we, so ``getfacl`` and ``ls -l`` agree.
    """
    acl = decode(value)
    if not acl:
        return mode, None
    new_mode, extended = _equiv_mode(acl, mode)
    return new_mode, (encode(acl) if extended else None)


def check_default(value: bytes) -> bytes | None:
    """Setting a default ACL: the value to store, or None (an empty ACL removes it)."""
    acl = decode(value)
    return encode(acl) if acl else None


def chmod(value: bytes, mode: int) -> bytes:
    """The access ACL after chmod(mode): owner, mask (or group) and other follow the mode."""
    acl = decode(value)
    has_mask = any(e.tag == MASK for e in acl)
    out = []
    for e in acl:
        if e.tag == USER_OBJ:
            e = e._replace(perm=(mode >> 6) & 0o7)
        elif e.tag == OTHER:
            e = e._replace(perm=mode & 0o7)
        elif e.tag == MASK or (e.tag == GROUP_OBJ and not has_mask):
            e = e._replace(perm=(mode >> 3) & 0o7)
        out.append(e)
    return encode(tuple(out))


def inherit(default: bytes, mode: int) -> tuple[int, bytes | None, bytes | None]:
    """A new inode of ``mode`` in a directory whose default ACL is ``default``.

    Returns (mode, access ACL or None, default ACL or None): the access ACL is
    the default masked by the requested permissions (posix_acl_create_masq),
    and only directories carry the default on.
    """
    acl = decode(default)
    if not acl:
        return mode, None, None
    has_mask = any(e.tag == MASK for e in acl)
    out: list[Entry] = []
    for e in acl:
        if e.tag == USER_OBJ:
            e = e._replace(perm=e.perm & (mode >> 6) & 0o7)
        elif e.tag == OTHER:
            e = e._replace(perm=e.perm & mode & 0o7)
        elif e.tag == MASK or (e.tag == GROUP_OBJ and not has_mask):
            e = e._replace(perm=e.perm & (mode >> 3) & 0o7)
        out.append(e)
    new_mode, extended = _equiv_mode(tuple(out), mode)
    access = encode(tuple(out)) if extended else None
    return new_mode, access, (encode(acl) if stat.S_ISDIR(mode) else None)
