"""S3 server-side encryption on the object paths, and the bucket default (Put/Get/DeleteBucketEncryption).

The parsing, key derivation and verifier are dfs/core/s3sse.py's; this module
decides, per request, how the blocks are stored (:attr:`Call.sse`, which
:meth:`ObjectTree.writer` hands to the block writer) and what a reader must
present:

- an object's marker is the xattr ``user.s3.sse`` (``AES256`` or the SSE-C
  verifier: a salt and an HMAC of the key, never the key);
- **SSE-S3** objects are encrypted under the bucket volume's data key
  (``keys.volume_key`` makes one the first time, without turning the whole
  volume's encryption on), so GET, the mount and a copy read them like any
  encrypted volume's chunks;
- **SSE-C** objects need the key on GET/HEAD (400 InvalidRequest without it,
  403 AccessDenied for another key), on a copy from them (the
  ``x-amz-copy-source-...-customer-*`` headers) and on every UploadPart; the
  key travels over HTTPS only, as on AWS;
- the bucket default is the xattr ``user.s3.encryption`` of the bucket
  directory (``AES256`` [``bucket-key``]); a write without SSE headers of its
  own is stored as SSE-S3 when it is set.  Cached per daemon for
  :data:`~daemon.s3.bucket_cache.CACHE_TTL_S`, as the other bucket settings.

A write that keeps blocks of another object (copy, completion) shares them
only when they are already encrypted as the new object must be (the parts
of the upload at its completion); otherwise it reads and re-encodes them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from daemon.http import Response
from daemon.s3.bucket_cache import BucketCache
from daemon.s3.call import Call, read_checked_body, xml
from dfs.client.cluster import Client
from dfs.core import endpoints, s3sse
from dfs.core.errors import NoAttribute, NotFound, S3Error
from dfs.core.s3sse import BucketDefault, CustomerKey, Stored, WriteSse

log = logging.getLogger("dfs.s3")

XA_SSE = b"user.s3.sse"
XA_BUCKET_SSE = b"user.s3.encryption"
# Volume inode -> its SSE-S3 data key id.  Data keys are never deleted, so an entry never goes
# stale; bounded all the same.
_KEY_IDS_MAX = 4096

_NEEDS_KEY = (
    "The object was stored using a form of Server Side Encryption. The correct parameters must be "
    "provided to retrieve the object."
)
_NOT_APPLICABLE = "The encryption parameters are not applicable to this object."
_WRONG_KEY = "Access Denied: the SSE-C key does not match the key the object was stored with"
_HTTPS_ONLY = (
    "Requests specifying Server Side Encryption with Customer provided keys must be made over a "
    "secure connection."
)


class ServerSideEncryption:
    """The SSE decisions of one S3 front end, with the bucket-default cache."""

    def __init__(self, client: Client, bucket_ino: Callable[[str], Awaitable[int]]) -> None:
        self.client = client
        # The object tree's lookup (NoSuchBucket for a missing bucket); passed in, not imported:
        # the tree owns this object.
        self.bucket_ino = bucket_ino
        self._defaults: BucketCache[BucketDefault | None] = BucketCache()
        self._key_ids: dict[int, int] = {}

    # -- the bucket default ----------
    async def bucket_default(self, bucket: str) -> BucketDefault | None:
        fresh, cached = self._defaults.get(bucket)
        if fresh:
            return cached
        ino = await self.bucket_ino(bucket)
        try:
            raw: bytes | None = await self.client.getxattr(ino, XA_BUCKET_SSE)
        except NoAttribute:
            raw = None
        default: BucketDefault | None = None
        try:
            default = s3sse.decode_bucket_default(raw)
        except ValueError as exc:
            # Fail closed: an unreadable default still encrypts (with SSE-S3) rather than not.
            log.warning("bucket %s: malformed default encryption, using AES256: %s", bucket, exc)
            default = BucketDefault()
        self._defaults.put(bucket, default)
        return default

    async def get_config(self, c: Call) -> Response:
        self._defaults.drop(c.bucket)
        default = await self.bucket_default(c.bucket)
        if default is None:
            raise S3Error(
                "ServerSideEncryptionConfigurationNotFoundError",
                "The server side encryption configuration was not found",
                404,
                BucketName=c.bucket,
            )
        return xml(s3sse.bucket_default_xml(default))

    async def put_config(self, c: Call) -> Response:
        ino = await self.bucket_ino(c.bucket)
        default = s3sse.parse_bucket_default(await read_checked_body(c, s3sse.MAX_CONFIG_BYTES))
        await self._s3_key_id(ino)  # fail now (not a volume, no master key), not on the next PUT
        await self.client.setxattr(ino, XA_BUCKET_SSE, s3sse.encode_bucket_default(default), 0)
        self._defaults.drop(c.bucket)
        return Response(200)

    async def delete_config(self, c: Call) -> Response:
        ino = await self.bucket_ino(c.bucket)
        try:
            await self.client.removexattr(ino, XA_BUCKET_SSE)
        except NoAttribute:
            pass
        self._defaults.drop(c.bucket)
        return Response(204)

    # -- writes ----------
    async def for_write(
        self,
        c: Call,
        bucket_ino: int,
        *,
        source: Stored | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[bytes, bytes]:
        """Decide how a PutObject / CopyObject / CreateMultipartUpload / POST stores its blocks
        (sets ``c.sse``, adds the response headers) and answer the marker xattr to store.
        ``source``: a copy's source marker (its blocks are shared only when that is safe).
        ``headers``: where the SSE settings are (a POST form's fields; default the request's)."""
        req = s3sse.parse_request(c.headers if headers is None else headers)
        sse: WriteSse | None = None
        if req.customer is not None:
            self._require_tls(c)
            sse = self._customer_write(req.customer, share=False)
        else:
            default = None if req.s3 else await self.bucket_default(c.bucket)
            if req.s3 or default is not None:
                bucket_key = req.bucket_key or (default is not None and default.bucket_key)
                sse = WriteSse(
                    key_id=await self._s3_key_id(bucket_ino),
                    xattr=s3sse.stored_s3(),
                    headers=s3sse.s3_headers(bucket_key),
                )
            elif source is not None and source.kind == "C":
                # A plain copy of an SSE-C object: its blocks are read (with the source's key)
                # and stored plain, never shared (nobody could read them without the key).
                sse = WriteSse(share=False)
        c.sse = sse
        if sse is None:
            return {}
        c.extra_headers.extend(sse.headers)
        return {XA_SSE: sse.xattr} if sse.xattr is not None else {}

    def _customer_write(self, key: CustomerKey, *, share: bool) -> WriteSse:
        return WriteSse(
            cipher=s3sse.customer_cipher(key.key),
            share=share,
            xattr=s3sse.stored_customer(s3sse.make_verifier(key.key)),
            headers=s3sse.customer_headers(key),
        )

    async def for_part(self, c: Call, bucket_ino: int, upload_xattrs: Mapping[bytes, Any]) -> None:
        """UploadPart: the upload's encryption (set at its creation) applies to every part; an
        SSE-C upload needs its key on each one, as on AWS."""
        stored = s3sse.parse_stored(_bytes(upload_xattrs.get(XA_SSE)))
        given = s3sse.parse_customer(c.headers)
        if stored is None or stored.kind == "S3":
            if given is not None:
                raise S3Error("InvalidRequest", _NOT_APPLICABLE)
            if stored is not None:
                c.sse = WriteSse(key_id=await self._s3_key_id(bucket_ino), xattr=s3sse.stored_s3())
                c.extra_headers.extend(s3sse.s3_headers())
            return
        key = self._check_customer(c, stored, given)
        c.sse = WriteSse(cipher=s3sse.customer_cipher(key.key), headers=s3sse.customer_headers(key))
        c.extra_headers.extend(c.sse.headers)

    async def for_complete(
        self, c: Call, bucket_ino: int, upload_xattrs: Mapping[bytes, Any]
    ) -> bytes | None:
        """CompleteMultipartUpload: the parts' blocks are shared as they are (already encrypted
        as the object must be); a part that does not line up with blocks is read again, for
        which an SSE-C upload needs its key (optional on AWS, so only then).  Answers the key
        that reads the parts."""
        stored = s3sse.parse_stored(_bytes(upload_xattrs.get(XA_SSE)))
        if stored is None:
            return None
        if stored.kind == "S3":
            c.sse = WriteSse(key_id=await self._s3_key_id(bucket_ino), share=True, xattr=s3sse.stored_s3())
            c.extra_headers.extend(s3sse.s3_headers())
            return None
        given = s3sse.parse_customer(c.headers)
        if given is None:
            # Nothing to write but shared blocks; a part that needs reading is refused (403).
            c.sse = WriteSse(share=True)
            c.extra_headers.append((s3sse.H_C_ALGORITHM, s3sse.ALGORITHM))
            return None
        key = self._check_customer(c, stored, given)
        cipher = s3sse.customer_cipher(key.key)
        c.sse = WriteSse(cipher=cipher, share=True, headers=s3sse.customer_headers(key))
        c.extra_headers.extend(c.sse.headers)
        return cipher[0]

    async def _s3_key_id(self, bucket_ino: int) -> int:
        """The data key SSE-S3 objects of this bucket are encrypted with: the volume's own when
        it is encrypted, else its dfs-managed key (made on first use)."""
        own = (await self.client.volume_codec(bucket_ino)).key_id
        if own:
            return own
        key_id = self._key_ids.get(bucket_ino)
        if key_id is None:
            try:
                key_id = int(await endpoints.KEYS_VOLUME_KEY.call(self.client, bucket_ino))
            except NotFound:
                raise S3Error(
                    "InvalidRequest",
                    "Server-side encryption needs the bucket to be a dfs volume (buckets made by "
                    "CreateBucket are; adopt a directory made otherwise with POST /storage/volumes "
                    '{"name": ..., "adopt": true} on the admin API)',
                ) from None
            if len(self._key_ids) >= _KEY_IDS_MAX:
                self._key_ids.clear()
            self._key_ids[bucket_ino] = key_id
        ring = await self.client.keyring()
        if ring.key(key_id) is None:
            await self.client.keyring(0.0)  # a key made just now: fetch the ring again
        return key_id

    # -- reads ----------
    def for_read(self, c: Call, xattrs: Mapping[bytes, bytes]) -> bytes | None:
        """GET/HEAD: check the request's SSE-C key against the object, add the response's SSE
        headers, and answer the key that opens its chunks (None: no customer key needed).
        ``xattrs``: the object's."""
        stored = s3sse.parse_stored(xattrs.get(XA_SSE))
        given = s3sse.parse_customer(c.headers)
        if stored is None or stored.kind == "S3":
            if given is not None:
                raise S3Error("InvalidRequest", _NOT_APPLICABLE)
            if stored is not None:
                c.extra_headers.extend(s3sse.s3_headers())
            return None
        key = self._check_customer(c, stored, given)
        c.extra_headers.extend(s3sse.customer_headers(key))
        return s3sse.customer_data_key(key.key)

    def source_key(self, c: Call, xattrs: Mapping[bytes, bytes]) -> tuple[Stored | None, bytes | None]:
        """A copy's source: its marker, and the key that opens its chunks (from the
        ``x-amz-copy-source-server-side-encryption-customer-*`` headers)."""
        stored = s3sse.parse_stored(xattrs.get(XA_SSE))
        given = s3sse.parse_copy_source(c.headers)
        if stored is None or stored.kind == "S3":
            if given is not None:
                raise S3Error("InvalidRequest", _NOT_APPLICABLE)
            return stored, None
        key = self._check_customer(c, stored, given)
        return stored, s3sse.customer_data_key(key.key)

    def _check_customer(self, c: Call, stored: Stored, given: CustomerKey | None) -> CustomerKey:
        if given is None:
            raise S3Error("InvalidRequest", _NEEDS_KEY)
        self._require_tls(c)
        if not s3sse.verify(stored, given.key):
            raise S3Error("AccessDenied", _WRONG_KEY, 403)
        return given

    def _require_tls(self, c: Call) -> None:
        if c.req.scheme != "https":
            raise S3Error("InvalidRequest", _HTTPS_ONLY)


def _bytes(value: Any) -> bytes | None:
    return bytes(value) if isinstance(value, (bytes, bytearray)) else None
