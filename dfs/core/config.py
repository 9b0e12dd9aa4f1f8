"""The one place dfs settings are read.

``dfs.conf`` is TOML.  Every option has a default (the embedded
single-host configuration), unknown sections or keys are rejected, and
environment variables override the file:

- ``DFS_<SECTION>_<KEY>`` (e.g. ``DFS_RPC_LISTEN=0.0.0.0:7400``), values
  parsed as the option's type;
- ``STORAGE_ROOT`` -> ``node.data_dir`` and ``NODE_ID`` -> ``node.id``
  (the names the seed deployment used).

The result is a frozen :class:`Config`; components receive their own
sub-config.  ``dfs.conf.example`` documents every option and a unit test
keeps it in step with the dataclasses below.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

from dfs.core.errors import ConfigError
from dfs.core.namespace import INLINE_LIMIT_BYTES

DEFAULT_CONFIG_PATH = Path("/etc/dfs/dfs.conf")
MiB = 1024 * 1024
CONSISTENCY_LEVELS = ("strong", "quorum", "eventual")
# Upper bound of a trash retention (storage.trash_days, a volume's policy trash_days): 100 years.
MAX_TRASH_DAYS = 36500


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    id: str = ""  # empty: the host name
    zone: str = "default"
    data_dir: str = "/var/lib/dfs"


@dataclasses.dataclass(frozen=True)
class RpcConfig:
    listen: str = "127.0.0.1:7400"
    # The address other nodes and clients reach this daemon's RPC at; empty: the listen address.
    advertise: str = ""
    unix_socket: bool = True  # also listen on <data_dir>/rpc.sock (faster for local clients)
    # The primary serves local mounts' changes on <data_dir>/lane.sock, in a thread per mount.
    metadata_lane: bool = True
    # A group whose members may use the unix socket besides root and the daemon's user; empty: none.
    unix_socket_group: str = ""
    max_frame_bytes: int = 72 * MiB
    call_timeout_s: float = 60.0
    max_inflight_per_conn: int = 256
    # Mutual TLS on the TCP port (the unix socket stays plain): [tls] names the certificates.
    tls: bool = False
    # The credential a mount or the CLI proves itself with on the TCP port; empty: the first
    # readable of <data_dir>/{admin,client}.credential, then /etc/dfs/{admin,client}.credential.
    credential_file: str = ""
    # TCP connections served at once; more get one error frame and are closed.
    max_connections: int = 4096


@dataclasses.dataclass(frozen=True)
class StorageConfig:
    block_size: int = 4 * MiB
    # 32 KiB: below it a chunk's fixed cost (two fsyncs and a file on the chunk disk, per replica)
    # outweighs a few more metadata pages; untar of the Django tree +27%, rsync +5% (README).
    inline_max: int = 32 * 1024
    compression_level: int = 1  # zstd level; 0 disables compression
    # Master key of encrypted volumes (32 raw bytes, mode 0600); empty: <data dir>/master.key.
    # The environment variable DFS_MASTER_KEY (hex or base64) wins over the file.
    master_key_file: str = ""
    fsync: bool = True
    reserve_bytes: int = 64 * MiB
    # Data directories, one per physical disk: "PATH" or "PATH:WEIGHT" (weight > 0, default 1.0).
    # Empty: one disk, the data dir itself (its chunks/ directory).  See disk_specs().
    disks: tuple[str, ...] = ()
    gc_delay_s: float = 3600.0
    gc_interval_s: float = 60.0
    # Stored chunks no metadata knows (uncommitted writes) are deleted once untouched this long.
    orphan_delay_s: float = 86400.0
    orphan_scan_interval_s: float = 21600.0
    # `dfs status` warns when the directory byte quotas promised (thin provisioning) exceed this
    # many times the capacity.
    overcommit_warn_ratio: float = 1.0
    # Days a deleted file stays in its volume's trash (a volume's policy trash_days wins); 0: off.
    trash_days: float = 0.0
    # How often the leader purges expired trash entries, in seconds.
    trash_interval_s: float = 600.0


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    # "sqlite" (meta.db in the data dir, on the one metadata host) or "postgresql" (every daemon
    # serves metadata from the database ``dsn`` names; no daemon is special).
    engine: str = "sqlite"
    # A libpq connection string; never logged (passwords belong in a passfile it names).
    dsn: str = dataclasses.field(default="", repr=False)
    # How long a metadata call waits for the database to come back (a PostgreSQL failover)
    # before it fails.
    failover_timeout_s: float = 60.0
    session_timeout_s: float = 300.0
    oplog_keep: int = 100_000
    # The metadata primary dumps the namespace this often into a backup stored as chunks, its
    # manifest on every node (0: no automatic backups); the newest backup_keep are kept.
    backup_interval_s: float = 3600.0
    backup_keep: int = 24


@dataclasses.dataclass(frozen=True)
class MountConfig:
    attr_timeout_s: float = 1.0
    entry_timeout_s: float = 1.0
    cache_bytes: int = 256 * MiB
    dirty_bytes: int = 256 * MiB
    upload_concurrency: int = 4
    max_tasks: int = 99
    # How long a mount keeps trying to store the data a file's last close could not (the
    # daemon unreachable); then the data is dropped (0: dropped at that close).
    unstored_keep_s: float = 300.0
    local_reads: bool = True  # read chunk files directly when the daemon's store is on this host


@dataclasses.dataclass(frozen=True)
class GossipConfig:
    enabled: bool = True
    # UDP (probes) and TCP (full-state sync) on the same port.
    listen: str = "127.0.0.1:7401"
    # The address peers reach this node's gossip at; empty: the listen address.
    advertise: str = ""
    # Comma-separated host:port of any members to join through; empty: a cluster of one (so far).
    seeds: str = ""
    # Timing preset: lan (memberlist's LAN values), local, wan, or fast_test.
    preset: str = "lan"
    # How often this node re-advertises its free space, load and layout epoch.
    meta_interval_s: float = 10.0


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    # RPC address of the metadata primary; empty: this daemon is the primary (holds meta.db).
    meta: str = ""
    # Default replication factor and consistency level (volumes and directories may override).
    replicas: int = 3
    consistency: str = "quorum"
    # A daemon that registers with the primary joins the layout as an active node.
    auto_join: bool = True
    # A member dead in gossip this long is marked out of the layout (its data re-replicated).
    dead_grace_s: float = 600.0
    # How often copies owed to returning nodes (hints) are delivered.
    hint_interval_s: float = 10.0
    # How often each partition's replicas compare what they hold and repair the difference.
    anti_entropy_interval_s: float = 600.0
    # Repair budgets: bytes per second sent by repair, and copies in flight at once.
    repair_bandwidth_bytes_s: int = 100 * MiB
    repair_concurrency: int = 4
    # The scrubber re-reads and verifies every local chunk at this rate (0: no scrubbing).
    scrub_bytes_s: int = 8 * MiB
    # Seconds between two full scrub passes.
    scrub_interval_s: float = 86400.0
    # A chunk one replica serves more often than this (reads per second) is hot: it gets
    # hot_extra_copies temporary extra copies, kept while it stays warm plus hot_ttl_s (0: off).
    hot_reads_per_s: float = 200.0
    hot_extra_copies: int = 2
    hot_ttl_s: float = 300.0
    # How often clients refresh their view of the layout and of member liveness.
    refresh_s: float = 2.0
    # Chunk calls to a peer fail over to the next replica after this many seconds.
    peer_timeout_s: float = 30.0


@dataclasses.dataclass(frozen=True)
class S3Config:
    enabled: bool = True
    listen: str = "127.0.0.1:9000"
    region: str = "us-east-1"
    # Virtual-hosted-style addressing: requests to BUCKET.<domain> address BUCKET.
    domain: str = ""
    # A static key pair accepted beside the root key and `dfs s3 key` keys.
    access_key: str = ""
    secret_key: str = ""
    # Serve HTTPS with [tls] cert_file/key_file instead of plain HTTP.
    https: bool = False
    max_clock_skew_s: float = 900.0
    max_object_bytes: int = 5 * 1024**4
    max_connections: int = 1024
    idle_timeout_s: float = 60.0
    body_timeout_s: float = 60.0
    # Multipart uploads neither completed nor aborted are removed after this long.
    upload_expiry_s: float = 7 * 86400.0
    # How often the leader applies the buckets' lifecycle rules (expirations, upload aborts).
    lifecycle_interval_s: float = 600.0
    # The length of a lifecycle "day"; a testing knob: shorter makes a 1-day rule fire sooner.
    lifecycle_day_s: float = 86400.0


@dataclasses.dataclass(frozen=True)
class AdminConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:9001"
    https: bool = False


@dataclasses.dataclass(frozen=True)
class SnapshotsConfig:
    # How often the leader checks the volumes' snapshot schedules (dfs/core/snapshot_schedule.py),
    # taking and expiring scheduled snapshots; 0: never (schedules are kept but not run).
    check_interval_s: float = 60.0


@dataclasses.dataclass(frozen=True)
class TiersConfig:
    # How often the leader's tiering worker runs a pass (copies, cold moves, deletions of
    # collected chunks' cloud copies); 0: never (tiers still serve reads).
    interval_s: float = 60.0
    # How often each tier's objects are listed and compared with metadata (missing copies are
    # stored again, stray objects deleted); 0: only by `dfs fsck`.
    verify_interval_s: float = 3600.0
    # The length of a "day" in volumes' tier_after_days: tests shorten it.
    day_s: float = 86400.0
    # Chunk objects stored or fetched at once by one daemon (each up to a block in memory).
    max_in_flight: int = 8
    # Bytes a pass moves at most (the rest waits for the next pass).
    max_bytes_per_pass: int = 64 * 1024**3
    # Bytes of chunks read from tiers kept under <data dir>/tier-cache (least recently read
    # evicted first); 0: no cache, every read of a cold chunk asks a tier.
    cache_bytes: int = 1024**3


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    # PEM files; the S3 and admin endpoints use them when https = true.
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""


@dataclasses.dataclass(frozen=True)
class LogConfig:
    level: str = "WARNING"
    json: bool = False


@dataclasses.dataclass(frozen=True)
class Config:
    node: NodeConfig = dataclasses.field(default_factory=NodeConfig)
    rpc: RpcConfig = dataclasses.field(default_factory=RpcConfig)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)
    meta: MetaConfig = dataclasses.field(default_factory=MetaConfig)
    mount: MountConfig = dataclasses.field(default_factory=MountConfig)
    gossip: GossipConfig = dataclasses.field(default_factory=GossipConfig)
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    s3: S3Config = dataclasses.field(default_factory=S3Config)
    admin: AdminConfig = dataclasses.field(default_factory=AdminConfig)
    snapshots: SnapshotsConfig = dataclasses.field(default_factory=SnapshotsConfig)
    tiers: TiersConfig = dataclasses.field(default_factory=TiersConfig)
    tls: TlsConfig = dataclasses.field(default_factory=TlsConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)

    @property
    def node_id(self) -> str:
        return self.node.id or os.uname().nodename

    @property
    def data_path(self) -> Path:
        return Path(self.node.data_dir)

    @property
    def unix_socket_path(self) -> Path:
        return self.data_path / "rpc.sock"

    @property
    def s3_root_path(self) -> Path:
        return self.data_path / "s3-root.json"

    @property
    def admin_token_path(self) -> Path:
        return self.data_path / "admin.token"

    @property
    def master_key_path(self) -> Path:
        custom = self.storage.master_key_file
        return Path(custom) if custom else self.data_path / "master.key"


_SECTION_TYPES: dict[str, type[Any]] = get_type_hints(Config)
_LEGACY_ENV = {"STORAGE_ROOT": ("node", "data_dir"), "NODE_ID": ("node", "id")}


def _coerce(section: str, key: str, kind: type[Any], value: Any, origin: str) -> Any:
    where = f"{origin}: [{section}] {key}"
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value, 0)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if kind == tuple[str, ...]:
        if isinstance(value, str):  # from the environment: comma-separated
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    raise ConfigError(f"{where}: unsupported option type {kind!r}")


def _section(name: str, values: Mapping[str, Any], origin: str) -> Any:
    cls = _SECTION_TYPES[name]
    hints = get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"{origin}: unknown option(s) in [{name}]: {', '.join(unknown)}")
    kwargs = {k: _coerce(name, k, hints[k], v, origin) for k, v in values.items()}
    return cls(**kwargs)


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for var, (section, key) in _LEGACY_ENV.items():
        if env.get(var):
            out.setdefault(section, {})[key] = env[var]
    for var, value in env.items():
        if not var.startswith("DFS_") or var in ("DFS_CONFIG",):
            continue
        rest = var[4:].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTION_TYPES:
            continue
        if key not in get_type_hints(_SECTION_TYPES[section]):
            raise ConfigError(f"environment: {var} names no option [{section}] {key}")
        out.setdefault(section, {})[key] = value
    return out


def parse(text: str, *, origin: str = "dfs.conf", env: Mapping[str, str] | None = None) -> Config:
    """Parse TOML text, apply env overrides and validate."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    unknown = sorted(set(raw) - set(_SECTION_TYPES))
    if unknown:
        raise ConfigError(f"{origin}: unknown section(s): {', '.join(unknown)}")
    merged: dict[str, dict[str, Any]] = {}
    for name, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: [{name}] must be a table")
        merged[name] = dict(values)
    for name, values in _env_overrides(os.environ if env is None else env).items():
        merged.setdefault(name, {}).update(values)
    sections = {name: _section(name, merged.get(name, {}), origin) for name in _SECTION_TYPES}
    cfg = Config(**sections)
    validate(cfg, origin)
    return cfg


