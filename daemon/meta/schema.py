"""The metadata tables: their DDL, the schema version and the column lists the queries share.

Tables (created by :class:`daemon.meta.store.MetaStore` at open):

- ``inodes``: one row per inode.  ``stored`` caches the sum of the file's
  block-map ``stored_bytes`` plus the length of its inline data; st_blocks is
  derived from it.  Variable-size columns (symlink target, inline data) come
  last so the fixed attributes stay in the row's local payload.
- ``dentries``: ``(parent, name) -> ino`` with an AUTOINCREMENT ``id`` that is
  the readdir cookie (never reused; a renamed entry gets a new one).
- ``blocks``: the block map, ``(ino, idx) -> chunk_id, length, stored_bytes``.
- ``chunks``: one row per chunk with its refcount; ``zero_since_ns`` is set
  while the refcount is 0.  Only ``gc_collect`` deletes rows.  ``replicas`` is
  the highest replication factor any write asked of the chunk (NULL: none
  asked; the cluster default applies), so repair knows how many copies a chunk
  needs without walking the files that name it.
- ``xattrs``, ``sessions``, ``opens`` (open counts per session and inode),
  ``oplog`` and ``config`` (the block size the block maps were written with;
  ``internal:<name>`` -> the inode of each internal root, see below;
  ``layout_epoch``, see ``nodes``).
- ``volumes``: ``name -> ino`` of a top-level directory plus its msgpack
  policy.  A row follows its directory: a rename within the root renames it,
  a move out of the root or a removal drops it.
- ``volume_keys``: per-volume data keys (key id = a chunk header's key id),
  stored only wrapped under the master key (dfs/core/keys.py).
- ``nodes``: the cluster's node registry (msgpack info per node id); the
  fields ``zone``, ``capacity_weight``, ``state`` and ``address`` make up the
  placement layout.  Every change of the table bumps ``layout_epoch`` in the
  same transaction, so an epoch names exactly one layout and daemons can cache
  placement tables by epoch.
- ``s3_keys``: S3 access keys with their secrets.  Secrets never enter the
  oplog (its rows name the access key only).
- ``s3_bucket_owners`` and ``s3_grants``: which key owns a bucket and what
  other keys may do there (dfs/core/s3grants.py), both by the bucket
  directory's inode.  A bucket without an owner row is the root key's.
- ``chunk_deletions``: chunk deletions under way or recently finished, for
  daemons sharing the database (daemon/meta/deletions.py).
- ``requests``: request id -> the recorded result of a change made exactly
  once (daemon/meta/requests.py); trimmed by age.
- ``snapshots``: the volume snapshot registry (volume, name, top inode,
  created, origin ``manual`` or a schedule tier, files and bytes when taken);
  the trees live at ``/.snapshots/VOLUME/NAME`` (daemon/meta/snapshots.py).
- ``quotas`` and ``quota_chain``: directory quota domains, their limits and
  usage, and the closure of their nesting; ``inodes.quota`` names the domain
  each inode is charged to.  Triggers on ``inodes`` keep the usage (see
  daemon/meta/quotas.py).
- ``admin_tokens``: scoped admin API tokens (id, name, scope ``read`` or
  ``admin``, created); only the SHA-256 of each token is stored, and the
  oplog names the id only (see daemon/admin/tokens.py).
- ``trash``: files deleted from a volume with trash on (inode, volume, original parent and
  name, when, size); the inode sits at ``trash/<volume ino>/<ino>`` outside every quota
  domain until restored or purged (daemon/meta/trash.py).
- ``policy_remarks``: pending re-marks of ``chunks.replicas`` after a
  replication policy change, one row per subtree root with its progress
  (counting, total, marked) and where its walk stopped (daemon/meta/remark.py).
- ``snapshot_builds``: volume snapshots being copied in bounded batches (volume,
  name, origin, source and copy top, progress, files and bytes so far); the
  partial copy sits at ``snapshot-builds/<top>`` until it is complete
  (daemon/meta/snapshots.py).
- ``s3_versioning``: a bucket's versioning status (``Enabled`` or ``Suspended``; no row: never
  enabled), by the bucket (volume) directory's inode.
- ``s3_versions``: the non-current versions and delete markers of versioned buckets (bucket,
  key, version id, the inode or NULL for a marker, a per-key sequence that orders them newest
  last); a version's inode sits at ``versions/<ino>`` outside every quota domain (daemon/meta/versions.py).
- ``s3_object_lock_config``: the buckets with S3 object lock and their default retention;
  ``s3_object_locks``: each locked object version's retention and legal hold, by inode, with
  the ``LOCKED`` flag in its ``inodes.mode`` (daemon/meta/objlock.py).

Added tables are created with ``CREATE TABLE IF NOT EXISTS``, so an existing
database simply gains them on open; ``SCHEMA_VERSION`` changes only for
changes to existing tables, which ``daemon.meta.store.ensure_tables`` applies at open
(version 2 added ``chunks.replicas``, version 3 ``inodes.quota``).  A database newer than the code is refused.

Internal roots (:data:`INTERNAL_DIRS`, e.g. ``uploads`` for S3 multipart
parts) are directories created at open that, like the root, have no dentry;
nothing under ``ROOT_INO`` reaches them, so the mount never shows them.  Their
contents are ordinary inodes managed with the ordinary operations.
"""

