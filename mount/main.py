"""``mount.dfs``: the mount helper (works as ``mount -t dfs`` and from fstab).

    mount.dfs HOST[:PORT][,HOST2...]:/[SUBDIR] MOUNTPOINT [-o OPTIONS] [-f]

Without ``-f`` the helper starts the filesystem process in the background
and returns only once the mount is usable (or with the error that stopped
it), which is what ``mount(8)`` and systemd expect.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from dfs import heap, logs
from dfs.client.cluster import DEFAULT_PORT, Client, ClusterInfo, fetch_info, open_chunkio
from dfs.core import config as config_mod
from dfs.core.auth import CallerClass, Credential
from dfs.core.config import Config
from dfs.core.errors import AuthFailed, CallerNotAllowed, DfsError, NotADirectory, Unavailable
from dfs.core.namespace import ROOT_INO
from dfs.heap import HeapTrimmer
from dfs.net import credentials
from dfs.net.certs import client_context_for
from dfs.net.failover import FailoverCaller
from dfs.net.lane import LaneClient
from dfs.net.rpc import RpcClient, open_client
from mount.coherence import Coherence
from mount.fs import Operations, set_op_observer
from mount.metrics import MountMetrics, serve_mount_metrics

log = logging.getLogger("dfs.mount")
# How long mount.dfs waits for one of several daemons named in the source before trying the next.
_CONNECT_TRY_S = 10.0

# fstab/mount(8) options that mean nothing to a FUSE filesystem: accepted and ignored.
_IGNORED = {
    "rw", "defaults", "auto", "noauto", "user", "nouser", "users", "nofail", "_netdev",
    "exec", "async", "relatime", "strictatime", "lazytime", "nolazytime",
}  # fmt: skip
# Passed through to libfuse/the kernel.
_FUSE_FLAGS = {"ro", "allow_other", "nodev", "nosuid", "noexec", "noatime", "nodiratime", "dirsync", "sync"}
_VALUE_OPTIONS = {
    "attr_timeout", "entry_timeout", "cache_size", "config", "log", "socket", "log_level", "metrics",
    "credential",
}  # fmt: skip


class UsageError(Exception):
    """mount.dfs was called wrongly (source, options, mount point).

    Not a :class:`dfs.core.errors.DfsError`: it never leaves this process (no RPC, no FUSE
    reply), and mount.dfs reports it as a mount(8) helper reports any failure: one
    line on stderr and a small status, not the dfs CLI's exit codes."""


@dataclass
class MountSpec:
    addresses: list[str]
    subdir: str
    mountpoint: Path
    fuse_options: set[str] = field(default_factory=set)
    values: dict[str, str] = field(default_factory=dict)
    debug: bool = False


def parse_source(source: str) -> tuple[list[str], str]:
    """``host[:port][,host2[:port]]:/sub/dir`` -> (["host:port", ...], "sub/dir")."""
    hosts, sep, path = source.rpartition(":/")
    if not sep or not hosts:
        raise UsageError(f"source must look like HOST[:PORT]:/[SUBDIR], got {source!r}")
    addresses = []
    for host in hosts.split(","):
        host = host.strip()
        if not host:
            raise UsageError(f"empty host in {source!r}")
        if host.startswith("unix="):
            addresses.append("unix:" + host[5:])
            continue
        if host.startswith("[") and "]" in host:
            bracket = host.index("]")
            port = host[bracket + 2 :] if host[bracket + 1 : bracket + 2] == ":" else ""
            addresses.append(f"{host[: bracket + 1]}:{port or DEFAULT_PORT}")
            continue
        name, _, port = host.partition(":")
        if port and not port.isdigit():
            raise UsageError(f"bad port in {host!r}")
        addresses.append(f"{name}:{port or DEFAULT_PORT}")
    return addresses, path.strip("/")


