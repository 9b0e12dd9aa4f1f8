"""The wire types of the declared endpoints' parameters (dfs/core/endpoints.py) and the argument
check the RPC server runs with them (:meth:`Endpoint.check_args`).

- Every declared parameter has a type the check understands, and the handler's own annotation
  allows it (a declaration stricter than the handler is fine, a looser one is a bug).
- For every endpoint, an argument of a wrong type (a bool where an int belongs, an int beyond
  64 bits, a list holding a wrong item) is refused with a message naming the method and the
  parameter; well-typed arguments are accepted, also after a trip over the wire.
- The arguments the in-repo callers really send (the client the mount and the S3 shim use, the
  CLI's shapes, a secondary's calls to the primary) pass the check of a real Service's RPC server.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daemon.admin.tokens as tokens
from daemon.changefeed import ChangeFeed
from daemon.service import Service
from daemon.service.frontends import Frontends
from daemon.service.meta_calls import MetaCalls
from dfs.client.chunks import PROBE_MIN_BYTES
from dfs.client.cluster import Client, fetch_info
from dfs.core import config as config_mod
from dfs.core import endpoints, sigv4, wire
from dfs.core.endpoints import ALL, WIRE_TYPES, Endpoint, Site
from dfs.core.errors import DfsError, S3Error
from dfs.core.namespace import ROOT_INO
from dfs.net import rpc
from dfs.net.failover import FailoverCaller

INT64 = (-(2**63), 2**63 - 1)
TYPED = [(ep, i) for ep in ALL.values() for i in range(len(ep.params)) if ep.types[i] != "any"]


def _alternatives(spec: str) -> list[str]:
    return re.split(r"\|(?![^\[]*\])", spec)


# -- values of each wire type ----------------------------------------------------------------------

_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(*INT64),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=8),
)
_any = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_SIMPLE: dict[str, st.SearchStrategy[Any]] = {
    "int": st.integers(*INT64),
    "float": st.floats(allow_nan=False) | st.integers(*INT64),
    "bytes": st.binary(max_size=40),
    "str": st.text(max_size=20),
    "bool": st.booleans(),
    "list": st.lists(_any, max_size=4),
    "dict": st.dictionaries(st.text(max_size=8), _any, max_size=4),
    "None": st.none(),
    "any": _any,
}
assert set(_SIMPLE) == {*WIRE_TYPES, "any"}


def valid(spec: str) -> st.SearchStrategy[Any]:
    """Values the declared type ``spec`` allows."""
    options = []
    for alt in _alternatives(spec):
        if alt.startswith("list["):
            options.append(st.lists(valid(alt[5:-1]), max_size=4))
        else:
            options.append(_SIMPLE[alt])
    return st.one_of(options)


#: One value of every kind the wire carries, for the wrong ones: bools and ints beyond 64 bits
#: (msgpack's unsigned range) included, and what msgpack decodes an ext type to.
_EVERY_KIND = st.one_of(
    _leaf,
    st.integers(2**63, 2**64 - 1),
    st.integers(-(2**63) - 2**20, -(2**63) - 1),
    st.lists(_leaf, max_size=3),
    st.dictionaries(st.text(max_size=4) | st.integers(*INT64), _leaf, max_size=3),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
)


def allowed(spec: str, value: Any) -> bool:
    """Whether ``spec`` allows ``value`` at the top level (items are not looked at)."""
    for alt in _alternatives(spec):
        if alt == "any":
            return True
        kinds = (list,) if alt.startswith("list[") else WIRE_TYPES[alt]
        if type(value) in kinds and (type(value) is not int or INT64[0] <= value <= INT64[1]):
            return True
    return False


def wire_trip(method: str, args: Sequence[Any]) -> list[Any]:
    """``args`` as the server sees them: encoded by a client, decoded by the server."""
    decoder = wire.FrameDecoder()
    decoder.feed(wire.encode_request(1, method, list(args)))
    req = decoder.next_event()
    assert isinstance(req, wire.Request)
    return req.args


def args_for(ep: Endpoint[Any], data: st.DataObject, n: int | None = None) -> list[Any]:
    count = data.draw(st.integers(len(ep.params) - ep.optional, len(ep.params))) if n is None else n
    return [data.draw(valid(ep.types[i]), label=ep.params[i]) for i in range(count)]


# -- the declarations -------------------------------------------------------------------------------


def test_every_parameter_is_typed_in_the_registry() -> None:
    for ep in ALL.values():
        assert len(ep.types) == len(ep.params), ep.name


def test_the_type_language_refuses_what_it_does_not_know() -> None:
    for bad in ("ino", "ino:", "ino:integer", "ino:int|nul", "ids:list[bytes]|list[str]", "a:int? b:int"):
        with pytest.raises(ValueError, match="meta.zz"):
            endpoints._declare("meta.zz", bad)
    assert "meta.zz" not in ALL


def _annotation_kinds(annotation: str) -> set[type] | None:
    """The top-level types a handler's annotation allows (None: anything)."""
    kinds: set[type] = set()
    for part in _alternatives(annotation.replace(" ", "")):
        base = part.split("[", 1)[0]
        if base in ("Any", "object"):
            return None
        kinds.update({"tuple": (list,), "Sequence": (list,), "Mapping": (dict,)}.get(base, WIRE_TYPES[base]))
    return kinds


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[Service]:
    service = Service(config_mod.parse(f'[node]\ndata_dir = "{tmp_path / "var"}"\n', env={}, origin="test"))
    yield service
    service.close()


