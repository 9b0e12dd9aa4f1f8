"""Cloud tiers against the providers' emulators (moto for S3, Azurite for Azure Blob, the GCS
emulator), started by the tests: a volume tiered to two clouds (cross-cloud replication) keeps
reading through a mount and S3 while one provider is down, a verify pass restores what the
provider lost once it is back, the object stores see only ciphertext of an encrypted volume, and
a copy-mode volume keeps an off-site copy in Azure besides its local ones."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.tiers.backends import open_backend
from dfs.core.tiers import TierSpec
from tests.conftest import Daemon, Mount, admin_ok, free_port, fuse_available
from tests.emulators import Emulators
from tests.s3.conftest import make_client
from tests.tiers.test_tiering import MARKER, TIERS_CONF, chunk_files, run_pass

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not fuse_available(), reason="needs FUSE")]


def add_tier(d: Daemon, spec: TierSpec) -> None:
    args = ["tier", "add", spec.name, "--kind", spec.kind, "--bucket", spec.bucket]
    if spec.endpoint:
        args += ["--endpoint", spec.endpoint]
    if spec.region:
        args += ["--region", spec.region]
    if spec.credentials_file:
        args += ["--credentials-file", spec.credentials_file]
    if spec.allow_http:
        args.append("--allow-http")
    args += ["--request-timeout", str(spec.request_timeout_s), "--max-retries", str(spec.max_retries)]
    d.cli(*args)


def stored_objects(spec: TierSpec) -> dict[str, bytes]:
    backend = open_backend(spec)
    try:
        return {key: backend.get(key) for key, _ in backend.list("")}
    finally:
        backend.close()


def test_cross_cloud_tiers_survive_a_provider_outage(
    tmp_path: Path, emulators: Emulators, make_tier: Callable[..., TierSpec]
) -> None:
    s3_tier, gcs_tier, azure_tier = make_tier("s3"), make_tier("gcs"), make_tier("azure")
    d = Daemon(tmp_path / "var", free_port(), extra_conf=TIERS_CONF)
    d.start()
    mounts: list[Mount] = []
    try:
        for spec in (s3_tier, gcs_tier, azure_tier):
            add_tier(d, spec)
        admin_ok(d, "POST", "/storage/volumes", {"name": "photos", "encryption": True})
        admin_ok(d, "POST", "/storage/volumes", {"name": "docs"})
        m = Mount(d, tmp_path / "mnt")
        m.start()
        mounts.append(m)
        photos = {f"p{i}": (MARKER + os.urandom(4096)) * (300 + 97 * i) for i in range(4)}
        docs = {f"d{i}": os.urandom(900_000 + i) for i in range(3)}
        for name, data in photos.items():
            (m.path / "photos" / name).write_bytes(data)
        for name, data in docs.items():
            (m.path / "docs" / name).write_bytes(data)
        m.stop()
        d.cli("tier", "attach", "photos", s3_tier.name, gcs_tier.name, "--mode", "tiered")
        d.cli("tier", "attach", "docs", azure_tier.name, "--mode", "copy")
        local_before = chunk_files(d)

        done = run_pass(d)
        cold = done["chunks_made_cold"]
        assert cold >= 4 and not done["errors"], done
        assert done["copies_stored"] >= 2 * cold + 3, done  # both clouds for photos, Azure for docs
        assert len(local_before) - len(chunk_files(d)) == cold  # docs' chunks stay local (copy mode)
        s3_objects, gcs_objects = stored_objects(s3_tier), stored_objects(gcs_tier)
        assert len(s3_objects) == len(gcs_objects) == cold
        # The encrypted volume's chunks reached the clouds as ciphertext only.
        assert not any(MARKER in blob for blob in [*s3_objects.values(), *gcs_objects.values()])
        azure_objects = stored_objects(azure_tier)
        assert len(azure_objects) >= 3 and set(azure_objects).isdisjoint(s3_objects)

        m2 = Mount(d, tmp_path / "mnt2")
        m2.start()
        mounts.append(m2)
        for name, data in photos.items():
            assert (m2.path / "photos" / name).read_bytes() == data

        # S3 (moto) goes down: reads come from the GCS copy, through S3 and a fresh mount.
        emulators.stop("s3")
        s3 = make_client(d)
        for name, data in photos.items():
            assert s3.get_object(Bucket="photos", Key=name)["Body"].read() == data
        m2.stop()
        m2.start()
        assert (m2.path / "photos" / "p3").read_bytes() == photos["p3"]
        status: dict[str, Any] = json.loads(d.cli("tier", "status", "--json").stdout)
        assert status["reads"]["cold_read_failures"] == 0

        # It comes back empty: a verify pass finds every copy missing and stores it again
        # from the GCS copies; fsck is clean again after.
        emulators.start("s3")
        assert any("missing there" in p for p in d.fsck()["problems"])
        fixed = run_pass(d, "--verify")
        assert fixed["missing_copies_found"] == cold and fixed["copies_stored"] == cold, fixed
        assert set(stored_objects(s3_tier)) == set(gcs_objects)
        status = json.loads(d.cli("tier", "status", "--json").stdout)
        copies = {t["name"]: t["copies"] for t in status["tiers"]}
        assert copies[s3_tier.name] == copies[gcs_tier.name] == cold
        for mount in mounts:
            mount.stop()
        d.assert_clean()
    finally:
        for mount in mounts:
            mount.stop()
        d.stop()
        emulators.start("s3")
