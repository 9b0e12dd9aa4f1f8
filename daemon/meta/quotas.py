"""Directory quotas (bytes and inodes) and the per-domain usage they are checked against.

The model is XFS's project quotas.  A *quota domain* is a directory with a
``quotas`` row (any directory; a volume's domain is its top-level directory,
and every volume has a row, limits or not, so its usage is always known).
Each inode records in ``inodes.quota`` the domain it was created in: the
nearest ancestor directory with a row (a domain's own directory is in its own
domain).  ``quota_chain`` is the closure of the nesting: ``(q, a)`` for every
domain ``q`` and each domain ``a`` it lies in, itself included.

Usage (``used_bytes``: the sum of regular files' st_size; ``used_inodes``;
``used_stored_bytes``: the sum of ``inodes.stored``, after compression) is kept
by triggers on ``inodes`` (:data:`SQLITE_TRIGGERS`, :data:`PG_TRIGGERS`), so
every path that creates, grows, shrinks, moves or purges an inode (commits,
truncates, S3 puts, snapshots, bulk removals, fsck repairs) accounts without
knowing it, incrementally, in its own transaction.  The same trigger refuses a
change that *grows* a domain past a limit (``dfs: quota exceeded``, mapped to
:class:`dfs.core.errors.QuotaExceeded` by ``daemon.meta.base._db_error``):
usage never exceeds a limit, and since the check runs inside the writer's
transaction, two racing writers cannot both pass it.  Shrinking and deleting
are always allowed; a limit set below the usage refuses growth only.

Moving an inode between domains (rename, hard link) is refused with EXDEV, as
XFS does for project quotas: ``mv`` then copies.  Setting a quota on a
directory walks its subtree once (one transaction, work proportional to the
subtree: every inode is re-assigned, nested domains are re-parented);
clearing one walks it again to give its inodes back to the enclosing domain.
"""

from __future__ import annotations

from typing import Any

from daemon.meta.base import _api, _pack_dict, _unpack_dict
from daemon.meta.engine import Db
from daemon.meta.inodes import Inodes, _check_writable, _is_dir
from dfs.core.errors import CrossDevice, InvalidArgument, NotADirectory, NotFound
from dfs.core.namespace import ROOT_INO
from dfs.core.quotas import QUOTA_XATTRS, xattr_value

# The message the triggers raise; daemon.meta.base._db_error turns it into QuotaExceeded.
QUOTA_EXCEEDED_MESSAGE = "dfs: quota exceeded"
# Limits are stored in signed 64-bit columns.
MAX_LIMIT = 2**63 - 1
_FIELDS = ("max_bytes", "max_inodes", "used_bytes", "used_inodes", "used_stored_bytes")
_REG = "61440"  # S_IFMT; spelled as numbers: PostgreSQL function bodies take no parameters
_IFREG = "32768"


def _file_bytes(row: str) -> str:
    """A row's logical bytes: st_size of a regular file, 0 for anything else."""
    return f"(CASE WHEN {row}.mode & {_REG} = {_IFREG} THEN {row}.size ELSE 0 END)"


def _chain(q: str) -> str:
    return f"(SELECT a FROM quota_chain WHERE q = {q})"


def _account(old: tuple[str, str, str, str], new: tuple[str, str, str, str]) -> tuple[str, str]:
    """(the UPDATE that moves one inode's usage from its old to its new state, the condition that
    it grew a domain past a limit).  Each state is (domain, bytes, stored, inodes) as SQL; a
    domain in both chains gets the difference, so a move within a chain changes nothing there."""
    oq, ob, os_, oi = old
    nq, nb, ns, ni = new

    def delta(n: str, o: str) -> str:
        return (
            f"(CASE WHEN ino IN {_chain(nq)} THEN {n} ELSE 0 END) - "
            f"(CASE WHEN ino IN {_chain(oq)} THEN {o} ELSE 0 END)"
        )

    update = (
        f"UPDATE quotas SET used_bytes = used_bytes + {delta(nb, ob)}, "
        f"used_stored_bytes = used_stored_bytes + {delta(ns, os_)}, "
        f"used_inodes = used_inodes + {delta(ni, oi)} "
        f"WHERE ino IN (SELECT a FROM quota_chain WHERE q = {nq} OR q = {oq})"
    )
    exceeded = (
        f"EXISTS (SELECT 1 FROM quotas WHERE ino IN {_chain(nq)} AND ("
        f"(max_bytes IS NOT NULL AND used_bytes > max_bytes AND "
        f"{nb} > (CASE WHEN ino IN {_chain(oq)} THEN {ob} ELSE 0 END)) OR "
        f"(max_inodes IS NOT NULL AND used_inodes > max_inodes AND "
        f"{ni} > (CASE WHEN ino IN {_chain(oq)} THEN {oi} ELSE 0 END))))"
    )
    return update, exceeded