def parse_options(opts: Sequence[str]) -> tuple[set[str], dict[str, str], bool]:
    flags: set[str] = set()
    values: dict[str, str] = {}
    debug = False
    for group in opts:
        for opt in group.split(","):
            opt = opt.strip()
            if not opt or opt in _IGNORED or opt.startswith("x-"):
                continue
            key, eq, value = opt.partition("=")
            if eq and key in _VALUE_OPTIONS:
                values[key] = value
            elif opt == "debug":
                debug = True
            elif opt in _FUSE_FLAGS:
                flags.add(opt)
            elif key in ("uid", "gid", "fsname", "subtype"):
                continue
            else:
                raise UsageError(f"unknown mount option {opt!r}")
    return flags, values, debug


def parse_args(argv: Sequence[str]) -> tuple[MountSpec, bool]:
    positional: list[str] = []
    opts: list[str] = []
    foreground = False
    it = iter(argv)
    for arg in it:
        if arg == "-o":
            try:
                opts.append(next(it))
            except StopIteration:
                raise UsageError("-o needs an argument") from None
        elif arg.startswith("-o") and len(arg) > 2:
            opts.append(arg[2:])
        elif arg == "-f":
            foreground = True
        elif arg in ("-n", "-s", "-v"):
            continue  # mount(8) passes these: no mtab, sloppy, verbose
        elif arg in ("-h", "--help"):
            raise UsageError(__doc__ or "")
        elif arg.startswith("-"):
            raise UsageError(f"unknown flag {arg}")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise UsageError("usage: mount.dfs HOST[:PORT]:/[SUBDIR] MOUNTPOINT [-o OPTIONS] [-f]")
    addresses, subdir = parse_source(positional[0])
    flags, values, debug = parse_options(opts)
    mountpoint = Path(positional[1]).resolve()
    return MountSpec(addresses, subdir, mountpoint, flags, values, debug), foreground


def _config(spec: MountSpec) -> Config:
    # -o config=FILE, else what every dfs program reads ($DFS_CONFIG, /etc/dfs/dfs.conf): a service
    # install's data_dir is where the mount finds its credential.
    cfg = config_mod.load(spec.values.get("config"))
    mount: dict[str, object] = {}
    if "attr_timeout" in spec.values:
        mount["attr_timeout_s"] = float(spec.values["attr_timeout"])
    if "entry_timeout" in spec.values:
        mount["entry_timeout_s"] = float(spec.values["entry_timeout"])
    if "cache_size" in spec.values:
        mount["cache_bytes"] = int(spec.values["cache_size"])
    log_cfg: dict[str, object] = {}
    if spec.debug:
        log_cfg["level"] = "DEBUG"
    elif "log_level" in spec.values:
        log_cfg["level"] = spec.values["log_level"].upper()
    sections: dict[str, dict[str, object]] = {}
    if "credential" in spec.values:
        sections["rpc"] = {"credential_file": spec.values["credential"]}
    if mount:
        sections["mount"] = mount
    if log_cfg:
        sections["log"] = log_cfg
    return config_mod.replace(cfg, **sections) if sections else cfg


async def _resolve_root(client: Client, subdir: str) -> int:
    ino: int = ROOT_INO
    for part in [p for p in subdir.split("/") if p]:
        attr = await client.lookup(ino, part.encode())
        if not attr.is_dir:
            raise NotADirectory(f"{subdir} is not a directory")
        ino = attr.ino
    return ino


def mount_credential(cfg: Config) -> Credential | None:
    """What this mount proves itself with on TCP: preferably a client credential, which opens
    exactly the endpoints a mount needs (dfs/net/credentials.py says where it looks)."""
    return credentials.find(cfg, (CallerClass.CLIENT, CallerClass.ADMIN))


