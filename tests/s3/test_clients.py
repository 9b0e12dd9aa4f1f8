"""Real object clients, unchanged, against a real dfsd: the aws CLI, s3cmd, rclone and restic."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Daemon

BIN = Path(sys.executable).parent
ODD_NAMES = ['amp&plus+dash-é"q', "with space.txt", "per%cent", "日本語.txt", "deep/er/file"]


def run(cmd: list[str], env: dict[str, str], *, check: bool = True, cwd: Path | None = None) -> str:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.stdout + res.stderr


def make_tree(root: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for i, name in enumerate(ODD_NAMES):
        files[name] = os.urandom(100 + i * 997)
    files["big.bin"] = os.urandom(20 * 1024 * 1024 + 3)  # multipart for every client
    files["empty"] = b""
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def check_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        got = (root / name).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), name


def base_env(tmp: Path, daemon: Daemon) -> dict[str, str]:
    ak, sk = daemon.root_key()
    env = dict(os.environ)
    env.update(
        HOME=str(tmp),
        AWS_ACCESS_KEY_ID=ak,
        AWS_SECRET_ACCESS_KEY=sk,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(tmp / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "aws-credentials"),
        PATH=f"{BIN}:{env.get('PATH', '')}",
    )
    return env


def test_aws_cli(s3d: Daemon, tmp_path: Path) -> None:
    env = base_env(tmp_path, s3d)
    aws = [str(BIN / "aws"), "--endpoint-url", s3d.s3_endpoint]
    src = tmp_path / "src"
    files = make_tree(src)
    run([*aws, "s3", "mb", "s3://awscli"], env)
    run([*aws, "s3", "sync", str(src), "s3://awscli/tree"], env)
    out = run([*aws, "s3", "ls", "--recursive", "s3://awscli/tree/"], env)
    for name in files:
        assert name in out, name
    # A second sync has nothing to do.
    assert "upload:" not in run([*aws, "s3", "sync", str(src), "s3://awscli/tree"], env)
    dst = tmp_path / "dst"
    run([*aws, "s3", "sync", "s3://awscli/tree", str(dst)], env)
    check_tree(dst, files)
    run([*aws, "s3", "cp", "s3://awscli/tree/big.bin", "s3://awscli/copy/big.bin"], env)
    run([*aws, "s3", "cp", "s3://awscli/copy/big.bin", str(tmp_path / "big.copy")], env)
    assert (tmp_path / "big.copy").read_bytes() == files["big.bin"]
    run(
        [*aws, "s3api", "put-object", "--bucket", "awscli", "--key", "api/obj", "--body", str(src / "empty")],
        env,
    )
    assert '"ContentLength": 0' in run(
        [*aws, "s3api", "head-object", "--bucket", "awscli", "--key", "api/obj"], env
    )
    run([*aws, "s3", "rm", "--recursive", "s3://awscli/"], env)
    run([*aws, "s3", "rb", "s3://awscli"], env)
    assert "awscli" not in run([*aws, "s3", "ls"], env)


def test_s3cmd(s3d: Daemon, tmp_path: Path) -> None:
    env = base_env(tmp_path, s3d)
    ak, sk = s3d.root_key()
    host = s3d.s3_endpoint.removeprefix("http://")
    cfg = tmp_path / "s3cfg"
    cfg.write_text(
        "[default]\n"
        f"access_key = {ak}\nsecret_key = {sk}\nhost_base = {host}\nhost_bucket = {host}\n"
        "use_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n"
        "multipart_chunk_size_mb = 15\n"
    )
    s3cmd = [str(BIN / "s3cmd"), "-c", str(cfg)]
    src = tmp_path / "src"
    files = make_tree(src)
    run([*s3cmd, "mb", "s3://s3cmd-bucket"], env)
    run([*s3cmd, "sync", f"{src}/", "s3://s3cmd-bucket/tree/"], env)
    listing = run([*s3cmd, "ls", "-r", "s3://s3cmd-bucket/"], env)
    for name in files:
        assert name in listing, name
    # sync compares MD5s with ETags: nothing to upload the second time.
    again = run([*s3cmd, "sync", f"{src}/", "s3://s3cmd-bucket/tree/"], env)
    assert "upload:" not in again, again
    dst = tmp_path / "dst"
    run([*s3cmd, "sync", "s3://s3cmd-bucket/tree/", f"{dst}/"], env)
    check_tree(dst, files)
    run([*s3cmd, "info", "s3://s3cmd-bucket/tree/big.bin"], env)
    run([*s3cmd, "del", "--recursive", "--force", "s3://s3cmd-bucket/"], env)
    run([*s3cmd, "rb", "s3://s3cmd-bucket"], env)


def test_rclone(s3d: Daemon, tmp_path: Path) -> None:
    env = base_env(tmp_path, s3d)
    ak, sk = s3d.root_key()
    env.update(
        RCLONE_CONFIG=str(tmp_path / "rclone.conf"),
        RCLONE_CONFIG_DFS_TYPE="s3",
        RCLONE_CONFIG_DFS_PROVIDER="Other",
        RCLONE_CONFIG_DFS_ACCESS_KEY_ID=ak,
        RCLONE_CONFIG_DFS_SECRET_ACCESS_KEY=sk,
        RCLONE_CONFIG_DFS_ENDPOINT=s3d.s3_endpoint,
        RCLONE_CONFIG_DFS_REGION="us-east-1",
    )
    rclone = [str(BIN / "rclone"), "--retries", "1", "--low-level-retries", "1"]
    src = tmp_path / "src"
    files = make_tree(src)
    run([*rclone, "mkdir", "dfs:rclone-bucket"], env)
    run(
        [
            *rclone,
            "copy",
            str(src),
            "dfs:rclone-bucket/tree",
            "--s3-upload-cutoff",
            "5M",
            "--s3-chunk-size",
            "5M",
        ],
        env,
    )
    run([*rclone, "check", str(src), "dfs:rclone-bucket/tree"], env)
    listing = run([*rclone, "lsf", "-R", "dfs:rclone-bucket/tree"], env)
    for name in files:
        assert name in listing, name
    run([*rclone, "copyto", "dfs:rclone-bucket/tree/big.bin", "dfs:rclone-bucket/server-side.bin"], env)
    dst = tmp_path / "dst"
    run([*rclone, "copy", "dfs:rclone-bucket/tree", str(dst)], env)
    check_tree(dst, files)
    run([*rclone, "copyto", "dfs:rclone-bucket/server-side.bin", str(tmp_path / "ss.bin")], env)
    assert (tmp_path / "ss.bin").read_bytes() == files["big.bin"]
    run([*rclone, "purge", "dfs:rclone-bucket"], env)
    assert "rclone-bucket" not in run([*rclone, "lsd", "dfs:"], env)


def test_restic(s3d: Daemon, tmp_path: Path) -> None:
    """A restic repository on dfs: init, two backups (the second only sends what changed), check
    with every pack read back, restore identical, forget and prune (deletes and rewrites)."""
    env = base_env(tmp_path, s3d)
    env.update(
        RESTIC_PASSWORD="correct horse",
        RESTIC_CACHE_DIR=str(tmp_path / "cache"),
        RESTIC_REPOSITORY=f"s3:{s3d.s3_endpoint}/restic-repo",
    )
    repo = ["restic"]
    src = tmp_path / "src"
    files = make_tree(src)
    run([*repo, "init"], env)
    run([*repo, "backup", str(src)], env)
    (src / "later.txt").write_bytes(os.urandom(5000))
    files["later.txt"] = (src / "later.txt").read_bytes()
    second = run([*repo, "backup", str(src)], env)
    assert "Added to the repository" in second or "Added to the repo" in second, second
    run([*repo, "check", "--read-data"], env)
    dst = tmp_path / "dst"
    run([*repo, "restore", "latest", "--target", str(dst)], env)
    check_tree(dst / src.relative_to("/"), files)
    run([*repo, "forget", "--keep-last", "1", "--prune"], env)
    run([*repo, "check"], env)
    assert run([*repo, "snapshots", "--json"], env).count('"id"') == 1
