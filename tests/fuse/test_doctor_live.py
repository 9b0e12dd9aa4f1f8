"""``dfs doctor`` against a real daemon, and the progress/--json convention of long operations
(``dfs fsck``, ``dfs snapshot send``, ``dfs gc``): progress on stderr, stdout parseable."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from dfs.core import sendstream as ss
from tests.conftest import BIN, Daemon, needs_fuse, wait_for
from tests.conftest import admin_ok as admin

MiB = 1024 * 1024
CHECKS = {
    "fuse device",
    "fusermount3",
    "allow_other",
    "config",
    "data dir",
    "free space",
    "node credential",
    "admin credential",
    "client credential",
    "admin token",
    "s3 root key",
    "master key",
    "rpc port",
    "gossip port",
    "s3 port",
    "admin port",
    "certificates",
    "daemon",
    "clock skew",
}


def dfs(d: Daemon, *args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(BIN / "dfs"), *args, "--config", str(d.conf_path)], capture_output=True, timeout=120, **kw
    )


@pytest.mark.slow
def test_doctor_against_a_live_daemon(daemon: Daemon) -> None:
    res = daemon.cli("doctor")
    lines = res.stdout.splitlines()
    assert res.returncode == 0, res.stdout
    *checks, summary = lines
    assert len(checks) == len(CHECKS) and summary.endswith(" 0 failure(s)"), res.stdout
    for line in checks:
        status, _, rest = line.partition("  ")
        assert status.strip() in ("ok", "warn") and rest.strip(), line  # every check says why
    assert any(line.startswith("ok    daemon ") for line in checks), res.stdout

    doc = json.loads(daemon.cli("doctor", "--json").stdout)
    by_name = {c["name"]: c for c in doc["checks"]}
    assert set(by_name) == CHECKS and doc["ok"] is True and doc["worst"] in ("ok", "warn")
    assert all(c["status"] in ("ok", "warn") and c["message"] for c in doc["checks"])
    # The ports are this data directory's dfsd's own, found through /proc and dfsd.pid.
    for name in ("rpc port", "gossip port", "s3 port", "admin port"):
        assert "held by this node's dfsd" in by_name[name]["message"], by_name[name]
    assert by_name["daemon"]["status"] == "ok"
    assert by_name["clock skew"]["status"] == "ok", by_name["clock skew"]  # asked over RPC: same host

    # Waiting for repair: progress on stderr, or with --json one document and a quiet stderr.
    res = daemon.cli("rebalance", "--wait")
    assert res.stderr.startswith("repairing: ") and res.stderr.endswith("done\n"), res.stderr
    res = daemon.cli("rebalance", "--wait", "--json")
    assert res.stderr == "" and json.loads(res.stdout)["repair"]["pending"] == 0

    # A secret others may read is a failure, with the command that fixes it.
    token = daemon.data_dir / "admin.token"
    token.chmod(0o644)
    try:
        bad = daemon.cli("doctor", check=False)
        assert bad.returncode == 1, bad.stdout + bad.stderr
        line = next(x for x in bad.stdout.splitlines() if " admin token " in x)
        assert line.startswith("fail") and f"chmod 600 {token}" in line
    finally:
        token.chmod(0o600)
    daemon.assert_clean()


@needs_fuse
@pytest.mark.fuse
@pytest.mark.slow
def test_long_operations_report_progress_on_stderr_and_keep_stdout_clean(
    daemon: Daemon, mnt: Path, tmp_path: Path
) -> None:
    admin(daemon, "POST", "/storage/volumes", {"name": "data"})
    vol = mnt / "data"
    wait_for(vol.is_dir, timeout_s=10)
    for i in range(3):
        (vol / f"f{i}.bin").write_bytes(os.urandom(2 * MiB + i))
    daemon.cli("snapshot", "create", "data", "s1")

    # Not a terminal: one plain progress line (a short run prints only its end) on stderr.
    res = dfs(daemon, "fsck")
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode().splitlines()
    assert len(out) == 2 and out[0].startswith("checked ") and out[1] == "clean", out
    chunks = int(out[0].split()[1])
    assert chunks >= 3
    err = res.stderr.decode()
    assert f"verifying chunks: {chunks}/{chunks} chunks 100%" in err and err.count("done") >= 1, err
    assert "\r" not in err

    # --json: the report alone on stdout, nothing on stderr.
    res = dfs(daemon, "fsck", "--json")
    assert res.returncode == 0 and res.stderr == b"", res.stderr
    assert json.loads(res.stdout)["chunks_checked"] == chunks

    # A stream on stdout stays a valid stream; its progress (bytes) and summary go to stderr.
    res = dfs(daemon, "snapshot", "send", "data@s1")
    assert res.returncode == 0, res.stderr
    dec = ss.Decoder()
    dec.feed(res.stdout)
    dec.close()
    assert dec.done
    err = res.stderr.decode()
    assert "sending: 6.0 MiB/6.0 MiB 100%" in err and "done" in err and "sent data@s1" in err, err

    res = dfs(daemon, "snapshot", "send", "data@s1", "--json", "-o", str(tmp_path / "s1.stream"))
    assert res.returncode == 0 and res.stderr == b"", res.stderr
    summary = json.loads(res.stdout)
    assert summary["bytes"] == (tmp_path / "s1.stream").stat().st_size and summary["data_blocks"] == 3

    res = dfs(daemon, "gc", "--json")
    assert res.returncode == 0 and res.stderr == b"", res.stderr
    assert isinstance(json.loads(res.stdout)["collected"], int)

    # On a terminal: a bar rewritten in place with \r, ended by a newline.
    primary, secondary = os.openpty()
    try:
        proc = subprocess.run(
            [str(BIN / "dfs"), "fsck", "--config", str(daemon.conf_path)],
            stdout=subprocess.PIPE,
            stderr=secondary,
            timeout=120,
            env={**os.environ, "COLUMNS": "100"},
        )
        os.close(secondary)
        secondary = -1
        drawn = b""
        while True:
            try:
                piece = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other end is closed and all is read
                break
            if not piece:
                break
            drawn += piece
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert proc.returncode == 0 and proc.stdout.decode().endswith("clean\n")
    assert b"\rverifying chunks [" in drawn and b"#" in drawn and drawn.endswith(b"\r\n"), drawn
