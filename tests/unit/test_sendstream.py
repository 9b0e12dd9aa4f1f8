"""The send stream format (dfs/core/sendstream.py): round trips in any split, and every kind of
damage -- a flipped byte anywhere, a cut, frames reordered or repeated, bad grammar -- refused
with a StreamError; and the sender's diff plan (dfs/cli/sendrecv.py plan)."""

from __future__ import annotations

import random
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfs.cli.sendrecv import Node, plan
from dfs.core import sendstream as ss
from dfs.core.namespace import Attr, BlockRef, FileMap

BS = 64  # a tiny block size keeps generated files small
SID = bytes(range(16))

names = st.binary(min_size=1, max_size=8).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
)
paths = st.lists(names, min_size=1, max_size=3).map(b"/".join)
metas = st.builds(
    ss.Meta,
    st.integers(0, 0o177777),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**63), 2**63 - 1),
)
xattrs = st.dictionaries(st.binary(min_size=1, max_size=10), st.binary(max_size=20), max_size=3)


@st.composite
def file_records(draw: st.DrawFn, incremental: bool) -> list[ss.Record]:
    path = draw(paths)
    size = draw(st.integers(0, 5 * BS))
    if draw(st.booleans()):
        return [
            ss.File(path, draw(metas), draw(xattrs), size, draw(st.binary(min_size=size, max_size=size)), 0)
        ]
    nmax = -(-size // BS)
    indexes = sorted(draw(st.sets(st.integers(0, max(nmax - 1, 0)), max_size=nmax)))
    blocks: list[ss.Record] = []
    for i in indexes:
        length = draw(st.integers(1, BS))
        if incremental and draw(st.booleans()):
            blocks.append(ss.Same(i, length, draw(paths), draw(st.integers(0, 10))))
        else:
            blocks.append(ss.Data(i, draw(st.binary(min_size=length, max_size=length))))
    return [ss.File(path, draw(metas), draw(xattrs), size, None, len(blocks)), *blocks]


@st.composite
def streams(draw: st.DrawFn) -> tuple[ss.Header, list[ss.Record]]:
    incremental = draw(st.booleans())
    header = ss.Header(
        "vol", "s2", "s1" if incremental else None, SID, BS, b"b" * 32 if incremental else None
    )
    records: list[ss.Record] = [ss.Dir(b"", draw(metas), draw(xattrs))]
    files: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["dir", "file", "symlink", "special", "link", "delete"]))
        if kind == "dir":
            records.append(ss.Dir(draw(paths), draw(metas), draw(xattrs)))
        elif kind == "file":
            recs = draw(file_records(incremental))
            assert isinstance(recs[0], ss.File)
            files.append(recs[0].path)
            records += recs
        elif kind == "symlink":
            records.append(
                ss.Symlink(
                    draw(paths),
                    draw(metas),
                    draw(st.binary(min_size=1, max_size=20).filter(lambda t: b"\0" not in t)),
                )
            )
        elif kind == "special":
            records.append(ss.Special(draw(paths), draw(metas), draw(xattrs)))
        elif kind == "link" and files:
            records.append(ss.Link(draw(paths), draw(st.sampled_from(files))))
        elif kind == "delete" and incremental:
            records.append(ss.Delete(draw(paths)))
    return header, records


def encode(header: ss.Header, records: list[ss.Record], digest: bytes = b"d" * 32) -> bytes:
    enc = ss.Encoder()
    return enc.start(header) + b"".join(enc.record(r) for r in records) + enc.finish(digest)


def decode(data: bytes, cuts: list[int] | None = None) -> list[tuple[int, ss.Frame]]:
    dec = ss.Decoder()
    out: list[tuple[int, ss.Frame]] = []
    last = 0
    for cut in sorted(cuts or []) + [len(data)]:
        out += dec.feed(data[last:cut])
        last = cut
    dec.close()
    return out


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(0, 10_000), max_size=5))
def test_round_trip_in_any_split(stream: tuple[ss.Header, list[ss.Record]], cuts: list[int]) -> None:
    header, records = stream
    data = encode(header, records)
    frames = decode(data, [c % (len(data) + 1) for c in cuts])
    assert [f for _, f in frames] == [header, *records, ss.Trailer(len(records), b"d" * 32)]
    assert [s for s, _ in frames] == list(range(len(records) + 2))


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.data())
def test_any_flipped_byte_is_refused(stream: tuple[ss.Header, list[ss.Record]], data: st.DataObject) -> None:
    raw = bytearray(encode(*stream))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ss.StreamError):
        decode(bytes(raw))