def _detach(d: str) -> list[str]:
    """The statements that drop domain ``d`` when its directory is purged: its remaining usage
    leaves the enclosing domains (its inodes purged later then touch only ``d``'s chain, which is
    gone), and nested domains stop counting into the enclosing ones."""
    return [
        "UPDATE quotas SET "
        f"used_bytes = used_bytes - (SELECT x.used_bytes FROM quotas x WHERE x.ino = {d}), "
        f"used_inodes = used_inodes - (SELECT x.used_inodes FROM quotas x WHERE x.ino = {d}), "
        "used_stored_bytes = used_stored_bytes - "
        f"(SELECT x.used_stored_bytes FROM quotas x WHERE x.ino = {d}) "
        f"WHERE ino IN (SELECT a FROM quota_chain WHERE q = {d} AND a != {d})",
        f"DELETE FROM quota_chain WHERE q IN (SELECT c.q FROM quota_chain c WHERE c.a = {d}) "
        f"AND a IN (SELECT c.a FROM quota_chain c WHERE c.q = {d})",
        f"UPDATE quotas SET parent = NULL WHERE parent = {d}",
        f"DELETE FROM quotas WHERE ino = {d}",
    ]


def _delta(q: str, db: str, ds: str, di: str) -> tuple[str, str]:
    """The hot paths (an inode created, grown, shrunk or purged within one domain): add the
    deltas to the domain's chain; the condition that they grew a domain past a limit."""
    update = (
        f"UPDATE quotas SET used_bytes = used_bytes + {db}, used_stored_bytes = used_stored_bytes + {ds}, "
        f"used_inodes = used_inodes + {di} WHERE ino IN {_chain(q)}"
    )
    exceeded = (
        f"({db} > 0 OR {di} > 0) AND EXISTS (SELECT 1 FROM quotas WHERE ino IN {_chain(q)} AND ("
        f"({db} > 0 AND max_bytes IS NOT NULL AND used_bytes > max_bytes) OR "
        f"({di} > 0 AND max_inodes IS NOT NULL AND used_inodes > max_inodes)))"
    )
    return update, exceeded


def _sqlite_triggers() -> tuple[str, ...]:
    old_b, new_b = _file_bytes("OLD"), _file_bytes("NEW")
    ins_update, ins_exceeded = _delta("NEW.quota", new_b, "NEW.stored", "1")
    same_update, same_exceeded = _delta("NEW.quota", f"{new_b} - {old_b}", "NEW.stored - OLD.stored", "0")
    move_update, move_exceeded = _account(
        ("OLD.quota", old_b, "OLD.stored", "1"), ("NEW.quota", new_b, "NEW.stored", "1")
    )
    del_update, _ = _delta("OLD.quota", f"-{old_b}", "-OLD.stored", "-1")
    raise_ = f"SELECT RAISE(ABORT, '{QUOTA_EXCEEDED_MESSAGE}') WHERE"
    return (
        "CREATE TRIGGER IF NOT EXISTS quota_insert AFTER INSERT ON inodes "
        f"WHEN NEW.quota IS NOT NULL BEGIN {ins_update}; {raise_} {ins_exceeded}; END",
        "CREATE TRIGGER IF NOT EXISTS quota_update AFTER UPDATE OF size, stored, mode, quota ON inodes "
        f"WHEN NEW.quota IS NOT NULL AND OLD.quota = NEW.quota AND ({old_b} != {new_b} OR "
        f"OLD.stored != NEW.stored) BEGIN {same_update}; {raise_} {same_exceeded}; END",
        "CREATE TRIGGER IF NOT EXISTS quota_move AFTER UPDATE OF quota ON inodes "
        f"WHEN OLD.quota IS NOT NEW.quota BEGIN {move_update}; {raise_} {move_exceeded}; END",
        "CREATE TRIGGER IF NOT EXISTS quota_delete AFTER DELETE ON inodes "
        f"WHEN OLD.quota IS NOT NULL BEGIN {del_update}; END",
        "CREATE TRIGGER IF NOT EXISTS quota_detach AFTER DELETE ON inodes "
        "WHEN EXISTS (SELECT 1 FROM quotas WHERE ino = OLD.ino) "
        f"BEGIN {'; '.join(_detach('OLD.ino'))}; END",
    )


