"""Object-store backends for cloud tiers: one blocking interface, four providers.

:class:`ObjectBackend` is what the tiering worker and the read fallback call, always from
worker threads (``trio.to_thread.run_sync``), never on the trio loop: every method blocks
for a network round trip or disk I/O.  Every backend is thread-safe.

Libraries, and why:
- S3 and Azure Blob: obstore (Rust's object_store): one client for both, thread-safe,
  bounded retries and timeouts we configure per tier.
- Google Cloud Storage: google-cloud-storage (the JSON API).  obstore's GCS client speaks the
  XML API, which the GCS emulator our tests run (gcp-storage-emulator) does not serve
  properly (no ETag), so it could not be tested here.
- ``dir``: plain files under a directory (e.g. an NFS mount).

Contract, for every backend:
- keys are relative to the bucket (they include the tier's prefix: see
  :func:`dfs.core.tiers.chunk_key`), ``/``-separated, never empty, without empty, ``.`` or
  ``..`` segments;
- :meth:`ObjectBackend.put` stores the whole object or nothing (a reader never sees a
  partial object) and overwrites; :meth:`ObjectBackend.get` returns exactly what was put;
- an absent object is :class:`ChunkMissing` (the one use is chunks; callers wanting
  NotFound translate); a missing bucket, container or directory is :class:`NotFound`
  naming it; refused credentials are :class:`PermissionDenied`; an unreachable or failing
  provider (connection refused, timeouts, 5xx) is :class:`Unavailable` once the tier's
  bounded retries (``max_retries``, and ``request_timeout_s`` for each attempt and for the
  retries together) are spent; a request the provider rejects as malformed is
  :class:`InvalidArgument`.  Messages are one line and name the tier, never a secret;
- :meth:`ObjectBackend.exists` answers False also when the bucket is missing (a HEAD
  cannot tell the two apart); :meth:`ObjectBackend.check` finds a missing bucket;
- ``list(prefix)`` yields ``(key, size)`` for keys that start with ``prefix`` as a string
  (``"a/b"`` matches ``a/b/x`` and ``a/bc``), in no promised order, fetching lazily page
  by page;
- backends do not throttle: the caller applies :class:`dfs.core.tiers.TokenBucket`
  (in trio, where waiting costs no thread).

Secrets (keys, SAS tokens) are read from the tier's credentials file by
:func:`open_backend` and kept only inside the client objects and a :class:`_Secrets`
scrubber that removes them from any text we put into an error or a log line.  No class
here has them in its repr.
"""

from __future__ import annotations

import abc
import builtins
import errno as errno_mod
import functools
import json
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.exceptions import PermissionDeniedError, UnauthenticatedError
from obstore.store import AzureStore, S3Store