async def _connect_first(
    stack: contextlib.AsyncExitStack, addresses: list[str], cfg: Config, credential: Credential | None
) -> tuple[RpcClient, ClusterInfo, FailoverCaller]:
    """The first of ``addresses`` whose daemon answers (``mount.dfs host1,host2:/``), and a
    caller for metadata that moves on to the others, in order, when that daemon goes away."""
    errors = []
    ssl_context = client_context_for(cfg)
    for i, address in enumerate(addresses):
        attempt = contextlib.AsyncExitStack()
        try:
            conn = await attempt.enter_async_context(
                open_client(
                    address,
                    call_timeout_s=cfg.rpc.call_timeout_s,
                    ssl_context=ssl_context,
                    credential=credential,
                )
            )
            with trio.fail_after(_CONNECT_TRY_S):
                info = await fetch_info(conn)
        except (DfsError, trio.TooSlowError) as exc:
            await attempt.aclose()
            if isinstance(exc, AuthFailed | CallerNotAllowed):
                raise  # another daemon of the same cluster would refuse it the same way
            errors.append(f"{address}: {getattr(exc, 'message', None) or 'no answer'}")
            continue
        await stack.enter_async_context(attempt)
        order = addresses[i:] + addresses[:i]
        clients = [conn]
        for other in order[1:]:  # connected lazily, on the first call that needs them
            clients.append(
                await stack.enter_async_context(
                    open_client(
                        other,
                        call_timeout_s=cfg.rpc.call_timeout_s,
                        ssl_context=ssl_context,
                        credential=credential,
                    )
                )
            )
        return conn, info, FailoverCaller(clients, order, retry_window_s=cfg.meta.failover_timeout_s)
    raise Unavailable("no daemon answered: " + "; ".join(errors))


async def run_mount(spec: MountSpec, cfg: Config, ready_fd: int | None) -> None:
    addresses = [f"unix:{spec.values['socket']}"] if "socket" in spec.values else spec.addresses
    async with contextlib.AsyncExitStack() as stack:
        credential = mount_credential(cfg)  # read once: the metadata and chunk connections share it
        conn, info, meta = await _connect_first(stack, addresses, cfg, credential)
        # The first daemon's changes go over its metadata lane once open (dfs/net/lane.py), when
        # it has one this host can reach.  The lane's connection tasks run until the stack closes.
        lane_nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(lane_nursery.cancel_scope.cancel)
        meta.lane = LaneClient(
            conn, lane_nursery, call_timeout_s=cfg.rpc.call_timeout_s, max_frame_bytes=cfg.rpc.max_frame_bytes
        )
        meta.lane.reopen()
        chunkio = await stack.enter_async_context(
            open_chunkio(
                conn,
                info,
                ssl_context=client_context_for(cfg),
                credential=credential,
                max_frame_bytes=cfg.rpc.max_frame_bytes,
                refresh_s=cfg.cluster.refresh_s,
                peer_timeout_s=cfg.cluster.peer_timeout_s,
                views=meta,
            )
        )
        client = Client(
            meta,
            info,
            codec_threads=max(2, cfg.mount.upload_concurrency),
            local_reads=cfg.mount.local_reads,
            chunkio=chunkio,
        )
        root = await _resolve_root(client, spec.subdir)
        ops = Operations(client, cfg.mount, root_ino=root)
        if "metrics" in spec.values:
            mount_metrics = MountMetrics()
            try:
                serve_mount_metrics(spec.values["metrics"], mount_metrics.registry)
            except (OSError, ValueError) as exc:
                raise UsageError(f"metrics={spec.values['metrics']}: {exc}") from None
            set_op_observer(mount_metrics.observe)
            mount_metrics.watch_failover(meta)
        source = ",".join(spec.addresses) + ":/" + spec.subdir
        # libfuse splits options at commas; a backslash keeps the hosts' commas in the fsname.
        options = {
            "fsname=" + source.replace("\\", "\\\\").replace(",", "\\,"),
            "subtype=dfs",
            "default_permissions",
            *spec.fuse_options,
        }
        if os.geteuid() == 0:
            options.add("allow_other")
        if spec.debug:
            options.add("debug")
        pyfuse3.init(ops, str(spec.mountpoint), options)
        clean = False
        try:
            async with trio.open_nursery() as nursery:
                ops.nursery = nursery
                nursery.start_soon(ops.heartbeat, max(1.0, info.session_timeout_s / 5))
                nursery.start_soon(_terminate_on_signal)
                # Before reporting ready: a change made once mount.dfs returned reaches us.
                # Polls stay well within the RPC call timeout.
                coherence = Coherence(ops, wait_s=min(20.0, cfg.rpc.call_timeout_s / 3))
                await nursery.start(coherence.run)
                if ready_fd is not None:
                    os.write(ready_fd, b"ok\n")
                    os.close(ready_fd)
                    ready_fd = None
                nursery.start_soon(ops.open_events_loop)
                nursery.start_soon(ops.retry_unstored_loop)
                nursery.start_soon(_raise_readahead, spec.mountpoint)
                # The cache and write buffers let go of blocks by the hundred MiB: give the
                # freed memory back (dfs/heap.py).
                nursery.start_soon(HeapTrimmer().run)
                await pyfuse3.main(max_tasks=cfg.mount.max_tasks)
                # Unmounted: `dfs down` stops the daemon right after, and nothing waits for us.
                meta.stop_waiting()
                await ops.shutdown()
                nursery.cancel_scope.cancel()
            clean = True
        finally:
            pyfuse3.close(unmount=clean)