_SQLITE_TRIGGER_NAMES = ("quota_insert", "quota_update", "quota_move", "quota_delete", "quota_detach")


def _pg_triggers() -> tuple[str, ...]:
    move_update, move_exceeded = _account(("v_oq", "v_ob", "v_os", "1"), ("v_nq", "v_nb", "v_ns", "1"))
    same_update, same_exceeded = _delta("v_nq", "v_nb - v_ob", "v_ns - v_os", "0")
    ins_update, ins_exceeded = _delta("v_nq", "v_nb", "v_ns", "1")
    del_update, _ = _delta("v_oq", "-v_ob", "-v_os", "-1")
    raise_ = f"RAISE EXCEPTION '{QUOTA_EXCEEDED_MESSAGE}'"
    detach = "; ".join(_detach("OLD.ino"))
    body = (
        "DECLARE v_oq BIGINT; v_nq BIGINT; v_ob BIGINT := 0; v_nb BIGINT := 0; "
        "v_os BIGINT := 0; v_ns BIGINT := 0; "
        "BEGIN "
        "IF TG_OP <> 'INSERT' THEN v_oq := OLD.quota; "
        f"v_ob := {_file_bytes('OLD')}; v_os := OLD.stored; END IF; "
        "IF TG_OP <> 'DELETE' THEN v_nq := NEW.quota; "
        f"v_nb := {_file_bytes('NEW')}; v_ns := NEW.stored; END IF; "
        # The hot paths first: one domain, or an inode made or purged.
        "IF TG_OP = 'UPDATE' AND v_oq = v_nq THEN "
        f"IF v_ob <> v_nb OR v_os <> v_ns THEN {same_update}; "
        f"IF {same_exceeded} THEN {raise_}; END IF; END IF; "
        "ELSIF TG_OP = 'INSERT' THEN "
        f"IF v_nq IS NOT NULL THEN {ins_update}; IF {ins_exceeded} THEN {raise_}; END IF; END IF; "
        "ELSIF TG_OP = 'DELETE' THEN "
        f"IF v_oq IS NOT NULL THEN {del_update}; END IF; "
        "IF EXISTS (SELECT 1 FROM quotas WHERE ino = OLD.ino) THEN "
        f"{detach}; END IF; "
        "ELSIF v_oq IS DISTINCT FROM v_nq THEN "
        f"{move_update}; IF v_nq IS NOT NULL AND {move_exceeded} THEN {raise_}; END IF; "
        "END IF; "
        "RETURN NULL; END"
    )
    return (
        "CREATE OR REPLACE FUNCTION dfs_quota_account() RETURNS trigger LANGUAGE plpgsql AS $dfs$ "
        f"{body} $dfs$",
        "CREATE OR REPLACE TRIGGER quota_account AFTER INSERT OR DELETE OR UPDATE OF size, stored, mode, "
        "quota ON inodes FOR EACH ROW EXECUTE FUNCTION dfs_quota_account()",
    )


SQLITE_TRIGGERS = _sqlite_triggers()
PG_TRIGGERS = _pg_triggers()


def create_triggers(db: Db) -> None:
    """Install the accounting triggers, or replace them when their definition changed, inside
    ensure_tables's transaction.  Unchanged ones are left alone: every store (readers too) runs
    this at open, and DDL would make every other connection prepare its statements again."""
    if db.engine == "sqlite":
        found = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall())
        wanted = dict(zip(_SQLITE_TRIGGER_NAMES, SQLITE_TRIGGERS, strict=True))
        for name, statement in wanted.items():
            # SQLite keeps the statement without its IF NOT EXISTS.
            if found.get(name) != statement.replace(" IF NOT EXISTS", "", 1):
                db.execute(f"DROP TRIGGER IF EXISTS {name}")
                db.execute(statement)
        return
    function, trigger = PG_TRIGGERS
    row = db.execute(
        "SELECT p.prosrc, EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgname = 'quota_account' "
        "AND t.tgrelid = 'inodes'::regclass) FROM pg_proc p WHERE p.proname = 'dfs_quota_account' "
        "AND p.pronamespace = current_schema()::regnamespace"
    ).fetchone()
    body = function.split("$dfs$")[1]
    if row is None or row[0] != body or not row[1]:
        db.execute(function)
        db.execute(trigger)


