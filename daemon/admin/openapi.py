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
from dfs.core.config import Config

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

_POLICY_FIELDS: dict[str, Any] = {
    "replication": {"type": "integer", "minimum": 1, "maximum": 7, "description": "copies of each chunk"},
    "consistency": {
        "type": "string",
        "enum": ["strong", "quorum", "eventual"],
        "description": "durable copies before a write is acknowledged: all, a majority, one",
    },
    "compression": {"type": "string", "enum": ["zstd", "none"]},
    "encryption": {"type": "boolean"},
    "quota_bytes": {"type": ["integer", "null"], "minimum": 0, "description": "null: no quota"},
    "snapshot_schedule": {
        "type": ["string", "null"],
        "minLength": 1,
        "maxLength": 100,
        "description": "when to take snapshots automatically; null: never",
    },
    "snapshot_retention": {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": 100_000,
        "description": "scheduled snapshots to keep; null: keep all",
    },
}
_POLICY_DEFAULTS = {
    "replication": 1,
    "consistency": "strong",
    "compression": "zstd",
    "encryption": False,
    "quota_bytes": None,
    "snapshot_schedule": None,
    "snapshot_retention": None,
}


def _with_default(name: str) -> dict[str, Any]:
    return {**_POLICY_FIELDS[name], "default": _POLICY_DEFAULTS[name]}


_LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _config_schema() -> dict[str, Any]:
    """Sections -> options, typed from the Config dataclasses."""
    sections: dict[str, Any] = {}
    for name, cls in get_type_hints(Config).items():
        hints = get_type_hints(cls)
        options: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            options[f.name] = {"type": _JSON_TYPES[hints[f.name]]}
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
    "Policy": _obj(dict(_POLICY_FIELDS)),
    "Volume": _obj(
        {
            "name": {"type": "string"},
            "path": {"type": "string", "description": "the volume's directory in the filesystem"},
            "created": _TIMESTAMP,
            "policy": _ref("Policy"),
        }
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
    "Snapshot": _obj(
        {
            "volume": {"type": "string"},
            "name": {"type": "string"},
            "path": {"type": "string", "description": "/.snapshots/<volume>/<name>"},
            "created": _TIMESTAMP,
        }
    ),
    "SnapshotList": _obj(
        {
            "volume": {"type": "string"},
            "snapshots": {
                "type": "array",
                "items": _obj(
                    {"name": {"type": "string"}, "path": {"type": "string"}, "created": _TIMESTAMP}
                ),
            },
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
                "responses": {
                    "204": {"description": "Removed"},
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
                "summary": "Snapshots of a volume",
                "parameters": [
                    {"name": "volume", "in": "query", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _ok("SnapshotList", "Snapshots by name"),
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
