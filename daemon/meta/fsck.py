"""The metadata checker: every invariant of the store, each one an entry of a table of checks.

Invariants (all checked, and where possible repaired, by :meth:`Checks.fsck`):

- inode numbers are never reused; the root is ``ROOT_INO`` and has no dentry;
- each internal root exists, is a directory other than the root, and has no
  dentry;
- a directory other than the root and the internal roots has exactly one
  dentry; a directory's nlink is 2 + its subdirectories (0 once removed); a
  non-directory's nlink is its number of dentries;
- an inode with nlink 0 exists only while some session holds it open;
- every directory is reachable from the root or an internal root, and none
  from itself;
- a chunk's refcount equals the number of block-map entries naming it;
- block entries lie below the file size and name chunks that are stored;
- only regular files hold inline data or blocks, never both, and inline data
  is no longer than the file;
- a volume row names a live top-level directory whose name is the row's name;
- a trash row names a non-directory at ``trash/<volume>/<ino>``, and every file
  there has a row;
- an ``s3_versions`` row with an inode names a regular file at ``versions/<ino>``,
  and every file there has a row;
- an ``s3_object_locks`` row belongs to a regular file flagged LOCKED;
- every inode's quota domain exists, and each domain's recorded usage equals
  the sum over the inodes charged to it and to the domains nested in it.

Each check is a :class:`_Check`: ``find`` lists its findings (the problem line
and what a repair needs), ``fix`` repairs one finding.  :data:`_CHECKS` runs
them in dependency order, so every repair feeds the checks after it (names
before links, links before leaks, block maps before refcounts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from daemon.meta.base import _api
from daemon.meta.inodes import _IFDIR, _IFMT, _IFREG, DIR_SIZE, READ_ONLY, Inodes, _is_dir
from daemon.meta.objlock import LOCKED
from daemon.meta.quotas import set_usage, usage_mismatches
from daemon.meta.schema import _INTERNAL_INOS_SQL, _INTERNAL_KEY, INTERNAL_DIRS
from dfs.core.errors import InternalError
from dfs.core.namespace import ROOT_INO

_LOST_FOUND = b"lost+found"
K = TypeVar("K")
# One finding of a check: the problem line it reports and what its repair needs.
Finding = tuple[str, K]


class Checks(Inodes):
    """``fsck``: every invariant checked in one transaction, optionally repaired."""

    @_api
    def fsck(self, stored: Callable[[bytes], bool], *, repair: bool) -> list[str]:
        """Check every invariant; one line per problem found.  ``repair`` also fixes them."""
        with self._write(commit=repair) as now:
            problems = _Fsck(self, stored, repair, now).run()
            if repair and problems:
                self._log(now, "fsck_repair", problems)
        return problems


@dataclasses.dataclass(frozen=True)
class _Check(Generic[K]):
    """One invariant: ``find`` lists its findings, ``fix`` repairs one of them.

    Each finding is repaired right after it is reported, unless ``deferred``:
    then the repairs wait until all are reported, because one repair may settle
    the findings after it (re-homing a directory reconnects its whole subtree).
    """

    name: str
    find: Callable[[_Fsck], list[Finding[K]]]
    fix: Callable[[_Fsck, K], None]
    deferred: bool = False


class _Fsck:
    """One fsck pass over :data:`_CHECKS`, inside the caller's transaction."""

    def __init__(self, store: Inodes, stored: Callable[[bytes], bool], repair: bool, now: int) -> None:
        self.store = store
        self.db = store._db
        self.stored_fn = stored
        self.repair = repair
        self.now = now
        self.problems: list[str] = []
        self._stored_memo: dict[bytes, bool] = {}
        self._paths_left = 100

    def run(self) -> list[str]:
        for check in _CHECKS:
            found = check.find(self)
            for line, finding in found:
                self.report(line)
                if self.repair and not check.deferred:
                    check.fix(self, finding)
            if self.repair and check.deferred:
                for _, finding in found:
                    check.fix(self, finding)
        return self.problems

    def report(self, line: str) -> None:
        self.problems.append(line)

    def _cold_copy(self, chunk_id: bytes) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM tier_cold c JOIN tier_copies t ON t.chunk_id = c.chunk_id "
            "WHERE c.chunk_id = ? LIMIT 1",
            (chunk_id,),
        ).fetchone()
        return row is not None

    def is_stored(self, chunk_id: bytes) -> bool:
        if chunk_id not in self._stored_memo:
            # A cold chunk (daemon/meta/tiers.py) is stored when a tier holds a copy of it.
            self._stored_memo[chunk_id] = bool(self.stored_fn(chunk_id)) or self._cold_copy(chunk_id)
        return self._stored_memo[chunk_id]

    def path(self, ino: int) -> str:
        """Best-effort path of an inode for messages (a file's first name costs a table scan,
        so only the first few messages get one)."""
        self._paths_left -= 1
        if self._paths_left < 0:
            return f"<inode {ino}>"
        parts: list[bytes] = []
        seen: set[int] = set()
        internal = self.store._internal_inos()
        cur = ino
        while cur != ROOT_INO and cur not in internal and cur not in seen:
            seen.add(cur)
            row = self.db.execute(
                "SELECT parent, name FROM dentries WHERE ino = ? ORDER BY id LIMIT 1", (cur,)
            )
            found = row.fetchone()
            if found is None:
                return f"<inode {ino}, detached>"
            cur = found[0]
            parts.append(found[1])
        if cur in internal:
            top = f"<{internal[cur]}>/"
        elif cur == ROOT_INO:
            top = "/"
        else:
            return f"<inode {ino}, in a cycle>"
        return top + "/".join(p.decode("utf-8", "backslashreplace") for p in reversed(parts))

    # -- namespace --------------------------------------------------------------------

    def find_root(self) -> list[Finding[None]]:
        row = self.db.execute("SELECT mode FROM inodes WHERE ino = ?", (ROOT_INO,)).fetchone()
        if row is not None and _is_dir(row[0]):
            return []
        return [("root inode missing" if row is None else "root inode is not a directory", None)]

    def fix_root(self, _: None) -> None:
        self.db.execute("DELETE FROM inodes WHERE ino = ?", (ROOT_INO,))
        self.store._create_root(self.now)

    def find_internal_roots(self) -> list[Finding[str]]:
        """Each internal root: a config row naming a directory that is neither the root nor named."""
        found: list[Finding[str]] = []
        seen: set[int] = set()
        for name in INTERNAL_DIRS:
            row = self.db.execute(
                "SELECT value FROM config WHERE key = ?", (_INTERNAL_KEY + name,)
            ).fetchone()
            if row is None:
                why = "is missing"
            else:
                ino = row[0]
                inode = self.db.execute("SELECT mode FROM inodes WHERE ino = ?", (ino,)).fetchone()
                if inode is None:
                    why = f"names missing inode {ino}"
                elif not _is_dir(inode[0]):
                    why = f"names inode {ino}, which is not a directory"
                elif ino == ROOT_INO or ino in seen:
                    why = f"names inode {ino}, which is another root"
                elif self.db.execute(
                    "SELECT 1 FROM dentries WHERE is_dir = 1 AND ino = ? LIMIT 1", (ino,)
                ).fetchone():
                    why = f"names directory {ino}, which has a name"
                else:
                    seen.add(ino)
                    continue
            found.append((f"internal directory {name!r} {why}", name))
        return found

    def fix_internal_root(self, name: str) -> None:
        # A fresh one; a named directory it wrongly pointed at stays where it is.
        self.store._create_internal(name, self.now)

    def find_dangling_dentries(self) -> list[Finding[int]]:
        rows = self.db.execute(
            "SELECT d.id, d.parent, d.name, d.ino, i.ino IS NULL, p.ino IS NULL, p.mode FROM dentries d "
            "LEFT JOIN inodes i ON i.ino = d.ino LEFT JOIN inodes p ON p.ino = d.parent "
            "WHERE i.ino IS NULL OR p.ino IS NULL OR p.mode & ? != ? OR d.ino = ?",
            (_IFMT, _IFDIR, ROOT_INO),
        ).fetchall()
        found: list[Finding[int]] = []
        for dentry_id, parent, name, ino, no_inode, no_parent, _ in rows:
            if ino == ROOT_INO:
                why = "names the root"
            elif no_inode:
                why = f"names missing inode {ino}"
            else:
                why = "has a missing parent" if no_parent else "has a non-directory parent"
            found.append((f"dentry {name!r} in directory {parent} {why}", dentry_id))
        return found

    def fix_dangling_dentry(self, dentry_id: int) -> None:
        self.db.execute("DELETE FROM dentries WHERE id = ?", (dentry_id,))

    def find_dentry_kinds(self) -> list[Finding[tuple[int, int]]]:
        rows = self.db.execute(
            "SELECT d.id, d.parent, d.name, CASE WHEN i.mode & ?1 = ?2 THEN 1 ELSE 0 END "
            "FROM dentries d JOIN inodes i ON i.ino = d.ino "
            "WHERE d.is_dir != CASE WHEN i.mode & ?1 = ?2 THEN 1 ELSE 0 END",
            (_IFMT, _IFDIR),
        ).fetchall()
        return [
            (f"dentry {name!r} in directory {parent} has the wrong is_dir flag", (dentry_id, is_dir))
            for dentry_id, parent, name, is_dir in rows
        ]

    def fix_dentry_kind(self, finding: tuple[int, int]) -> None:
        dentry_id, is_dir = finding
        self.db.execute("UPDATE dentries SET is_dir = ? WHERE id = ?", (is_dir, dentry_id))

    def find_directory_names(self) -> list[Finding[tuple[int, int]]]:
        rows = self.db.execute(
            "SELECT d.ino, MIN(d.id), COUNT(*) FROM dentries d JOIN inodes i ON i.ino = d.ino "
            "WHERE i.mode & ? = ? GROUP BY d.ino HAVING COUNT(*) > 1",
            (_IFMT, _IFDIR),
        ).fetchall()
        return [
            (f"directory {ino} ({self.path(ino)}) has {count} names", (ino, keep))
            for ino, keep, count in rows
        ]

    def fix_directory_names(self, finding: tuple[int, int]) -> None:
        ino, keep = finding
        self.db.execute("DELETE FROM dentries WHERE ino = ? AND id != ?", (ino, keep))

    def find_opens(self) -> list[Finding[tuple[str, int]]]:
        rows = self.db.execute(
            "SELECT o.session, o.ino, s.id IS NULL, i.ino IS NULL, o.count FROM opens o "
            "LEFT JOIN sessions s ON s.id = o.session LEFT JOIN inodes i ON i.ino = o.ino "
            "WHERE s.id IS NULL OR i.ino IS NULL OR o.count <= 0"
        ).fetchall()
        found: list[Finding[tuple[str, int]]] = []
        for session, ino, no_session, no_inode, count in rows:
            why = "unknown session" if no_session else "missing inode" if no_inode else f"count {count}"
            found.append((f"open of inode {ino} by session {session!r}: {why}", (session, ino)))
        return found

    def fix_open(self, finding: tuple[str, int]) -> None:
        session, ino = finding
        self.db.execute("DELETE FROM opens WHERE session = ? AND ino = ?", (session, ino))

    def find_xattrs(self) -> list[Finding[int]]:
        rows = self.db.execute(
            "SELECT x.ino, COUNT(*) FROM xattrs x LEFT JOIN inodes i ON i.ino = x.ino "
            "WHERE i.ino IS NULL GROUP BY x.ino"
        ).fetchall()
        return [(f"{count} xattrs of missing inode {ino}", ino) for ino, count in rows]

    def fix_xattrs(self, ino: int) -> None:
        self.db.execute("DELETE FROM xattrs WHERE ino = ?", (ino,))

    def find_orphans(self) -> list[Finding[tuple[int, bool]]]:
        # A nameless inode is fine only while it is an unlinked (nlink 0), childless open file.
        rows = self.db.execute(
            "SELECT ino, nlink, mode FROM inodes WHERE ino != ? AND ino NOT IN (SELECT ino FROM dentries) "
            f"AND ino NOT IN ({_INTERNAL_INOS_SQL}) AND (nlink > 0 OR ino IN (SELECT parent FROM dentries))",
            (ROOT_INO,),
        ).fetchall()
        return [
            (f"inode {ino} has nlink {nlink} and children or links, but no name", (ino, _is_dir(mode)))
            for ino, nlink, mode in rows
        ]

    def fix_orphan(self, finding: tuple[int, bool]) -> None:
        self._attach_lost(*finding)

    def _unreachable_dirs(self) -> list[int]:
        return [
            r[0]
            for r in self.db.execute(
                f"WITH RECURSIVE reach(ino) AS (SELECT ?1 UNION {_INTERNAL_INOS_SQL} "
                "UNION SELECT d.ino FROM dentries d JOIN reach r ON d.parent = r.ino) "
                "SELECT i.ino FROM inodes i WHERE i.mode & ?2 = ?3 AND i.ino NOT IN (SELECT ino FROM reach) "
                "AND EXISTS (SELECT 1 FROM dentries d WHERE d.is_dir = 1 AND d.ino = i.ino) ORDER BY i.ino",
                (ROOT_INO, _IFMT, _IFDIR),
            )
        ]

    def find_unreachable(self) -> list[Finding[int]]:
        found: list[Finding[int]] = []
        for ino in self._unreachable_dirs():
            path = self.path(ino)
            if path.endswith("in a cycle>"):
                found.append((f"directory {ino} is reachable from itself (cycle)", ino))
            else:
                found.append((f"directory {ino} ({path}) is unreachable from the root", ino))
        return found

    def fix_unreachable(self, ino: int) -> None:
        # Re-home one directory at a time: each move reconnects its whole subtree (or breaks a
        # cycle), so a directory an earlier move reconnected stays where it is.
        if ino in self._unreachable_dirs():
            self.db.execute("DELETE FROM dentries WHERE is_dir = 1 AND ino = ?", (ino,))
            self._attach_lost(ino, True)

    def _lost_found(self) -> int:
        """The /lost+found directory (created on demand) where repairs re-home detached inodes."""
        name = _LOST_FOUND
        for n in range(1, 1000):
            row = self.db.execute(
                "SELECT d.ino, i.mode FROM dentries d JOIN inodes i ON i.ino = d.ino "
                "WHERE d.parent = ? AND d.name = ?",
                (ROOT_INO, name),
            ).fetchone()
            if row is None:
                return self.store._make(self.now, ROOT_INO, name, _IFDIR | 0o700, 0, 0, size=DIR_SIZE).ino
            if _is_dir(row[1]):
                ino: int = row[0]
                return ino
            name = _LOST_FOUND + b".%d" % n
        raise InternalError("cannot find a name for lost+found")

    def _attach_lost(self, ino: int, is_dir: bool) -> None:
        lost = self._lost_found()
        name = b"#%d" % ino
        suffix = 0
        while self.db.execute(
            "SELECT 1 FROM dentries WHERE parent = ? AND name = ?", (lost, name)
        ).fetchone():
            suffix += 1
            name = b"#%d.%d" % (ino, suffix)
        self.store._add_dentry(lost, name, ino, is_dir)
        self.report(f"repair: inode {ino} re-linked as /{_LOST_FOUND.decode()}/{name.decode()}")

    def find_nlink(self) -> list[Finding[tuple[int, int]]]:
        rows = self.db.execute(
            "SELECT i.ino, i.mode, i.nlink, COALESCE(n.names, 0), COALESCE(s.subdirs, 0) FROM inodes i "
            "LEFT JOIN (SELECT ino, COUNT(*) AS names FROM dentries GROUP BY ino) n ON n.ino = i.ino "
            "LEFT JOIN (SELECT parent, COUNT(*) AS subdirs FROM dentries WHERE is_dir = 1 GROUP BY parent) s "
            "ON s.parent = i.ino"
        ).fetchall()
        roots = {ROOT_INO, *self.store._internal_inos()}
        found: list[Finding[tuple[int, int]]] = []
        for ino, mode, nlink, names, subdirs in rows:
            if _is_dir(mode):
                expected = 2 + subdirs if names or ino in roots else 0
            else:
                expected = names
            if nlink != expected:
                found.append((f"inode {ino} has nlink {nlink}, expected {expected}", (ino, expected)))
        return found

    def fix_nlink(self, finding: tuple[int, int]) -> None:
        ino, expected = finding
        self.db.execute("UPDATE inodes SET nlink = ? WHERE ino = ?", (expected, ino))

    def find_leaks(self) -> list[Finding[int]]:
        rows = self.db.execute(
            "SELECT i.ino FROM inodes i "
            "WHERE i.nlink = 0 AND NOT EXISTS (SELECT 1 FROM opens o WHERE o.ino = i.ino)"
        ).fetchall()
        return [(f"inode {ino} has no links and is not open (leaked)", ino) for (ino,) in rows]

    def fix_leak(self, ino: int) -> None:
        self.store._purge(ino, self.now)

    def find_volumes(self) -> list[Finding[str]]:
        rows = self.db.execute(
            "SELECT v.name, v.ino FROM volumes v WHERE NOT EXISTS (SELECT 1 FROM dentries d "
            "JOIN inodes i ON i.ino = d.ino WHERE d.parent = ? AND d.name = CAST(v.name AS BLOB) "
            "AND d.ino = v.ino AND i.mode & ? = ?)",
            (ROOT_INO, _IFMT, _IFDIR),
        ).fetchall()
        return [
            (f"volume {name!r} names inode {ino}, which is not the top-level directory {name!r}", name)
            for name, ino in rows
        ]

    def fix_volume(self, name: str) -> None:
        self.db.execute("DELETE FROM volumes WHERE name = ?", (name,))

    def find_snapshots(self) -> list[Finding[tuple[str, str]]]:
        """Registry rows (daemon/meta/snapshots.py) whose top is no read-only directory named
        NAME in /.snapshots/VOLUME (the tree went, or was never made)."""
        rows = self.db.execute(
            "SELECT s.volume, s.name, s.ino FROM snapshots s WHERE NOT EXISTS (SELECT 1 FROM dentries d "
            "JOIN inodes i ON i.ino = d.ino WHERE d.ino = s.ino AND d.name = CAST(s.name AS BLOB) "
            "AND i.mode & ? = ? AND i.mode & ? != 0)",
            (_IFMT, _IFDIR, READ_ONLY),
        ).fetchall()
        return [
            (
                f"snapshot {name!r} of volume {volume!r} names inode {ino}, which is not its tree",
                (volume, name),
            )
            for volume, name, ino in rows
        ]

    def fix_snapshot(self, key: tuple[str, str]) -> None:
        self.db.execute("DELETE FROM snapshots WHERE volume = ? AND name = ?", key)

    def find_trash(self) -> list[Finding[tuple[str, int, int]]]:
        """Each ``trash`` row's inode is a non-directory at trash/<volume>/<ino>, and each file
        at trash/<digits>/<ino> has a row (daemon/meta/trash.py)."""
        row = self.db.execute("SELECT value FROM config WHERE key = ?", (_INTERNAL_KEY + "trash",)).fetchone()
        if row is None:
            return []  # the internal_roots check reports (and makes) it
        root = int(row[0])
        found: list[Finding[tuple[str, int, int]]] = []
        for ino, vol in self.db.execute(
            "SELECT t.ino, t.volume FROM trash t WHERE NOT EXISTS (SELECT 1 FROM dentries d "
            "JOIN dentries v ON v.ino = d.parent AND v.parent = ? AND v.is_dir = 1 "
            "JOIN inodes i ON i.ino = d.ino WHERE d.ino = t.ino AND d.is_dir = 0 "
            "AND v.name = CAST(CAST(t.volume AS TEXT) AS BLOB) AND i.mode & ? != ?) LIMIT 1000",
            (root, _IFMT, _IFDIR),
        ).fetchall():
            found.append((f"trash entry {ino} of volume {vol} is not in the trash", ("drop", int(ino), 0)))
        for ino, vname in self.db.execute(
            "SELECT d.ino, v.name FROM dentries v JOIN dentries d ON d.parent = v.ino "
            "WHERE v.parent = ? AND v.is_dir = 1 AND d.is_dir = 0 "
            "AND NOT EXISTS (SELECT 1 FROM trash t WHERE t.ino = d.ino) LIMIT 1000",
            (root,),
        ).fetchall():
            name = bytes(vname)
            if name.isdigit():
                found.append(
                    (
                        f"{self.path(int(ino))}: in the trash without a trash entry",
                        ("attach", int(ino), int(name)),
                    )
                )
        return found

    def fix_trash(self, finding: tuple[str, int, int]) -> None:
        """Drop a row whose inode left the trash; give a file found there a row (no original
        location: it can only be restored with --to)."""
        what, ino, vol = finding
        if what == "drop":
            self.db.execute("DELETE FROM trash WHERE ino = ?", (ino,))
            return
        self.db.execute(
            "INSERT INTO trash (ino, volume, parent, name, deleted_ns, size) "
            "SELECT ino, ?, 0, CAST(CAST(ino AS TEXT) AS BLOB), ?, size FROM inodes WHERE ino = ?",
            (vol, self.now, ino),
        )

    def find_versions(self) -> list[Finding[tuple[str, int]]]:
        """Each ``s3_versions`` row with an inode names a regular file at versions/<ino>, and each
        file at versions/ has a row (daemon/meta/versions.py)."""
        row = self.db.execute(
            "SELECT value FROM config WHERE key = ?", (_INTERNAL_KEY + "versions",)
        ).fetchone()
        if row is None:
            return []  # the internal_roots check reports (and makes) it
        root = int(row[0])
        found: list[Finding[tuple[str, int]]] = []
        for ino, key in self.db.execute(
            "SELECT s.ino, s.key FROM s3_versions s WHERE s.ino IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent = ? AND d.ino = s.ino "
            "AND d.is_dir = 0 AND i.mode & ? = ?) LIMIT 1000",
            (root, _IFMT, _IFREG),
        ).fetchall():
            text = bytes(key).decode("utf-8", "replace")
            found.append((f"version {ino} of key {text!r} is not in versions/", ("drop", int(ino))))
        for (ino,) in self.db.execute(
            "SELECT d.ino FROM dentries d WHERE d.parent = ? "
            "AND NOT EXISTS (SELECT 1 FROM s3_versions s WHERE s.ino = d.ino) LIMIT 1000",
            (root,),
        ).fetchall():
            found.append((f"{self.path(int(ino))}: in versions/ without a version row", ("unlink", int(ino))))
        return found

    def find_object_locks(self) -> list[Finding[tuple[str, int]]]:
        """Each ``s3_object_locks`` row belongs to a regular file that carries the LOCKED flag
        (daemon/meta/objlock.py; a flag without a row locks nothing and is no finding)."""
        found: list[Finding[tuple[str, int]]] = []
        for ino, mode in self.db.execute(
            "SELECT o.ino, i.mode FROM s3_object_locks o LEFT JOIN inodes i ON i.ino = o.ino "
            "WHERE i.ino IS NULL OR i.mode & ? != ? OR i.mode & ? = 0 LIMIT 1000",
            (_IFMT, _IFREG, LOCKED),
        ).fetchall():
            if mode is None or int(mode) & _IFMT != _IFREG:
                found.append((f"object lock of inode {ino}, which is no regular file", ("drop", int(ino))))
            else:
                found.append((f"{self.path(int(ino))}: object lock without its flag", ("flag", int(ino))))
        return found

    def fix_object_locks(self, finding: tuple[str, int]) -> None:
        """Drop a lock whose file is gone; flag a locked file (the lock holds, as recorded)."""
        what, ino = finding
        if what == "drop":
            self.db.execute("DELETE FROM s3_object_locks WHERE ino = ?", (ino,))
        else:
            self.db.execute("UPDATE inodes SET mode = mode | ? WHERE ino = ?", (LOCKED, ino))

    def fix_versions(self, finding: tuple[str, int]) -> None:
        """Drop a row whose inode is gone from versions/; a file there without a row loses that
        name (the nlink check then purges or keeps it)."""
        what, ino = finding
        if what == "drop":
            self.db.execute("DELETE FROM s3_versions WHERE ino = ?", (ino,))
            return
        root = self.db.execute(
            "SELECT value FROM config WHERE key = ?", (_INTERNAL_KEY + "versions",)
        ).fetchone()
        self.db.execute("DELETE FROM dentries WHERE parent = ? AND ino = ?", (int(root[0]), ino))

    # -- data -----------------------------------------------------------------------------

    def find_stray_blocks(self) -> list[Finding[int]]:
        rows = self.db.execute(
            "SELECT b.ino, COUNT(*) FROM blocks b LEFT JOIN inodes i ON i.ino = b.ino "
            "WHERE i.ino IS NULL OR i.mode & ? != ? GROUP BY b.ino",
            (_IFMT, _IFREG),
        ).fetchall()
        return [
            (f"{count} block entries of inode {ino}, which is missing or not a regular file", ino)
            for ino, count in rows
        ]

    def fix_stray_blocks(self, ino: int) -> None:
        self.store._drop_blocks(ino, 0, self.now)

    def find_blocks_beyond_size(self) -> list[Finding[tuple[int, int]]]:
        rows = self.db.execute(
            "SELECT b.ino, b.idx, i.size FROM blocks b JOIN inodes i ON i.ino = b.ino "
            "WHERE b.idx * ? >= i.size",
            (self.store._block_size,),
        ).fetchall()
        return [
            (f"inode {ino} ({self.path(ino)}): block {idx} lies beyond size {size}", (ino, idx))
            for ino, idx, size in rows
        ]

    def fix_block(self, finding: tuple[int, int]) -> None:
        ino, idx = finding
        self.store._drop_block(ino, idx, self.now)

    def find_block_lengths(self) -> list[Finding[tuple[int, int]]]:
        rows = self.db.execute(
            "SELECT ino, idx, length FROM blocks WHERE length < 0 OR length > ?", (self.store._block_size,)
        ).fetchall()
        return [
            (f"inode {ino}: block {idx} has invalid length {length}", (ino, idx)) for ino, idx, length in rows
        ]

    def fix_block_length(self, finding: tuple[int, int]) -> None:
        ino, idx = finding
        self.db.execute(
            "UPDATE blocks SET length = CASE WHEN length < 0 THEN 0 WHEN length > ?1 THEN ?1 ELSE length END "
            "WHERE ino = ?2 AND idx = ?3",
            (self.store._block_size, ino, idx),
        )

    def find_missing_chunk_rows(self) -> list[Finding[tuple[bytes, int]]]:
        rows = self.db.execute(
            "SELECT b.chunk_id, COUNT(*), MAX(b.stored_bytes) FROM blocks b "
            "LEFT JOIN chunks c ON c.chunk_id = b.chunk_id WHERE c.chunk_id IS NULL GROUP BY b.chunk_id"
        ).fetchall()
        return [
            (
                f"chunk {chunk_id.hex()} is named by {count} block entries but has no chunks row",
                (chunk_id, stored_bytes),
            )
            for chunk_id, count, stored_bytes in rows
        ]

    def fix_missing_chunk_row(self, finding: tuple[bytes, int]) -> None:
        chunk_id, stored_bytes = finding
        if self.is_stored(chunk_id):
            # The refcount check below sets the right count; unstored ones become holes next.
            self.db.execute(
                "INSERT INTO chunks (chunk_id, refcount, stored_bytes, zero_since_ns) VALUES (?, 0, ?, ?)",
                (chunk_id, stored_bytes, self.now),
            )

    def find_dangling_blocks(self) -> list[Finding[tuple[int, list[int]]]]:
        lost: dict[int, list[tuple[int, bytes]]] = {}
        for ino, idx, chunk_id in self.db.execute("SELECT ino, idx, chunk_id FROM blocks").fetchall():
            if not self.is_stored(chunk_id):
                lost.setdefault(ino, []).append((idx, chunk_id))
        found: list[Finding[tuple[int, list[int]]]] = []
        for ino, entries in lost.items():
            first_idx, first_chunk = entries[0]
            line = (
                f"inode {ino} ({self.path(ino)}): {len(entries)} blocks name missing chunks "
                f"(first: block {first_idx}, chunk {first_chunk.hex()})"
            )
            found.append((line, (ino, [idx for idx, _ in entries])))
        return found

    def fix_dangling_blocks(self, finding: tuple[int, list[int]]) -> None:
        ino, indexes = finding
        for idx in indexes:
            self.store._drop_block(ino, idx, self.now)
        self.report(f"repair: inode {ino}: {len(indexes)} blocks turned into holes")

    def find_inline(self) -> list[Finding[tuple[int, str]]]:
        rows = self.db.execute(
            "SELECT i.ino, i.mode, i.size, length(i.inline), "
            "EXISTS (SELECT 1 FROM blocks b WHERE b.ino = i.ino) FROM inodes i WHERE i.inline IS NOT NULL"
        ).fetchall()
        found: list[Finding[tuple[int, str]]] = []
        for ino, mode, size, length, has_blocks in rows:
            if mode & _IFMT != _IFREG:
                found.append((f"inode {ino}: inline data on a non-regular file", (ino, "NULL")))
            elif has_blocks:
                line = f"inode {ino} ({self.path(ino)}): both inline data and blocks; dropping inline data"
                found.append((line, (ino, "NULL")))
            elif length > size:
                line = f"inode {ino} ({self.path(ino)}): {length} bytes of inline data exceed size {size}"
                found.append((line, (ino, "substr(inline, 1, CAST(size AS INT))")))
        return found

    def fix_inline(self, finding: tuple[int, str]) -> None:
        ino, expr = finding  # the SQL expression of the inline data to keep
        self.db.execute(
            "UPDATE inodes SET stored = stored - COALESCE(length(inline), 0) "
            f"+ COALESCE(length({expr}), 0), "
            f"inline = {expr} WHERE ino = ?",
            (ino,),
        )

    def find_stored_totals(self) -> list[Finding[tuple[int, int]]]:
        rows = self.db.execute(
            "SELECT ino, stored, actual FROM (SELECT i.ino, i.stored, COALESCE(length(i.inline), 0) + "
            "(SELECT COALESCE(SUM(b.stored_bytes), 0) FROM blocks b WHERE b.ino = i.ino) AS actual "
            "FROM inodes i) t WHERE stored != actual"
        ).fetchall()
        return [
            (f"inode {ino}: stored bytes {recorded}, actual {actual}", (ino, actual))
            for ino, recorded, actual in rows
        ]

    def fix_stored_total(self, finding: tuple[int, int]) -> None:
        ino, actual = finding
        self.db.execute("UPDATE inodes SET stored = ? WHERE ino = ?", (actual, ino))

    def find_refcounts(self) -> list[Finding[tuple[bytes, int]]]:
        rows = self.db.execute(
            "SELECT c.chunk_id, c.refcount, c.zero_since_ns IS NOT NULL, COALESCE(b.n, 0) FROM chunks c "
            "LEFT JOIN (SELECT chunk_id, COUNT(*) AS n FROM blocks GROUP BY chunk_id) b "
            "ON b.chunk_id = c.chunk_id "
            "WHERE c.refcount != COALESCE(b.n, 0) OR (c.refcount = 0) != (c.zero_since_ns IS NOT NULL)"
        ).fetchall()
        found: list[Finding[tuple[bytes, int]]] = []
        for chunk_id, refcount, zero_marked, actual in rows:
            if refcount != actual:
                line = f"chunk {chunk_id.hex()} has refcount {refcount}, but {actual} block entries"
            else:
                state = "marked" if zero_marked else "not marked"
                line = f"chunk {chunk_id.hex()} with refcount {refcount} is {state} unreferenced"
            found.append((line, (chunk_id, actual)))
        return found

    # -- quotas ------------------------------------------------------------------------

    def find_quota_chains(self) -> list[Finding[None]]:
        """``quota_chain`` is the closure of the domains' parent pointers."""
        parents = {int(r[0]): r[1] for r in self.db.execute("SELECT ino, parent FROM quotas")}
        expected: set[tuple[int, int]] = set()
        for q in parents:
            cur: int | None = q
            seen: set[int] = set()
            while cur is not None and cur in parents and cur not in seen:
                seen.add(cur)
                expected.add((q, cur))
                cur = parents[cur]
        found = {(int(q), int(a)) for q, a in self.db.execute("SELECT q, a FROM quota_chain")}
        if found == expected:
            return []
        return [(f"quota nesting table: {len(found ^ expected)} row(s) wrong", None)]

    def fix_quota_chains(self, _: None) -> None:
        """Rebuild the closure (usage is recomputed by the usage check after it)."""
        self.db.execute("DELETE FROM quota_chain")
        self.db.execute(
            "INSERT INTO quota_chain WITH RECURSIVE c(q, a) AS (SELECT ino, ino FROM quotas "
            "UNION SELECT c.q, p.parent FROM c JOIN quotas p ON p.ino = c.a WHERE p.parent IS NOT NULL "
            "AND p.parent IN (SELECT ino FROM quotas)) SELECT q, a FROM c"
        )

    def find_quota_assignment(self) -> list[Finding[tuple[int, int | None]]]:
        """Each directory and singly linked file is charged to its parent's domain (a domain's
        own directory to itself).  A file with names in two domains may be charged to either."""
        rows = self.db.execute(
            "SELECT d.ino, c.quota, CASE WHEN q.ino IS NULL THEN p.quota ELSE d.ino END FROM dentries d "
            "JOIN inodes c ON c.ino = d.ino JOIN inodes p ON p.ino = d.parent "
            "LEFT JOIN quotas q ON q.ino = d.ino WHERE (d.is_dir = 1 OR c.nlink = 1) AND c.quota IS "
            "DISTINCT FROM (CASE WHEN q.ino IS NULL THEN p.quota ELSE d.ino END) LIMIT 1000"
        ).fetchall()
        return [
            (f"{self.path(ino)}: charged to quota domain {now}, expected {want}", (ino, want))
            for ino, now, want in rows
        ]

    def fix_quota_assignment(self, finding: tuple[int, int | None]) -> None:
        self._recharge(*finding)

    def _recharge(self, ino: int, want: int | None) -> None:
        """Charge inode ``ino`` to domain ``want``; the triggers move its usage.  They refuse growth
        past a limit, and a repair must go through: the receiving domains' limits are lifted for
        this one statement."""
        saved = self.db.execute(
            "SELECT ino, max_bytes, max_inodes FROM quotas "
            "WHERE ino IN (SELECT a FROM quota_chain WHERE q = ?)",
            (want,),
        ).fetchall()
        self.db.executemany(
            "UPDATE quotas SET max_bytes = NULL, max_inodes = NULL WHERE ino = ?", [(r[0],) for r in saved]
        )
        self.db.execute("UPDATE inodes SET quota = ? WHERE ino = ?", (want, ino))
        self.db.executemany(
            "UPDATE quotas SET max_bytes = ?, max_inodes = ? WHERE ino = ?",
            [(r[1], r[2], r[0]) for r in saved],
        )

    def find_quota_domains(self) -> list[Finding[int]]:
        """Inodes charged to a domain that does not exist (their usage is counted nowhere)."""
        rows = self.db.execute(
            "SELECT i.ino, i.quota FROM inodes i WHERE i.quota IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM quotas q WHERE q.ino = i.quota) LIMIT 1000"
        ).fetchall()
        return [(f"{self.path(ino)}: charged to missing quota domain {q}", ino) for ino, q in rows]

    def fix_quota_domain(self, ino: int) -> None:
        # The domain of its (first) parent directory, or none.
        row = self.db.execute(
            "SELECT p.quota FROM dentries d JOIN inodes p ON p.ino = d.parent WHERE d.ino = ? "
            "ORDER BY d.id LIMIT 1",
            (ino,),
        ).fetchone()
        self._recharge(ino, None if row is None else row[0])

    def find_quota_usage(self) -> list[Finding[tuple[int, tuple[int, int, int]]]]:
        """Each domain's recorded usage against the sum over the inodes charged to it and its
        nested domains (the triggers of daemon/meta/quotas.py keep it; this catches drift)."""
        return [
            (
                f"quota domain {self.path(ino)}: usage (bytes, inodes, stored) recorded {recorded}, "
                f"actual {actual}",
                (ino, actual),
            )
            for ino, recorded, actual in usage_mismatches(self.db)
        ]

    def fix_quota_usage(self, finding: tuple[int, tuple[int, int, int]]) -> None:
        set_usage(self.db, *finding)

    def find_tier_rows(self) -> list[Finding[tuple[str, bytes, str]]]:
        """Cloud-tier bookkeeping (daemon/meta/tiers.py): a cold chunk has a copy in some tier,
        copies name defined tiers and chunks metadata knows."""
        out: list[Finding[tuple[str, bytes, str]]] = []
        for (cid,) in self.db.execute(
            "SELECT c.chunk_id FROM tier_cold c WHERE NOT EXISTS "
            "(SELECT 1 FROM tier_copies t WHERE t.chunk_id = c.chunk_id)"
        ).fetchall():
            out.append((f"cold chunk {bytes(cid).hex()} has no copy in any tier", ("cold", bytes(cid), "")))
        for cid, tier in self.db.execute(
            "SELECT chunk_id, tier FROM tier_copies t "
            "WHERE NOT EXISTS (SELECT 1 FROM tiers d WHERE d.name = t.tier) "
            "OR NOT EXISTS (SELECT 1 FROM chunks c WHERE c.chunk_id = t.chunk_id)"
        ).fetchall():
            line = f"copy of chunk {bytes(cid).hex()} in tier {tier!r}: unknown tier or chunk"
            out.append((line, ("copy", bytes(cid), str(tier))))
        return out

    def fix_tier_row(self, finding: tuple[str, bytes, str]) -> None:
        kind, cid, tier = finding
        if kind == "cold":
            # Whatever copies survive locally are all there is: make it an ordinary chunk again.
            self.db.execute("DELETE FROM tier_cold WHERE chunk_id = ?", (cid,))
        else:
            self.db.execute("DELETE FROM tier_copies WHERE chunk_id = ? AND tier = ?", (cid, tier))
            if self.db.execute("SELECT 1 FROM tiers WHERE name = ?", (tier,)).fetchone() is not None:
                self.db.execute(
                    "INSERT INTO tier_deletions (chunk_id, tier, queued_ns) VALUES (?, ?, ?) "
                    "ON CONFLICT (chunk_id, tier) DO NOTHING",
                    (cid, tier, self.now),
                )

    def fix_refcount(self, finding: tuple[bytes, int]) -> None:
        chunk_id, actual = finding
        self.db.execute(
            "UPDATE chunks SET refcount = ?1, zero_since_ns = CASE WHEN ?1 > 0 THEN NULL "
            "ELSE COALESCE(zero_since_ns, ?2) END WHERE chunk_id = ?3",
            (actual, self.now, chunk_id),
        )


