"""One conformance suite for the cloud-tier backends (daemon/tiers/backends.py), run against
real emulators of S3 (moto), Azure Blob (Azurite) and GCS (gcp-storage-emulator), and
against the plain "dir" backend."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from daemon.tiers.backends import DIR_TMP, PROBE_DIR, ObjectBackend, bucket_usage, open_backend
from dfs.bench.harness import free_port
from dfs.core.errors import ChunkMissing, InvalidArgument, NotFound, PermissionDenied, Unavailable
from dfs.core.tiers import TierSpec, chunk_id_of_key, chunk_key
from tests.emulators import AZURITE_KEY, Emulators

ALL_KINDS = ["s3", "azure", "gcs", "dir"]
MiB = 1024 * 1024
# A dead endpoint must fail this fast (the read fallback waits for it), with the default
# retry count; connection refused costs only the backoff between the retries.
DEAD_ENDPOINT_MAX_S = 5.0

MakeTier = Callable[..., TierSpec]


@pytest.fixture(params=ALL_KINDS)
def tier(request: pytest.FixtureRequest, make_tier: MakeTier) -> TierSpec:
    return make_tier(request.param)


@pytest.fixture
def backend(tier: TierSpec) -> Iterator[ObjectBackend]:
    b = open_backend(tier)
    try:
        yield b
    finally:
        b.close()


def _blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def _no_probe_left(backend: ObjectBackend) -> None:
    assert [k for k, _ in backend.list("") if PROBE_DIR in k] == []


def test_put_get_exists_delete(backend: ObjectBackend) -> None:
    data = _blob(1000)
    backend.put("a/one", data)
    assert backend.exists("a/one")
    assert backend.get("a/one") == data
    assert not backend.exists("a/two")
    assert backend.delete(["a/one", "a/two"]) == 2  # an absent key is fine
    assert not backend.exists("a/one")
    with pytest.raises(ChunkMissing):
        backend.get("a/one")
    assert list(backend.list("")) == []
    assert backend.delete([]) == 0


def test_large_object_and_overwrite(backend: ObjectBackend) -> None:
    first, second = _blob(4 * MiB, 1), _blob(4 * MiB + 17, 2)
    backend.put("big", first)
    assert backend.get("big") == first
    backend.put("big", second)
    got = backend.get("big")
    assert len(got) == len(second) and got == second
    assert list(backend.list("big")) == [("big", len(second))]
    backend.put("empty", b"")
    assert backend.get("empty") == b""


def test_absent_key_is_chunk_missing(backend: ObjectBackend) -> None:
    with pytest.raises(ChunkMissing) as info:
        backend.get("no/such/key")
    assert f"tier {backend.spec.name} " in str(info.value)
    assert "\n" not in str(info.value)


def test_list_by_string_prefix(backend: ObjectBackend) -> None:
    keys = {"a/b/1": 1, "a/b/2": 22, "a/bc": 333, "a/c/3": 4, "z": 5}
    for key, size in keys.items():
        backend.put(key, b"x" * size)
    assert dict(backend.list("")) == keys
    assert dict(backend.list("a/b")) == {k: v for k, v in keys.items() if k.startswith("a/b")}
    assert dict(backend.list("a/b/")) == {"a/b/1": 1, "a/b/2": 22}
    assert dict(backend.list("a/c/3")) == {"a/c/3": 4}
    assert list(backend.list("nothing/")) == []
    assert list(backend.list("a/x")) == []
    assert bucket_usage(backend) == (len(keys), sum(keys.values()))


def test_chunk_keys_under_a_prefix(make_tier: MakeTier, tier: TierSpec) -> None:
    spec = dataclasses.replace(tier, prefix="dfs/cluster-1")
    other = dataclasses.replace(tier, prefix="dfs/cluster-2")
    b = open_backend(spec)
    try:
        ids = [os.urandom(32) for _ in range(5)]
        for cid in ids:
            b.put(chunk_key(spec, cid), cid)
        b.put(chunk_key(other, ids[0]), b"another cluster's")
        b.put("dfs/cluster-1/notes.txt", b"not a chunk")
        b.check(write=True)
        found = [chunk_id_of_key(spec, k) for k, _ in b.list("dfs/cluster-1/chunks/")]
        assert sorted(c for c in found if c is not None) == sorted(ids) and len(found) == 5
        assert bucket_usage(b) == (6, 5 * 32 + len(b"not a chunk"))
        assert all(chunk_id_of_key(spec, k) is None for k, _ in b.list("dfs/cluster-2/"))
        _no_probe_left(b)
    finally:
        b.close()


@pytest.mark.slow
def test_list_pages_past_1000_keys(make_tier: MakeTier) -> None:
    spec = make_tier("s3")  # moto answers 1000 keys per list page, as S3 does
    b = open_backend(spec)
    keys = [f"p/{i:05d}" for i in range(1030)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: b.put(k, k.encode()), keys))
    b.put("pz", b"outside the prefix")
    listed = list(b.list("p/"))
    assert sorted(k for k, _ in listed) == keys
    assert all(size == 7 for _, size in listed)
    assert b.delete(keys) == len(keys)  # more than one DeleteObjects batch
    assert list(b.list("p/")) == []
    b.close()


def test_check_and_write_probe(backend: ObjectBackend) -> None:
    backend.check()
    backend.check(write=True)
    _no_probe_left(backend)


def test_missing_bucket_is_not_found(tier: TierSpec) -> None:
    bucket = "/nonexistent/dfs-tier" if tier.kind == "dir" else "dfs-no-such-bucket"
    b = open_backend(dataclasses.replace(tier, bucket=bucket))
    for op in (b.check, lambda: b.get("k"), lambda: b.put("k", b"v"), lambda: list(b.list(""))):
        with pytest.raises(NotFound) as info:
            op()
        assert bucket in str(info.value), str(info.value)
    assert not b.exists("k")
    assert not Path("/nonexistent").exists()  # a dir tier never creates its directory
    b.close()


def test_bad_azure_key_is_permission_denied(make_tier: MakeTier, tmp_path: Path) -> None:
    spec = make_tier("azure")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"account_name": "devstoreaccount1", "account_key": "A" * 88}))
    b = open_backend(dataclasses.replace(spec, credentials_file=str(wrong)))
    for op in (b.check, lambda: b.get("k"), lambda: b.put("k", b"v"), lambda: b.delete(["k"])):
        with pytest.raises(PermissionDenied) as info:
            op()
        assert f"tier {spec.name} " in str(info.value)
    sas = tmp_path / "sas.json"
    sas.write_text(json.dumps({"account_name": "devstoreaccount1", "sas_token": "?sv=2020-08-04&sig=bad"}))
    with pytest.raises(PermissionDenied):
        open_backend(dataclasses.replace(spec, credentials_file=str(sas))).get("k")


def test_bad_s3_key_is_permission_denied(make_tier: MakeTier, emulators: Emulators) -> None:
    spec = make_tier("s3")
    b = open_backend(spec)
    b.put("k", b"v")
    with emulators.enforce_s3_auth():  # moto knows no user: every key is refused
        for op in (b.check, lambda: b.get("k"), lambda: b.put("k", b"w"), lambda: b.exists("k")):
            with pytest.raises(PermissionDenied) as info:
                op()
            assert "InvalidAccessKeyId" in str(info.value) or "403" in str(info.value)
    assert b.get("k") == b"v"


def test_gcs_refused_service_account_is_permission_denied(make_tier: MakeTier, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    spec = make_tier("gcs")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    sa = tmp_path / "sa.json"
    # The token endpoint is the emulator, which has none: the token request is refused.
    assert spec.endpoint is not None
    sa.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "p",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "dfs@p.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": spec.endpoint + "/token",
            }
        )
    )
    cred = tmp_path / "gcs.json"
    cred.write_text(json.dumps({"service_account_key_file": str(sa)}))
    b = open_backend(dataclasses.replace(spec, credentials_file=str(cred)))
    with pytest.raises(PermissionDenied):
        b.get("k")
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"type": "service_account"}')
    cred.write_text(json.dumps({"service_account_key_file": str(garbage)}))
    with pytest.raises(InvalidArgument, match="garbage.json"):
        open_backend(dataclasses.replace(spec, credentials_file=str(cred)))


@pytest.mark.parametrize("kind", ["s3", "azure", "gcs"])
def test_credentials_file_is_checked(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    spec = TierSpec(name="t", kind=kind, bucket="bucket-x", credentials_file=str(path))
    with pytest.raises(InvalidArgument, match=re.escape(str(path))):
        open_backend(spec)  # missing
    for text in ("{not json", "[1]", '{"surprise": "x"}', "{}"):
        path.write_text(text)
        with pytest.raises(InvalidArgument, match=re.escape(str(path))) as info:
            open_backend(spec)
        assert 'surprise": "x' not in str(info.value)
    both = {
        "s3": {"access_key_id": "a", "secret_access_key": ""},
        "azure": {"account_name": "a", "account_key": "k", "sas_token": "s"},
        "gcs": {"anonymous": True, "service_account_key_file": "/x"},
    }[kind]
    path.write_text(json.dumps(both))
    with pytest.raises(InvalidArgument, match=re.escape(str(path))):
        open_backend(spec)


@pytest.mark.parametrize("kind", ["s3", "azure", "gcs"])
def test_dead_endpoint_is_unavailable_fast(kind: str, make_tier: MakeTier) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    endpoint = dead + "/devstoreaccount1" if kind == "azure" else dead
    # The defaults (30 s timeout, 3 retries), not the tests' shorter ones.
    spec = make_tier(kind, endpoint=endpoint, request_timeout_s=30.0, max_retries=3)
    b = open_backend(spec)
    for op in (b.check, lambda: b.get("k"), lambda: b.put("k", b"v"), lambda: b.exists("k")):
        start = time.monotonic()
        with pytest.raises(Unavailable) as info:
            op()
        elapsed_s = time.monotonic() - start
        assert elapsed_s < DEAD_ENDPOINT_MAX_S, f"{kind}: {elapsed_s:.1f} s"
        message = str(info.value)
        assert f"tier {spec.name} " in message and "\n" not in message


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["s3", "azure", "gcs"])
def test_emulator_outage_and_return(kind: str, make_tier: MakeTier, emulators: Emulators) -> None:
    spec = make_tier(kind)
    b = open_backend(spec)
    b.put("k", b"before")
    emulators.stop(kind)
    try:
        start = time.monotonic()
        with pytest.raises(Unavailable):
            b.get("k")
        assert time.monotonic() - start < DEAD_ENDPOINT_MAX_S
    finally:
        emulators.start(kind)
    # Same endpoint; moto and the GCS emulator come back empty with the bucket re-created.
    if kind == "azure":
        assert b.get("k") == b"before"
    else:
        with pytest.raises(ChunkMissing):
            b.get("k")
    b.put("k", b"after")
    assert b.get("k") == b"after"
    b.close()


@pytest.mark.parametrize("kind", ["s3", "azure"])
def test_secrets_never_shown(
    kind: str,
    make_tier: MakeTier,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    spec = make_tier(kind)
    assert spec.credentials_file is not None
    creds = json.loads(Path(spec.credentials_file).read_text())
    secret = creds.get("secret_access_key") or creds["account_key"]
    shown: list[str] = [repr(spec), str(spec.to_dict())]
    b = open_backend(spec)
    shown.append(repr(b))
    b.put("k", b"v")
    dead = dataclasses.replace(spec, endpoint=f"http://127.0.0.1:{free_port()}", max_retries=1)
    wrong_bucket = dataclasses.replace(spec, bucket="dfs-no-such-bucket")
    for failing in (lambda: b.get("absent"), lambda: open_backend(dead).get("k"),
                    lambda: open_backend(wrong_bucket).get("k")):  # fmt: skip
        with pytest.raises(Exception) as info:  # noqa: PT011 - each raises its own class
            failing()
        shown += [str(info.value), repr(info.value)]
    if kind == "azure":
        sas_secret = "sig=" + "S3cr3t" * 6
        sas_file = tmp_path / "sas.json"
        sas_file.write_text(json.dumps({"account_name": "devstoreaccount1", "sas_token": sas_secret}))
        sas_backend = open_backend(dataclasses.replace(spec, credentials_file=str(sas_file)))
        shown.append(repr(sas_backend))
        with pytest.raises(PermissionDenied) as sas_info:
            sas_backend.get("k")
        shown += [str(sas_info.value), repr(sas_info.value)]
        assert "S3cr3t" not in "\n".join(shown)
    out, err = capfd.readouterr()
    text = "\n".join([*shown, caplog.text, out, err])
    assert secret not in text
    assert any(spec.name in s for s in shown)  # the texts checked are the real ones
    if kind == "azure":
        assert secret == AZURITE_KEY


def test_concurrent_puts_and_gets(backend: ObjectBackend) -> None:
    threads = 8
    per_thread = 12
    shared = [_blob(64 * 1024 + t, 100 + t) for t in range(threads)]
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        barrier.wait(timeout=30)
        for i in range(per_thread):
            data = _blob(1000 + i, t * 1000 + i)
            backend.put(f"t{t}/{i}", data)
            backend.put("shared", shared[t])  # every thread overwrites one key
            assert backend.get(f"t{t}/{i}") == data
            assert backend.get("shared") in shared  # a whole object, never a mix or a part

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    assert len(list(backend.list("t"))) == threads * per_thread


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "a/../b", "./a", "a\0b", "x" * 1025])
def test_bad_keys_are_refused(key: str, tmp_path: Path) -> None:
    b = open_backend(TierSpec(name="d", kind="dir", bucket=str(tmp_path)))
    for op in (lambda: b.put(key, b"v"), lambda: b.get(key), lambda: b.delete([key])):
        with pytest.raises(InvalidArgument):
            op()


def test_dir_backend_hides_temp_files(tmp_path: Path) -> None:
    b = open_backend(TierSpec(name="d", kind="dir", bucket=str(tmp_path)))
    b.put("a/b", b"v")
    (tmp_path / DIR_TMP / "leftover.tmp").write_bytes(b"partial")  # a crash mid-put
    assert list(b.list("")) == [("a/b", 1)]
    with pytest.raises(InvalidArgument):
        b.put(f"{DIR_TMP}/x", b"v")
    assert sorted(p.name for p in (tmp_path / DIR_TMP).iterdir()) == ["leftover.tmp"]
