"""Every RPC method a dfs daemon serves, declared once.

Each :class:`Endpoint` says what a method takes (positional argument names and
their wire types, how many trailing ones may be left out, and which of them name
directories whose change stamps the answer carries), what it answers (its type
parameter: the shape a caller may rely on over RPC *and* in-process, so a
record such as :class:`dfs.core.namespace.Attr` is a ``Sequence``, a list once it has
crossed the wire), where it runs, whether it is safe to send twice, and how
long it may take.  Everything else derives from these declarations:

- callers name a method through its declaration (``endpoints.SYS_INFO.call(conn)``),
  never by a string, so a misspelt or undeclared method is a mypy error;
- the daemon's handler tables (daemon/service/handlers.py): what a primary serves, what
  a secondary forwards to it, what runs inline in the RPC reader, which calls
  carry directory stamps and which publish change notices;
- which calls a client may send again to another daemon (dfs/net/failover.py);
- the label values of the RPC metrics (daemon/admin/metrics.py);
- the argument check the RPC server runs before any handler (:meth:`Endpoint.check_args`): a
  wrong count or a wrongly typed argument is refused with InvalidArgument naming the method
  and parameter, never left to fail inside a handler as an internal error.

tests/unit/test_endpoints.py checks that the handler tables and the
declarations agree both ways, and that no source names a method by a string.

- who may call it: the caller classes of authenticated RPC (:mod:`dfs.core.auth`), which
  the RPC server's dispatch checks before any handler runs.  A declaration serves only
  peer daemons unless it says otherwise: a new endpoint starts closed.

Pure: no I/O, no trio.  The wire still carries the method's name; the
transports (:class:`Caller`) take that string, so test doubles keep working.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, NoneType
from typing import Any, Generic, Protocol, TypeVar

from dfs.core.auth import CallerClass

__all__ = [
    "ADMINS",
    "ALL",
    "ANYONE",
    "Caller",
    "Endpoint",
    "NODES",
    "Record",
    "Site",
    "Timeout",
    "WIRE_TYPES",
    "declared",
]

# Covariant: an Endpoint[list[bytes]] serves where an Endpoint[Iterable[bytes]] is wanted.
R = TypeVar("R", covariant=True)

#: A record from dfs/core/namespace.py (Attr, FileMap, DirEntry, StatFs): the NamedTuple in-process,
#: a list once it crossed the wire; each ``from_wire`` takes both.
Record = Sequence[Any]


class Caller(Protocol):
    """A transport: an RPC connection, the daemon's in-process dispatcher, a failover wrapper."""

    async def call(self, method: str, *args: Any) -> Any: ...


#: Mounts, the CLI's read-only commands, admins and peers: what a mount needs.
ANYONE: frozenset[CallerClass] = frozenset(CallerClass)
#: The CLI's commands that change layout, keys, volumes and stored data, and peers.
ADMINS: frozenset[CallerClass] = frozenset({CallerClass.ADMIN, CallerClass.NODE})
#: Peer daemons only (deleting chunks, forwarding admin requests, checking S3 signatures).
NODES: frozenset[CallerClass] = frozenset({CallerClass.NODE})


#: The wire types a parameter may be declared with (see :func:`_declare`), as the Python types
#: msgpack decodes them to.  ``int`` is not ``bool`` (a msgpack bool is refused where an int
#: belongs), and is a signed 64-bit integer (what metadata stores: msgpack also carries unsigned
#: ones up to 2**64 - 1); ``float`` takes such an int too.  ``any`` (a genuinely polymorphic
#: parameter) is not checked.
WIRE_TYPES: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        "int": (int,),
        "float": (float, int),
        "bytes": (bytes,),
        "str": (str,),
        "bool": (bool,),
        "list": (list,),
        "dict": (dict,),
        "None": (NoneType,),
    }
)


_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _split_union(spec: str) -> list[str]:
    """``spec``'s alternatives (``|`` outside brackets)."""
    parts: list[str] = []
    depth = start = 0
    for i, ch in enumerate(spec):
        if ch in "[]":
            depth += 1 if ch == "[" else -1
        elif ch == "|" and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    return parts


def _simple(spec: str, where: str) -> frozenset[type] | None:
    """The exact types a union of plain type names allows (None: ``any``)."""
    kinds: set[type] = set()
    for alt in _split_union(spec):
        if alt == "any":
            return None
        if alt not in WIRE_TYPES:
            raise ValueError(f"{where}: unknown wire type {alt!r} (one of {', '.join(WIRE_TYPES)}, any)")
        kinds.update(WIRE_TYPES[alt])
    return frozenset(kinds)


def _parse_type(spec: str, where: str) -> tuple[frozenset[type], frozenset[type] | None] | None:
    """The check for a declared type: (the exact types the value may have, the exact types a
    list's items may have or None), or None for ``any``.  ``list[T]`` checks items one level deep."""
    kinds: set[type] = set()
    items: frozenset[type] | None = None
    for alt in _split_union(spec):
        if alt.startswith("list[") and alt.endswith("]"):
            if items is not None:
                raise ValueError(f"{where}: at most one list[...] in {spec!r}")
            items = _simple(alt[5:-1], where)
            kinds.add(list)
            continue
        simple = _simple(alt, where)
        if simple is None:
            return None
        kinds.update(simple)
    return frozenset(kinds), items