from dfs.core.errors import (
    ChunkMissing,
    DfsError,
    InvalidArgument,
    NoSpace,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from dfs.core.tiers import TierSpec

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

log = logging.getLogger(__name__)
# Its own generator: the process-wide one belongs to whoever seeded it (tests, hypothesis),
# and draws from worker threads would perturb it.
_JITTER = random.Random()

T = TypeVar("T")

_KEY_MAX_BYTES = 1024  # S3's, Azure's and GCS's own limit
_CREDENTIALS_MAX_BYTES = 64 * 1024
_DELETE_BATCH = 1000  # S3's DeleteObjects limit; obstore splits further for Azure (256)
_LIST_PAGE = 1000  # objects per list request (the providers' maximum)
_CONNECT_TIMEOUT_MAX_S = 5.0
_BACKOFF_INIT_S = 0.1
_BACKOFF_MAX_S = 2.0
_DETAIL_MAX_CHARS = 240
# Where check() looks: a key no chunk ever has (see chunk_id_of_key).
PROBE_DIR = ".dfs-probe"
# The "dir" backend's temp files, beside the objects so a rename never crosses filesystems.
DIR_TMP = ".dfs-tmp"


def check_key(key: str) -> str:
    """``key`` if it is a valid object key (see the module docstring), else InvalidArgument."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument("object key must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > _KEY_MAX_BYTES:
        raise InvalidArgument(f"object key longer than {_KEY_MAX_BYTES} bytes")
    if "\0" in key or any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidArgument(f"object key {key[:200]!r} has an empty, '.' or '..' segment")
    return key


def _probe_key(spec: TierSpec, name: str) -> str:
    return f"{spec.prefix}/{PROBE_DIR}/{name}" if spec.prefix else f"{PROBE_DIR}/{name}"


class _Secrets:
    """The secret strings of one tier, to scrub out of any text that leaves this module."""

    def __init__(self, values: Sequence[str] = ()) -> None:
        # Longest first, so a secret containing another is removed whole.
        self._values = sorted({v for v in values if v}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, "***")
        return text

    def __repr__(self) -> str:
        return f"_Secrets({len(self._values)} hidden)"


def _one_line(exc: BaseException, secrets: _Secrets) -> str:
    """The first line of an error's text (its class name if it has none), scrubbed of secrets
    and URL query strings (where pre-signed URLs and SAS tokens live), shortened."""
    line = secrets.scrub(str(exc)).strip().split("\n", 1)[0].strip()
    line = re.sub(r"\?\S*", "?…", line)
    return line[:_DETAIL_MAX_CHARS] or type(exc).__name__


class ObjectBackend(abc.ABC):
    """One tier's bucket.  Blocking and thread-safe: called from several worker threads."""

    spec: TierSpec

    def __init__(self, spec: TierSpec) -> None:
        self.spec = spec

    def __repr__(self) -> str:
        s = self.spec
        where = f"{s.bucket}/{s.prefix}" if s.prefix else s.bucket
        return f"{type(self).__name__}(tier={s.name!r}, {s.kind}: {where!r}, endpoint={s.endpoint!r})"

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` as ``key``, whole or not at all; an existing object is replaced."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; ChunkMissing if there is none."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` exists (False also when the bucket is missing)."""

    @abc.abstractmethod
    def delete(self, keys: Sequence[str]) -> int:
        """Delete ``keys`` (absent ones are fine); returns how many were asked for."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """``(key, size)`` of every object whose key starts with ``prefix``."""

    @abc.abstractmethod
    def _check_read(self) -> None:
        """One cheap read request that fails if the bucket is missing or access is refused."""

    def check(self, *, write: bool = False) -> None:
        """Probe the tier: reachable, the bucket exists and the credentials are accepted,
        else the error saying which.  ``write``: also put, read back and delete a small
        probe object (a few requests; for ``dfs tier add``, not for periodic health checks)."""
        self._check_read()
        if not write:
            return
        key = _probe_key(self.spec, uuid.uuid4().hex)
        payload = b"dfs tier probe " + key.encode()
        self.put(key, payload)
        try:
            if self.get(key) != payload:
                raise Unavailable(f"tier {self.spec.name}: probe object read back differently")
        finally:
            self.delete([key])

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release connections.  The backend must not be used afterwards."""

    def _err(self, cls: type[DfsError], op: str, key: str, detail: str) -> DfsError:
        where = f" {key}" if key else ""
        return cls(f"tier {self.spec.name} ({self.spec.kind}): {op}{where}: {detail}")


def bucket_usage(backend: ObjectBackend) -> tuple[int, int]:
    """(objects, bytes) under the tier's prefix: one full listing, so as costly as that."""
    prefix = f"{backend.spec.prefix}/" if backend.spec.prefix else ""
    objects = total = 0
    for _key, size in backend.list(prefix):
        objects += 1
        total += size
    return objects, total


# --- credentials -------------------------------------------------------------------------

# kind -> (required keys, optional keys); azure and gcs have alternatives, checked below.
_CRED_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "s3": (frozenset({"access_key_id", "secret_access_key"}), frozenset({"session_token"})),
    "azure": (frozenset({"account_name"}), frozenset({"account_key", "sas_token"})),
    "gcs": (frozenset(), frozenset({"service_account_key_file", "anonymous"})),
}
_ONE_OF: dict[str, tuple[str, str]] = {
    "azure": ("account_key", "sas_token"),
    "gcs": ("service_account_key_file", "anonymous"),
}