from __future__ import annotations

SCHEMA_VERSION = 3
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS inodes (
        ino INTEGER PRIMARY KEY AUTOINCREMENT,
        mode INTEGER NOT NULL,
        nlink INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        gid INTEGER NOT NULL,
        rdev INTEGER NOT NULL,
        size INTEGER NOT NULL,
        stored INTEGER NOT NULL,
        atime_ns INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        generation INTEGER NOT NULL,
        symlink BLOB,
        inline BLOB,
        quota INTEGER)""",
    """CREATE TABLE IF NOT EXISTS dentries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        parent INTEGER NOT NULL,
        name BLOB NOT NULL,
        ino INTEGER NOT NULL,
        is_dir INTEGER NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS dentries_by_name ON dentries (parent, name)",
    # readdir scans (parent, id > cookie) in id order.
    "CREATE INDEX IF NOT EXISTS dentries_by_cookie ON dentries (parent, id)",
    # Only directories are ever looked up by ino (parent walks); leaving files out of this
    # index saves a page write on every file create/unlink/rename.
    "CREATE INDEX IF NOT EXISTS dentries_dirs ON dentries (ino) WHERE is_dir = 1",
    """CREATE TABLE IF NOT EXISTS xattrs (
        ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
        PRIMARY KEY (ino, name)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS blocks (
        ino INTEGER NOT NULL, idx INTEGER NOT NULL, chunk_id BLOB NOT NULL,
        length INTEGER NOT NULL, stored_bytes INTEGER NOT NULL,
        PRIMARY KEY (ino, idx)) WITHOUT ROWID""",
    # ``replicas`` comes last: version-1 databases gain it by ALTER TABLE, which appends.
    """CREATE TABLE IF NOT EXISTS chunks (
        chunk_id BLOB PRIMARY KEY, refcount INTEGER NOT NULL,
        stored_bytes INTEGER NOT NULL, zero_since_ns INTEGER, replicas INTEGER) WITHOUT ROWID""",
    # gc_collect only ever looks at unreferenced chunks, oldest first.
    "CREATE INDEX IF NOT EXISTS chunks_unreferenced ON chunks (zero_since_ns) WHERE refcount = 0",
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY, last_seen_ns INTEGER NOT NULL) WITHOUT ROWID""",
    # Keyed by ino first: "is it open?" is the hot question; by-session scans (expiry) are rare
    # and the table only holds currently open files.
    """CREATE TABLE IF NOT EXISTS opens (
        ino INTEGER NOT NULL, session TEXT NOT NULL, count INTEGER NOT NULL,
        PRIMARY KEY (ino, session)) WITHOUT ROWID""",
    # Plain rowid keys (no AUTOINCREMENT page write); _log continues from config's
    # 'oplog_seq' when oplog_trim emptied the table, so sequence numbers never repeat.
    """CREATE TABLE IF NOT EXISTS oplog (
        seq INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL,
        op TEXT NOT NULL, args BLOB NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS config (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS volumes (
        name TEXT PRIMARY KEY, ino INTEGER NOT NULL, policy BLOB NOT NULL,
        created_ns INTEGER NOT NULL) WITHOUT ROWID""",
    # Renames and removals in the root look up the row of the directory they touch.
    "CREATE INDEX IF NOT EXISTS volumes_by_ino ON volumes (ino)",
    # Per-volume data keys, only ever wrapped under the master key (dfs/core/keys.py); key_id is
    # the u16 a chunk header carries, never reused.  Kept when encryption is turned off: old
    # chunks still need them.
    """CREATE TABLE IF NOT EXISTS volume_keys (
        key_id INTEGER PRIMARY KEY, volume_ino INTEGER NOT NULL, wrapped BLOB NOT NULL,
        master_fingerprint TEXT NOT NULL, created_ns INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS volume_keys_by_volume ON volume_keys (volume_ino)",
    """CREATE TABLE IF NOT EXISTS nodes (
        node_id TEXT PRIMARY KEY, info BLOB NOT NULL, updated_ns INTEGER NOT NULL) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS s3_keys (
        access_key TEXT PRIMARY KEY, secret TEXT NOT NULL, created_ns INTEGER NOT NULL,
        description TEXT NOT NULL) WITHOUT ROWID""",
    # Who owns a bucket (the key that created it), by the bucket directory's inode: inodes are
    # never reused, so a bucket removed and made again (by anyone, through S3 or a mount) does
    # not inherit the old owner, and a rename keeps it.  Kept out of xattrs: mounts could set those.
    """CREATE TABLE IF NOT EXISTS s3_bucket_owners (
        ino INTEGER PRIMARY KEY, access_key TEXT NOT NULL, created_ns INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS s3_bucket_owners_by_key ON s3_bucket_owners (access_key)",
    # Grants on buckets (by inode, like owners): perm is "r", "w", "rw" or "owner".
    """CREATE TABLE IF NOT EXISTS s3_grants (
        access_key TEXT NOT NULL, ino INTEGER NOT NULL, perm TEXT NOT NULL,
        PRIMARY KEY (access_key, ino)) WITHOUT ROWID""",
    # Chunk deletions under way or recently finished (daemon/meta/deletions.py; PostgreSQL).
    """CREATE TABLE IF NOT EXISTS chunk_deletions (
        chunk_id BLOB PRIMARY KEY, started_ns INTEGER NOT NULL, finished_ns INTEGER) WITHOUT ROWID""",
    # Exactly-once changes (daemon/meta/requests.py): the result of each recorded request.
    """CREATE TABLE IF NOT EXISTS requests (
        id BLOB PRIMARY KEY, ts_ns INTEGER NOT NULL, result BLOB NOT NULL) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS requests_by_age ON requests (ts_ns)",
    # Volume snapshots (daemon/meta/snapshots.py), listed without walking /.snapshots; origin is
    # "manual" or the schedule tier that took it (dfs/core/snapshot_schedule.py).
    """CREATE TABLE IF NOT EXISTS snapshots (
        volume TEXT NOT NULL, name TEXT NOT NULL, ino INTEGER NOT NULL, created_ns INTEGER NOT NULL,
        origin TEXT NOT NULL, files INTEGER NOT NULL, bytes INTEGER NOT NULL,
        PRIMARY KEY (volume, name)) WITHOUT ROWID""",
    # Quota domains (daemon/meta/quotas.py), by directory inode; NULL limits: none.  ``parent`` is
    # the enclosing domain.  ``quota`` (inodes) is appended last: version-2 databases gain it by ALTER.
    """CREATE TABLE IF NOT EXISTS quotas (
        ino INTEGER PRIMARY KEY, parent INTEGER, max_bytes INTEGER, max_inodes INTEGER,
        used_bytes INTEGER NOT NULL, used_inodes INTEGER NOT NULL, used_stored_bytes INTEGER NOT NULL)""",
    # (domain, a domain it lies in, itself included): the triggers' one-statement ancestor lookup.
    """CREATE TABLE IF NOT EXISTS quota_chain (
        q INTEGER NOT NULL, a INTEGER NOT NULL, PRIMARY KEY (q, a)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS quota_chain_by_ancestor ON quota_chain (a)",
    """CREATE TABLE IF NOT EXISTS admin_tokens (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, scope TEXT NOT NULL, digest BLOB NOT NULL,
        created_ns INTEGER NOT NULL) WITHOUT ROWID""",
    # Files in a volume's trash (daemon/meta/trash.py), by inode (the entry's id; the inode sits
    # at trash/<volume ino>/<ino>), so listing needs no walk; deleted_ns orders expiry.
    """CREATE TABLE IF NOT EXISTS trash (
        ino INTEGER PRIMARY KEY, volume INTEGER NOT NULL, parent INTEGER NOT NULL, name BLOB NOT NULL,
        deleted_ns INTEGER NOT NULL, size INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS trash_by_age ON trash (volume, deleted_ns)",
    # Re-mark jobs after a replication policy change (daemon/meta/remark.py), by subtree root.
    """CREATE TABLE IF NOT EXISTS policy_remarks (
        root INTEGER PRIMARY KEY, created_ns INTEGER NOT NULL, counting INTEGER NOT NULL,
        total INTEGER NOT NULL, marked INTEGER NOT NULL, state BLOB NOT NULL)""",
    # Volume snapshots being copied in batches (daemon/meta/snapshots.py); ``top`` is NULL until
    # the first batch made the copy's top directory (at snapshot-builds/<top>).
    """CREATE TABLE IF NOT EXISTS snapshot_builds (
        volume TEXT NOT NULL, name TEXT NOT NULL, origin TEXT NOT NULL, src INTEGER NOT NULL,
        top INTEGER, started_ns INTEGER NOT NULL, progress_ns INTEGER NOT NULL,
        files INTEGER NOT NULL, bytes INTEGER NOT NULL, PRIMARY KEY (volume, name)) WITHOUT ROWID""",
    # S3 bucket versioning (daemon/meta/versions.py): the status, read in the statement that finds
    # a removed file's volume, and the versions that are not the file at the key's path.
    """CREATE TABLE IF NOT EXISTS s3_versioning (
        ino INTEGER PRIMARY KEY, status TEXT NOT NULL, changed_ns INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS s3_versions (
        bucket INTEGER NOT NULL, key BLOB NOT NULL, version_id TEXT NOT NULL, ino INTEGER,
        seq INTEGER NOT NULL, created_ns INTEGER NOT NULL,
        PRIMARY KEY (bucket, key, version_id)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS s3_versions_by_seq ON s3_versions (bucket, key, seq)",
    "CREATE INDEX IF NOT EXISTS s3_versions_by_ino ON s3_versions (ino) WHERE ino IS NOT NULL",
    # S3 object lock (daemon/meta/objlock.py): a bucket's configuration (its default retention;
    # mode NULL: none), and each locked version's retention (mode NULL: none) and legal hold, by
    # inode (the file at the key's path or a version at versions/<ino>: both keep their inode).
    """CREATE TABLE IF NOT EXISTS s3_object_lock_config (
        ino INTEGER PRIMARY KEY, mode TEXT, days INTEGER, years INTEGER, changed_ns INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS s3_object_locks (
        ino INTEGER PRIMARY KEY, mode TEXT, retain_until_ns INTEGER, legal_hold INTEGER NOT NULL,
        changed_ns INTEGER NOT NULL)""",
    # Cloud tiers (daemon/meta/tiers.py): their definitions (a TierSpec, never a secret), the
    # copies each holds, the chunks whose local copies are given up (cold), copies of collected
    # chunks still to delete from their tier, and the trees pinned to local disks.
    """CREATE TABLE IF NOT EXISTS tiers (
        name TEXT PRIMARY KEY, spec BLOB NOT NULL, created_ns INTEGER NOT NULL) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS tier_copies (
        chunk_id BLOB NOT NULL, tier TEXT NOT NULL, stored_bytes INTEGER NOT NULL,
        stored_ns INTEGER NOT NULL, PRIMARY KEY (chunk_id, tier)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS tier_copies_by_tier ON tier_copies (tier, chunk_id)",
    """CREATE TABLE IF NOT EXISTS tier_cold (
        chunk_id BLOB PRIMARY KEY, since_ns INTEGER NOT NULL) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS tier_deletions (
        chunk_id BLOB NOT NULL, tier TEXT NOT NULL, queued_ns INTEGER NOT NULL,
        PRIMARY KEY (chunk_id, tier)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS tier_pins (
        ino INTEGER PRIMARY KEY, pinned_ns INTEGER NOT NULL)""",
)
# The AUTOINCREMENT (PostgreSQL: identity) columns, whose counters never hand out a number twice.
COUNTER_COLUMNS = {"inodes": "ino", "dentries": "id"}
# Directories outside the namespace (no dentry, unreachable from ROOT_INO), created at open.
INTERNAL_DIRS = ("uploads", "trash", "snapshot-builds", "versions")
_INTERNAL_KEY = "internal:"
# The SQL list of their config keys, for queries that treat internal roots as roots.
_INTERNAL_KEYS_SQL = ", ".join(f"'{_INTERNAL_KEY}{name}'" for name in INTERNAL_DIRS)
_INTERNAL_INOS_SQL = f"SELECT value FROM config WHERE key IN ({_INTERNAL_KEYS_SQL})"
# Scratch TEMP tables of the set-based multi-inode operations (remove_tree, snapshot).
_SCRATCH = {
    "dirs": "ino INTEGER PRIMARY KEY",
    "inos": "ino INTEGER PRIMARY KEY",
    "links": "ino INTEGER PRIMARY KEY, n INTEGER NOT NULL",
    "purge": "ino INTEGER PRIMARY KEY",
    "map": "old INTEGER PRIMARY KEY, new INTEGER NOT NULL",
    # A tree copy's source rows (daemon/meta/snapshots.py): read from the live tables, or handed
    # over in batches from a read snapshot on another connection.
    "src_inodes": "ino INTEGER PRIMARY KEY, mode INTEGER NOT NULL, nlink INTEGER NOT NULL, "
    "uid INTEGER NOT NULL, gid INTEGER NOT NULL, rdev INTEGER NOT NULL, size INTEGER NOT NULL, "
    "stored INTEGER NOT NULL, atime_ns INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, "
    "ctime_ns INTEGER NOT NULL, generation INTEGER NOT NULL, symlink BLOB, inline BLOB",
    "src_dentries": "id INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name BLOB NOT NULL, "
    "ino INTEGER NOT NULL, is_dir INTEGER NOT NULL",
    "src_xattrs": "ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (ino, name)",
    "src_blocks": "ino INTEGER NOT NULL, idx INTEGER NOT NULL, chunk_id BLOB NOT NULL, "
    "length INTEGER NOT NULL, stored_bytes INTEGER NOT NULL, PRIMARY KEY (ino, idx)",
}


def _attr_cols(prefix: str) -> str:
    """The SELECT list that maps an inodes row onto :class:`Attr`, in field order.

    ``mode`` loses its flag bits above the file type (65535 = 0o177777; see inodes.READ_ONLY)."""
    p = prefix
    return (
        f"{p}ino, {p}mode & 65535, {p}nlink, {p}uid, {p}gid, {p}rdev, {p}size, ({p}stored + 511) / 512, "
        f"{p}atime_ns, {p}mtime_ns, {p}ctime_ns, {p}generation"
    )


_ATTR = _attr_cols("")
_ATTR_I = _attr_cols("i.")