async def _raise_readahead(mountpoint: Path) -> None:
    """Let the kernel read ahead 4 MiB instead of 128 KiB (one block per request burst).

    Only root can; elsewhere the default stays and reads are just smaller.
    """
    try:
        dev = (await trio.Path(mountpoint).stat()).st_dev
        bdi = trio.Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        await bdi.write_text("4096\n")
    except OSError as exc:
        log.debug("cannot raise read-ahead of %s: %s", mountpoint, exc)


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return


def _check_mountpoint(path: Path) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise UsageError(f"{path} is a dead mount: run 'umount -l {path}' first") from None
        raise UsageError(f"mount point {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mount point {path} is not a directory")


def _spawn_background(argv: Sequence[str], spec: MountSpec) -> int:
    """Start the filesystem in a detached child; return once it reports ready."""
    log_path = spec.values.get("log", "/dev/null")
    try:
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed below, once the child has it
    except OSError as exc:
        sys.stderr.write(f"mount.dfs: log file {log_path}: {exc.strerror}\n")
        return 1
    read_fd, write_fd = os.pipe()
    with log_file:
        child = subprocess.Popen(
            [sys.executable, "-m", "mount.main", *argv, "-f", f"--ready-fd={write_fd}"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        status = pipe.read().decode(errors="replace").strip()
    if status == "ok":
        return 0
    child.wait()
    sys.stderr.write(f"mount.dfs: {status or f'mount process exited with status {child.returncode}'}\n")
    return 1


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    ready_fd: int | None = None
    for arg in list(args):
        if arg.startswith("--ready-fd="):
            ready_fd = int(arg.split("=", 1)[1])
            args.remove(arg)
    try:
        spec, foreground = parse_args(args)
        cfg = _config(spec)
        _check_mountpoint(spec.mountpoint)
    except (UsageError, DfsError, ValueError) as exc:
        message = exc.message if isinstance(exc, DfsError) else str(exc)
        _report(ready_fd, message)
        sys.exit(1 if ready_fd is None else 2)
    if not foreground:
        sys.exit(_spawn_background(args, spec))
    logs.setup(cfg.log)
    heap.leave_trimming_to_the_trimmer()  # run_mount runs the trimmer
    try:
        trio.run(run_mount, spec, cfg, ready_fd)
    except DfsError as exc:
        _report(ready_fd, f"{spec.mountpoint}: {exc.message}")
        sys.exit(1)
    except BaseExceptionGroup as group:
        match, _ = group.split(DfsError)
        if match is None:
            raise
        first = _first_leaf(match)
        _report(ready_fd, f"{spec.mountpoint}: {first.message if isinstance(first, DfsError) else first}")
        sys.exit(1)
    except RuntimeError as exc:  # pyfuse3.init failures (e.g. no /dev/fuse)
        _report(ready_fd, f"{spec.mountpoint}: {exc}")
        sys.exit(1)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _report(ready_fd: int | None, message: str) -> None:
    if ready_fd is not None:
        try:
            os.write(ready_fd, message.encode() + b"\n")
        except OSError:
            pass
    sys.stderr.write(f"mount.dfs: {message}\n")


if __name__ == "__main__":
    main()
