"""The metadata endpoints that need more than a plain metadata-thread call: argument shaping
(keyword arguments from the wire's positional ones, allowed-field checks), and commits that
first check the chunks they reference anew exist.

Alone, the local store answers "is this chunk stored?" inside the metadata
thread (GC runs there too).  In a cluster the chunk may be on other nodes: the
handler asks them first, then the commit refuses any chunk whose deletion
finished after the question was asked (daemon/cluster/deletions.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from daemon.chunks import ChunkStore
from daemon.cluster.deletions import AnyDeletionLog
from daemon.service.cluster_runner import ClusterRunner
from daemon.service.meta_calls import MetaCalls, NotOnLane
from daemon.service.threads import ChunkThreads
from dfs.core.errors import InvalidArgument
from dfs.core.namespace import Attr, BlockRef, FileMap

_SETATTR_FIELDS = {"mode", "uid", "gid", "size", "atime_ns", "mtime_ns"}
_SET_NODE_FIELDS = {"state", "zone", "capacity_weight"}
_PUT_OBJECT_OPTIONS = {
    "size",
    "mtime_ns",
    "blocks",
    "inline",
    "xattrs",
    "if_none_match",
    "if_match",
    "mode",
    "uid",
    "gid",
    "replicas",
}


def _check_setattr(changes: Any) -> dict[str, int | None]:
    """setattr ``changes``: known fields, each an integer (None: keep)."""
    if not isinstance(changes, dict) or set(changes) - _SETATTR_FIELDS:
        raise InvalidArgument(f"setattr: bad fields {changes!r:.100}")
    if any(v is not None and type(v) is not int for v in changes.values()):
        raise InvalidArgument(f"setattr: each change must be an integer, not {changes!r:.100}")
    return changes


def _check_put_object(opts: Any) -> dict[str, Any]:
    """put_object ``opts``: known options of the types MetaStore.put_object takes."""
    if not isinstance(opts, dict) or set(opts) - _PUT_OBJECT_OPTIONS:
        raise InvalidArgument(f"put_object: bad options {opts!r:.100}")
    if "size" not in opts or "mtime_ns" not in opts:
        raise InvalidArgument("put_object: size and mtime_ns are required")
    wrong = [k for k in ("size", "mtime_ns", "mode", "uid", "gid") if k in opts and type(opts[k]) is not int]
    if_match = opts.get("if_match")
    if if_match and not (
        isinstance(if_match, list | tuple) and len(if_match) == 2 and all(type(x) is bytes for x in if_match)
    ):
        wrong.append("if_match")  # and never bytes(an int): that allocates as many zero bytes
    for key, kinds in (("blocks", list), ("inline", bytes), ("xattrs", dict)):
        if opts.get(key) is not None and not isinstance(opts[key], kinds):
            wrong.append(key)
    if wrong:
        raise InvalidArgument(f"put_object: bad {', '.join(wrong)} in {opts!r:.100}")
    return opts


def _replicas_arg(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 7:
        raise InvalidArgument(f"replicas must be an integer in 1..7, not {value!r:.40}")
    return value


def _commit_args(
    blocks: list[Any], attrs: dict[str, Any] | None, replicas: Any
) -> tuple[list[BlockRef], int | None]:
    """A commit's blocks as refs and its R, with its held-back ``attrs`` checked before the
    commit (they are applied after it, in the same metadata-thread call)."""
    refs = [BlockRef.from_wire(b) for b in blocks]
    if attrs:
        _check_setattr(attrs)
    return refs, _replicas_arg(replicas)


class MetaHandlers:
    """Shaped metadata calls: the ``_``-prefixed ones run in the metadata thread (the handler
    table wraps them), the public ones are whole handlers."""

    def __init__(
        self,
        metacalls: MetaCalls,
        chunks: ChunkStore,
        threads: ChunkThreads,
        cluster: ClusterRunner,
        deletions: AnyDeletionLog,
    ) -> None:
        self._metacalls = metacalls
        self._m = metacalls.run
        self.chunks = chunks
        self._c = threads.run
        self._cluster = cluster
        self.deletions = deletions

    # -- metadata-thread calls needing argument shaping ------------------------------------------
    def setattr(self, ino: int, changes: dict[str, Any]) -> Attr:
        return self._metacalls.meta.setattr(ino, **_check_setattr(changes))

    def set_node(self, node_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(changes, dict) or set(changes) - _SET_NODE_FIELDS:
            raise InvalidArgument(f"set_node: bad fields {changes!r:.100}")
        return self._metacalls.meta.set_node(node_id, **changes)

    def make_dirs(
        self, parent: int, dirs: list[bytes], mode: int = 0o755, uid: int = 0, gid: int = 0
    ) -> Attr:
        return self._metacalls.meta.make_dirs(parent, list(dirs), mode=mode, uid=uid, gid=gid)

    def create_volume(
        self, name: str, policy: dict[str, Any], mode: int = 0o755, uid: int = 0, gid: int = 0
    ) -> Attr:
        return self._metacalls.meta.create_volume(name, dict(policy), mode=mode, uid=uid, gid=gid)

    def delete_volume(self, name: str, remove_dir: bool = True) -> None:
        self._metacalls.meta.delete_volume(name, remove_dir=remove_dir)

    def snapshot(self, src_dir: int, dst_parent: int, name: bytes, uid: int = 0, gid: int = 0) -> Attr:
        return self._metacalls.meta.snapshot(src_dir, dst_parent, name, uid=uid, gid=gid)

    # -- whole handlers --------------------------------------------------------------------------
    async def put_object(self, parent: int, dirs: list[bytes], name: bytes, opts: dict[str, Any]) -> Attr:
        """The S3 shim's atomic object write (MetaStore.put_object); ``opts`` carries its keywords."""
        _check_put_object(opts)
        refs = [BlockRef.from_wire(b) for b in opts.get("blocks") or []]
        if_match = opts.get("if_match")
        exists = await self._chunk_exists_for(refs)
        replicas = _replicas_arg(opts.get("replicas"))

        def run() -> Attr:
            return self._metacalls.meta.put_object(
                parent,
                list(dirs),
                name,
                mode=int(opts.get("mode", 0o644)),
                uid=int(opts.get("uid", 0)),
                gid=int(opts.get("gid", 0)),
                size=int(opts["size"]),
                mtime_ns=int(opts["mtime_ns"]),
                blocks=refs,
                inline=opts.get("inline"),
                xattrs=dict(opts.get("xattrs") or {}),
                chunk_exists=exists,
                replicas=replicas,
                if_none_match=bool(opts.get("if_none_match")),
                if_match=(bytes(if_match[0]), bytes(if_match[1])) if if_match else None,
            )

        return await self._m(run)

    async def open(self, ino: int, session: str, truncate: bool, read: bool) -> FileMap:
        """Register an open and return what a reader needs, in one round trip."""
        return await self._m(self._open, ino, session, truncate, read)

    def _open(self, ino: int, session: str, truncate: bool, read: bool) -> FileMap:
        meta = self._metacalls.meta
        attr = meta.open(ino, session, truncate=truncate, read=read)
        if not attr.is_reg:
            return FileMap(attr, None, [])
        return meta.read_map(ino)

    async def commit_write(
        self,
        ino: int,
        size: int,
        mtime_ns: int,
        blocks: list[Any],
        inline: bytes | None,
        attrs: dict[str, Any] | None = None,
        replicas: int | None = None,
    ) -> Any:
        """Commit a file's new blocks; ``attrs`` are setattr changes the mount held
        back while it wrote the file, applied right after (same metadata-thread call).
        ``replicas`` is the R the blocks were written with (repair keeps that many copies)."""
        refs, r = _commit_args(blocks, attrs, replicas)
        exists = await self._chunk_exists_for(refs)
        return await self._m(self._commit_write, ino, size, mtime_ns, refs, inline, exists, r, attrs)

    def commit_write_here(
        self,
        ino: int,
        size: int,
        mtime_ns: int,
        blocks: list[Any],
        inline: bytes | None,
        attrs: dict[str, Any] | None = None,
        replicas: int | None = None,
    ) -> Attr:
        """:meth:`commit_write` as one metadata-thread call, for the metadata lane
        (daemon/service/lane.py): alone, this daemon's chunk store answers whether a chunk is
        stored; in a cluster the other nodes are asked first, on the event loop (NotOnLane)."""
        if self._cluster.clustered():
            raise NotOnLane("a cluster's chunks are asked about on the event loop")
        refs, r = _commit_args(blocks, attrs, replicas)
        return self._commit_write(ino, size, mtime_ns, refs, inline, self.chunks.exists, r, attrs)

    def _commit_write(
        self,
        ino: int,
        size: int,
        mtime_ns: int,
        refs: list[BlockRef],
        inline: bytes | None,
        exists: Callable[[bytes], bool],
        replicas: int | None,
        attrs: dict[str, Any] | None,
    ) -> Attr:
        attr = self._metacalls.meta.commit_write(
            ino,
            size=size,
            mtime_ns=mtime_ns,
            blocks=refs,
            inline=inline,
            chunk_exists=exists,
            replicas=replicas,
        )
        return self.setattr(ino, attrs) if attrs else attr

    async def _chunk_exists_for(self, refs: list[BlockRef]) -> Callable[[bytes], bool]:
        """The "is this chunk stored?" test a commit uses for chunks it references anew (see the
        module docstring)."""
        chunkio = self._cluster.chunkio
        if not self._cluster.clustered() or chunkio is None:
            return self.chunks.exists
        asked_at = self.deletions.now()
        # A malformed ref (a chunk id that is no bytes) is refused by the commit itself.
        ids = list({r.chunk_id for r in refs if r.chunk_id and type(r.chunk_id) is bytes})
        local = set(await self._c(lambda: [c for c in ids if self.chunks.exists(c)]))
        remote = [c for c in ids if c not in local]
        present = local | (await chunkio.has_any(remote) if remote else set())
        deletions = self.deletions

        def exists(chunk_id: bytes) -> bool:
            return chunk_id in present and not deletions.refuses(chunk_id, asked_at)

        return exists