# In dependency order: each check sees the repairs of the ones before it.
_CHECKS: tuple[_Check[Any], ...] = (
    _Check("root", _Fsck.find_root, _Fsck.fix_root),
    _Check("internal_roots", _Fsck.find_internal_roots, _Fsck.fix_internal_root),
    _Check("dangling_dentries", _Fsck.find_dangling_dentries, _Fsck.fix_dangling_dentry),
    _Check("dentry_kinds", _Fsck.find_dentry_kinds, _Fsck.fix_dentry_kind),
    _Check("directory_names", _Fsck.find_directory_names, _Fsck.fix_directory_names),
    _Check("opens", _Fsck.find_opens, _Fsck.fix_open),
    _Check("xattrs", _Fsck.find_xattrs, _Fsck.fix_xattrs),
    _Check("orphans", _Fsck.find_orphans, _Fsck.fix_orphan),
    _Check("reachability", _Fsck.find_unreachable, _Fsck.fix_unreachable, deferred=True),
    _Check("nlink", _Fsck.find_nlink, _Fsck.fix_nlink),
    _Check("leaks", _Fsck.find_leaks, _Fsck.fix_leak),
    _Check("volumes", _Fsck.find_volumes, _Fsck.fix_volume),
    _Check("trash", _Fsck.find_trash, _Fsck.fix_trash),
    _Check("versions", _Fsck.find_versions, _Fsck.fix_versions),
    _Check("object_locks", _Fsck.find_object_locks, _Fsck.fix_object_locks),
    _Check("snapshots", _Fsck.find_snapshots, _Fsck.fix_snapshot),
    _Check("stray_blocks", _Fsck.find_stray_blocks, _Fsck.fix_stray_blocks),
    _Check("blocks_beyond_size", _Fsck.find_blocks_beyond_size, _Fsck.fix_block),
    _Check("block_lengths", _Fsck.find_block_lengths, _Fsck.fix_block_length),
    _Check("missing_chunk_rows", _Fsck.find_missing_chunk_rows, _Fsck.fix_missing_chunk_row),
    _Check("dangling_blocks", _Fsck.find_dangling_blocks, _Fsck.fix_dangling_blocks),
    _Check("inline", _Fsck.find_inline, _Fsck.fix_inline),
    _Check("stored_totals", _Fsck.find_stored_totals, _Fsck.fix_stored_total),
    _Check("refcounts", _Fsck.find_refcounts, _Fsck.fix_refcount),
    _Check("tier_rows", _Fsck.find_tier_rows, _Fsck.fix_tier_row),
    # Last: every repair above that purged or changed an inode moved its usage already.
    _Check("quota_chains", _Fsck.find_quota_chains, _Fsck.fix_quota_chains),
    _Check("quota_domains", _Fsck.find_quota_domains, _Fsck.fix_quota_domain),
    _Check("quota_assignment", _Fsck.find_quota_assignment, _Fsck.fix_quota_assignment),
    _Check("quota_usage", _Fsck.find_quota_usage, _Fsck.fix_quota_usage),
)
