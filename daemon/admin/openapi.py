"""The OpenAPI 3.1 description of the admin API (:mod:`daemon.admin`), served at
``GET /storage/openapi.json``.

Invariants:

- It describes exactly the routes and methods :class:`daemon.admin.AdminApi`
  serves, and every JSON body it answers validates against the schema given
  here for that status (``tests/unit/test_admin.py`` checks both against a
  live daemon).  Change the two together.
- Schemas use the JSON Schema 2020-12 subset OpenAPI 3.1 embeds, and only
  the keywords ``type`` (a name or a list, e.g. ``["string", "null"]`` for
  nullable), ``properties``, ``required``, ``additionalProperties``,
  ``items``, ``enum``, ``minimum``/``maximum``, ``exclusiveMinimum``,
  ``minLength``/``maxLength``, ``pattern``, ``format`` and ``$ref``, so a
  small validator can check them.
- The ``/storage/config`` schemas are derived from :class:`dfs.core.config.Config`,
  so a new option is documented the moment it exists.
"""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

from dfs import __version__
from dfs.core.config import MAX_TRASH_DAYS, Config

_JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(
    properties: dict[str, Any], *, required: list[str] | None = None, extra: bool = False
) -> dict[str, Any]:
    """An object schema; ``required`` defaults to every property."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": extra,
    }


def _body(schema_name: str, description: str) -> dict[str, Any]:
    return {"required": True, "description": description, "content": {_JSON: {"schema": _ref(schema_name)}}}


def _ok(schema_name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref(schema_name)}}}


def _err(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{name}"}


_QUOTA_PATH = {
    "name": "path",
    "in": "query",
    "required": False,
    "description": "absolute path in the namespace, e.g. /volume/dir",
    "schema": {"type": "string"},
}
_STD_ERRORS = {"401": _err("Unauthorized"), "403": _err("Forbidden"), "default": _err("Error")}
_BODY_ERRORS = {"400": _err("BadRequest"), "413": _err("PayloadTooLarge")}

_INT64 = {"type": "integer", "minimum": 0}
_TIMESTAMP = {"type": "string", "format": "date-time", "description": "UTC, whole seconds"}
_NODE_STATE = {"type": "string", "enum": ["active", "draining", "out"]}
_NODE_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"}
_ZONE = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"}
_ADDRESS = {"type": "string", "description": "HOST:PORT", "maxLength": 260}
_WEIGHT = {"type": "number", "exclusiveMinimum": 0, "maximum": 1_000_000}
_SCOPE = {
    "type": "string",
    "enum": ["read", "admin"],
    "description": "read: GET of health, metrics, nodes, volumes, snapshots, policy; admin: everything",
}
_S3_PERM = {
    "type": "string",
    "enum": ["r", "w", "rw", "owner"],
    "description": "r read, w write, rw both, owner everything (delete the bucket, change its settings)",
}
_S3_GRANTS = {
    "type": "object",
    "additionalProperties": _S3_PERM,
    "description": "bucket -> permission; the buckets a key created show as owner",
}
_VOLUME_NAME = {
    "type": "string",
    "minLength": 3,
    "maxLength": 63,
    "pattern": "^[a-z0-9][a-z0-9.-]*[a-z0-9]$",
    "description": "S3 bucket rules: 3-63 of a-z 0-9 . -, alphanumeric at both ends, no '..', not an IPv4",
}
_SNAPSHOT_NAME = {
    "type": "string",
    "pattern": "^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$",
    "description": "default: the UTC time of creation, e.g. 2026-11-25T14-00-00Z",
}
_SNAPSHOT = _obj(
    {
        "volume": {"type": "string"},
        "name": {"type": "string"},
        "path": {"type": "string", "description": "/.snapshots/<volume>/<name> (read-only)"},
        "created": _TIMESTAMP,
        "created_ns": {"type": "integer"},
        "origin": {
            "type": "string",
            "enum": ["manual", "minutely", "hourly", "daily", "weekly", "monthly"],
            "description": "manual, or the schedule tier that took it",
        },
        "files": {"type": "integer", "description": "non-directories when taken"},
        "bytes": {"type": "integer", "description": "their sum of st_size when taken"},
    }
)
_SNAPSHOT_PARAMS = [
    {"name": "volume", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "name", "in": "path", "required": True, "schema": _SNAPSHOT_NAME},
]

_POLICY_FIELDS: dict[str, Any] = {
    "replication": {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": 7,
        "description": "copies of each chunk; null: the cluster default ([cluster] replicas). A change "
        "re-marks the chunks already written and repair adds or trims copies",
    },
    "consistency": {
        "type": ["string", "null"],
        "enum": ["strong", "quorum", "eventual", None],
        "description": "durable copies before a write is acknowledged: all, a majority, one; "
        "null: the cluster default ([cluster] consistency)",
    },
    "compression": {
        "type": "string",
        "enum": ["zstd", "none"],
        "description": "how chunks written from now on are stored; existing chunks are not rewritten",
    },
    "compression_level": {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": 19,
        "description": "zstd level; null: the cluster's [storage] compression_level",
    },
    "encryption": {
        "type": "boolean",
        "description": "encrypt chunks written from now on (AES-256-GCM, a data key per volume wrapped "
        "by the master key); turning it off keeps old chunks readable",
    },
    "quota_bytes": {
        "type": ["integer", "null"],
        "minimum": 0,
        "description": "byte limit (sum of st_size) of the volume's directory quota; null: no limit. "
        "The same quota `dfs quota set /VOLUME` and /storage/quotas change",
    },
    "quota_inodes": {
        "type": ["integer", "null"],
        "minimum": 0,
        "description": "inode limit of the volume's directory quota; null: no limit",
    },
    "trash_days": {
        "type": ["number", "null"],
        "minimum": 0,
        "maximum": MAX_TRASH_DAYS,
        "description": "days a file deleted (or replaced) through a mount or S3 stays in the volume's "
        "trash before it is purged (fractions allowed; 0: no trash); null: the cluster default "
        "([storage] trash_days). Trash does not count against the volume's quota",
    },
    "snapshot_schedule": {
        "type": ["string", "null"],
        "minLength": 1,
        "maxLength": 200,
        "description": "automatic snapshots: comma-separated tier=N (tiers minutely, hourly, daily, "
        "weekly, monthly; N: how many of that tier to keep), e.g. 'hourly=24,daily=7'; null: none",
    },
    "tiers": {
        "type": ["array", "null"],
        "items": {"type": "string"},
        "description": "1..4 cloud tiers (`dfs tier add`) that hold a copy of each of the volume's chunks "
        "(two: cross-cloud replication; a read falls back to the other when one is down); null: none",
    },
    "tier_mode": {
        "type": ["string", "null"],
        "enum": ["copy", "tiered", "cloud", None],
        "description": "copy: local copies stay and the tiers hold one more (off-site backup); tiered: "
        "chunks of files untouched for tier_after_days leave the local disks once every tier holds "
        "them, and reads fetch them from a tier; cloud: the tiers are the volume's home, every chunk "
        "leaves the local disks at the next pass and reads go through the daemons' bounded tier "
        "cache ([tiers] cache_bytes); null: copy",
    },
    "tier_after_days": {
        "type": ["number", "null"],
        "minimum": 0,
        "description": "days since a file was last modified or read before its chunks are copied "
        "(copy) or moved (tiered) to the tiers; null: 0 (at the next pass)",
    },
    "tier_paths": {
        "type": ["array", "null"],
        "items": {"type": "string"},
        "description": "1..16 subtrees of the volume (paths inside it, e.g. '/logs') whose files "
        "alone are copied or moved to the tiers; null: the whole volume",
    },
    "snapshot_retention": {
        "type": "null",
        "description": "not used (always null; a value is refused): retention is per tier, "
        "in snapshot_schedule; manual snapshots stay until deleted",
    },
}
_SOURCE = {
    "type": "string",
    "enum": ["volume", "cluster"],
    "description": "volume: set on the volume; cluster: the cluster default applies (dfs.conf [cluster])",
}
# The volume policy fields and their defaults: the one definition (daemon/admin/api.py imports it).
DEFAULT_POLICY: dict[str, Any] = {
    # null: the cluster default ([cluster] replicas / consistency), resolved where the policy
    # applies (MetaStore.policy, Client.policy), so a change of dfs.conf reaches the volume.
    "replication": None,
    "consistency": None,
    "compression": "zstd",
    "compression_level": None,  # zstd level 1..19; null: the cluster's [storage] compression_level
    "encryption": False,
    "quota_bytes": None,
    "quota_inodes": None,
    "trash_days": None,  # null: the cluster's [storage] trash_days
    "snapshot_schedule": None,
    "tiers": None,
    "tier_mode": None,
    "tier_after_days": None,
    "tier_paths": None,
    "snapshot_retention": None,
}


def _with_default(name: str) -> dict[str, Any]:
    return {**_POLICY_FIELDS[name], "default": DEFAULT_POLICY[name]}


_LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _config_schema() -> dict[str, Any]:
    """Sections -> options, typed from the Config dataclasses."""
    sections: dict[str, Any] = {}
    for name, cls in get_type_hints(Config).items():
        hints = get_type_hints(cls)
        options: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if hint == tuple[str, ...]:  # a list option ([storage] disks)
                options[f.name] = {"type": "array", "items": {"type": "string"}}
            else:
                options[f.name] = {"type": _JSON_TYPES[hint]}
        sections[name] = _obj(options)
    schema = _obj(sections)
    schema["description"] = (
        "The effective configuration; secrets (secret_key, *token*, key_file...) read '***'"
    )
    return schema


_SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        {
            "error": _obj(
                {
                    "code": {"type": "string", "description": "machine-readable, e.g. NotFound, Exists"},
                    "message": {"type": "string"},
                }
            )
        }
    ),
    "Liveness": _obj({"status": {"type": "string", "enum": ["ok"]}}),
    "Check": _obj({"name": {"type": "string"}, "ok": {"type": "boolean"}, "detail": {"type": "string"}}),
    "StorageHealth": _obj(
        {
            "status": {
                "type": "string",
                "enum": ["ok", "degraded", "down"],
                "description": "down: metadata unreadable; degraded: another check failed",
            },
            "live": {"type": "boolean"},
            "ready": {"type": "boolean", "description": "every check passed"},
            "checks": {"type": "array", "items": _ref("Check")},
        }
    ),
    "Capacity": _obj(
        {
            "total_bytes": _INT64,
            "free_bytes": _INT64,
            "avail_bytes": _INT64,
            "used_bytes": {**_INT64, "description": "bytes of stored chunks"},
            "chunk_count": _INT64,
            "checksum_failures": _INT64,
            "reserve_bytes": _INT64,
        }
    ),
    "StorageMetrics": _obj(
        {
            "node_id": {"type": "string"},
            "version": {"type": "string"},
            "uptime_s": {"type": "number", "minimum": 0},
            "capacity": _ref("Capacity"),
            "namespace": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "inodes, files, dirs, logical_bytes, chunks, ... (MetaStore.counts)",
            },
            "requests": _obj({"rpc": _INT64, "s3": _INT64, "admin": _INT64}),
            "event_loop_lag_s": {"type": "number", "minimum": 0},
            "refreshed": _TIMESTAMP,
        }
    ),
    "NodeCapacity": {
        **_obj({"total_bytes": _INT64, "avail_bytes": _INT64, "used_bytes": _INT64}),
        "type": ["object", "null"],
    },
    "Node": _obj(
        {
            "node_id": _NODE_ID,
            "address": {**_ADDRESS, "description": "RPC address"},
            "zone": {"type": "string"},
            "capacity_weight": {"type": "number"},
            "state": _NODE_STATE,
            "self": {"type": "boolean", "description": "the node answering this request"},
            "registered": {"type": "boolean", "description": "has a row in the layout table"},
            "updated": {"type": ["string", "null"], "format": "date-time"},
            "s3_address": {"type": ["string", "null"]},
            "admin_address": {"type": ["string", "null"]},
            "capacity": _ref("NodeCapacity"),
        }
    ),
    "NodeList": _obj({"nodes": {"type": "array", "items": _ref("Node")}}),
    "NodeCreate": _obj(
        {
            "node_id": _NODE_ID,
            "address": _ADDRESS,
            "zone": {**_ZONE, "default": "default"},
            "capacity_weight": {**_WEIGHT, "default": 1.0},
            "state": {**_NODE_STATE, "default": "active"},
        },
        required=["node_id", "address"],
    ),
    "NodeUpdate": _obj(
        {"address": _ADDRESS, "zone": _ZONE, "capacity_weight": _WEIGHT, "state": _NODE_STATE}, required=[]
    ),
    # A volume's policy as the API shows it: replication and consistency are the values in
    # effect (never null), and *_source says whether the volume sets them or the cluster does.
    "Policy": _obj(
        {
            **_POLICY_FIELDS,
            "replication": {**_POLICY_FIELDS["replication"], "type": "integer"},
            "consistency": {
                **_POLICY_FIELDS["consistency"],
                "type": "string",
                "enum": ["strong", "quorum", "eventual"],
            },
            "replication_source": _SOURCE,
            "consistency_source": _SOURCE,
        }
    ),
    "Volume": _obj(
        {
            "name": {"type": "string"},
            "path": {"type": "string", "description": "the volume's directory in the filesystem"},
            "created": _TIMESTAMP,
            "policy": _ref("Policy"),
            "usage": _ref("Usage"),
        },
        required=["name", "path", "created", "policy"],
    ),
    "Usage": _obj(
        {
            "bytes": {**_INT64, "description": "sum of st_size of the regular files"},
            "inodes": {**_INT64, "description": "inodes, the quota directory itself included"},
            "stored_bytes": {**_INT64, "description": "bytes stored for them, after compression"},
            "compression_ratio": {
                "type": ["number", "null"],
                "description": "bytes / stored_bytes; null when nothing is stored",
            },
        }
    ),
    "Quota": _obj(
        {
            "path": {"type": "string"},
            "max_bytes": {"type": ["integer", "null"], "minimum": 0, "description": "null: no limit"},
            "max_inodes": {"type": ["integer", "null"], "minimum": 0, "description": "null: no limit"},
            "usage": _ref("Usage"),
        }
    ),
    "QuotaList": _obj({"quotas": {"type": "array", "items": _ref("Quota")}}),
    "TrashEntry": _obj(
        {
            "id": {**_INT64, "description": "the entry's id: the deleted file's inode number"},
            "volume": {"type": "string"},
            "volume_ino": _INT64,
            "parent": {**_INT64, "description": "the directory it was deleted from (0: unknown)"},
            "name": {"type": "string", "description": "the name it had there"},
            "path": {"type": ["string", "null"], "description": "where it was; null: that directory is gone"},
            "deleted_ns": _INT64,
            "size": _INT64,
        }
    ),
    "TrashUsage": _obj(
        {
            "volume": {"type": "string"},
            "volume_ino": _INT64,
            "entries": _INT64,
            "bytes": {**_INT64, "description": "st_size of the entries (not in the volume's quota usage)"},
            "stored_bytes": _INT64,
        }
    ),
    "TrashList": _obj(
        {
            "volume": {"type": ["string", "null"]},
            "entries": {"type": "array", "items": _ref("TrashEntry"), "description": "oldest first"},
            "usage": {"type": "array", "items": _ref("TrashUsage"), "description": "per volume"},
        }
    ),
    "TrashRestore": _obj(
        {"to": {"type": "string", "pattern": "^/", "description": "a new path, e.g. /volume/dir/name"}},
        required=[],
    ),
    "TrashRestored": _obj(
        {
            **{k: {} for k in ("id", "volume", "name", "path", "deleted_ns", "size")},
            "restored_to": {"type": "string"},
        },
        extra=True,
    ),
    "TrashEmptied": _obj({"volume": {"type": ["string", "null"]}, "purged": _INT64}),
    "QuotaUpdate": _obj(
        {
            "path": {"type": "string", "pattern": "^/", "description": "absolute path, e.g. /volume/dir"},
            "max_bytes": {"type": ["integer", "null"], "minimum": 0, "description": "null: no limit"},
            "max_inodes": {"type": ["integer", "null"], "minimum": 0, "description": "null: no limit"},
        },
        required=[],
    ),
    "VolumeList": _obj({"volumes": {"type": "array", "items": _ref("Volume")}}),
    "VolumeCreate": _obj(
        {
            "name": _VOLUME_NAME,
            "adopt": {
                "type": "boolean",
                "default": False,
                "description": "make the existing top-level directory `name` a volume instead of creating it",
            },
            **{key: _with_default(key) for key in _POLICY_FIELDS},
        },
        required=["name"],
    ),
    "VolumeUpdate": _obj(dict(_POLICY_FIELDS), required=[]),
    "DirectoryPolicy": _obj(
        {
            "path": {"type": "string"},
            "replication": {
                **_POLICY_FIELDS["replication"],
                "type": ["integer", "null"],
                "description": "set on this path (xattr user.dfs.replicas); null: inherited",
            },
            "consistency": {
                **_POLICY_FIELDS["consistency"],
                "type": ["string", "null"],
                "enum": ["strong", "quorum", "eventual", None],
                "description": "set on this path (xattr user.dfs.consistency); null: inherited",
            },
            "effective": _obj(
                {"replication": _POLICY_FIELDS["replication"], "consistency": _POLICY_FIELDS["consistency"]}
            ),
        }
    ),
    "DirectoryPolicyUpdate": _obj(
        {
            "path": {"type": "string", "pattern": "^/", "description": "absolute path, e.g. /volume/dir"},
            "replication": {**_POLICY_FIELDS["replication"], "type": ["integer", "null"]},
            "consistency": {
                **_POLICY_FIELDS["consistency"],
                "type": ["string", "null"],
                "enum": ["strong", "quorum", "eventual", None],
            },
        },
        required=["path"],
    ),
    "SnapshotCreate": _obj(
        {"volume": {"type": "string", "minLength": 1}, "name": _SNAPSHOT_NAME}, required=["volume"]
    ),
    "Snapshot": _SNAPSHOT,
    "SnapshotDeleted": _obj(
        {"volume": {"type": "string"}, "name": {"type": "string"}, "removed_inodes": {"type": "integer"}}
    ),
    "SnapshotRestore": _obj(
        {
            "path": {"type": "string", "description": "below the snapshot's top, e.g. docs/report.txt"},
            "to": {"type": "string", "description": "the copy's new absolute path, e.g. /data/report.txt"},
        },
        required=[],
    ),
    "SnapshotRestored": _obj(
        {
            "volume": {"type": "string"},
            "name": {"type": "string"},
            "path": {"type": "string", "description": "what now holds the restored copy"},
            "ino": {"type": "integer"},
        }
    ),
    "SnapshotClone": _obj({"volume": {"type": "string", "minLength": 1}}),
    "SnapshotCloned": _obj(
        {
            "name": {"type": "string"},
            "from": _obj({"volume": {"type": "string"}, "snapshot": {"type": "string"}}),
        }
    ),
    "SnapshotList": _obj(
        {
            "volume": {"type": ["string", "null"], "description": "null: every volume's"},
            "snapshots": {"type": "array", "items": _SNAPSHOT},
            "truncated": {
                "type": "boolean",
                "description": "more than 10000 snapshots: the rest are left out",
            },
        }
    ),
    "Token": _obj(
        {
            "id": {"type": "string", "pattern": "^[0-9a-f]{12}$"},
            "name": {"type": "string", "maxLength": 64},
            "scope": _SCOPE,
            "created": _TIMESTAMP,
        }
    ),
    "TokenList": _obj({"tokens": {"type": "array", "items": _ref("Token")}}),
    "TokenCreate": _obj(
        {"scope": _SCOPE, "name": {"type": "string", "maxLength": 64, "default": ""}}, required=["scope"]
    ),
    "TokenCreated": _obj(
        {
            "id": {"type": "string", "pattern": "^[0-9a-f]{12}$"},
            "name": {"type": "string", "maxLength": 64},
            "scope": _SCOPE,
            "created": _TIMESTAMP,
            "token": {
                "type": "string",
                "pattern": "^dfs_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$",
                "description": "the bearer token: shown only in this answer (metadata keeps its SHA-256)",
            },
        }
    ),
    "S3Key": _obj(
        {
            "access_key": {"type": "string"},
            "description": {"type": "string", "maxLength": 256},
            "created": _TIMESTAMP,
            "grants": _S3_GRANTS,
        }
    ),
    "S3KeyList": _obj({"keys": {"type": "array", "items": _ref("S3Key")}}),
    "S3KeyCreate": _obj(
        {"description": {"type": "string", "maxLength": 256, "default": ""}, "allow": _S3_GRANTS},
        required=[],
    ),
    "S3KeyCreated": _obj(
        {
            "access_key": {"type": "string"},
            "secret_key": {"type": "string", "description": "shown only in this answer"},
            "description": {"type": "string", "maxLength": 256},
            "grants": _S3_GRANTS,
        }
    ),
    "S3Grant": _obj({"perm": _S3_PERM}),
    "Config": _config_schema(),
    "ConfigUpdate": {
        **_obj(
            {
                "log": _obj(
                    {"level": {"type": "string", "enum": [*_LOG_LEVELS, *(x.lower() for x in _LOG_LEVELS)]}}
                )
            },
            required=[],
        ),
        "description": (
            "Only options that can change live: [log] level (case-insensitive; not written to dfs.conf). "
            "Any other option answers 400 RestartRequired naming it."
        ),
    },
}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref("Error")}}}


_RESPONSES: dict[str, Any] = {
    "Error": _error_response("Error"),
    "BadRequest": _error_response("Malformed JSON, unknown or invalid fields"),
    "Unauthorized": {
        **_error_response("Missing or invalid bearer token"),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    "Forbidden": _error_response("The token's scope does not allow this (a read token changing something)"),
    "NotFound": _error_response("No such node, volume or snapshot"),
    "Conflict": _error_response("Already exists, not empty, or not allowed in the current state"),
    "PayloadTooLarge": _error_response("Request body over 1 MiB"),
}

_TOKEN_ID_PARAM = {
    "name": "token_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{12}$"},
}
_ACCESS_KEY_PARAM = {"name": "access_key", "in": "path", "required": True, "schema": {"type": "string"}}
_BUCKET_PARAM = {"name": "bucket", "in": "path", "required": True, "schema": {"type": "string"}}
_NODE_ID_PARAM = {"name": "node_id", "in": "path", "required": True, "schema": {"type": "string"}}
_VOLUME_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "dfs admin API",
        "version": __version__,
        "description": (
            "Administration of one dfs daemon: health, Prometheus metrics, nodes, volumes, snapshots and "
            "configuration. Authenticate with `Authorization: Bearer TOKEN`: the first-run token in "
            "`<data_dir>/admin.token` (scope admin) or one made by `dfs admin token create` or "
            "`POST /storage/tokens` (scope read or admin; a read token changing anything gets 403); "
            "only `GET /health` is public. Errors are "
            '`{"error": {"code": ..., "message": ...}}`; an unsupported method answers 405 with `Allow`.'
        ),
    },
    "servers": [{"url": "http://127.0.0.1:9001"}],
    "security": [{"bearerAuth": []}],
    "paths": {
        "/health": {
            "get": {
                "summary": "Liveness (no token needed)",
                "security": [],
                "responses": {"200": _ok("Liveness", "The daemon answers"), "default": _err("Error")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format 0.0.4)",
                "responses": {
                    "200": {
                        "description": "Metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_STD_ERRORS,
                },
            }
        },
        "/storage/health": {
            "get": {
                "summary": "Liveness and readiness with the checks behind them",
                "responses": {
                    "200": _ok("StorageHealth", "Ready"),
                    "503": _ok("StorageHealth", "Not ready: see the failed checks"),
                    **_STD_ERRORS,
                },
            }
        },
        "/storage/metrics": {
            "get": {
                "summary": "JSON summary: capacity, namespace counts, requests served, uptime",
                "responses": {"200": _ok("StorageMetrics", "Summary"), **_STD_ERRORS},
            }
        },
        "/storage/nodes": {
            "get": {
                "summary": "This node (from dfs.conf) and every registered node",
                "responses": {"200": _ok("NodeList", "Nodes, this node first"), **_STD_ERRORS},
            },
            "post": {
                "summary": "Register a node in the layout",
                "requestBody": _body("NodeCreate", "The node"),
                "responses": {
                    "201": _ok("Node", "Registered"),
                    **_BODY_ERRORS,
                    "409": _err("Conflict"),
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/nodes/{node_id}": {
            "parameters": [_NODE_ID_PARAM],
            "get": {
                "summary": "One node",
                "responses": {"200": _ok("Node", "The node"), "404": _err("NotFound"), **_STD_ERRORS},
            },
            "put": {
                "summary": "Change a node's address (not this node's), zone, capacity weight or state",
                "requestBody": _body("NodeUpdate", "Fields to change"),
                "responses": {
                    "200": _ok("Node", "The updated node"),
                    **_BODY_ERRORS,
                    "404": _err("NotFound"),
                    **_STD_ERRORS,
                },
            },
            "delete": {
                "summary": "Remove a node from the layout (never the node answering)",
                "description": "The rule of `dfs node remove` (dfs/core/node_removal.py): an active node "
                "is refused (drain it first); a draining or out node goes once its repair has "
                "finished a round at the current layout epoch with no misplaced copies left, or, "
                "not answering, once it is out.  409 says why not.",
                "parameters": [
                    {
                        "name": "force",
                        "in": "query",
                        "required": False,
                        "description": "true: skip the data checks (its chunks may be the last copies); "
                        "an active node is still refused",
                        "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
                    }
                ],
                "responses": {
                    "204": {"description": "Removed"},
                    "400": _err("BadRequest"),
                    "404": _err("NotFound"),
                    "409": _err("Conflict"),
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/volumes": {
            "get": {
                "summary": "Every volume with its policy",
                "description": "No usage figures: the namespace keeps no per-subtree totals yet.",
                "responses": {"200": _ok("VolumeList", "Volumes by name"), **_STD_ERRORS},
            },
            "post": {
                "summary": "Create a volume (top-level directory with a policy) or adopt an existing one",
                "requestBody": _body("VolumeCreate", "Name and policy"),
                "responses": {
                    "201": _ok("Volume", "Created"),
                    **_BODY_ERRORS,
                    "404": _err("NotFound"),
                    "409": _err("Conflict"),
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/volumes/{name}": {
            "parameters": [_VOLUME_PARAM],
            "get": {
                "summary": "One volume",
                "responses": {"200": _ok("Volume", "The volume"), "404": _err("NotFound"), **_STD_ERRORS},
            },
            "put": {
                "summary": "Change policy fields (the others keep their values)",
                "requestBody": _body("VolumeUpdate", "Policy fields to change"),
                "responses": {
                    "200": _ok("Volume", "The updated volume"),
                    **_BODY_ERRORS,
                    "404": _err("NotFound"),
                    **_STD_ERRORS,
                },
            },
            "delete": {
                "summary": "Delete an empty volume and its directory",
                "parameters": [
                    {
                        "name": "keep_dir",
                        "in": "query",
                        "required": False,
                        "description": "true: drop only the volume's policy, keep its directory and files",
                        "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
                    },
                    {
                        "name": "force",
                        "in": "query",
                        "required": False,
                        "description": "not supported (400): empty the volume first",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "204": {"description": "Deleted"},
                    "400": _err("BadRequest"),
                    "404": _err("NotFound"),
                    "409": _err("Conflict"),
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/snapshot": {
            "get": {
                "summary": "Snapshots of a volume (or of all), oldest first",
                "parameters": [
                    {"name": "volume", "in": "query", "required": False, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _ok("SnapshotList", "Snapshots, oldest first"),
                    "400": _err("BadRequest"),
                    "404": _err("NotFound"),
                    **_STD_ERRORS,
                },
            },
            "post": {
                "summary": "Take a copy-on-write snapshot of a volume at /.snapshots/<volume>/<name>",
                "requestBody": _body("SnapshotCreate", "Volume and optional snapshot name"),
                "responses": {
                    "201": _ok("Snapshot", "Taken"),
                    **_BODY_ERRORS,
                    "404": _err("NotFound"),
                    "409": _err("Conflict"),
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/snapshot/{volume}/{name}": {
            "parameters": _SNAPSHOT_PARAMS,
            "delete": {
                "summary": "Delete a snapshot (its tree; GC reclaims the chunks nothing else holds)",
                "responses": {
                    "200": _ok("SnapshotDeleted", "Deleted"),
                    "400": _err("BadRequest"),
                    "404": _err("NotFound"),
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/snapshot/{volume}/{name}/restore": {
            "parameters": _SNAPSHOT_PARAMS,
            "post": {
                "summary": "Roll the whole volume back to the snapshot (no body), or copy one path out of it",
                "requestBody": {
                    "required": False,
                    "description": "none: the whole volume; path and to: one file or directory",
                    "content": {_JSON: {"schema": _ref("SnapshotRestore")}},
                },
                "responses": {
                    "200": _ok("SnapshotRestored", "The volume now holds a writable copy of the snapshot"),
                    "201": _ok("SnapshotRestored", "The path was copied out to its new name"),
                    **_BODY_ERRORS,
                    "404": _err("NotFound"),
                    "409": _err("Conflict"),
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/snapshot/{volume}/{name}/clone": {
            "parameters": _SNAPSHOT_PARAMS,
            "post": {
                "summary": "A new writable volume copied from the snapshot (chunks shared), with the "
                "source volume's policy",
                "requestBody": _body("SnapshotClone", "The new volume's name"),
                "responses": {
                    "201": _ok("SnapshotCloned", "Cloned"),
                    **_BODY_ERRORS,
                    "404": _err("NotFound"),
                    "409": _err("Conflict"),
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/policy": {
            "get": {
                "summary": "Replication and consistency set on a directory (or file) and in effect there",
                "parameters": [
                    {
                        "name": "path",
                        "in": "query",
                        "required": True,
                        "description": "absolute path in the namespace, e.g. /volume/dir",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _ok("DirectoryPolicy", "The policy"),
                    "400": _err("BadRequest"),
                    "404": _err("NotFound"),
                    "409": _err("Conflict"),
                    **_STD_ERRORS,
                },
            },
            "put": {
                "summary": "Override replication and consistency for everything written under a path "
                "from now on (null: inherit again)",
                "requestBody": _body("DirectoryPolicyUpdate", "The path and the fields to change"),
                "responses": {
                    "200": _ok("DirectoryPolicy", "The new policy"),
                    **_BODY_ERRORS,
                    "404": _err("NotFound"),
                    "409": _err("Conflict"),
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/quotas": {
            "get": {
                "summary": "The quota and usage of a directory (?path=), or of every quota domain "
                "(each volume has one, limits or not)",
                "parameters": [_QUOTA_PATH],
                "responses": {
                    "200": {
                        "description": "One quota (with ?path=) or the list",
                        "content": {_JSON: {"schema": {"oneOf": [_ref("Quota"), _ref("QuotaList")]}}},
                    },
                    "400": _err("BadRequest"),
                    "404": _err("NotFound"),
                    **_STD_ERRORS,
                },
            },
            "put": {
                "summary": "Set limits on a directory's quota (limits not named keep their value); the "
                "first quota on a directory counts its tree once",
                "parameters": [_QUOTA_PATH],
                "requestBody": _body("QuotaUpdate", "The limits to change (path in the query or here)"),
                "responses": {
                    "200": _ok("Quota", "The quota"),
                    **_BODY_ERRORS,
                    "404": _err("NotFound"),
                    "409": _err("Conflict"),
                    **_STD_ERRORS,
                },
            },
            "delete": {
                "summary": "Remove a directory's quota (a volume keeps its accounting, without limits)",
                "parameters": [{**_QUOTA_PATH, "required": True}],
                "responses": {
                    "204": {"description": "Removed"},
                    "400": _err("BadRequest"),
                    "404": _err("NotFound"),
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/trash": {
            "get": {
                "summary": "Files in the trash of a volume (?volume=) or of every volume, with usage",
                "parameters": [
                    {"name": "volume", "in": "query", "required": False, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _ok("TrashList", "The entries, oldest first"),
                    "404": _err("NotFound"),
                    **_STD_ERRORS,
                },
            },
            "delete": {
                "summary": "Purge trash entries for good (of ?volume=, else every volume; with "
                "?older_than_days=, only older ones); their chunks then go through GC",
                "parameters": [
                    {"name": "volume", "in": "query", "required": False, "schema": {"type": "string"}},
                    {
                        "name": "older_than_days",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number", "minimum": 0, "maximum": MAX_TRASH_DAYS},
                    },
                ],
                "responses": {
                    "200": _ok("TrashEmptied", "How many were purged"),
                    "400": _err("BadRequest"),
                    "404": _err("NotFound"),
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/trash/{volume}/{entry_id}/restore": {
            "post": {
                "summary": "Put a trash entry back where it was deleted, or at body.to; refused (409) "
                "when that name is taken, 404 when its directory is gone, and refused past a quota",
                "parameters": [
                    {"name": "volume", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "entry_id", "in": "path", "required": True, "schema": _INT64},
                ],
                "requestBody": {**_body("TrashRestore", "Optional: where to restore it"), "required": False},
                "responses": {
                    "200": _ok("TrashRestored", "The entry and where it is now"),
                    **_BODY_ERRORS,
                    "404": _err("NotFound"),
                    "409": _err("Conflict"),
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/config": {
            "get": {
                "summary": "The effective configuration, secrets redacted",
                "responses": {"200": _ok("Config", "Sections of options"), **_STD_ERRORS},
            },
            "put": {
                "summary": "Change options that can change while running",
                "requestBody": _body("ConfigUpdate", "Sections of options to change"),
                "responses": {
                    "200": _ok("Config", "The new effective configuration"),
                    **_BODY_ERRORS,
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/tokens": {
            "get": {
                "summary": "Scoped admin tokens (never the tokens themselves; admin scope)",
                "responses": {"200": _ok("TokenList", "Tokens, oldest first"), **_STD_ERRORS},
            },
            "post": {
                "summary": "Make a scoped admin token; the answer shows it once (admin scope)",
                "requestBody": _body("TokenCreate", "Scope and optional name"),
                "responses": {"201": _ok("TokenCreated", "Created"), **_BODY_ERRORS, **_STD_ERRORS},
            },
        },
        "/storage/tokens/{token_id}": {
            "parameters": [_TOKEN_ID_PARAM],
            "delete": {
                "summary": "Revoke a scoped admin token (admin scope)",
                "responses": {"204": {"description": "Revoked"}, "404": _err("NotFound"), **_STD_ERRORS},
            },
        },
        "/storage/s3/keys": {
            "get": {
                "summary": "S3 keys made with `dfs s3 key create` and their grants (never secrets)",
                "responses": {"200": _ok("S3KeyList", "Keys by access key"), **_STD_ERRORS},
            },
            "post": {
                "summary": "Make an S3 key, optionally with grants; the answer shows the secret once",
                "requestBody": _body("S3KeyCreate", "Optional description and grants (bucket -> perm)"),
                "responses": {
                    "201": _ok("S3KeyCreated", "Created"),
                    "404": _err("NotFound"),
                    **_BODY_ERRORS,
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/s3/keys/{access_key}": {
            "parameters": [_ACCESS_KEY_PARAM],
            "delete": {
                "summary": "Revoke an S3 key: requests signed with it fail from now on",
                "responses": {"204": {"description": "Revoked"}, "404": _err("NotFound"), **_STD_ERRORS},
            },
        },
        "/storage/s3/keys/{access_key}/grants/{bucket}": {
            "parameters": [_ACCESS_KEY_PARAM, _BUCKET_PARAM],
            "put": {
                "summary": "Grant the key r, w, rw or owner on a bucket (replacing its grant there)",
                "requestBody": _body("S3Grant", "The permission"),
                "responses": {
                    "200": _ok("S3Key", "The key with its grants"),
                    "404": _err("NotFound"),
                    **_BODY_ERRORS,
                    **_STD_ERRORS,
                },
            },
            "delete": {
                "summary": "Take back the key's grant on a bucket",
                "responses": {
                    "200": _ok("S3Key", "The key with its grants"),
                    "404": _err("NotFound"),
                    **_STD_ERRORS,
                },
            },
        },
        "/storage/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": {_JSON: {"schema": {"type": "object"}}}},
                    **_STD_ERRORS,
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        "schemas": _SCHEMAS,
        "responses": _RESPONSES,
    },
}
