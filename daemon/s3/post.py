"""POST Object: browser uploads from an HTML form carrying a signed policy.

``POST /bucket`` with a ``multipart/form-data`` body is authenticated by the
form itself, not by headers: the router hands it here before header
authentication.  The fields before the file (at most
:data:`~dfs.core.s3post.MAX_FIELDS_BYTES` of them) are read whole; then the
policy's signature is verified (:meth:`KeyRing.authenticate_post`), the
policy is evaluated (:class:`~dfs.core.s3post.PostPolicy`), the signing key's
grants are checked as for PutObject, and only then is the file streamed,
piece by piece, into blocks through the same writer and commit as PutObject
(volume codec, replicas, quotas, ETag, checksums).  Nothing is committed
until the file part ended and its length met the policy, so a refused upload
leaves only unreferenced chunks (the orphan sweep's).  What follows the file
part is ignored, as on AWS (the HTTP server drains it).
"""

from __future__ import annotations

import time
import urllib.parse

from daemon.http import Response
from daemon.s3.auth import KeyRing
from daemon.s3.call import Call, authorize
from daemon.s3.policy import BucketPolicies
from daemon.s3.tagging import XA_TAGGING
from daemon.s3.tree import XA_CHECKSUM, XA_ETAG, ObjectTree, request_xattrs, stamp
from dfs.core import s3acl, s3names, s3tags, s3xml, sigv4
from dfs.core.checksums import algorithm_from_header
from dfs.core.errors import S3Error
from dfs.core.s3grants import need_of
from dfs.core.s3post import (
    MAX_FIELDS_BYTES,
    Event,
    Field,
    FileData,
    FileEnd,
    FileStart,
    FormParser,
    PostPolicy,
    boundary_of,
)

_PIECE_BYTES = 256 * 1024
# Headroom over the largest object for the form around it (fields, part headers, delimiters).
_FORM_OVERHEAD_BYTES = MAX_FIELDS_BYTES + 64 * 1024


def is_form_upload(c: Call) -> bool:
    """A POST to a bucket itself, no query, with a form body: a browser upload."""
    return (
        c.req.method == "POST"
        and bool(c.bucket)
        and not c.key
        and not c.query
        and c.headers.get("content-type", "").lower().lstrip().startswith("multipart/form-data")
    )