def disk_specs(storage: StorageConfig, origin: str = "dfs.conf") -> list[tuple[str, float]]:
    """``[storage] disks`` as (absolute path, weight) pairs; ConfigError names a bad entry.

    An entry is ``PATH`` or ``PATH:WEIGHT``: the text after the last colon is a weight only when
    it parses as a number, so a path that itself contains a colon still works.
    """
    out: list[tuple[str, float]] = []
    seen: set[str] = set()
    for entry in storage.disks:
        path, weight = entry, 1.0
        head, sep, tail = entry.rpartition(":")
        if sep:
            try:
                weight = float(tail)
            except ValueError:
                pass
            else:
                path = head
        where = f"{origin}: [storage] disks entry {entry!r}"
        if not path or not os.path.isabs(path):
            raise ConfigError(f"{where}: the path must be absolute")
        if not 0 < weight < float("inf"):
            raise ConfigError(f"{where}: the weight must be a number > 0")
        norm = os.path.normpath(path)
        if norm in seen:
            raise ConfigError(f"{where}: {norm} is listed twice")
        seen.add(norm)
        out.append((norm, weight))
    return out


def validate(cfg: Config, origin: str = "dfs.conf") -> None:
    st = cfg.storage
    disk_specs(st, origin)
    if st.block_size < 64 * 1024 or st.block_size > 64 * MiB or st.block_size & (st.block_size - 1):
        raise ConfigError(f"{origin}: [storage] block_size must be a power of two in 64 KiB..64 MiB")
    if not 0 <= st.inline_max <= INLINE_LIMIT_BYTES:
        raise ConfigError(f"{origin}: [storage] inline_max must be in 0..{INLINE_LIMIT_BYTES}")
    if not -7 <= st.compression_level <= 22:
        raise ConfigError(f"{origin}: [storage] compression_level must be in -7..22")
    if cfg.rpc.max_frame_bytes < st.block_size + 1024 * 1024:
        raise ConfigError(f"{origin}: [rpc] max_frame_bytes must exceed block_size by at least 1 MiB")
    if cfg.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"{origin}: [log] level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    if bool(cfg.s3.access_key) != bool(cfg.s3.secret_key):
        raise ConfigError(f"{origin}: [s3] access_key and secret_key go together")
    if cfg.s3.access_key and (len(cfg.s3.access_key) < 3 or len(cfg.s3.secret_key) < 8):
        raise ConfigError(f"{origin}: [s3] access_key needs 3+ characters and secret_key 8+")
    if not (cfg.s3.lifecycle_interval_s > 0 and cfg.s3.lifecycle_day_s > 0):
        raise ConfigError(f"{origin}: [s3] lifecycle_interval_s and lifecycle_day_s must be > 0")
    if (cfg.s3.https or cfg.admin.https) and not (cfg.tls.cert_file and cfg.tls.key_file):
        raise ConfigError(f"{origin}: https needs [tls] cert_file and key_file")
    if cfg.gossip.preset not in ("lan", "local", "wan", "fast_test"):
        raise ConfigError(f"{origin}: [gossip] preset must be lan, local, wan or fast_test")
    if cfg.rpc.tls and not (cfg.tls.cert_file and cfg.tls.key_file and cfg.tls.ca_file):
        raise ConfigError(f"{origin}: [rpc] tls needs [tls] cert_file, key_file and ca_file")
    cl = cfg.cluster
    if not 1 <= cl.replicas <= 7:
        raise ConfigError(f"{origin}: [cluster] replicas must be in 1..7")
    if cl.consistency not in CONSISTENCY_LEVELS:
        raise ConfigError(f"{origin}: [cluster] consistency must be strong, quorum or eventual")
    if cl.repair_concurrency < 1:
        raise ConfigError(f"{origin}: [cluster] repair_concurrency must be >= 1")
    if cl.hot_reads_per_s < 0:
        raise ConfigError(f"{origin}: [cluster] hot_reads_per_s must be >= 0 (0: off)")
    if not 0 <= cl.hot_extra_copies <= 8:
        raise ConfigError(f"{origin}: [cluster] hot_extra_copies must be 0-8")
    if cl.hot_ttl_s <= 0:
        raise ConfigError(f"{origin}: [cluster] hot_ttl_s must be > 0")
    if cfg.mount.upload_concurrency < 1 or cfg.mount.max_tasks < 1:
        raise ConfigError(f"{origin}: [mount] upload_concurrency and max_tasks must be >= 1")
    if cfg.mount.unstored_keep_s < 0:
        raise ConfigError(f"{origin}: [mount] unstored_keep_s must be >= 0 (0: not kept)")
    if cfg.meta.engine not in ("sqlite", "postgresql"):
        raise ConfigError(f"{origin}: [meta] engine must be sqlite or postgresql")
    if (cfg.meta.engine == "postgresql") != bool(cfg.meta.dsn):
        raise ConfigError(f"{origin}: [meta] dsn is needed with engine = postgresql, and only then")
    if cfg.meta.failover_timeout_s <= 0:
        raise ConfigError(f"{origin}: [meta] failover_timeout_s must be > 0")
    if not cfg.storage.overcommit_warn_ratio > 0:
        raise ConfigError(f"{origin}: [storage] overcommit_warn_ratio must be > 0")
    if not 0 <= cfg.storage.trash_days <= MAX_TRASH_DAYS or not cfg.storage.trash_interval_s > 0:
        raise ConfigError(
            f"{origin}: [storage] trash_days must be 0..{MAX_TRASH_DAYS} (0: off), trash_interval_s > 0"
        )
    if cfg.meta.backup_interval_s < 0 or cfg.meta.backup_keep < 1:
        raise ConfigError(f"{origin}: [meta] backup_interval_s must be >= 0 (0: off), backup_keep >= 1")
    if cfg.rpc.max_connections < 1:
        raise ConfigError(f"{origin}: [rpc] max_connections must be >= 1")
    t = cfg.tiers
    if t.interval_s < 0 or t.verify_interval_s < 0:
        raise ConfigError(f"{origin}: [tiers] interval_s and verify_interval_s must be >= 0")
    if t.day_s <= 0 or not 1 <= t.max_in_flight <= 256 or t.max_bytes_per_pass < 1 or t.cache_bytes < 0:
        raise ConfigError(
            f"{origin}: [tiers] day_s must be > 0, max_in_flight 1..256, max_bytes_per_pass >= 1, "
            "cache_bytes >= 0"
        )
    if cfg.snapshots.check_interval_s < 0:
        raise ConfigError(f"{origin}: [snapshots] check_interval_s must be >= 0 (0: off)")


