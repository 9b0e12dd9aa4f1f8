"""Real object-store emulators for the cloud-tier tests, and fixtures that hand out tiers.

Each emulator is a real server in a subprocess on a free loopback port, started once per
pytest session, the first time a test asks for its kind, and killed at the session's end:

- ``s3``: moto's server (``moto_server``, PyPI ``moto[server]``);
- ``azure``: Azurite's blob service (``azurite-blob``, npm; tests/azurite/package.json pins
  it and scripts/setup.sh installs it under tests/azurite/node_modules);
- ``gcs``: gcp-storage-emulator (PyPI), in memory.

Fixtures (import the ones a test module uses from here; tests/tiers/conftest.py does):

- ``emulators`` (session): the :class:`Emulators`; ``emulators.stop(kind)`` takes one
  provider down and ``emulators.start(kind)`` brings it back on the same port and endpoint
  (for outage tests).  moto and the GCS emulator keep everything in memory, so a restart
  loses every object: :meth:`Emulators.start` re-creates the buckets handed out and not yet
  released, empty.  Azurite keeps its data on disk (``--location``) and loses nothing;
- ``make_tier`` (function): ``make_tier(kind, **fields) -> TierSpec``: a fresh bucket
  (container, directory for ``"dir"``) and a credentials file of mode 0600 under the test's
  tmp_path; several per test are fine (distinct names and buckets).  An emulator a previous
  test left stopped is started again first;
- ``cloud_tier`` (function, parametrised over s3, azure, gcs): ``make_tier(kind)``.

Nothing here sleeps to wait: readiness is polled with a deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dfs.bench.harness import free_port, wait_for
from dfs.core.tiers import TierSpec

KINDS = ("s3", "azure", "gcs")
ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
AZURITE_BIN = ROOT / "tests" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's one built-in account and its key: public, printed in Microsoft's documentation.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
S3_REGION = "us-east-1"
START_TIMEOUT_S = 60.0  # a cold node/python start on a loaded CI machine
STOP_TIMEOUT_S = 10.0
# Tiers handed to tests: short timeouts and few retries, so failure paths stay fast.
TEST_REQUEST_TIMEOUT_S = 10.0
TEST_MAX_RETRIES = 2

_serial = itertools.count(1)


def _http_status(url: str, method: str = "GET", body: bytes | None = None, timeout_s: float = 2.0) -> int:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class Emulator:
    """One emulator process of one kind, on a port that stays the same across restarts."""

    def __init__(self, kind: str, base_dir: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.dir = base_dir / kind
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "emulator.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.buckets: set[str] = set()  # handed out and not released: re-created on restart

    @property
    def endpoint(self) -> str:
        if self.kind == "azure":
            return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"
        return f"http://127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        port = str(self.port)
        if self.kind == "s3":
            return [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", port]
        if self.kind == "azure":
            if not AZURITE_BIN.exists():
                raise RuntimeError(
                    f"{AZURITE_BIN} is missing: run scripts/setup.sh (npm ci in tests/azurite)"
                )
            # --disableTelemetry: Azurite would otherwise try to send usage data out.
            return [
                str(AZURITE_BIN),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                port,
                "--location",
                str(self.dir / "data"),
                "--silent",
                "--skipApiVersionCheck",
                "--disableTelemetry",
            ]
        if self.kind == "gcs":
            return [
                str(VENV_BIN / "gcp-storage-emulator"),
                "start",
                "-H",
                "127.0.0.1",
                "--port",
                port,
                "--in-memory",
                "-q",
            ]
        raise ValueError(f"unknown emulator kind {self.kind!r}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _answers(self) -> bool:
        if not self.running:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.kind} emulator exited during start-up:\n{tail}")
        try:
            _http_status(f"http://127.0.0.1:{self.port}/", timeout_s=1.0)
        except OSError:
            return False
        return True

    def start(self) -> None:
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        try:
            wait_for(self._answers, START_TIMEOUT_S, f"{self.kind} emulator on port {self.port}")
            for bucket in sorted(self.buckets):
                self._create_bucket(bucket, exist_ok=True)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # Our own process group (start_new_session): reaches any child the server forked.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)

    def create_bucket(self, name: str) -> None:
        self._create_bucket(name, exist_ok=False)
        self.buckets.add(name)

    def release_bucket(self, name: str) -> None:
        """Forget ``name`` (a restart no longer re-creates it); its objects stay until the
        session's end, which is cheaper than deleting them one by one."""
        self.buckets.discard(name)

    def _create_bucket(self, name: str, *, exist_ok: bool) -> None:
        if self.kind == "s3":
            # moto serves unsigned requests unless auth is enforced (see enforce_s3_auth).
            status = _http_status(f"{self.endpoint}/{name}", "PUT", b"")
        elif self.kind == "gcs":
            body = json.dumps({"name": name}).encode()
            status = _http_status(f"{self.endpoint}/storage/v1/b?project=test", "POST", body)
        else:
            status = self._create_container(name)
        if status in (200, 201) or (exist_ok and status == 409):
            return
        raise RuntimeError(f"{self.kind} emulator: creating bucket {name} answered HTTP {status}")

    def _create_container(self, name: str) -> int:
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobServiceClient

        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )
        with BlobServiceClient.from_connection_string(conn) as client:
            try:
                client.create_container(name)
            except ResourceExistsError:
                return 409
        return 201