def _out_of_range(values: list[Any]) -> bool:
    return any(type(v) is int and not _INT_MIN <= v <= _INT_MAX for v in values)


def _is(value: object, kinds: frozenset[type]) -> bool:
    return type(value) in kinds and (type(value) is not int or _INT_MIN <= value <= _INT_MAX)


def _kind(value: object) -> str:
    """What a refused value is, for the error (the wire's name for it where there is one)."""
    if type(value) is int and not _INT_MIN <= value <= _INT_MAX:
        return "an int out of the signed 64-bit range"
    for name, kinds in WIRE_TYPES.items():
        if type(value) is kinds[0]:
            return name
    return type(value).__name__


class Site(enum.Enum):
    """Which daemon answers a call."""

    #: Every daemon answers from its own state (its chunks, its view of the cluster).
    NODE = "node"
    #: The metadata primary answers; a secondary forwards the call there unchanged.
    PRIMARY = "primary"
    #: In-process callers only (the S3 shim, the admin API): never served over RPC.
    LOCAL = "local"


class Timeout(enum.Enum):
    """How long a call may legitimately take (what a caller's timeout must allow).

    Descriptive for now: callers still choose their own timeouts (the CLI's fsck allows
    600 s, ChunkIO bounds peer calls by [cluster] peer_timeout_s), unchanged."""

    #: An ordinary call: the caller's call timeout ([rpc] call_timeout_s) bounds it.
    CALL = "call"
    #: Waits up to its ``wait_s`` argument for news; callers keep that below their timeout.
    POLL = "poll"
    #: Works through a whole store (fsck, GC, scrub, orphan sweep): callers allow minutes.
    LONG = "long"


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint(Generic[R]):
    """One RPC method; ``R`` is the shape of its answer."""

    name: str
    #: Positional argument names, as the handler takes them (the wire has no keywords).
    params: tuple[str, ...] = ()
    #: Each param's wire type: a name from :data:`WIRE_TYPES` or ``any``, alternatives joined by
    #: ``|`` (``int|None``), ``list[T]`` for a list whose items are checked too.  Empty: all ``any``.
    types: tuple[str, ...] = ()
    #: How many trailing ``params`` a caller may leave out (the handler has defaults for them).
    optional: int = 0
    site: Site = Site.NODE
    #: Answered by the RPC reader itself, no task (indexed reads that take microseconds).
    #: Only where the data is: a secondary forwards such calls like any other.
    inline: bool = False
    #: Changes nothing: the answer is all there is.
    read_only: bool = False
    #: Changes something, but doing it twice is the same as doing it once.
    idempotent: bool = False
    #: A change :data:`META_ONCE` can make exactly once: its handler makes its changes through
    #: the metadata thread's calls (daemon/service/meta_calls.py), each recorded with the
    #: caller's request id, so the caller may send it again after a lost reply.
    once: bool = False
    #: Positions of ``params`` naming directories the call changes.  The answer is then
    #: ``[result, [[dir, ctime_before, attr_after], ...]]`` (dfs.client.DirStamp).
    stamps: tuple[int, ...] = ()
    #: A namespace call dfs/core/changes.py classifies (by the name after ``meta.``): a secondary
    #: that forwards it tells its own mounts what it changed.
    notices: bool = False
    timeout: Timeout = Timeout.CALL
    #: The caller classes that may call it over RPC (in-process callers are the daemon itself).
    callers: frozenset[CallerClass] = NODES
    #: Precomputed from ``types`` for :meth:`check_args`: (position, types, item types) of each
    #: checked parameter.
    _checks: tuple[tuple[int, frozenset[type], frozenset[type] | None], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not 0 <= self.optional <= len(self.params):
            raise ValueError(f"{self.name}: {self.optional} optional of {len(self.params)} params")
        if any(not 0 <= i < len(self.params) for i in self.stamps):
            raise ValueError(f"{self.name}: stamp position out of range")
        if self.once and (self.read_only or self.idempotent or self.site is not Site.PRIMARY):
            raise ValueError(f"{self.name}: only a primary's change that is not repeatable needs once")
        if self.types and len(self.types) != len(self.params):
            raise ValueError(f"{self.name}: {len(self.types)} types for {len(self.params)} params")
        checks = []
        for i, spec in enumerate(self.types):
            check = _parse_type(spec, f"{self.name}({self.params[i]})")
            if check is not None:
                checks.append((i, *check))
        object.__setattr__(self, "_checks", tuple(checks))

    @property
    def repeatable(self) -> bool:
        """Safe to send again (to another daemon, too) when its reply was lost."""
        return self.read_only or self.idempotent

    def accepts(self, nargs: int) -> bool:
        return len(self.params) - self.optional <= nargs <= len(self.params)

    def check_args(self, args: Sequence[Any]) -> str | None:
        """Why ``args`` (as they came off the wire) are no call of this method, naming the
        parameter; None if they are.  Runs in the RPC server before every handler: a count,
        one set lookup and a range check per argument (exact types: what msgpack decodes
        to), and a C-level pass over the items of a ``list[T]``."""
        n, most = len(args), len(self.params)
        if not most - self.optional <= n <= most:
            low = most - self.optional
            want = str(low) if low == most else f"{low} to {most}"
            return f"{self.name}: takes {want} arguments, got {n}"
        for i, kinds, items in self._checks:
            if i >= n:
                break
            value = args[i]
            kind = type(value)
            if kind not in kinds or (kind is int and not _INT_MIN <= value <= _INT_MAX):
                return f"{self.name}: {self.params[i]} must be {self.types[i]}, not {_kind(value)}"
            if (
                items is not None
                and kind is list
                and (not items.issuperset(map(type, value)) or (int in items and _out_of_range(value)))
            ):
                j, item = next((j, x) for j, x in enumerate(value) if not _is(x, items))
                return (
                    f"{self.name}: {self.params[i]} must be {self.types[i]}, "
                    f"not a list holding {_kind(item)} (at {j})"
                )
        return None

    def call(self, caller: Caller, *args: Any) -> Awaitable[R]:
        """``caller.call(name, *args)``, typed by this declaration.

        Not a coroutine itself: no extra frame on the hot path.  The arity check
        is an assertion, so it costs nothing under ``python -O``."""
        assert self.accepts(len(args)), f"{self.name}({', '.join(self.params)}) given {len(args)} args"
        answer: Awaitable[R] = caller.call(self.name, *args)
        return answer


_REGISTRY: dict[str, Endpoint[Any]] = {}

#: Every declaration by method name, in declaration order.
ALL: Mapping[str, Endpoint[Any]] = MappingProxyType(_REGISTRY)


def declared(name: str) -> Endpoint[Any]:
    """The declaration of method ``name`` (KeyError if there is none)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"RPC method {name!r} is not declared in dfs/core/endpoints.py") from None


def _declare(name: str, params: str = "", **spec: Any) -> Endpoint[Any]:
    """Register ``name``; ``params`` are space-separated ``name:type`` words, a trailing ``?``
    marks the optional ones (e.g. ``"ino:int parent:int|None?"``: ``parent`` may be left out,
    and may be None).  Every parameter has a type (see :attr:`Endpoint.types`)."""
    if name in _REGISTRY:
        raise ValueError(f"RPC method {name!r} declared twice")
    words = params.split()
    optional = sum(w.endswith("?") for w in words)
    if any(w.endswith("?") for w in words[: len(words) - optional]):
        raise ValueError(f"{name}: optional params must come last")
    pairs = [w.rstrip("?").partition(":") for w in words]
    if any(not p or not sep or not t for p, sep, t in pairs):
        raise ValueError(f"{name}: every param needs a type (name:type) in {params!r}")
    ep: Endpoint[Any] = Endpoint(
        name=name,
        params=tuple(p for p, _, _ in pairs),
        types=tuple(t for _, _, t in pairs),
        optional=optional,
        **spec,
    )
    _REGISTRY[name] = ep
    return ep


_NODE = Site.NODE
_PRIMARY = Site.PRIMARY

# -- chunks: every node serves its own store --------------------------------------------------
# Mounts write and read chunks themselves, and leave hints for a replica that was down.
CHUNK_PUT: Endpoint[bool] = _declare("chunk.put", "chunk_id:bytes blob:bytes", callers=ANYONE)
CHUNK_GET: Endpoint[bytes] = _declare("chunk.get", "chunk_id:bytes", read_only=True, callers=ANYONE)
CHUNK_HAS: Endpoint[list[bool]] = _declare(
    "chunk.has", "chunk_ids:list[bytes]", read_only=True, callers=ANYONE
)
CHUNK_HINT: Endpoint[None] = _declare("chunk.hint", "targets:list[str] chunk_ids:list[bytes]", callers=ANYONE)
CHUNK_DELETE: Endpoint[int] = _declare("chunk.delete", "chunk_ids:list[bytes]")
CHUNK_DIGESTS: Endpoint[dict[int, bytes]] = _declare("chunk.digests", "partitions:list[int]", read_only=True)
CHUNK_PIN: Endpoint[None] = _declare("chunk.pin", "chunk_ids:list[bytes] ttl_s:float")
# Re-reads a copy a client found bad; quarantines and replaces it if it is bad here.
CHUNK_VERIFY: Endpoint[bool] = _declare("chunk.verify", "chunk_id:bytes", callers=ANYONE)

# -- this node ---------------------------------------------------------------------------------
# Block size, compression and the key of chunk ids: a mount cannot write without them (the
# chunk-id key is not a credential: it opens no door).
SYS_INFO: Endpoint[dict[str, Any]] = _declare("sys.info", read_only=True, callers=ANYONE)
SYS_PING: Endpoint[str] = _declare("sys.ping", read_only=True, callers=ANYONE)
SYS_STATUS: Endpoint[dict[str, Any]] = _declare("sys.status", read_only=True, callers=ANYONE)
SYS_SCRUB_LIST: Endpoint[list[bytes]] = _declare(
    "sys.scrub_list", read_only=True, timeout=Timeout.LONG, callers=ADMINS
)
# Quarantines the copies that fail their checksum.
SYS_SCRUB_BATCH: Endpoint[list[bytes]] = _declare(
    "sys.scrub_batch", "chunk_ids:list[bytes]", timeout=Timeout.LONG, callers=ADMINS
)
SYS_SWEEP_ORPHANS: Endpoint[int] = _declare(
    "sys.sweep_orphans", "older_than_s:float|None?", timeout=Timeout.LONG, callers=ADMINS
)
# This node's data disks (daemon/disks.py), after ``op``: "list", or "drain", "undrain" or
# "reset" of the disk at ``path``; answers every disk's path, weight, state, usage and errors.
SYS_DISKS: Endpoint[list[dict[str, Any]]] = _declare("sys.disks", "op:str path:str?", callers=ADMINS)
SYS_MEMBERS: Endpoint[list[dict[str, Any]]] = _declare("sys.members", read_only=True, callers=ANYONE)
SYS_CLUSTER: Endpoint[dict[str, Any]] = _declare("sys.cluster", read_only=True, callers=ANYONE)
SYS_REPAIR_STATUS: Endpoint[dict[str, Any]] = _declare("sys.repair_status", read_only=True, callers=ANYONE)
SYS_REPAIR_NOW: Endpoint[None] = _declare("sys.repair_now", idempotent=True, callers=ADMINS)
SYS_GOSSIP_KEYRING: Endpoint[dict[str, Any]] = _declare(
    "sys.gossip_keyring", "op:str key:bytes|str|None?", callers=ADMINS
)
# Metadata backups this node holds (daemon/service/backups.py): the list, newest first, and
# pieces of one (at most 8 MiB each) for `dfs meta dump|restore`.
SYS_BACKUP_LIST: Endpoint[list[dict[str, Any]]] = _declare("sys.backup_list", read_only=True, callers=ADMINS)
SYS_BACKUP_READ: Endpoint[bytes] = _declare(
    "sys.backup_read", "backup_id:str offset:int size:int", read_only=True, callers=ADMINS
)
# The maker of a backup sends its manifest (what the dump holds and the chunks it is stored in)
# to every other node once the chunks are stored; each node keeps the newest ones.
SYS_BACKUP_MANIFEST: Endpoint[None] = _declare("sys.backup_manifest", "info:dict")
# Acknowledges the changes up to ``cursor``, which only the poller itself sees.
NS_CHANGES: Endpoint[dict[str, Any]] = _declare(
    "ns.changes", "epoch:str cursor:int wait_s:float", read_only=True, timeout=Timeout.POLL, callers=ANYONE
)

# -- whole-cluster work the metadata primary does ----------------------------------------------
SYS_STATFS: Endpoint[Record] = _declare("sys.statfs", site=_PRIMARY, read_only=True, callers=ANYONE)
SYS_FSCK_META: Endpoint[dict[str, Any]] = _declare(
    "sys.fsck_meta", "repair:bool", site=_PRIMARY, timeout=Timeout.LONG, callers=ADMINS
)
SYS_GC: Endpoint[int] = _declare(
    "sys.gc", "delay_s:float|None?", site=_PRIMARY, timeout=Timeout.LONG, callers=ADMINS
)
# Dumps the namespace into a new backup stored as chunks and gives every node its manifest:
# {"backup": info, "copies": {node: outcome}}.
SYS_BACKUP_NOW: Endpoint[dict[str, Any]] = _declare(
    "sys.backup_now", site=_PRIMARY, timeout=Timeout.LONG, callers=ADMINS
)
# A secondary's admin API has the primary answer: [status, [[name, value], ...], body].
SYS_ADMIN_FORWARD: Endpoint[Sequence[Any]] = _declare(
    "sys.admin_forward", "method:str target:str headers:list[list] body:bytes remote:str", site=_PRIMARY
)
# ``allow``: [bucket, perm] grants the new key holds from the start (dfs/core/s3grants.py).
S3_KEY_CREATE: Endpoint[dict[str, Any]] = _declare(
    "s3.key_create", "description:str? allow:list[list]?", site=_PRIMARY, callers=ADMINS
)
S3_KEY_LIST: Endpoint[list[dict[str, Any]]] = _declare(
    "s3.key_list", site=_PRIMARY, read_only=True, callers=ADMINS
)
S3_KEY_REVOKE: Endpoint[None] = _declare("s3.key_revoke", "access_key:str", site=_PRIMARY, callers=ADMINS)
# Grants on buckets (perm r, w, rw or owner); both answer the key's {bucket: perm}.
S3_KEY_GRANT: Endpoint[dict[str, str]] = _declare(
    "s3.key_grant", "access_key:str bucket:str perm:str", site=_PRIMARY, callers=ADMINS
)
S3_KEY_REVOKE_GRANT: Endpoint[dict[str, str]] = _declare(
    "s3.key_revoke_grant", "access_key:str bucket:str", site=_PRIMARY, callers=ADMINS
)
# The S3 shim records the key that created a bucket as its owner.
S3_BUCKET_OWN: Endpoint[None] = _declare("s3.bucket_own", "bucket:str access_key:str", site=_PRIMARY)
# Verifies a request signed with a key only the primary holds: {"auth": ..., "grants": {bucket:
# perm}} or {"error": ...}.
S3_AUTHENTICATE: Endpoint[dict[str, Any]] = _declare(
    "s3.authenticate",
    "request:list vhost_bucket:str|None region:str max_skew_s:float",
    site=_PRIMARY,
    read_only=True,
)
# The same for a browser upload's signed policy (form fields, names lower-cased): {"access_key",
# "method", "grants"} or {"error": ...}.
S3_AUTHENTICATE_POST: Endpoint[dict[str, Any]] = _declare(
    "s3.authenticate_post", "fields:dict region:str", site=_PRIMARY, read_only=True
)
# Directory quotas (daemon/meta/quotas.py) by namespace path ("/vol/dir"): `dfs quota`.
# limits: {"max_bytes": int|None, "max_inodes": int|None}, the ones named change.
QUOTA_SET: Endpoint[dict[str, Any]] = _declare(
    "quota.set", "path:str limits:dict", site=_PRIMARY, callers=ADMINS
)
QUOTA_GET: Endpoint[dict[str, Any]] = _declare(
    "quota.get", "path:str", site=_PRIMARY, read_only=True, callers=ADMINS
)
QUOTA_LIST: Endpoint[list[dict[str, Any]]] = _declare(
    "quota.list", site=_PRIMARY, read_only=True, callers=ADMINS
)
QUOTA_CLEAR: Endpoint[None] = _declare("quota.clear", "path:str", site=_PRIMARY, callers=ADMINS)
# Volume snapshots (daemon/meta/snapshots.py): `dfs snapshot`.  Registry rows are dicts
# {volume, name, ino, created_ns, origin, files, bytes}.
SNAPSHOT_CREATE: Endpoint[dict[str, Any]] = _declare(
    "snapshot.create", "volume:str name:str", site=_PRIMARY, callers=ADMINS
)
SNAPSHOT_LIST: Endpoint[list[dict[str, Any]]] = _declare(
    "snapshot.list", "volume:str|None?", site=_PRIMARY, read_only=True, callers=ADMINS
)
SNAPSHOT_DELETE: Endpoint[int] = _declare(
    "snapshot.delete", "volume:str name:str", site=_PRIMARY, callers=ADMINS
)
# No path: the whole volume rolled back; path and to: one file or directory copied out to "to".
SNAPSHOT_RESTORE: Endpoint[dict[str, Any]] = _declare(
    "snapshot.restore", "volume:str name:str path:str|None? to:str|None?", site=_PRIMARY, callers=ADMINS
)
SNAPSHOT_CLONE: Endpoint[dict[str, Any]] = _declare(
    "snapshot.clone", "volume:str name:str new_volume:str", site=_PRIMARY, callers=ADMINS
)
# A volume's snapshot_schedule ("hourly=24,daily=7"; None: none): the canonical form stored.
SNAPSHOT_SCHEDULE: Endpoint[str | None] = _declare(
    "snapshot.schedule", "volume:str schedule:str|None", site=_PRIMARY, callers=ADMINS
)
# Per-volume trash (daemon/meta/trash.py): `dfs trash`.  Entries are dicts {id, volume,
# volume_ino, parent, name, path, deleted_ns, size}; empty purges a bounded batch
# ({"purged": n, "more": bool}: call again while more).
TRASH_LIST: Endpoint[list[dict[str, Any]]] = _declare(
    "trash.list", "volume:str|None?", site=_PRIMARY, read_only=True, callers=ADMINS
)
TRASH_USAGE: Endpoint[list[dict[str, Any]]] = _declare(
    "trash.usage", site=_PRIMARY, read_only=True, callers=ADMINS
)
TRASH_RESTORE: Endpoint[dict[str, Any]] = _declare(
    "trash.restore", "volume:str entry_id:int to:str|None?", site=_PRIMARY, callers=ADMINS
)
TRASH_EMPTY: Endpoint[dict[str, Any]] = _declare(
    "trash.empty", "volume:str|None? older_than_days:float|None?", site=_PRIMARY, callers=ADMINS
)
# Cloud tiers (daemon/meta/tiers.py, daemon/service/tiering.py): `dfs tier`.  A spec is a
# dfs.core.tiers.TierSpec as a dict (never a secret); put checks the store is reachable first.
TIER_PUT: Endpoint[dict[str, Any]] = _declare(
    "tier.put", "name:str spec:dict", site=_PRIMARY, idempotent=True, callers=ADMINS
)
TIER_DELETE: Endpoint[None] = _declare("tier.delete", "name:str", site=_PRIMARY, callers=ADMINS)
# Every tier {name, spec, created_ns}: also how daemons learn the tiers they read cold chunks from.
TIER_LIST: Endpoint[list[dict[str, Any]]] = _declare(
    "tier.list", site=_PRIMARY, read_only=True, callers=ADMINS
)
# Bytes per tier, cold chunks, the worker's progress (moves in flight, rate, ETA).
TIER_STATUS: Endpoint[dict[str, Any]] = _declare("tier.status", site=_PRIMARY, read_only=True, callers=ADMINS)
# Pin (keep on local disks, bringing cold chunks back) or unpin the tree at a namespace path.
TIER_PIN: Endpoint[dict[str, Any]] = _declare(
    "tier.pin", "path:str pinned:bool", site=_PRIMARY, idempotent=True, callers=ADMINS
)
# Run a tiering pass now (verify: also list and compare every tier); its summary.
TIER_RUN: Endpoint[dict[str, Any]] = _declare(
    "tier.run", "verify:bool?", site=_PRIMARY, timeout=Timeout.LONG, callers=ADMINS
)
# A daemon that brought cold chunks back to its disk (re-warming): make them warm again.
TIER_WARM: Endpoint[int] = _declare("tier.warm", "chunk_ids:list[bytes]", site=_PRIMARY, idempotent=True)
# S3 bucket versioning (daemon/meta/versions.py), called by the S3 shim; keys are bytes, a
# None version id is the latest (get) or a new delete marker (delete).  versions_list rows:
# [key, version_id, seq, created_ns, attr row or None for a marker, etag xattr or None].
S3_VERSIONING_SET: Endpoint[None] = _declare(
    "s3.versioning_set", "bucket:int status:str", site=_PRIMARY, idempotent=True
)
S3_VERSIONING_GET: Endpoint[str | None] = _declare(
    "s3.versioning_get", "bucket:int", site=_PRIMARY, read_only=True
)
S3_VERSIONS_GET: Endpoint[dict[str, Any]] = _declare(
    "s3.versions_get", "bucket:int key:bytes version_id:str|None", site=_PRIMARY, read_only=True
)
# ``bypass``: x-amz-bypass-governance-retention, allowed (daemon/meta/objlock.py).
S3_VERSIONS_DELETE: Endpoint[dict[str, Any]] = _declare(
    "s3.versions_delete", "bucket:int key:bytes version_id:str|None bypass:bool?", site=_PRIMARY
)
# S3 object lock (daemon/meta/objlock.py): a bucket's configuration {mode, days, years} (None:
# no object lock) and a version's (by inode) lock {mode, until_ns, hold} (None: none).
S3_OBJLOCK_CONFIG_SET: Endpoint[None] = _declare(
    "s3.objlock_config_set", "bucket:int config:dict", site=_PRIMARY, idempotent=True
)
S3_OBJLOCK_CONFIG_GET: Endpoint[dict[str, Any] | None] = _declare(
    "s3.objlock_config_get", "bucket:int", site=_PRIMARY, read_only=True
)
S3_OBJLOCK_GET: Endpoint[dict[str, Any] | None] = _declare(
    "s3.objlock_get", "ino:int", site=_PRIMARY, read_only=True
)
S3_OBJLOCK_RETENTION_SET: Endpoint[None] = _declare(
    "s3.objlock_retention_set",
    "bucket:int ino:int mode:str|None until_ns:int|None bypass:bool",
    site=_PRIMARY,
    idempotent=True,
)
S3_OBJLOCK_HOLD_SET: Endpoint[None] = _declare(
    "s3.objlock_hold_set", "bucket:int ino:int hold:bool", site=_PRIMARY, idempotent=True
)
S3_VERSIONS_LIST: Endpoint[list[Any]] = _declare(
    "s3.versions_list",
    "bucket:int prefix:bytes after_key:bytes after_seq:int limit:int",
    site=_PRIMARY,
    read_only=True,
)
# `dfs status`: per bucket with non-current versions {bucket, bucket_ino, versions,
# delete_markers, bytes, stored_bytes}.
S3_VERSIONS_USAGE: Endpoint[list[dict[str, Any]]] = _declare(
    "s3.versions_usage", site=_PRIMARY, read_only=True, callers=ADMINS
)
# Scoped admin tokens (daemon/admin/tokens.py): create answers the token once; metadata keeps its hash.
ADMIN_TOKEN_CREATE: Endpoint[dict[str, Any]] = _declare(
    "admin.token_create", "scope:str name:str?", site=_PRIMARY, callers=ADMINS
)
ADMIN_TOKEN_LIST: Endpoint[list[dict[str, Any]]] = _declare(
    "admin.token_list", site=_PRIMARY, read_only=True, callers=ADMINS
)
ADMIN_TOKEN_REVOKE: Endpoint[None] = _declare(
    "admin.token_revoke", "token_id:str", site=_PRIMARY, callers=ADMINS
)
# A secondary's admin API asks the primary which scope a presented token has (None: no such token).
ADMIN_TOKEN_CHECK: Endpoint[str | None] = _declare(
    "admin.token_check", "token_id:str digest:bytes", site=_PRIMARY, read_only=True
)


# -- metadata reads: the primary's RPC reader answers them inline -------------------------------
def _read(name: str, params: str = "") -> Endpoint[Any]:
    return _declare(name, params, site=_PRIMARY, inline=True, read_only=True, callers=ANYONE)


META_LOOKUP: Endpoint[Record] = _read("meta.lookup", "parent:int name:bytes")
# (the entry or None, the directory's ctime), from one snapshot.
META_LOOKUP_VERSIONED: Endpoint[Sequence[Any]] = _read("meta.lookup_versioned", "parent:int name:bytes")
META_GETATTR: Endpoint[Record] = _read("meta.getattr", "ino:int")
META_READLINK: Endpoint[bytes] = _read("meta.readlink", "ino:int")
META_READDIR: Endpoint[Sequence[Record]] = _read("meta.readdir", "ino:int cookie:int limit:int")
META_READ_MAP: Endpoint[Record] = _read("meta.read_map", "ino:int")
META_GETXATTR: Endpoint[bytes] = _read("meta.getxattr", "ino:int name:bytes")
META_LISTXATTR: Endpoint[Sequence[bytes]] = _read("meta.listxattr", "ino:int")
META_RESOLVE: Endpoint[Record] = _read("meta.resolve", "parent:int names:list[bytes]")
META_LIST_DIR: Endpoint[Sequence[Record]] = _read("meta.list_dir", "ino:int after:bytes limit:int")
META_INTERNAL_DIR: Endpoint[int] = _read("meta.internal_dir", "name:str")
META_GET_VOLUME: Endpoint[dict[str, Any] | None] = _read("meta.get_volume", "name:str")
META_LIST_VOLUMES: Endpoint[list[dict[str, Any]]] = _read("meta.list_volumes")
META_LAYOUT: Endpoint[dict[str, Any]] = _read("meta.layout")
META_CHUNK_REPLICAS: Endpoint[list[int | None]] = _read("meta.chunk_replicas", "chunk_ids:list[bytes]")
META_CHUNK_FACTORS: Endpoint[list[int | None]] = _read("meta.chunk_factors", "chunk_ids:list[bytes]")
META_POLICY: Endpoint[dict[str, Any]] = _read("meta.policy", "ino:int parent:int|None?")
# The top-level directory (volume) above an inode, for a writer that cannot tell from its cache.
META_VOLUME_OF: Endpoint[int | None] = _read("meta.volume_of", "ino:int parent:int|None?")


# -- metadata calls the primary runs in its metadata thread ------------------------------------
def _meta(name: str, params: str = "", **spec: Any) -> Endpoint[Any]:
    spec.setdefault("callers", ANYONE)  # the namespace calls a mount makes
    # Every change here goes through the metadata thread: meta.once can make it exactly once.
    spec.setdefault("once", not (spec.get("read_only") or spec.get("idempotent")))
    return _declare(name, params, site=_PRIMARY, notices=True, **spec)


META_OPEN_EVENTS: Endpoint[None] = _meta("meta.open_events", "events:list[list] session:str")
META_END_SESSION: Endpoint[None] = _meta("meta.end_session", "session:str")
# Renews the session's lease: repeating it is harmless.
META_SESSION_HEARTBEAT: Endpoint[None] = _meta("meta.session_heartbeat", "session:str", idempotent=True)
META_SETXATTR: Endpoint[None] = _meta("meta.setxattr", "ino:int name:bytes value:bytes flags:int?")
META_REMOVEXATTR: Endpoint[None] = _meta("meta.removexattr", "ino:int name:bytes")
META_SYNC: Endpoint[None] = _meta("meta.sync")
META_MAKE_DIRS: Endpoint[Record] = _meta(
    "meta.make_dirs", "parent:int dirs:list[bytes] mode:int? uid:int? gid:int?"
)
META_REMOVE_TREE: Endpoint[int] = _meta("meta.remove_tree", "parent:int name:bytes")
META_REMOVE_EMPTY_PARENTS: Endpoint[int] = _meta(
    "meta.remove_empty_parents", "parent:int dirs:list[bytes] keep_depth:int?"
)
META_CREATE_VOLUME: Endpoint[Record] = _meta(
    "meta.create_volume", "name:str policy:dict mode:int? uid:int? gid:int?", callers=ADMINS
)
META_UPDATE_VOLUME: Endpoint[dict[str, Any]] = _meta(
    "meta.update_volume", "name:str policy:dict", callers=ADMINS
)
META_DELETE_VOLUME: Endpoint[None] = _meta("meta.delete_volume", "name:str remove_dir:bool?", callers=ADMINS)
META_SNAPSHOT: Endpoint[Record] = _meta(
    "meta.snapshot", "src_dir:int dst_parent:int name:bytes uid:int? gid:int?", callers=ADMINS
)
META_REGISTER_NODE: Endpoint[dict[str, Any]] = _meta(
    "meta.register_node", "node_id:str zone:str address:str capacity_weight:float?", callers=ADMINS
)
META_SET_NODE: Endpoint[dict[str, Any]] = _meta("meta.set_node", "node_id:str changes:dict", callers=ADMINS)
META_REMOVE_NODE: Endpoint[dict[str, Any]] = _meta("meta.remove_node", "node_id:str", callers=ADMINS)
META_COUNTS: Endpoint[dict[str, int]] = _meta("meta.counts", read_only=True)
# Calls that change directories answer [result, DirStamps] (see Endpoint.stamps).
META_MKNOD: Endpoint[Sequence[Any]] = _meta(
    "meta.mknod", "parent:int name:bytes mode:int rdev:int uid:int gid:int", stamps=(0,)
)
META_MKDIR: Endpoint[Sequence[Any]] = _meta(
    "meta.mkdir", "parent:int name:bytes mode:int uid:int gid:int", stamps=(0,)
)
META_SYMLINK: Endpoint[Sequence[Any]] = _meta(
    "meta.symlink", "parent:int name:bytes target:bytes uid:int gid:int", stamps=(0,)
)
META_CREATE: Endpoint[Sequence[Any]] = _meta(
    "meta.create", "parent:int name:bytes mode:int uid:int gid:int session:str", stamps=(0,)
)
META_LINK: Endpoint[Sequence[Any]] = _meta("meta.link", "ino:int new_parent:int new_name:bytes", stamps=(1,))
META_UNLINK: Endpoint[Sequence[Any]] = _meta("meta.unlink", "parent:int name:bytes", stamps=(0,))
META_RMDIR: Endpoint[Sequence[Any]] = _meta("meta.rmdir", "parent:int name:bytes", stamps=(0,))
META_RENAME: Endpoint[Sequence[Any]] = _meta(
    "meta.rename", "parent:int name:bytes new_parent:int new_name:bytes flags:int", stamps=(0, 2)
)
META_SETATTR: Endpoint[Sequence[Any]] = _meta("meta.setattr", "ino:int changes:dict", stamps=(0,))
META_OPEN: Endpoint[Record] = _meta("meta.open", "ino:int session:str truncate:bool read:bool")
META_COMMIT_WRITE: Endpoint[Record] = _meta(
    "meta.commit_write",
    "ino:int size:int mtime_ns:int blocks:list[list] inline:bytes|None attrs:dict|None? replicas:int|None?",
)
# A whole object with its xattrs as given (S3 version ids, ETags, locks among them): the S3 shims
# and `dfs receive` only, never a mount's client credential, which could forge them.
META_PUT_OBJECT: Endpoint[Record] = _meta(
    "meta.put_object", "parent:int dirs:list[bytes] name:bytes opts:dict", callers=ADMINS
)
# A secondary's orphan sweep: which of these unknown chunks it may delete now.
META_CLAIM_ORPHANS: Endpoint[list[bytes]] = _meta(
    "meta.claim_orphans", "chunk_ids:list[bytes]", callers=NODES, once=False
)
# Calls ``method`` (an endpoint declared ``once``) with ``args`` at most once per ``request_id``
# (16 to 32 random bytes the caller made): a repeat, to any daemon, after a lost reply is
# answered with the first run's result instead of being applied again.  ``retried``: this id
# was sent before (only then is a record of it looked for).  The caller must be one ``method``
# admits.  Records are kept for ten times [meta] failover_timeout_s (at least
# 10 minutes): a client must not repeat a request for longer (daemon/service/upkeep.py).
META_ONCE: Endpoint[Any] = _declare(
    "meta.once",
    "request_id:bytes retried:bool method:str args:list",
    site=_PRIMARY,
    notices=True,
    callers=ANYONE,
)
REQUEST_ID_BYTES = (16, 32)
# The metadata lane (daemon/service/lane.py): asked with no ticket, on a connection to this
# daemon, ``{"socket": path, "ticket": bytes}`` (None: this daemon serves no lane); the ticket,
# good once and for a minute, is the first call on a connection to that unix socket, and ties
# it to the asking connection: what a mount changes through the lane is not news to itself.
# Idempotent: a repeat only makes another ticket.
META_LANE: Endpoint[Any] = _declare("meta.lane", "ticket:bytes?", idempotent=True, callers=ANYONE)

# -- volume encryption keys (dfs/core/keys.py, daemon/service/volume_keys.py) -------------------
# Every volume's codec (zstd level, key id to encrypt with) and every data key, unwrapped by the
# primary (the master key never leaves it).  Mounts and the CLI (authenticated client and admin
# credentials) and peers: whoever may read chunks needs the keys to make sense of them; no
# daemon logs an answer's bytes.  Idempotent, not read-only: an encrypted volume still without a
# key gets one.
KEYS_VOLUMES: Endpoint[dict[str, Any]] = _declare(
    "keys.volumes", site=_PRIMARY, idempotent=True, callers=ANYONE
)
# A volume's newest data key id, made now if it has none, whatever its encryption policy: the
# dfs-managed key of S3 SSE-S3 objects in a bucket that is not encrypted as a whole
# (daemon/s3/sse.py).  The S3 shims (peer daemons) only; idempotent.
KEYS_VOLUME_KEY: Endpoint[int] = _declare("keys.volume_key", "volume:int", site=_PRIMARY, idempotent=True)
# The master key's fingerprint and the data keys' rows (no key bytes): `dfs key status`.
KEYS_STATUS: Endpoint[dict[str, Any]] = _declare("keys.status", site=_PRIMARY, read_only=True, callers=ADMINS)
# A new master key; every data key rewrapped in one transaction: `dfs key rotate`.
KEYS_ROTATE: Endpoint[dict[str, Any]] = _declare("keys.rotate", site=_PRIMARY, callers=ADMINS)
# The master key itself, for a peer that serves the same metadata (daemon/service/master_key_sync.py):
# ``want`` is a fingerprint, "current", or "" for none (just this daemon's fingerprint, for
# `dfs key status`).  Peer daemons only: no mount, client, admin or S3 credential gets it.
KEYS_MASTER: Endpoint[dict[str, Any]] = _declare("keys.master", "want:str", read_only=True, callers=NODES)

# -- in-process only ----------------------------------------------------------------------------
# An S3 key's secret: the S3 shim on the primary reads it; it never crosses the wire.
META_S3_KEY_GET: Endpoint[str | None] = _declare(
    "meta.s3_key_get", "access_key:str", site=Site.LOCAL, inline=True, read_only=True
)