def test_declared_types_are_what_the_handlers_take(primary: Service) -> None:
    """A declaration may be stricter than its handler's annotation, never looser."""
    found = {**primary.handlers, **primary.local_inline_handlers()}
    looser = []
    for name, fn in found.items():
        ep = ALL[name]
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params = [p for p in inspect.signature(fn).parameters.values() if p.kind in positional]
        for param, spec in zip(params, ep.types, strict=True):
            if param.annotation is param.empty:
                continue
            annotation = str(param.annotation)  # a string: the sources use postponed annotations
            wanted = _annotation_kinds(annotation)
            declared = {
                k for alt in _alternatives(spec) for k in ((list,) if "[" in alt else WIRE_TYPES[alt])
            }
            if wanted is not None and not declared <= wanted:
                looser.append(f"{name}: {param.name} declared {spec}, handler takes {annotation}")
    assert looser == []


# -- the check ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ep", "i"), TYPED, ids=[f"{ep.name}-{ep.params[i]}" for ep, i in TYPED])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_wrongly_typed_argument_is_refused_naming_the_parameter(
    ep: Endpoint[Any], i: int, data: st.DataObject
) -> None:
    args = args_for(
        ep, data, n=data.draw(st.integers(max(i + 1, len(ep.params) - ep.optional), len(ep.params)))
    )
    spec = ep.types[i]
    args[i] = data.draw(_EVERY_KIND.filter(lambda v: not allowed(spec, v)), label="wrong")
    problem = ep.check_args(args)
    assert problem is not None and problem.startswith(f"{ep.name}: {ep.params[i]} must be {spec}, not ")
    # A value the wire can carry is refused just the same once it has crossed it.
    if type(args[i]) is not int or -(2**63) <= args[i] < 2**64:
        assert ep.check_args(wire_trip(ep.name, args)) is not None


LISTS = [(ep, i) for ep, i in TYPED if "list[" in ep.types[i]]


@pytest.mark.parametrize(("ep", "i"), LISTS, ids=[f"{ep.name}-{ep.params[i]}" for ep, i in LISTS])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_a_list_holding_a_wrong_item_is_refused(ep: Endpoint[Any], i: int, data: st.DataObject) -> None:
    args = args_for(ep, data, n=len(ep.params))
    item_spec = next(a for a in _alternatives(ep.types[i]) if a.startswith("list["))[5:-1]
    items = data.draw(st.lists(valid(item_spec), max_size=3))
    at = data.draw(st.integers(0, len(items)))
    items.insert(at, data.draw(_EVERY_KIND.filter(lambda v: not allowed(item_spec, v))))
    args[i] = items
    problem = ep.check_args(args)
    assert problem is not None and problem.startswith(f"{ep.name}: {ep.params[i]} must be ")
    assert problem.endswith(f"(at {at})")