class Emulators:
    """The session's emulators, one per kind, each started on first use."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self._by_kind: dict[str, Emulator] = {}

    def get(self, kind: str) -> Emulator:
        """The emulator of ``kind``, started if it is not running."""
        emu = self._by_kind.get(kind)
        if emu is None:
            emu = self._by_kind[kind] = Emulator(kind, self.base_dir)
        emu.start()
        return emu

    def stop(self, kind: str) -> None:
        """Take ``kind`` down (its port then refuses connections)."""
        emu = self._by_kind.get(kind)
        if emu is not None:
            emu.stop()

    def start(self, kind: str) -> None:
        """Bring ``kind`` back on the same port; moto and the GCS emulator come back empty,
        with the buckets handed out re-created."""
        self.get(kind)

    def release(self, kind: str, bucket: str) -> None:
        emu = self._by_kind.get(kind)
        if emu is not None:
            emu.release_bucket(bucket)

    def stop_all(self) -> None:
        for emu in self._by_kind.values():
            emu.stop()

    @contextlib.contextmanager
    def enforce_s3_auth(self) -> Iterator[None]:
        """While inside: moto checks signatures against its IAM users (there are none, so
        every access key is refused with 403 InvalidAccessKeyId).  Off again on exit."""
        emu = self.get("s3")

        def set_count(value: str) -> None:
            status = _http_status(f"{emu.endpoint}/moto-api/reset-auth", "POST", value.encode())
            assert status == 200, f"moto reset-auth answered HTTP {status}"

        set_count("0")
        try:
            yield
        finally:
            set_count("inf")


def _write_credentials(path: Path, creds: dict[str, Any]) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)
    return str(path)


def new_tier(emulators: Emulators, tmp_path: Path, kind: str, **fields: Any) -> TierSpec:
    """A TierSpec of ``kind`` on a fresh bucket (see ``make_tier``); the caller releases the
    bucket with ``emulators.release(kind, spec.bucket)`` when done."""
    n = next(_serial)
    name = fields.pop("name", f"{kind}-{n}")
    if kind == "dir":
        root = tmp_path / f"dir-tier-{n}"
        root.mkdir()
        return TierSpec(name=name, kind="dir", bucket=str(root), **fields)
    emu = emulators.get(kind)
    bucket = f"dfs-{kind}-{n}-{secrets.token_hex(3)}"
    emu.create_bucket(bucket)
    creds: dict[str, Any]
    if kind == "s3":
        creds = {
            "access_key_id": "dfstest" + secrets.token_hex(4),
            "secret_access_key": secrets.token_hex(20),
        }
        fields.setdefault("region", S3_REGION)
    elif kind == "azure":
        creds = {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
    else:
        creds = {"anonymous": True}
    cred_path = _write_credentials(tmp_path / f"{name}-credentials.json", creds)
    fields.setdefault("endpoint", emu.endpoint)
    fields.setdefault("allow_http", True)
    fields.setdefault("credentials_file", cred_path)
    fields.setdefault("request_timeout_s", TEST_REQUEST_TIMEOUT_S)
    fields.setdefault("max_retries", TEST_MAX_RETRIES)
    return TierSpec(name=name, kind=kind, bucket=bucket, **fields)


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    emus = Emulators(tmp_path_factory.mktemp("emulators"))
    try:
        yield emus
    finally:
        emus.stop_all()


@pytest.fixture
def make_tier(emulators: Emulators, tmp_path: Path) -> Iterator[Callable[..., TierSpec]]:
    made: list[TierSpec] = []

    def make(kind: str, **fields: Any) -> TierSpec:
        spec = new_tier(emulators, tmp_path, kind, **fields)
        made.append(spec)
        return spec

    yield make
    for spec in made:
        emulators.release(spec.kind, spec.bucket)


@pytest.fixture(params=KINDS)
def cloud_tier(request: pytest.FixtureRequest, make_tier: Callable[..., TierSpec]) -> TierSpec:
    return make_tier(request.param)