def load_credentials(spec: TierSpec) -> dict[str, Any] | None:
    """The tier's credentials file, parsed and checked; None when the spec names none (the
    provider's environment / default chain is used then)."""
    path = spec.credentials_file
    if path is None:
        return None
    where = f"tier {spec.name}: credentials file {path}"
    try:
        with open(path, "rb") as f:
            raw = f.read(_CREDENTIALS_MAX_BYTES + 1)
    except OSError as exc:
        raise InvalidArgument(f"{where}: cannot read it: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > _CREDENTIALS_MAX_BYTES:
        raise InvalidArgument(f"{where}: larger than {_CREDENTIALS_MAX_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        # Only the position: the message of a JSON error may quote the (secret) text.
        pos = f" (line {exc.lineno} column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidArgument(f"{where}: not valid JSON{pos}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{where}: must hold a JSON object")
    required, optional = _CRED_FIELDS[spec.kind]
    unknown = sorted(set(data) - required - optional)
    if unknown:
        raise InvalidArgument(f"{where}: unknown key(s) {', '.join(unknown)} for a {spec.kind} tier")
    missing = sorted(required - set(data))
    if missing:
        raise InvalidArgument(f"{where}: missing key(s) {', '.join(missing)}")
    if spec.kind in _ONE_OF:
        a, b = _ONE_OF[spec.kind]
        if (a in data) == (b in data):
            raise InvalidArgument(f"{where}: needs exactly one of {a} and {b}")
    for key, value in data.items():
        if key == "anonymous":
            if value is not True:
                raise InvalidArgument(f"{where}: anonymous must be true (or absent)")
        elif not isinstance(value, str) or not value:
            raise InvalidArgument(f"{where}: {key} must be a non-empty string")
    sa = data.get("service_account_key_file")
    if sa is not None and not sa.startswith("/"):
        raise InvalidArgument(f"{where}: service_account_key_file must be an absolute path")
    return data


# --- obstore: S3 and Azure -----------------------------------------------------------------

_STATUS_RE = re.compile(r"status code: (\d{3})")
_CODE_RE = re.compile(r"<Code>\s*([A-Za-z.]+)\s*</Code>")
_MISSING_BUCKET_CODES = ("NoSuchBucket", "ContainerNotFound")


class _ObstoreBackend(ObjectBackend):
    """S3 and Azure through obstore, whose store objects are thread-safe and retry by
    themselves within the bounds :func:`_obstore_options` gives them."""

    def __init__(self, spec: TierSpec, store: S3Store | AzureStore, secrets: _Secrets) -> None:
        super().__init__(spec)
        self._store = store
        self._secrets = secrets

    def _map(self, exc: Exception, op: str, key: str) -> DfsError:
        text = str(exc)
        status_m = _STATUS_RE.search(text)
        status = int(status_m.group(1)) if status_m else None
        code_m = _CODE_RE.search(text)
        code = code_m.group(1) if code_m else None
        what = f"HTTP {status} {code or ''}".strip() if status else _one_line(exc, self._secrets)
        if code in _MISSING_BUCKET_CODES or (isinstance(exc, FileNotFoundError) and op == "list"):
            return self._err(NotFound, op, "", f"bucket {self.spec.bucket} does not exist ({code})")
        if isinstance(exc, FileNotFoundError):
            return self._err(ChunkMissing, op, key, "no such object")
        if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)) or status in (401, 403):
            return self._err(PermissionDenied, op, key, f"access denied: {what}")
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            return self._err(InvalidArgument, op, key, f"refused: {what}")
        if isinstance(exc, ValueError) or "builder error" in text:
            # obstore's own refusal of the configuration (e.g. http:// without allow_http).
            return self._err(InvalidArgument, op, key, _one_line(exc, self._secrets))
        return self._err(Unavailable, op, key, what)

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (ObstoreError, OSError, ValueError) as exc:
            err = self._map(exc, op, key)
            log.debug("%s", err)
            raise err from None

    def put(self, key: str, data: bytes) -> None:
        check_key(key)
        # One PUT request: whole-object by itself, and retryable as a whole (a chunk is far
        # below the single-request limits of S3, 5 GiB, and Azure, 5000 MiB).
        self._call("put", key, lambda: obstore.put(self._store, key, data, use_multipart=False))

    def get(self, key: str) -> bytes:
        check_key(key)
        return self._call("get", key, lambda: bytes(obstore.get(self._store, key).bytes()))

    def exists(self, key: str) -> bool:
        check_key(key)
        try:
            self._call("head", key, lambda: obstore.head(self._store, key))
        except ChunkMissing:
            return False
        return True

    def delete(self, keys: Sequence[str]) -> int:
        keys = [check_key(k) for k in keys]
        for i in range(0, len(keys), _DELETE_BATCH):
            batch = keys[i : i + _DELETE_BATCH]
            try:
                self._call("delete", batch[0], functools.partial(obstore.delete, self._store, batch))
            except ChunkMissing:
                # Azure's batch delete fails on absent keys (S3's does not): delete one by one.
                for key in batch:
                    try:
                        self._call("delete", key, functools.partial(obstore.delete, self._store, key))
                    except ChunkMissing:
                        pass
        return len(keys)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        # obstore lists by whole path segments; the string-prefix contract lists the
        # enclosing "directory" and filters.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        stream = self._call(
            "list", prefix, lambda: obstore.list(self._store, directory or None, chunk_size=_LIST_PAGE)
        )
        it = iter(stream)
        while True:
            batch = self._call("list", prefix, lambda: next(it, None))
            if batch is None:
                return
            for meta in batch:
                path = meta["path"]
                if path.startswith(prefix):
                    yield path, int(meta["size"])

    def _check_read(self) -> None:
        for _ in self.list(_probe_key(self.spec, "check")):
            break