@pytest.mark.parametrize("ep", list(ALL.values()), ids=list(ALL))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_well_typed_arguments_are_accepted_also_after_the_wire(
    ep: Endpoint[Any], data: st.DataObject
) -> None:
    args = args_for(ep, data)
    assert ep.check_args(args) is None
    assert ep.check_args(wire_trip(ep.name, [tuple(a) if type(a) is list else a for a in args])) is None


def test_counts_bools_and_64_bits() -> None:
    check = endpoints.META_READDIR.check_args
    assert check([1, 0, 10]) is None
    assert check([1, 0]) == "meta.readdir: takes 3 arguments, got 2"
    assert check([1, None, "a"]) == "meta.readdir: cookie must be int, not None"
    assert check([True, 0, 10]) == "meta.readdir: ino must be int, not bool"
    assert check([2**63, 0, 10]) == "meta.readdir: ino must be int, not an int out of the signed 64-bit range"
    assert endpoints.META_POLICY.check_args([1]) is None  # an optional one left out
    assert endpoints.META_POLICY.check_args([1, None]) is None
    assert endpoints.META_POLICY.check_args([1, 2, 3]) == "meta.policy: takes 1 to 2 arguments, got 3"
    assert endpoints.NS_CHANGES.check_args(["e", 0, 5]) is None  # a float takes an int
    assert endpoints.NS_CHANGES.check_args(["e", 0, False]) == "ns.changes: wait_s must be float, not bool"
    assert endpoints.CHUNK_GET.check_args(["ab"]) == "chunk.get: chunk_id must be bytes, not str"


# -- the in-repo callers ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _served(service: Service, refused: list[str], seen: set[str]) -> AsyncIterator[rpc.RpcClient]:
    """A client of ``service`` served over RPC with the declarations' checks, which record
    every method checked (``seen``) and every refusal (``refused``)."""

    def recording(ep: Endpoint[Any]) -> Callable[[Sequence[Any]], str | None]:
        def check(args: Sequence[Any]) -> str | None:
            seen.add(ep.name)
            problem = ep.check_args(args)
            if problem is not None:
                refused.append(problem)
            return problem

        return check

    server = rpc.RpcServer(
        service.handlers,
        inline_handlers=service.inline_handlers(),
        validators={ep.name: recording(ep) for ep in ALL.values()},
    )
    async with trio.open_nursery() as nursery:
        listeners = await rpc.open_listeners("127.0.0.1:0")
        await nursery.start(server.serve, listeners)
        port = listeners[0].socket.getsockname()[1]
        async with rpc.open_client(f"127.0.0.1:{port}") as conn:
            yield conn
        nursery.cancel_scope.cancel()


async def _attempt(call: Awaitable[Any]) -> Any:
    """Run a call whose outcome does not matter here (only that its arguments passed)."""
    try:
        return await call
    except (DfsError, S3Error):
        return None


