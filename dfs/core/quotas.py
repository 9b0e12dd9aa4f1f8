"""Directory quotas as the mount sees them: the read-only xattr view the metadata service serves
on a quota directory (daemon/meta/quotas.py), and ``df`` of a mount whose root is one."""

from __future__ import annotations

from dfs.core.namespace import StatFs

# Virtual, read-only xattrs of a quota directory -> the quota row's field each one shows.
# Values are decimal ASCII, or ``none`` for a limit that is not set.
QUOTA_XATTR_PREFIX = b"user.dfs.quota."
QUOTA_XATTRS = {
    b"user.dfs.quota.bytes": "max_bytes",
    b"user.dfs.quota.inodes": "max_inodes",
    b"user.dfs.quota.used_bytes": "used_bytes",
    b"user.dfs.quota.used_inodes": "used_inodes",
    b"user.dfs.quota.used_stored_bytes": "used_stored_bytes",
}


def xattr_value(value: int | None) -> bytes:
    return b"none" if value is None else str(value).encode()


def parse_xattr_value(raw: bytes) -> int | None:
    """The inverse of :func:`xattr_value` (ValueError for anything else)."""
    if raw == b"none":
        return None
    if not raw.isdigit():
        raise ValueError(f"not a quota value: {raw!r:.40}")
    return int(raw)


def statfs_within(
    st: StatFs,
    *,
    max_bytes: int | None,
    used_bytes: int,
    max_inodes: int | None,
    used_inodes: int,
) -> StatFs:
    """``df`` of a mount whose root is a quota directory: a byte limit is the size, what is left
    of it the free space (never more than the cluster has free); likewise for inodes."""
    total, free, avail = st.total_bytes, st.free_bytes, st.avail_bytes
    if max_bytes is not None:
        left = max(0, max_bytes - used_bytes)
        total, free, avail = max_bytes, min(free, left), min(avail, left)
    files, files_free = st.files, st.files_free
    if max_inodes is not None:
        files, files_free = max_inodes, min(files_free, max(0, max_inodes - used_inodes))
    return StatFs(st.block_size, total, free, avail, files, files_free)