def _obstore_options(spec: TierSpec) -> tuple[ClientConfig, RetryConfig]:
    """HTTP client and retry settings bounded by the tier's timeout and retry count, so a
    dead endpoint fails in about a second (not obstore's default three minutes)."""
    timeout = timedelta(seconds=spec.request_timeout_s)
    client: ClientConfig = {
        "allow_http": spec.allow_http,
        "timeout": timeout,
        "connect_timeout": timedelta(seconds=min(_CONNECT_TIMEOUT_MAX_S, spec.request_timeout_s)),
    }
    retry: RetryConfig = {
        "max_retries": spec.max_retries,
        "retry_timeout": timeout,
        "backoff": {
            "init_backoff": timedelta(seconds=_BACKOFF_INIT_S),
            "max_backoff": timedelta(seconds=_BACKOFF_MAX_S),
            "base": 2,
        },
    }
    return client, retry


def _open_s3(spec: TierSpec, creds: dict[str, Any] | None) -> ObjectBackend:
    client, retry = _obstore_options(spec)
    kwargs: dict[str, Any] = {}
    secrets: list[str] = []
    if spec.endpoint is not None:
        kwargs["endpoint"] = spec.endpoint
    if spec.region is not None:
        kwargs["region"] = spec.region
    if creds is not None:
        kwargs["access_key_id"] = creds["access_key_id"]
        kwargs["secret_access_key"] = creds["secret_access_key"]
        secrets += [creds["secret_access_key"]]
        if "session_token" in creds:
            kwargs["session_token"] = creds["session_token"]
            secrets.append(creds["session_token"])
    store = _construct(
        spec, lambda: S3Store(spec.bucket, client_options=client, retry_config=retry, **kwargs)
    )
    return _ObstoreBackend(spec, store, _Secrets(secrets))


def _open_azure(spec: TierSpec, creds: dict[str, Any] | None) -> ObjectBackend:
    client, retry = _obstore_options(spec)
    kwargs: dict[str, Any] = {}
    secrets: list[str] = []
    if spec.endpoint is not None:
        # For Azurite and other non-Azure hosts: the account's URL, e.g. http://host:port/account.
        kwargs["endpoint"] = spec.endpoint
    if creds is not None:
        kwargs["account_name"] = creds["account_name"]
        if "account_key" in creds:
            kwargs["account_key"] = creds["account_key"]
            secrets.append(creds["account_key"])
        else:
            sas = creds["sas_token"].lstrip("?")
            kwargs["sas_key"] = sas
            secrets.append(sas)
    store = _construct(
        spec, lambda: AzureStore(spec.bucket, client_options=client, retry_config=retry, **kwargs)
    )
    return _ObstoreBackend(spec, store, _Secrets(secrets))