def test_every_single_byte_flip_of_a_small_stream_is_refused() -> None:
    header = ss.Header("vol", "s2", "s1", SID, BS, b"b" * 32)
    meta = ss.Meta(0o100644, 1, 2, 0, 3, 4)
    raw = encode(
        header,
        [
            ss.Dir(b"", meta._replace(mode=0o40755), {b"user.a": b"1"}),
            ss.Delete(b"old"),
            ss.File(b"f", meta, {}, 100, None, 2),
            ss.Data(0, b"x" * BS),
            ss.Same(1, 36, b"g", 0),
            ss.Link(b"h", b"f"),
            ss.Symlink(b"l", meta, b"f"),
        ],
    )
    for pos in range(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 0x80
        with pytest.raises(ss.StreamError):
            decode(bytes(bad))


@settings(max_examples=60)
@given(streams(), st.data())
def test_every_cut_is_refused(stream: tuple[ss.Header, list[ss.Record]], data: st.DataObject) -> None:
    raw = encode(*stream)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ss.StreamError, match="truncated"):
        decode(raw[:cut])


def _frames(header: ss.Header, records: list[ss.Record]) -> tuple[bytes, list[bytes]]:
    enc = ss.Encoder()
    start = enc.start(header)
    return start, [enc.record(r) for r in records] + [enc.finish(b"d" * 32)]


META = ss.Meta(0o100644, 0, 0, 0, 0, 0)
FULL = ss.Header("vol", "s1", None, SID, BS)


def test_reordered_or_repeated_frames_are_refused() -> None:
    start, frames = _frames(FULL, [ss.Dir(b"", META, {}), ss.Dir(b"a", META, {}), ss.Dir(b"b", META, {})])
    with pytest.raises(ss.StreamError, match="out of order"):
        decode(start + frames[1] + frames[0] + b"".join(frames[2:]))
    with pytest.raises(ss.StreamError, match="out of order"):
        decode(start + frames[0] + frames[0] + b"".join(frames[1:]))
    with pytest.raises(ss.StreamError, match="out of order"):
        decode(start + b"".join(frames[1:]))  # one left out


def test_bytes_after_the_trailer_are_refused() -> None:
    raw = encode(FULL, [ss.Dir(b"", META, {})])
    with pytest.raises(ss.StreamError, match="after the stream's trailer"):
        decode(raw + b"\0")


@pytest.mark.parametrize(
    ("header", "records", "why"),
    [
        (FULL, [ss.Data(0, b"x")], "outside a file"),
        (FULL, [ss.File(b"f", META, {}, 10, None, 1), ss.Same(0, 10, b"g", 0)], "base block in a full"),
        (FULL, [ss.Delete(b"f")], "delete in a full"),
        (FULL, [ss.Link(b"h", b"f")], "not a file sent before"),
        (FULL, [ss.File(b"f", META, {}, 10, None, 1), ss.Dir(b"a", META, {})], "still due"),
        (FULL, [ss.File(b"f", META, {}, 10, None, 2)], "blocks for a file"),
        (FULL, [ss.File(b"f", META, {}, 200, None, 2), ss.Data(1, b"x"), ss.Data(0, b"x")], "out of order"),
        (FULL, [ss.File(b"f", META, {}, 10, None, 1), ss.Data(0, b"x" * (BS + 1))], "block of"),
        (FULL, [ss.File(b"f", META, {}, 10, b"abc", 0)], "inline"),
        (FULL, [ss.Dir(b"a/../b", META, {})], "bad path"),
        (FULL, [ss.Dir(b"/a", META, {})], "bad path"),
        (FULL, [ss.Symlink(b"", META, b"x")], "empty path"),
        (ss.Header("vol", "s1", None, SID, BS, version=2), [], "version 2"),
        (ss.Header("vol", "s2", "s1", SID, BS, None), [], "bad base digest"),
        (ss.Header("vol", "s1", None, SID, BS, b"b" * 32), [], "bad base digest"),
    ],
)
def test_bad_grammar_is_refused(header: ss.Header, records: list[ss.Record], why: str) -> None:
    with pytest.raises(ss.StreamError, match=why):
        decode(encode(header, records))