# What each domain's usage is, from the inodes themselves (fsck, dump loads).
_ACTUAL = (
    "SELECT q.ino, COALESCE(SUM(t.b), 0), COALESCE(SUM(t.n), 0), COALESCE(SUM(t.s), 0) FROM quotas q "
    "LEFT JOIN quota_chain c ON c.a = q.ino LEFT JOIN (SELECT quota, "
    f"SUM(CASE WHEN mode & {_REG} = {_IFREG} THEN size ELSE 0 END) AS b, COUNT(*) AS n, "
    "SUM(stored) AS s FROM inodes WHERE quota IS NOT NULL GROUP BY quota) t ON t.quota = c.q "
    "GROUP BY q.ino"
)


def usage_mismatches(db: Db) -> list[tuple[int, tuple[int, int, int], tuple[int, int, int]]]:
    """(domain, recorded (bytes, inodes, stored), actual) of each domain whose usage is wrong."""
    recorded = {
        int(r[0]): (int(r[1]), int(r[2]), int(r[3]))
        for r in db.execute("SELECT ino, used_bytes, used_inodes, used_stored_bytes FROM quotas")
    }
    out = []
    for row in db.execute(_ACTUAL).fetchall():
        ino, actual = int(row[0]), (int(row[1]), int(row[2]), int(row[3]))
        if recorded.get(ino) != actual:
            out.append((ino, recorded[ino], actual))
    return out


def set_usage(db: Db, ino: int, usage: tuple[int, int, int]) -> None:
    db.execute(
        "UPDATE quotas SET used_bytes = ?, used_inodes = ?, used_stored_bytes = ? WHERE ino = ?",
        (*usage, ino),
    )


def recompute_usage(db: Db) -> None:
    """Set every domain's usage from the inodes (after loading a dump)."""
    for ino, _, actual in usage_mismatches(db):
        set_usage(db, ino, actual)