async def test_the_arguments_in_repo_callers_send_pass_the_check(primary: Service, tmp_path: Path) -> None:
    refused: list[str] = []
    seen: set[str] = set()
    e = endpoints
    async with _served(primary, refused, seen) as conn:
        # The client the mount and the S3 shim use (dfs/client/cluster.py), with their shapes.
        c = Client(conn, await fetch_info(conn), local_reads=False)
        now = time.time_ns()
        d, _ = await c.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
        f, _ = await c.create(d.ino, b"f", 0o644, 0, 0, "session-1")
        await c.open(f.ino, "session-1", truncate=bool(0), read=True)
        ref = await c.write_block(0, b"x" * 10000)
        await c.write_block(0, b"x" * 10000, force=True)
        # Only a chunk worth the round trip is asked about before it is sent (chunk.has).
        await c.write_block(1, os.urandom(PROBE_MIN_BYTES))
        await c.commit_write(
            f.ino, size=10000, mtime_ns=now, blocks=[ref], inline=None, attrs={"mode": 0o600}
        )
        await c.commit_write(f.ino, size=3, mtime_ns=now, blocks=[], inline=b"abc", attrs=None, replicas=1)
        assert await c.read_chunk(ref.chunk_id)
        await c.setattr(f.ino, size=0, mtime_ns=now)
        await c.lookup(d.ino, b"f")
        await c.lookup_versioned(d.ino, b"absent")
        await c.getattr(f.ino)
        await c.readdir(d.ino, 0, 100)
        await c.symlink(d.ino, b"l", b"target", 0, 0)
        await c.readlink((await c.lookup(d.ino, b"l")).ino)
        await c.mknod(d.ino, b"n", stat.S_IFIFO | 0o644, 0, 0, 0)
        await c.link(f.ino, d.ino, b"f2")
        await c.rename(d.ino, b"f2", d.ino, b"f3", 0)
        await c.unlink(d.ino, b"f3")
        await c.setxattr(f.ino, b"user.a", b"v", 0)
        await c.getxattr(f.ino, b"user.a")
        await c.listxattr(f.ino)
        await c.removexattr(f.ino, b"user.a")
        await c.sync()
        await c.policy(f.ino, d.ino)
        await c.policy(d.ino)
        await c.open_events([("open", f.ino), ("release", f.ino)], "session-1")
        await c.session_heartbeat("session-1")
        await c.read_map(f.ino)
        await c.statfs()
        answer = await c.changes("", 0, 0.0)
        await c.changes(answer.epoch, answer.cursor, 0.5)
        await c.end_session("session-1")
        # A mount sends its changes through dfs/net/failover.py: inside meta.once, with a request id.
        m = Client(FailoverCaller([conn], ["d0"]), await fetch_info(conn), local_reads=False)
        once, _ = await m.mkdir(d.ino, b"once", 0o755, 0, 0)
        await m.rename(d.ino, b"once", d.ino, b"twice", 0)
        await m.rmdir(d.ino, b"twice")
        sub, _ = await c.mkdir(d.ino, b"empty", 0o755, 0, 0)
        await c.rmdir(d.ino, b"empty")
        # ...and as the S3 shim uses it (daemon/s3).
        await c.internal_dir("uploads")
        b = await c.make_dirs(ROOT_INO, [b"b1", b"x"], mode=0o755)
        await c.resolve(ROOT_INO, [b"b1", b"x"])
        await c.list_dir(b.ino, b"", 100)
        for if_match in (None, (b"user.s3.etag", b"e")):
            await _attempt(
                c.put_object(
                    b.ino, [b"p", b"q"], b"obj", size=3, mtime_ns=now, blocks=[], inline=b"abc",
                    xattrs={b"user.s3.etag": b"e"}, if_none_match=False, if_match=if_match, replicas=None,
                )
            )  # fmt: skip
        await c.put_object(
            b.ino, [], b"big", size=10000, mtime_ns=now, blocks=[ref], inline=None, xattrs={}, replicas=1
        )
        await c.remove_empty_parents(b.ino, [b"p", b"q"])
        await c.remove_tree(ROOT_INO, b"b1")
        await e.META_CREATE_VOLUME.call(conn, "bucket", {}, 0o755, 0, 0)  # daemon/s3/buckets.py
        await e.META_GET_VOLUME.call(conn, "bucket")
        await e.QUOTA_SET.call(conn, "/bucket", {"max_bytes": 10**9, "max_inodes": None})  # dfs/cli/quota.py
        await e.QUOTA_GET.call(conn, "/bucket")
        await e.QUOTA_LIST.call(conn)
        await e.QUOTA_CLEAR.call(conn, "/bucket")

        # The CLI's shapes (dfs/cli): keys, tokens, nodes, fsck, gc, scrub, status.
        key = await e.S3_KEY_CREATE.call(conn, "a note", [["bucket", "rw"]])
        await e.S3_KEY_CREATE.call(conn, "")
        await e.S3_KEY_LIST.call(conn)
        await e.S3_KEY_GRANT.call(conn, key["access_key"], "bucket", "owner")
        await e.S3_KEY_REVOKE_GRANT.call(conn, key["access_key"], "bucket")
        await e.S3_BUCKET_OWN.call(conn, "bucket", key["access_key"])
        await e.S3_KEY_REVOKE.call(conn, key["access_key"])
        made = await e.ADMIN_TOKEN_CREATE.call(conn, "read", "")
        await e.ADMIN_TOKEN_LIST.call(conn)
        await e.ADMIN_TOKEN_REVOKE.call(conn, made["id"])
        await e.META_REGISTER_NODE.call(conn, "node-b", "default", "10.0.0.2:7400", 1.0)
        await e.META_SET_NODE.call(conn, "node-b", {"capacity_weight": 2.0})
        await e.META_SET_NODE.call(conn, "node-b", {"state": "out"})
        await e.META_REMOVE_NODE.call(conn, "node-b")
        await e.SYS_FSCK_META.call(conn, False)
        for now_flag in (True, False):
            await e.SYS_GC.call(conn, 0.0 if now_flag else None)
            await e.SYS_SWEEP_ORPHANS.call(conn, 0.0 if now_flag else None)
        ids = await e.SYS_SCRUB_LIST.call(conn)
        await e.SYS_SCRUB_BATCH.call(conn, ids[:10])
        await e.SYS_DISKS.call(conn, "list")  # dfs/cli/disks.py
        await _attempt(e.SYS_DISKS.call(conn, "drain", "/nowhere"))
        for read in (e.SYS_STATUS, e.SYS_MEMBERS, e.SYS_CLUSTER, e.SYS_REPAIR_STATUS, e.SYS_PING):
            await read.call(conn)
        await e.SYS_REPAIR_NOW.call(conn)
        await _attempt(e.SYS_GOSSIP_KEYRING.call(conn, "list", None))  # gossip is off here
        await _attempt(e.SYS_GOSSIP_KEYRING.call(conn, "install", b"k" * 32))
        await _attempt(e.SYS_GOSSIP_KEYRING.call(conn, "use", "fingerprint"))
        await e.META_LIST_VOLUMES.call(conn)
        await _attempt(e.META_UPDATE_VOLUME.call(conn, "bucket", {"replication": 1}))
        # Volume codecs and keys: mounts and the S3 shim (dfs/client/cluster.py), `dfs key` (dfs/cli/key.py).
        await c.volume_of(d.ino, None)
        await c.volume_of(ROOT_INO, ROOT_INO)
        await c.keyring(0.0)
        await _attempt(e.KEYS_VOLUME_KEY.call(conn, d.ino))  # S3 SSE-S3 (daemon/s3/sse.py)
        await e.KEYS_STATUS.call(conn)
        await _attempt(e.KEYS_ROTATE.call(conn))
        # A peer sharing the metadata (daemon/service/master_key_sync.py): "current", a
        # fingerprint, or "" (just the fingerprint, for `dfs key status`).
        for want in ("current", "0123456789abcdef", ""):
            await e.KEYS_MASTER.call(conn, want)
        await _attempt(e.META_SNAPSHOT.call(conn, d.ino, ROOT_INO, b"snap", 0, 0))
        # `dfs snapshot` (dfs/cli/snapshot.py).
        await _attempt(e.SNAPSHOT_CREATE.call(conn, "bucket", "s1"))
        await e.SNAPSHOT_LIST.call(conn, None)
        await e.SNAPSHOT_LIST.call(conn, "bucket")
        await _attempt(e.SNAPSHOT_RESTORE.call(conn, "bucket", "s1", None, None))
        await _attempt(e.SNAPSHOT_RESTORE.call(conn, "bucket", "s1", "a/b", "/bucket/c"))
        await _attempt(e.SNAPSHOT_CLONE.call(conn, "bucket", "s1", "bucket2"))
        await _attempt(e.SNAPSHOT_SCHEDULE.call(conn, "bucket", "hourly=2"))
        await _attempt(e.SNAPSHOT_SCHEDULE.call(conn, "bucket", None))
        await _attempt(e.SNAPSHOT_DELETE.call(conn, "bucket", "s1"))
        # `dfs trash` (dfs/cli/trash.py).
        await e.TRASH_LIST.call(conn, None)
        await e.TRASH_LIST.call(conn, "bucket")
        await e.TRASH_USAGE.call(conn)
        await _attempt(e.TRASH_RESTORE.call(conn, "bucket", 12345, None))
        await _attempt(e.TRASH_RESTORE.call(conn, "bucket", 12345, "/bucket/x"))
        await e.TRASH_EMPTY.call(conn, "bucket", 1.5)
        await e.TRASH_EMPTY.call(conn, None, None)
        # `dfs tier` (dfs/cli/tier.py) and the daemons' tier reads (daemon/service/tiering.py).
        await _attempt(e.TIER_PUT.call(conn, "cold", {"name": "cold", "kind": "dir", "bucket": "/nowhere"}))
        await e.TIER_LIST.call(conn)
        await e.TIER_STATUS.call(conn)
        await _attempt(e.TIER_PIN.call(conn, "/bucket", True))
        await _attempt(e.TIER_PIN.call(conn, "/bucket", False))
        await e.TIER_RUN.call(conn, False)
        await e.TIER_RUN.call(conn, True)
        await e.TIER_WARM.call(conn, [b"\x00" * 32])
        await _attempt(e.TIER_DELETE.call(conn, "cold"))
        # S3 versioning (daemon/s3/tree.py, objects.py, buckets.py, versioning.py; dfs status).
        await _attempt(e.S3_VERSIONING_SET.call(conn, d.ino, "Enabled"))
        await e.S3_VERSIONING_GET.call(conn, d.ino)
        await _attempt(e.S3_VERSIONS_GET.call(conn, d.ino, b"k", None))
        await _attempt(e.S3_VERSIONS_GET.call(conn, d.ino, b"k", "null"))
        await _attempt(e.S3_VERSIONS_DELETE.call(conn, d.ino, b"k", None))
        await _attempt(e.S3_VERSIONS_DELETE.call(conn, d.ino, b"k", "0" * 32))
        await _attempt(e.S3_VERSIONS_DELETE.call(conn, d.ino, b"k", "0" * 32, True))
        # S3 object lock (daemon/s3/objlock.py).
        await _attempt(
            e.S3_OBJLOCK_CONFIG_SET.call(conn, d.ino, {"mode": "GOVERNANCE", "days": 1, "years": None})
        )
        await e.S3_OBJLOCK_CONFIG_GET.call(conn, d.ino)
        await _attempt(e.S3_OBJLOCK_GET.call(conn, d.ino))
        await _attempt(e.S3_OBJLOCK_RETENTION_SET.call(conn, d.ino, d.ino, "GOVERNANCE", 2**62, False))
        await _attempt(e.S3_OBJLOCK_RETENTION_SET.call(conn, d.ino, d.ino, None, None, True))
        await _attempt(e.S3_OBJLOCK_HOLD_SET.call(conn, d.ino, d.ino, True))
        await e.S3_VERSIONS_LIST.call(conn, d.ino, b"", b"", 0, 1000)
        await e.S3_VERSIONS_USAGE.call(conn)
        await _attempt(e.META_DELETE_VOLUME.call(conn, "bucket", True))

        # What daemons ask each other (daemon/cluster, daemon/service): a secondary's calls to
        # the primary go through the same code as on a secondary.
        await _attempt(e.CHUNK_VERIFY.call(conn, ref.chunk_id))  # collected by the GC above
        await e.CHUNK_DIGESTS.call(conn, sorted({3, 1, 2}))
        await e.CHUNK_HINT.call(conn, ["node-c"], [ref.chunk_id])
        await _attempt(e.CHUNK_PIN.call(conn, [ref.chunk_id], 60.0))  # no hot-chunk tracker here
        await e.META_LAYOUT.call(conn)
        await e.META_COUNTS.call(conn)
        await e.META_CHUNK_FACTORS.call(conn, [ref.chunk_id])
        await e.META_CHUNK_REPLICAS.call(conn, [ref.chunk_id])
        await e.META_CLAIM_ORPHANS.call(conn, [b"\0" * 32])
        # A mount asks for the metadata lane (dfs/net/lane.py); a ticket belongs on the lane.
        await e.META_LANE.call(conn)
        await _attempt(e.META_LANE.call(conn, b"t" * 16))
        secondary_cfg = config_mod.parse(
            f'[node]\ndata_dir = "{tmp_path / "sec"}"\n[cluster]\nmeta = "127.0.0.1:1"\n',
            env={},
            origin="test",
        )
        # A secondary has no metadata store of its own: it asks the primary.
        no_store = MetaCalls(None, ChangeFeed(), primary_address="127.0.0.1:1")
        front = Frontends(secondary_cfg, no_store, SimpleNamespace(primary=conn))
        view = sigv4.RequestView(
            "GET", "/bucket/key", "", {"host": "localhost", "authorization": "AWS4-HMAC-SHA256"}
        )
        await _attempt(front.s3_authenticate_remote(view, None))
        await _attempt(front.s3_authenticate_remote(view, "bucket"))
        await _attempt(front.s3_authenticate_post_remote({"policy": "e30=", "x-amz-signature": "00"}))
        await _attempt(front.forward_admin("GET", "/health", [("content-type", "x")], b"{}", "127.0.0.1:1"))
        await front.admin_token_scope(tokens.new_token()[1])
        # Metadata backups: `dfs meta backup` and friends (dfs/cli/meta.py), and the manifest the
        # maker sends to each node (daemon/service/backups.py).
        await _attempt(e.SYS_BACKUP_NOW.call(conn))
        for row in await e.SYS_BACKUP_LIST.call(conn) or [{"id": "none"}]:
            await _attempt(e.SYS_BACKUP_READ.call(conn, row["id"], 0, 1 << 20))
            await _attempt(e.SYS_BACKUP_MANIFEST.call(conn, row))
        await _attempt(e.SYS_BACKUP_MANIFEST.call(conn, {"id": "backup-1", "dump_bytes": 5}))
        await e.CHUNK_DELETE.call(conn, [ref.chunk_id])
    assert refused == []
    missed = {ep.name for ep in ALL.values() if ep.site is not Site.LOCAL} - seen
    assert not missed, f"no caller's arguments exercised {sorted(missed)}: add their callers' shapes here"