def _construct(spec: TierSpec, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (ObstoreError, ValueError) as exc:
        # Configuration errors only (no request is made yet); the text names a config key,
        # not its value, but it is not shown whole in case a value is quoted.
        raise InvalidArgument(
            f"tier {spec.name}: {spec.kind} client refused the configuration: {type(exc).__name__}"
        ) from None


# --- Google Cloud Storage -------------------------------------------------------------------


class _GcsBackend(ObjectBackend):
    """GCS through google-cloud-storage.  Its clients hold a requests session, which is not
    documented as thread-safe, so each thread gets its own client; the library's own
    retries are off and :meth:`_call` retries instead, bounded like obstore's."""

    def __init__(self, spec: TierSpec, make_client: Callable[[], Any], secrets: _Secrets) -> None:
        super().__init__(spec)
        self._make_client = make_client
        self._secrets = secrets
        self._local = threading.local()
        self._clients_lock = threading.Lock()
        # Every live thread's client, with its thread (for close()).  The daemon's worker
        # threads come and go (trio lets an idle one exit after 10 s), so a client whose thread
        # ended is closed when another is made: kept, they grew by a client and its pooled
        # sockets per thread ever started.
        self._clients: builtins.list[tuple[threading.Thread, Any]] = []
        self._timeout = (min(_CONNECT_TIMEOUT_MAX_S, spec.request_timeout_s), spec.request_timeout_s)

    def _bucket(self) -> Any:
        bucket = getattr(self._local, "bucket", None)
        if bucket is None:
            client = self._make_client()
            bucket = self._local.bucket = client.bucket(self.spec.bucket)
            self._local.client = client
            with self._clients_lock:
                ended = [c for thread, c in self._clients if not thread.is_alive()]
                self._clients = [(t, c) for t, c in self._clients if t.is_alive()]
                self._clients.append((threading.current_thread(), client))
            for old in ended:
                old.close()
        return bucket

    def _bucket_missing(self) -> bool:
        """Whether the bucket is missing (GCS answers a plain 404 for both a missing object and
        a missing bucket): asked only after a 404, so it costs nothing on the hot path."""
        from google.api_core import exceptions as gexc

        try:
            it = self._local.client.list_blobs(
                self.spec.bucket, max_results=1, timeout=self._timeout, retry=None
            )
            next(iter(it.pages), None)
        except gexc.NotFound:
            return True
        except Exception:  # noqa: BLE001 - cannot tell: report the object as missing
            return False
        return False

    def _map(self, exc: Exception, op: str, key: str) -> DfsError:
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as aexc

        detail = _one_line(exc, self._secrets)
        if isinstance(exc, gexc.NotFound):
            if op == "list" or self._bucket_missing():
                return self._err(NotFound, op, "", f"bucket {self.spec.bucket} does not exist")
            return self._err(ChunkMissing, op, key, "no such object")
        if isinstance(exc, (gexc.Forbidden, gexc.Unauthorized, aexc.RefreshError)):
            return self._err(PermissionDenied, op, key, f"access denied: {detail}")
        if isinstance(exc, aexc.DefaultCredentialsError):
            return self._err(InvalidArgument, op, key, f"credentials: {detail}")
        if isinstance(exc, gexc.ClientError) and not isinstance(exc, gexc.TooManyRequests):
            return self._err(InvalidArgument, op, key, f"refused: {detail}")
        return self._err(Unavailable, op, key, detail)

    @staticmethod
    def _transient(exc: Exception) -> bool:
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as aexc

        # requests' ConnectionError and Timeout are OSErrors.
        return isinstance(exc, (OSError, gexc.ServerError, gexc.TooManyRequests, aexc.TransportError))

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.spec.request_timeout_s
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - every failure is mapped or re-raised
                if isinstance(exc, DfsError):
                    raise
                if self._transient(exc) and attempt < self.spec.max_retries:
                    backoff_s = min(_BACKOFF_MAX_S, _BACKOFF_INIT_S * 2**attempt) * _JITTER.uniform(0.5, 1)
                    if time.monotonic() + backoff_s < deadline:
                        attempt += 1
                        log.debug(
                            "tier %s: %s %s: retry %d after %s",
                            self.spec.name,
                            op,
                            key,
                            attempt,
                            type(exc).__name__,
                        )
                        time.sleep(backoff_s)  # a worker thread's own wait, between retries
                        continue
                err = self._map(exc, op, key)
                log.debug("%s", err)
                raise err from None

    def put(self, key: str, data: bytes) -> None:
        check_key(key)
        # One multipart (metadata + data) request below 8 MiB, a resumable upload above:
        # GCS publishes the object only when the upload completes, either way.
        self._call(
            "put",
            key,
            lambda: (
                self._bucket()
                .blob(key)
                .upload_from_string(
                    data, content_type="application/octet-stream", timeout=self._timeout, retry=None
                )
            ),
        )

    def get(self, key: str) -> bytes:
        check_key(key)
        data = self._call(
            "get", key, lambda: self._bucket().blob(key).download_as_bytes(timeout=self._timeout, retry=None)
        )
        return bytes(data)

    def exists(self, key: str) -> bool:
        check_key(key)
        return bool(
            self._call(
                "head", key, lambda: self._bucket().blob(key).exists(timeout=self._timeout, retry=None)
            )
        )

    def delete(self, keys: Sequence[str]) -> int:
        keys = [check_key(k) for k in keys]
        for key in keys:
            try:
                self._call("delete", key, functools.partial(self._delete_one, key))
            except ChunkMissing:
                pass
        return len(keys)

    def _delete_one(self, key: str) -> None:
        self._bucket().blob(key).delete(timeout=self._timeout, retry=None)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        # Page by page with our own page tokens, so each page request is retried alone.
        token: str | None = None
        while True:
            names, token = self._call("list", prefix, functools.partial(self._list_page, prefix, token))
            yield from names
            if not token:
                return

    def _list_page(self, prefix: str, token: str | None) -> tuple[builtins.list[tuple[str, int]], str | None]:
        self._bucket()
        it = self._local.client.list_blobs(
            self.spec.bucket,
            prefix=prefix or None,
            page_size=_LIST_PAGE,
            page_token=token,
            timeout=self._timeout,
            retry=None,
        )
        page = next(iter(it.pages), None)
        if page is None:
            return [], None
        return [(b.name, int(b.size or 0)) for b in page], it.next_page_token

    def _check_read(self) -> None:
        for _ in self.list(_probe_key(self.spec, "check")):
            break

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for _, client in clients:
            client.close()


def _open_gcs(spec: TierSpec, creds: dict[str, Any] | None) -> ObjectBackend:
    # Imported here: google-cloud-storage takes a while to import, and only GCS tiers need it.
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    credentials: Any = None
    if creds is not None and creds.get("anonymous"):
        credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    elif creds is not None:
        from google.oauth2 import service_account

        path = creds["service_account_key_file"]
        try:
            credentials = service_account.Credentials.from_service_account_file(path)  # type: ignore[no-untyped-call]
        except OSError as exc:
            raise InvalidArgument(
                f"tier {spec.name}: service account key file {path}: cannot read it: {exc.strerror}"
            ) from None
        except (ValueError, KeyError):
            # Not shown: the parser's message may quote the key.
            raise InvalidArgument(
                f"tier {spec.name}: service account key file {path} is not a service account key"
            ) from None
    options = {"api_endpoint": spec.endpoint} if spec.endpoint is not None else None

    def make_client() -> Any:
        try:
            # project: only bucket creation and listing buckets need one; objects do not.
            return storage.Client(project="_", credentials=credentials, client_options=options)
        except Exception as exc:  # noqa: BLE001 - the default chain's errors, reported as such
            raise InvalidArgument(
                f"tier {spec.name}: no usable GCS credentials: {type(exc).__name__}"
            ) from None

    return _GcsBackend(spec, make_client, _Secrets())


# --- plain directory ---------------------------------------------------------------------------

# errnos meaning "the storage (an NFS server, a disk) is not answering", not "you asked wrong".
_UNAVAILABLE_ERRNOS = {
    errno_mod.EIO,
    errno_mod.ESTALE,
    errno_mod.ETIMEDOUT,
    errno_mod.EHOSTDOWN,
    errno_mod.EHOSTUNREACH,
    errno_mod.ENOTCONN,
    errno_mod.ECONNREFUSED,
}


class _DirBackend(ObjectBackend):
    """Objects as files under ``bucket`` (an absolute directory, e.g. an NFS mount).

    Put writes a temp file under ``bucket/.dfs-tmp/``, fsyncs it, renames it into place and
    fsyncs the directory, so a reader sees the old object or the new one, never a part.  The
    directory itself is never created: a missing mount must not turn into writes to the
    empty mount point on the local disk.
    """

    def __init__(self, spec: TierSpec) -> None:
        super().__init__(spec)
        self._root = Path(spec.bucket)

    def _path(self, key: str) -> Path:
        check_key(key)
        if key == DIR_TMP or key.startswith(DIR_TMP + "/"):
            raise InvalidArgument(f"object key {key!r} is reserved for temp files")
        return self._root / key

    def _map(self, exc: OSError, op: str, key: str) -> DfsError:
        code = exc.errno
        reason = exc.strerror or type(exc).__name__
        if not self._root.is_dir():
            return self._err(NotFound, op, "", f"directory {self._root} does not exist (not mounted?)")
        if code in (errno_mod.ENOENT, errno_mod.ENOTDIR) and op in ("get", "head"):
            return self._err(ChunkMissing, op, key, "no such object")
        if code in (errno_mod.EACCES, errno_mod.EPERM, errno_mod.EROFS):
            return self._err(PermissionDenied, op, key, reason)
        if code in (errno_mod.ENOSPC, errno_mod.EDQUOT):
            return self._err(NoSpace, op, key, reason)
        if code in _UNAVAILABLE_ERRNOS:
            return self._err(Unavailable, op, key, reason)
        return self._err(Unavailable, op, key, f"{reason} (errno {code})")

    def _require_root(self, op: str) -> None:
        if not self._root.is_dir():
            raise self._err(NotFound, op, "", f"directory {self._root} does not exist (not mounted?)")

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self._require_root("put")
        tmp_dir = self._root / DIR_TMP
        tmp = tmp_dir / f"{uuid.uuid4().hex}.tmp"
        try:
            tmp_dir.mkdir(exist_ok=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise self._map(exc, "put", key) from None

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except IsADirectoryError:
            raise self._err(ChunkMissing, "get", key, "no such object") from None
        except OSError as exc:
            raise self._map(exc, "get", key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, keys: Sequence[str]) -> int:
        paths = [(k, self._path(k)) for k in keys]
        for key, path in paths:
            try:
                path.unlink(missing_ok=True)
            except IsADirectoryError:
                pass
            except OSError as exc:
                raise self._map(exc, "delete", key) from None
        return len(paths)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        self._require_root("list")
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._root / directory if directory else self._root
        errors: list[OSError] = []
        for dirpath, dirnames, filenames in os.walk(start, onerror=errors.append):
            rel_dir = os.path.relpath(dirpath, self._root)
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            if not rel_dir:
                dirnames[:] = [d for d in dirnames if d != DIR_TMP]
            dirnames.sort()
            for name in sorted(filenames):
                key = rel_dir + name
                if not key.startswith(prefix):
                    continue
                try:
                    size = os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue  # deleted while we listed
                except OSError as exc:
                    raise self._map(exc, "list", key) from None
                yield key, size
        for walk_error in errors:
            if walk_error.errno != errno_mod.ENOENT:  # the prefix's directory does not exist: nothing
                raise self._map(walk_error, "list", prefix)

    def _check_read(self) -> None:
        self._require_root("check")
        if not os.access(self._root, os.R_OK | os.W_OK | os.X_OK):
            raise self._err(PermissionDenied, "check", "", f"directory {self._root} is not writable")


# --- opening ------------------------------------------------------------------------------------


def open_backend(spec: TierSpec) -> ObjectBackend:
    """A backend for ``spec``, its credentials read now from ``spec.credentials_file``.

    Makes no request: call :meth:`ObjectBackend.check` to probe the tier."""
    if spec.kind == "dir":
        return _DirBackend(spec)
    creds = load_credentials(spec)
    if spec.kind == "s3":
        return _open_s3(spec, creds)
    if spec.kind == "azure":
        return _open_azure(spec, creds)
    if spec.kind == "gcs":
        return _open_gcs(spec, creds)
    raise InvalidArgument(f"tier {spec.name}: unknown kind {spec.kind!r}")