class PostUploads:
    """Browser uploads into one filesystem's buckets."""

    def __init__(self, tree: ObjectTree, keys: KeyRing, policies: BucketPolicies | None = None) -> None:
        self.tree = tree
        self.keys = keys
        # The form's canned `acl` field needs the bucket's owner and public access block.
        self.policies = policies

    async def upload(self, c: Call) -> Response:
        c.operation = "PostObject"
        boundary = boundary_of(c.headers.get("content-type", ""))
        if boundary is None:
            raise S3Error("InvalidArgument", "POST requires a multipart/form-data body", 400)
        self._body_limits(c)
        bucket_ino = await self.tree.bucket_ino(c.bucket)
        parser = FormParser(boundary)
        fields, start, pending = await self._fields(c, parser)
        method, c.principal = await self.keys.authenticate_post(fields, region=self.tree.s3.region)
        policy = PostPolicy.parse(fields["policy"])  # present: the signature covered it
        policy.check(fields, bucket=c.bucket, now_s=time.time())
        if c.check is not None:
            key_named = fields.get("key", "").replace("${filename}", start.filename)
            await c.check(c.bucket, key_named, "PutObject")
        else:
            authorize(c, c.bucket, need_of("PutObject"))
        _check_unsupported(fields, acls=self.policies is not None)
        if "key" not in fields:
            raise S3Error(
                "InvalidArgument", "Bucket POST must contain a field named 'key'.", 400, ArgumentName="key"
            )
        key = fields["key"].replace("${filename}", start.filename)
        policy.check_key(key)
        names, is_dir = s3names.key_to_names(key)
        if is_dir:
            raise S3Error("InvalidArgument", "A key ending in '/' names a directory and takes no body")
        c.key = key
        c.resource = f"/{c.bucket}/{key}"
        xattrs = request_xattrs(fields)  # Content-Type, Cache-Control, ..., x-amz-meta-*
        if "tagging" in fields:  # a Tagging XML document, as PutObjectTagging's body
            tags = s3xml.parse_tagging(fields["tagging"].encode())
            s3tags.check(tags, max_tags=s3tags.MAX_OBJECT_TAGS)
            if tags:
                xattrs[XA_TAGGING] = s3tags.encode(tags)
        if self.policies is not None and "acl" in fields:
            xattrs.update(await self.policies.form_acl(c, fields["acl"].strip()))
        c.auth = sigv4.AuthContext(c.principal.access_key, method, sigv4.UNSIGNED_PAYLOAD, "", "")
        # Content-MD5 and x-amz-checksum-<alg> as form fields are checked like the headers of a PUT.
        digests = {
            k: v for k, v in fields.items() if k == "content-md5" or algorithm_from_header(k) is not None
        }
        checks = sigv4.BodyChecks(digests, c.auth)
        limit = self.tree.s3.max_object_bytes
        size = 0
        xattrs.update(await self.tree.sse.for_write(c, bucket_ino, headers=fields))  # daemon/s3/sse.py
        async with await self.tree.writer(c) as writer:
            events = pending
            ended = False
            while not ended:
                for event in events:
                    if isinstance(event, FileData):
                        size += len(event.data)
                        policy.check_length(size, final=False)
                        if size > limit:
                            raise S3Error(
                                "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size"
                            )
                        checks.update(event.data)
                        await writer.write(event.data)
                    elif isinstance(event, FileEnd):
                        ended = True
                if not ended:
                    events = await _more(c, parser)
            blocks, inline = await writer.finish(self.tree.client.inline_max)
        c.bytes_in = size
        policy.check_length(size, final=True)
        checks.finish(None)
        mtime = time.time_ns()
        xattrs[XA_ETAG] = stamp(checks.md5_hex, size, mtime)
        if checks.checksum:
            xattrs[XA_CHECKSUM] = f"{checks.checksum[0]} {checks.checksum[1]}".encode()
        await self.tree.commit(c, bucket_ino, names, size, mtime, blocks, inline, xattrs, None)
        return self._answer(c, fields, checks.md5_hex)

    def _body_limits(self, c: Call) -> None:
        declared = c.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise S3Error("InvalidArgument", "Content-Length is not a number")
            if int(declared) > self.tree.s3.max_object_bytes + _FORM_OVERHEAD_BYTES:
                raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
        elif "chunked" not in c.headers.get("transfer-encoding", "").lower():
            raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)

    async def _fields(self, c: Call, parser: FormParser) -> tuple[dict[str, str], FileStart, list[Event]]:
        """The fields before the file part, that part's start, and the file events already parsed."""
        fields: dict[str, str] = {}
        while True:
            events = await _more(c, parser)
            for i, event in enumerate(events):
                if isinstance(event, Field):
                    try:
                        value = event.value.decode("utf-8")
                    except UnicodeDecodeError:
                        raise S3Error(
                            "InvalidArgument", "A form field is not valid UTF-8", 400, ArgumentName=event.name
                        ) from None
                    if event.name in fields:
                        raise S3Error(
                            "InvalidArgument",
                            f"The form field {event.name!r} appears twice",
                            400,
                            ArgumentName=event.name,
                        )
                    fields[event.name] = value
                elif isinstance(event, FileStart):
                    return fields, event, events[i + 1 :]
            if parser.done:
                raise S3Error(
                    "InvalidArgument",
                    "POST requires exactly one file upload per request.",
                    400,
                    ArgumentName="file",
                )

    def _answer(self, c: Call, fields: dict[str, str], etag: str) -> Response:
        """303 to the form's redirect, else the status it asked for (201 with a PostResponse), else 204."""
        host = c.headers.get("host", "")
        vhost = bool(self.tree.s3.domain) and host.rsplit(":", 1)[0].lower().endswith(
            "." + self.tree.s3.domain.lower()
        )
        path = "/" + urllib.parse.quote(c.key) if vhost else f"/{c.bucket}/{urllib.parse.quote(c.key)}"
        location = f"{c.req.scheme}://{host}{path}"
        headers = [("ETag", f'"{etag}"'), ("Location", location)]
        redirect = fields.get("success_action_redirect") or fields.get("redirect")
        if redirect and _redirectable(redirect):
            query = urllib.parse.urlencode(
                {"bucket": c.bucket, "key": c.key, "etag": f'"{etag}"'}, quote_via=urllib.parse.quote
            )
            sep = "&" if "?" in redirect else "?"
            return Response(303, [("ETag", f'"{etag}"'), ("Location", f"{redirect}{sep}{query}")])
        status = fields.get("success_action_status", "").strip()
        if status == "201":
            body = s3xml.post_response(location, c.bucket, c.key, etag)
            return Response(201, [*headers, ("Content-Type", "application/xml")], body)
        if status == "200":
            return Response(200, headers)
        return Response(204, headers)  # AWS's default, also for any other value


async def _more(c: Call, parser: FormParser) -> list[Event]:
    """The events of the next piece of the body; the body must not end before the parser is done."""
    raw = await c.req.receive_some(_PIECE_BYTES)
    if not raw:
        return parser.finish()
    return parser.feed(raw)


def _redirectable(url: str) -> bool:
    # AWS ignores a redirect it cannot use and answers with the status instead.
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _check_unsupported(fields: dict[str, str], *, acls: bool) -> None:
    """Refuse what a form asks for that dfs cannot honour, rather than silently dropping it."""
    acl = fields.get("acl", "private").strip()
    if acls and acl not in s3acl.CANNED:
        raise S3Error(
            "InvalidArgument", f"Unknown canned ACL {acl[:64]!r}: use one of {', '.join(s3acl.CANNED)}"
        )
    if not acls and acl != "private":
        raise S3Error(
            "NotImplemented", f"dfs has no ACLs: only acl=private is accepted, not {acl[:64]!r}", 501
        )
    storage = fields.get("x-amz-storage-class", "STANDARD").strip()
    if storage != "STANDARD":
        raise S3Error("InvalidStorageClass", "The storage class you specified is not valid", 400)
    if "x-amz-tagging" in fields:  # not a POST field on AWS: tags come as a `tagging` document
        raise S3Error("InvalidArgument", "POST uploads take tags as a `tagging` field (a Tagging document)")
