"""The S3-compatible API: requests in, filesystem operations out.

Mapping (DESIGN.md, "S3 view"): a bucket is a top-level directory, key
``a/b/c`` is the path ``a/b/c`` inside it, and an object's attributes are
xattrs of its file, so the S3 view and the mount see the same tree.

- :mod:`~daemon.s3.router`: :class:`S3Api`, the HTTP handler (parse, authenticate, route, errors);
- :mod:`~daemon.s3.auth`: :class:`KeyRing`, who may sign requests;
- :mod:`~daemon.s3.call`: the request being served, shared by every operation;
- :mod:`~daemon.s3.tree`: buckets and objects on the filesystem (lookups, xattrs, commits);
- :mod:`~daemon.s3.buckets`, :mod:`~daemon.s3.objects`, :mod:`~daemon.s3.listing`,
  :mod:`~daemon.s3.multipart`: the operations;
- :mod:`~daemon.s3.body`: streaming request bodies into blocks and blocks into responses.
"""

from daemon.s3.auth import KeyRing
from daemon.s3.router import S3Api

__all__ = ["KeyRing", "S3Api"]