# -- well-typed but bad values: the handler's own InvalidArgument ------------------------------------


async def test_handlers_refuse_well_typed_bad_values_as_invalid_argument(primary: Service) -> None:
    """What the fuzz tier (tests/fuzz) found once the types were checked at the door: values of
    the declared type a handler failed on (InternalError and a traceback in the log)."""
    e = endpoints
    async with _served(primary, [], set()) as conn:
        f, _ = await e.META_CREATE.call(conn, ROOT_INO, b"f", 0o644, 0, 0, "s")
        ino = f[0]
        epoch = (await e.NS_CHANGES.call(conn, "", 0, 0))["epoch"]
        await e.META_REGISTER_NODE.call(conn, "node-b", "default", "10.0.0.2:7400")
        put = {"size": 0, "mtime_ns": 0}
        for ep, args in [
            (e.NS_CHANGES, (epoch, 0, float("nan"))),  # trio refuses a NaN timeout
            (e.SYS_GC, (float("nan"),)),
            (e.SYS_GC, (float("inf"),)),
            (e.SYS_GC, (1e308,)),
            (e.SYS_GC, (-1,)),
            (e.META_OPEN_EVENTS, ([["open"]], "s")),
            (e.META_OPEN_EVENTS, ([["open", ino, 3]], "s")),
            (e.META_OPEN_EVENTS, ([["open", "x"]], "s")),
            (e.META_OPEN_EVENTS, ([["open", 2**64 - 1]], "s")),
            (e.META_PUT_OBJECT, (ROOT_INO, [], b"o", {"mtime_ns": 0})),
            (e.META_PUT_OBJECT, (ROOT_INO, [], b"o", {**put, "mode": "x"})),
            (e.META_PUT_OBJECT, (ROOT_INO, [], b"o", {**put, "if_match": [2**40, b""]})),  # no 1 TiB of zeros
            (e.META_PUT_OBJECT, (ROOT_INO, [], b"o", {**put, "xattrs": [1]})),
            (e.META_SETATTR, (ino, {"size": b"x"})),
            (e.META_SETATTR, (ino, {"mode": "x"})),
            (e.META_SETATTR, (ino, {"size": 2**64 - 1})),  # beyond SQLite, inside a map
            (e.META_COMMIT_WRITE, (ino, 3, 0, [], b"abc", {"mode": "x"})),
            (e.META_SET_NODE, ("node-b", {"state": []})),
        ]:
            with pytest.raises(DfsError) as info:
                await ep.call(conn, *args)
            assert info.value.code == "InvalidArgument", (ep.name, args, info.value)
        # The refused commit changed nothing (its attrs are checked before it commits).
        assert (await e.META_GETATTR.call(conn, ino))[6] == 0  # size