def load(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (or $DFS_CONFIG, or the default path if it exists, else defaults only)."""
    environ = os.environ if env is None else env
    if path is None and environ.get("DFS_CONFIG"):
        path = environ["DFS_CONFIG"]
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return parse("", origin="defaults", env=environ)
        path = DEFAULT_CONFIG_PATH
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from None
    return parse(text, origin=str(p), env=environ)


def render(cfg: Config) -> str:
    """TOML text for ``cfg`` (used by ``dfs up`` to write its embedded config)."""
    lines: list[str] = []
    for name in _SECTION_TYPES:
        lines.append(f"[{name}]")
        for field in dataclasses.fields(getattr(cfg, name)):
            value = getattr(getattr(cfg, name), field.name)
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            elif isinstance(value, tuple):
                text = "[" + ", ".join(json.dumps(v) for v in value) + "]"
            else:
                text = repr(value)
            lines.append(f"{field.name} = {text}")
        lines.append("")
    return "\n".join(lines)


def replace(cfg: Config, **sections: Mapping[str, Any]) -> Config:
    """A copy of ``cfg`` with some options changed: ``replace(cfg, node={"data_dir": d})``."""
    changes = {
        name: dataclasses.replace(getattr(cfg, name), **dict(values)) for name, values in sections.items()
    }
    out = dataclasses.replace(cfg, **changes)
    validate(out, "override")
    return out