def test_a_wrong_record_count_in_the_trailer_is_refused() -> None:
    enc = ss.Encoder()
    raw = enc.start(FULL) + enc.record(ss.Dir(b"", META, {}))
    enc.records = 5
    with pytest.raises(ss.StreamError, match="trailer counts 5"):
        decode(raw + enc.finish(b"d" * 32))


def test_an_oversized_frame_length_is_refused_before_buffering() -> None:
    dec = ss.Decoder(max_frame_bytes=1000)
    head = ss.MAGIC + ss._HEAD.pack(1001, 0, b"\0" * 16)
    with pytest.raises(ss.StreamError, match="exceeds"):
        dec.feed(head)
    with pytest.raises(ss.StreamError):  # and stays failed
        dec.feed(b"")


def test_not_a_stream() -> None:
    with pytest.raises(ss.StreamError, match="magic"):
        decode(b"PK\x03\x04 something else")
    with pytest.raises(ss.StreamError, match="truncated"):
        decode(b"")


# -- tree digests ---------------------------------------------------------------------------------

entries = st.builds(
    ss.TreeEntry,
    paths,
    st.integers(0, 0o177777),
    st.integers(0, 10),
    st.integers(0, 10),
    st.integers(0, 10),
    st.integers(0, 10),
    st.integers(0, 10),
    st.integers(1, 3),
    st.binary(max_size=5),
    xattrs,
    st.lists(st.tuples(st.integers(0, 10), st.integers(1, 10)), max_size=3).map(tuple),
)


@given(st.lists(entries, max_size=8, unique_by=lambda e: e.path), st.randoms())
def test_digest_ignores_order_and_sees_any_change(es: list[ss.TreeEntry], rnd: random.Random) -> None:
    shuffled = list(es)
    rnd.shuffle(shuffled)
    assert ss.tree_digest(es) == ss.tree_digest(shuffled)
    if es:
        changed = [es[0]._replace(mtime_ns=es[0].mtime_ns + 1), *es[1:]]
        assert ss.tree_digest(changed) != ss.tree_digest(es)
        assert ss.tree_digest(es[1:]) != ss.tree_digest(es)
        lost = [es[0]._replace(blocks=es[0].blocks[1:] if es[0].blocks else ((0, 1),)), *es[1:]]
        assert ss.tree_digest(lost) != ss.tree_digest(es)  # a block missing shows


# -- the sender's plan ----------------------------------------------------------------------------


def _node(
    path: bytes, mode: int, *, ino: int = 0, nlink: int = 1, mtime: int = 1, blocks: list[bytes] | None = None
) -> Node:
    attr = Attr(ino, mode, nlink, 0, 0, 0, BS * len(blocks or []), 0, 0, mtime, 0, 0)
    fmap = None
    if stat.S_ISREG(mode):
        fmap = FileMap(attr, None, [BlockRef(i, c, BS, BS) for i, c in enumerate(blocks or [])])
    return Node(path, attr, {}, b"", fmap)


D, F = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644


def test_plan_sends_changes_their_directories_and_top_deletes() -> None:
    old = [
        _node(b"", D),
        _node(b"a", D),
        _node(b"a/same", F, blocks=[b"1"]),
        _node(b"a/edit", F, blocks=[b"1", b"2"]),
        _node(b"gone", D),
        _node(b"gone/x", F),
        _node(b"gone-too", F),
        _node(b"kind", F),
        _node(b"quiet", D),
        _node(b"quiet/f", F, blocks=[b"3"]),
    ]
    new = [
        _node(b"", D),
        _node(b"a", D),
        _node(b"a/same", F, blocks=[b"1"]),
        _node(b"a/edit", F, blocks=[b"1", b"9"]),
        _node(b"kind", D),
        _node(b"quiet", D),
        _node(b"quiet/f", F, blocks=[b"3"]),
    ]
    deletes, send = plan(new, old)
    assert deletes == [b"gone", b"gone-too", b"kind"]  # gone/x goes with gone
    assert [n.path for n in send] == [b"", b"a", b"a/edit", b"kind"]


def test_plan_sends_hard_link_groups_whole_and_everything_without_a_base() -> None:
    old = [_node(b"", D), _node(b"x", F, ino=5, nlink=2), _node(b"y", F, ino=5, nlink=2)]
    new = [_node(b"", D), _node(b"x", F, ino=7, nlink=2), _node(b"y", F, ino=7, nlink=2)]
    assert [n.path for n in plan(new, old)[1]] == [b"", b"x", b"y"]
    assert plan(new, None) == ([], new)
