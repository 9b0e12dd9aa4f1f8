"""``dfs bench``: throughput and ops/s in a dfs mount against a local directory.

Both targets run the same steps back to back in one process, so only the
ratio column means anything across machines.  Every step verifies what it
reads; a mismatch fails the run instead of reporting a fast wrong answer.
Caches are dropped before reads when running as root.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfs.core.errors import DfsError

MB = 1_000_000
_CHUNK = 1024 * 1024


class BenchMismatch(DfsError):
    code = "BenchMismatch"


def _drop_caches() -> None:
    os.sync()
    if os.geteuid() == 0:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError:
            pass


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _large(root: Path, size_mb: int, data: bytes) -> dict[str, float]:
    path = root / "large.bin"
    n = size_mb

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(n):
                os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read() -> None:
        with open(path, "rb", buffering=0) as f:
            for _ in range(n):
                if f.read(_CHUNK) != data:
                    raise BenchMismatch(f"large file read back wrong data in {root}")

    t_write = _timed(write)
    _drop_caches()
    t_read = _timed(read)
    path.unlink()
    total = n * _CHUNK / MB
    return {"large_write MB/s": total / t_write, "large_read MB/s": total / t_read}


def _small(root: Path, n_files: int) -> dict[str, float]:
    base = root / "small"
    dirs = 20
    payload = [os.urandom(4096) for _ in range(64)]

    def create() -> None:
        base.mkdir()
        for d in range(dirs):
            (base / f"d{d:02d}").mkdir()
        for i in range(n_files):
            fd = os.open(base / f"d{i % dirs:02d}" / f"f{i:05d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, payload[i % 64])
            os.close(fd)

    def stat_all() -> None:
        count = 0
        for dirpath, _dirnames, filenames in os.walk(base):
            for name in filenames:
                os.lstat(os.path.join(dirpath, name))
                count += 1
        if count != n_files:
            raise BenchMismatch(f"stat walk found {count} files, expected {n_files}")

    def read_all() -> None:
        for i in range(n_files):
            with open(base / f"d{i % dirs:02d}" / f"f{i:05d}", "rb") as f:
                if f.read() != payload[i % 64]:
                    raise BenchMismatch(f"small file {i} read back wrong data in {root}")

    t_create = _timed(create)
    _drop_caches()
    t_stat = _timed(stat_all)
    _drop_caches()
    t_read = _timed(read_all)
    t_delete = _timed(lambda: shutil.rmtree(base))
    return {
        "small_create files/s": n_files / t_create,
        "small_stat files/s": n_files / t_stat,
        "small_read files/s": n_files / t_read,
        "small_delete files/s": n_files / t_delete,
    }


def _meta(root: Path, n: int) -> dict[str, float]:
    base = root / "meta"
    base.mkdir()
    d = [base / f"d{i:04d}" for i in range(n)]

    def mkdirs() -> None:
        for p in d:
            p.mkdir()

    def creates() -> None:
        for p in d:
            os.close(os.open(p / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))

    def renames() -> None:
        for i in range(n):
            os.rename(d[i] / "f", d[(i + 1) % n] / "g")

    def unlinks() -> None:
        for p in d:
            os.unlink(p / "g")

    def rmdirs() -> None:
        for p in d:
            p.rmdir()

    t_mkdir = _timed(mkdirs)
    t_create = _timed(creates)
    t_rename = _timed(renames)
    missing = sum(1 for p in d if not (p / "g").exists())
    if missing:
        raise BenchMismatch(f"{missing} renamed files missing in {root}")
    t_unlink = _timed(unlinks)
    t_rmdir = _timed(rmdirs)
    base.rmdir()
    return {
        "meta_mkdir ops/s": n / t_mkdir,
        "meta_create ops/s": n / t_create,
        "meta_rename ops/s": n / t_rename,
        "meta_unlink ops/s": n / t_unlink,
        "meta_rmdir ops/s": n / t_rmdir,
    }


def run_target(root: Path, *, size_mb: int, n_files: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="dfs-bench.", dir=root))
    try:
        data = os.urandom(_CHUNK)
        out: dict[str, float] = {}
        out.update(_large(work, size_mb, data))
        out.update(_small(work, n_files))
        out.update(_meta(work, max(100, n_files // 2)))
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(path: Path, local: Path | None, *, size_mb: int, n_files: int) -> dict[str, Any]:
    local_root = local or Path(tempfile.mkdtemp(prefix="dfs-bench-local.", dir="/var/tmp"))
    try:
        local_res = run_target(local_root, size_mb=size_mb, n_files=n_files)
        dfs_res = run_target(path, size_mb=size_mb, n_files=n_files)
    finally:
        if local is None:
            shutil.rmtree(local_root, ignore_errors=True)
    rows = [
        {"step": key, "dfs": round(dfs_res[key], 1), "local": round(local_res[key], 1),
         "ratio": round(dfs_res[key] / local_res[key], 3) if local_res[key] else None}
        for key in dfs_res
    ]  # fmt: skip
    return {"path": str(path), "local": str(local_root), "size_mb": size_mb, "files": n_files, "rows": rows}


def table(results: dict[str, Any]) -> str:
    lines = [f"dfs bench: {results['path']} vs local {results['local']} "
             f"({results['size_mb']} MiB large file, {results['files']} small files)"]  # fmt: skip
    lines.append(f"{'step':<24}{'dfs':>12}{'local':>12}{'dfs/local':>11}")
    for row in results["rows"]:
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        lines.append(f"{row['step']:<24}{row['dfs']:>12,.1f}{row['local']:>12,.1f}{ratio:>11}")
    return "\n".join(lines)
