"""The metadata service's synchronous core: namespace, inodes, block maps and chunk refcounts in SQLite.

:class:`MetaStore` (:mod:`daemon.meta.store`) is assembled from one mixin per
concern, all written against the transaction interface of
:class:`daemon.meta.base.MetaBase`:

- :mod:`~daemon.meta.schema`: the tables, the schema version, internal roots;
- :mod:`~daemon.meta.base`: transactions, the oplog append, error translation;
- :mod:`~daemon.meta.inodes`: inode, dentry and chunk-reference primitives;
- :mod:`~daemon.meta.namespace`, :mod:`~daemon.meta.xattrs`,
  :mod:`~daemon.meta.sessions`: the POSIX namespace the mount drives;
- :mod:`~daemon.meta.files`: block maps and chunk replication factors;
- :mod:`~daemon.meta.objects`: the S3 shim's path-level operations;
- :mod:`~daemon.meta.snapshots`, :mod:`~daemon.meta.volumes`,
  :mod:`~daemon.meta.policy`: copy-on-write trees, volumes and their policy;
- :mod:`~daemon.meta.quotas`: directory quotas, their usage (kept by triggers
  on ``inodes``) and the EXDEV rule between quota domains;
- :mod:`~daemon.meta.registry`: the node registry and placement layout;
- :mod:`~daemon.meta.keys`: S3 access keys;
- :mod:`~daemon.meta.tokens`: scoped admin tokens (hashes only);
- :mod:`~daemon.meta.gc`, :mod:`~daemon.meta.oplog`, :mod:`~daemon.meta.stats`:
  garbage collection, the operation log, totals;
- :mod:`~daemon.meta.fsck`: the invariants, checked and repaired.
"""

from daemon.meta.inodes import DIR_SIZE, LINK_MAX
from daemon.meta.objects import IMPLICIT_XATTR
from daemon.meta.policy import CONSISTENCY_LEVELS, CONSISTENCY_XATTR, MAX_REPLICAS, REPLICAS_XATTR
from daemon.meta.schema import INTERNAL_DIRS, SCHEMA_VERSION
from daemon.meta.store import MetaStore

__all__ = [
    "CONSISTENCY_LEVELS",
    "CONSISTENCY_XATTR",
    "DIR_SIZE",
    "IMPLICIT_XATTR",
    "INTERNAL_DIRS",
    "LINK_MAX",
    "MAX_REPLICAS",
    "REPLICAS_XATTR",
    "SCHEMA_VERSION",
    "MetaStore",
]