class Quotas(Inodes):
    """Setting, clearing and reading quota domains; the cross-domain checks of rename and link."""

    # -- inside the caller's transaction ---------------------------------------------------

    def _quota_row(self, ino: int) -> dict[str, Any] | None:
        row = self._db.execute(
            f"SELECT parent, {', '.join(_FIELDS)} FROM quotas WHERE ino = ?", (ino,)
        ).fetchone()
        if row is None:
            return None
        return {"ino": ino, "parent": row[0], **dict(zip(_FIELDS, row[1:], strict=True))}

    def _entry_domain(self, ino: int) -> int | None:
        """The domain a name of ``ino`` lives in: a domain's directory lives in the enclosing one."""
        row = self._db.execute(
            "SELECT i.quota, q.ino, q.parent FROM inodes i LEFT JOIN quotas q ON q.ino = i.ino "
            "WHERE i.ino = ?",
            (ino,),
        ).fetchone()
        if row is None:
            raise NotFound(f"inode {ino} not found")
        domain: int | None = row[2] if row[1] is not None else row[0]
        return domain

    def _dir_domain(self, ino: int) -> int | None:
        row = self._db.execute("SELECT quota FROM inodes WHERE ino = ?", (ino,)).fetchone()
        if row is None:
            raise NotFound(f"inode {ino} not found")
        domain: int | None = row[0]
        return domain

    def _check_same_domain(self, ino: int, new_parent: int) -> None:
        """CrossDevice (EXDEV) when a name of ``ino`` would move into another quota domain."""
        if self._entry_domain(ino) != self._dir_domain(new_parent):
            raise CrossDevice(
                f"inode {ino} and directory {new_parent} are in different quota domains "
                "(move by copying, as across file systems)"
            )

    def _subtree(self, top: int) -> str:
        """A scratch table of every inode named below directory ``top``, ``top`` included."""
        dirs, inos = self._scratch("dirs"), self._scratch("inos")
        self._db.execute(
            "WITH RECURSIVE sub(ino) AS "
            "(SELECT ? UNION SELECT d.ino FROM dentries d JOIN sub ON d.parent = sub.ino WHERE d.is_dir = 1) "
            f"INSERT INTO {dirs} SELECT ino FROM sub",
            (top,),
        )
        self._db.execute(
            f"INSERT INTO {inos} SELECT ino FROM {dirs} "
            f"UNION SELECT d.ino FROM {dirs} s CROSS JOIN dentries d ON d.parent = s.ino"
        )
        return inos

    def _quota_create(self, ino: int) -> None:
        """Make directory ``ino`` a domain without limits: one walk of its subtree (see module doc)."""
        db = self._db
        outer = self._dir_domain(ino)
        db.execute(
            "INSERT INTO quotas (ino, parent, max_bytes, max_inodes, used_bytes, used_inodes, "
            "used_stored_bytes) VALUES (?, ?, NULL, NULL, 0, 0, 0)",
            (ino, outer),
        )
        db.execute("INSERT INTO quota_chain VALUES (?, ?)", (ino, ino))
        db.execute("INSERT INTO quota_chain SELECT ?, a FROM quota_chain WHERE q = ?", (ino, outer))
        inos = self._subtree(ino)
        # Domains nested below ``ino`` now lie in it too: their usage is already in ``outer``.
        nested = [
            r[0]
            for r in db.execute(
                f"SELECT q.ino FROM quotas q WHERE q.ino IN (SELECT ino FROM {inos}) AND q.ino != ? "
                "AND q.parent IS NOT DISTINCT FROM ?",
                (ino, outer),
            ).fetchall()
        ]
        for child in nested:
            db.execute("UPDATE quotas SET parent = ? WHERE ino = ?", (ino, child))
            db.execute("INSERT INTO quota_chain SELECT c.q, ? FROM quota_chain c WHERE c.a = ?", (ino, child))
            db.execute(
                "UPDATE quotas SET used_bytes = used_bytes + x.b, used_inodes = used_inodes + x.n, "
                "used_stored_bytes = used_stored_bytes + x.s FROM (SELECT used_bytes AS b, "
                "used_inodes AS n, used_stored_bytes AS s FROM quotas WHERE ino = ?) x WHERE quotas.ino = ?",
                (child, ino),
            )
        # The triggers move each inode's usage into the new domain (no limits yet: nothing refused).
        db.execute(
            f"UPDATE inodes SET quota = ?1 WHERE ino IN (SELECT ino FROM {inos}) "
            "AND quota IS NOT DISTINCT FROM ?2",
            (ino, outer),
        )

    def _quota_drop(self, ino: int) -> None:
        """Give domain ``ino``'s inodes and nested domains back to the enclosing domain."""
        db = self._db
        row = self._quota_row(ino)
        if row is None:
            return
        outer = row["parent"]
        inos = self._subtree(ino)
        # Unlinked files still open have no name in the subtree but are in the domain.
        db.execute(
            "UPDATE inodes SET quota = ?1 WHERE quota = ?2 AND "
            f"(ino IN (SELECT ino FROM {inos}) OR ino IN (SELECT ino FROM opens))",
            (outer, ino),
        )
        db.execute("UPDATE quotas SET parent = ? WHERE parent = ?", (outer, ino))
        db.execute("DELETE FROM quota_chain WHERE a = ? OR q = ?", (ino, ino))
        db.execute("DELETE FROM quotas WHERE ino = ?", (ino,))

    def _quota_limits(self, ino: int, limits: dict[str, int | None]) -> None:
        """Set the given limits (keys max_bytes, max_inodes) of domain ``ino``, creating it if needed."""
        for key, value in limits.items():
            if key not in ("max_bytes", "max_inodes"):
                raise InvalidArgument(f"unknown quota limit {key!r}")
            if value is not None and (not isinstance(value, int) or not 0 <= value <= MAX_LIMIT):
                raise InvalidArgument(f"{key} must be 0..{MAX_LIMIT} or null, not {value!r:.40}")
        mode = self._inode(ino)[0]
        if not _is_dir(mode):
            raise NotADirectory(f"inode {ino} is not a directory: only directories have quotas")
        # A snapshot's inodes are charged to no domain: a quota there would re-charge them.
        _check_writable(ino, mode)
        if ino == ROOT_INO or ino in self._internal_inos():
            raise InvalidArgument("the root and internal directories cannot have a quota")
        if self._quota_row(ino) is None:
            self._quota_create(ino)
        for key, value in limits.items():
            self._db.execute(f"UPDATE quotas SET {key} = ? WHERE ino = ?", (value, ino))
        self._sync_volume_policy(ino, limits)

    def _sync_volume_policy(self, ino: int, limits: dict[str, int | None]) -> None:
        """The policy of a volume whose directory is ``ino`` shows its quota row's limits (the row is
        the truth; a quota set with `dfs quota` shows in the volume's policy too)."""
        row = self._db.execute("SELECT name, policy FROM volumes WHERE ino = ?", (ino,)).fetchone()
        if row is None:
            return
        policy = _unpack_dict(row[1])
        changed = False
        for key, column in (("quota_bytes", "max_bytes"), ("quota_inodes", "max_inodes")):
            if column in limits and policy.get(key) != limits[column]:
                policy[key] = limits[column]
                changed = True
        if changed:
            self._db.execute(
                "UPDATE volumes SET policy = ? WHERE name = ?",
                (_pack_dict(policy, "volume policy"), row[0]),
            )

    def _quota_adopt_clone(self, dst_parent: int) -> None:
        """The copies a tree clone just made (daemon/meta/snapshots.py's scratch ``map``) join
        ``dst_parent``'s domain: a copy is charged where it is placed, and refused there if it
        does not fit.  Read-only snapshots under /.snapshots lie outside every volume and are
        charged to no domain (they are not passed here)."""
        domain = self._dir_domain(dst_parent)
        if domain is not None:
            self._db.execute(
                "UPDATE inodes SET quota = ? WHERE ino IN (SELECT new FROM temp.scratch_map)", (domain,)
            )

    def _volume_quota(self, ino: int, policy: dict[str, Any]) -> None:
        """A volume's directory is a domain; its policy's quota_bytes / quota_inodes (those present)
        are the limits."""
        limits = {
            column: _limit(policy[key], key)
            for key, column in (("quota_bytes", "max_bytes"), ("quota_inodes", "max_inodes"))
            if key in policy
        }
        self._quota_limits(ino, limits)

    def _adopt_volume_domains(self) -> None:
        """Every volume has a domain: create the missing ones (databases from before quotas)."""
        rows = self._db.execute(
            "SELECT v.ino, v.policy FROM volumes v JOIN inodes i ON i.ino = v.ino "
            "WHERE NOT EXISTS (SELECT 1 FROM quotas q WHERE q.ino = v.ino)"
        ).fetchall()
        for ino, _ in rows:
            self._quota_create(ino)

    def _quota_doc(self, row: dict[str, Any]) -> dict[str, Any]:
        doc = {k: row[k] for k in ("ino", "parent", *_FIELDS)}
        return doc

    # -- public ---------------------------------------------------------------------------

    @_api
    def set_quota(self, ino: int, limits: dict[str, int | None]) -> dict[str, Any]:
        """Set limits (``max_bytes``/``max_inodes``: a number or None for none) on directory ``ino``;
        limits not named keep their value.  The first quota on a directory walks its subtree."""
        with self._write() as now:
            self._quota_limits(ino, limits)
            self._log(now, "set_quota", [ino, limits])
            row = self._quota_row(ino)
        assert row is not None
        return self._quota_doc(row)

    @_api
    def clear_quota(self, ino: int) -> None:
        """Remove directory ``ino``'s quota; a volume's directory keeps its (limitless) accounting row."""
        with self._write() as now:
            if self._quota_row(ino) is None:
                raise NotFound(f"directory {ino} has no quota")
            volume = self._db.execute("SELECT 1 FROM volumes WHERE ino = ?", (ino,)).fetchone()
            if volume is not None:
                self._quota_limits(ino, {"max_bytes": None, "max_inodes": None})
            else:
                self._quota_drop(ino)
            self._log(now, "clear_quota", [ino])

    @_api
    def get_quota(self, ino: int) -> dict[str, Any] | None:
        """Directory ``ino``'s quota and usage, or None if it is no domain."""
        row = self._quota_row(ino)
        return None if row is None else self._quota_doc(row)

    @_api
    def list_quotas(self) -> list[dict[str, Any]]:
        """Every domain (with or without limits), by directory inode."""
        rows = self._db.execute(
            f"SELECT ino, parent, {', '.join(_FIELDS)} FROM quotas ORDER BY ino"
        ).fetchall()
        return [{"ino": r[0], "parent": r[1], **dict(zip(_FIELDS, r[2:], strict=True))} for r in rows]

    @_api
    def provisioned_bytes(self) -> int:
        """The sum of byte limits not nested in another byte limit (what thin provisioning promised)."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(q.max_bytes), 0) FROM quotas q WHERE q.max_bytes IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM quota_chain c JOIN quotas p ON p.ino = c.a WHERE c.q = q.ino AND c.a != q.ino "
            "AND p.max_bytes IS NOT NULL)"
        ).fetchone()
        return int(row[0])

    @_api
    def quota_xattr(self, ino: int, name: bytes) -> bytes | None:
        """The value of virtual xattr ``name`` on ``ino`` (None: not a quota xattr, or no domain)."""
        field = QUOTA_XATTRS.get(name)
        if field is None:
            return None
        row = self._quota_row(ino)
        if row is None:
            return None
        return xattr_value(row[field])

    # -- by namespace path (the quota.* RPC endpoints, `dfs quota`, the admin API) -------------

    def _resolve_path(self, path: str) -> int:
        """The inode at absolute namespace path ``path`` ("/vol/dir")."""
        if not isinstance(path, str) or not path.startswith("/") or len(path) > 4096:
            raise InvalidArgument("path must be an absolute path such as /volume/dir")
        ino = ROOT_INO
        for name in (n.encode("utf-8", "surrogateescape") for n in path.split("/") if n):
            if name in (b".", b".."):
                raise InvalidArgument("path must not contain . or ..")
            row = self._db.execute(
                "SELECT ino FROM dentries WHERE parent = ? AND name = ?", (ino, name)
            ).fetchone()
            if row is None:
                raise NotFound(f"{path!r}: no such file or directory")
            ino = row[0]
        return ino

    def _path_of(self, ino: int) -> str:
        """The namespace path of directory ``ino`` (best effort: ``<inode N>`` when detached)."""
        parts: list[str] = []
        cur, seen = ino, set()
        while cur != ROOT_INO:
            if cur in seen or len(parts) > 4096:
                return f"<inode {ino}>"
            seen.add(cur)
            row = self._db.execute(
                "SELECT parent, name FROM dentries WHERE is_dir = 1 AND ino = ? LIMIT 1", (cur,)
            ).fetchone()
            if row is None:
                return f"<inode {ino}>"
            parts.append(bytes(row[1]).decode("utf-8", "surrogateescape"))
            cur = row[0]
        return "/" + "/".join(reversed(parts))

    def _quota_path_doc(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"path": self._path_of(row["ino"]), **self._quota_doc(row)}

    @_api
    def quota_set_path(self, path: str, limits: dict[str, int | None]) -> dict[str, Any]:
        """:meth:`set_quota` on the directory at ``path``; its doc with the path."""
        if not isinstance(limits, dict) or not limits:
            raise InvalidArgument("name at least one limit: max_bytes, max_inodes")
        with self._write():
            ino = self._resolve_path(path)
            self.set_quota(ino, limits)
            row = self._quota_row(ino)
            assert row is not None
            return self._quota_path_doc(row)

    @_api
    def quota_get_path(self, path: str) -> dict[str, Any]:
        with self._read():
            ino = self._resolve_path(path)
            row = self._quota_row(ino)
            if row is None:
                raise NotFound(f"{path!r} has no quota")
            return self._quota_path_doc(row)

    @_api
    def quota_list_paths(self) -> list[dict[str, Any]]:
        with self._read():
            return [{"path": self._path_of(q["ino"]), **q} for q in self.list_quotas()]

    @_api
    def quota_clear_path(self, path: str) -> None:
        with self._write():
            self.clear_quota(self._resolve_path(path))


def _limit(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise InvalidArgument(f"{key} must be 0..{MAX_LIMIT} or null, not {value!r:.40}")
    return value
