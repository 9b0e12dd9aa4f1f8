"""Directory quotas through a real FUSE mount, the CLI and the admin API.

dd and cp into a quota'd volume fail with EDQUOT ("Disk quota exceeded"); deleting gives
the room back; getfattr shows the usage; inode limits refuse mkdir; a rename between quota
domains is EXDEV (mv copies instead); df of a subdirectory mount shows the quota; `dfs
quota` and /storage/quotas set, show, list and clear quotas; `dfs status` shows usage and
warns about over-provisioning.  Every test ends with fsck clean (Daemon.assert_clean).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, Daemon, Mount, http_call, is_mounted, needs_fuse, wait_for
from tests.conftest import admin_call as admin

pytestmark = [needs_fuse, pytest.mark.fuse]
MiB = 1 << 20


def xattr(path: Path, name: str) -> str:
    return os.getxattr(path, name).decode()


def test_quota_through_the_mount(daemon: Daemon, tmp_path: Path) -> None:
    status, doc = admin(daemon, "POST", "/storage/volumes", {"name": "vol", "quota_bytes": MiB})
    assert status == 201 and doc["policy"]["quota_bytes"] == MiB and doc["usage"]["inodes"] == 1
    mount = Mount(daemon, tmp_path / "mnt")
    mount.start()
    try:
        vol = mount.path / "vol"
        # dd of 2 MiB into a 1 MiB volume: the commit is refused, dd says why.
        res = subprocess.run(
            ["dd", "if=/dev/zero", f"of={vol / 'big'}", "bs=64K", "count=32", "conv=fsync"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode != 0 and "Disk quota exceeded" in res.stderr, res.stderr
        assert int(xattr(vol, "user.dfs.quota.used_bytes")) <= MiB
        # cp of a file that does not fit fails the same way.
        src = tmp_path / "src.bin"
        src.write_bytes(os.urandom(3 * MiB // 2))
        res = subprocess.run(["cp", str(src), str(vol / "copy")], capture_output=True, text=True, timeout=120)
        assert res.returncode != 0 and "Disk quota exceeded" in res.stderr, res.stderr
        for name in ("big", "copy"):
            if (vol / name).exists():
                (vol / name).unlink()
        wait_for(lambda: xattr(vol, "user.dfs.quota.used_bytes") == "0", 30, "usage to drop to 0")
        # Deleting gave the room back: a file that fits is written whole.
        data = os.urandom(MiB - 1000)
        (vol / "fits").write_bytes(data)
        assert (vol / "fits").read_bytes() == data
        out = subprocess.run(
            ["getfattr", "-d", "-m", "user.dfs.quota", str(vol)], capture_output=True, text=True, check=True
        ).stdout
        assert f'user.dfs.quota.bytes="{MiB}"' in out
        assert f'user.dfs.quota.used_bytes="{MiB - 1000}"' in out
        assert 'user.dfs.quota.used_inodes="2"' in out
        with pytest.raises(OSError) as exc:
            os.setxattr(vol, "user.dfs.quota.bytes", b"1")
        assert exc.value.errno == errno.EPERM
        # Python's view of the same refusal: the error comes at fsync (the commit) at the latest.
        with pytest.raises(OSError) as exc, open(vol / "more", "wb") as f:
            f.write(b"x" * 2000)
            os.fsync(f.fileno())
        assert exc.value.errno == errno.EDQUOT
        (vol / "more").unlink()
        # Truncating up counts st_size.
        with pytest.raises(OSError) as exc:
            os.truncate(vol / "fits", 2 * MiB)
        assert exc.value.errno == errno.EDQUOT

        # Inode limits, set with the CLI on a subdirectory: mkdir and create are refused.
        (vol / "d").mkdir()
        daemon.cli("quota", "set", "/vol/d", "--inodes", "2")
        (vol / "d" / "one").write_bytes(b"1")
        with pytest.raises(OSError) as exc:
            (vol / "d" / "two").mkdir()
        assert exc.value.errno == errno.EDQUOT
        with pytest.raises(OSError) as exc:
            (vol / "d" / "three").write_bytes(b"")
        assert exc.value.errno == errno.EDQUOT
        os.link(vol / "d" / "one", vol / "d" / "hard")  # a name, no inode: allowed
        # Between domains a rename is EXDEV, and mv copies instead.
        with pytest.raises(OSError) as exc:
            os.rename(vol / "fits", vol / "d" / "fits")
        assert exc.value.errno == errno.EXDEV
        got = json.loads(daemon.cli("quota", "get", "/vol/d", "--json").stdout)
        assert got["max_inodes"] == 2 and got["used_inodes"] == 2 and got["path"] == "/vol/d"
        daemon.cli("quota", "clear", "/vol/d")
        subprocess.run(["mv", str(vol / "d" / "one"), str(vol / "one")], check=True, timeout=60)
        assert (vol / "one").read_bytes() == b"1"
    finally:
        mount.stop()
    # The refused writes had uploaded their blocks before the commit was refused: chunks no
    # metadata names, which the orphan sweep deletes (after [storage] orphan_delay_s; now here).
    daemon.cli("gc", "--orphans", "--now")
    daemon.assert_clean()


def test_df_of_a_subdirectory_mount_shows_the_quota(daemon: Daemon, tmp_path: Path) -> None:
    admin(daemon, "POST", "/storage/volumes", {"name": "vol", "quota_bytes": 64 * MiB, "quota_inodes": 1000})
    sub = tmp_path / "sub"
    sub.mkdir()
    cred = f"credential={daemon.data_dir / 'client.credential'}"
    subprocess.run(
        [str(BIN / "mount.dfs"), f"{daemon.address}:/vol", str(sub), "-o", cred], check=True, timeout=60
    )
    try:
        assert is_mounted(sub)
        (sub / "f").write_bytes(os.urandom(MiB))
        st = os.statvfs(sub)
        assert st.f_blocks * st.f_frsize == 64 * MiB
        assert st.f_bavail * st.f_frsize == 63 * MiB
        assert st.f_files == 1000 and st.f_ffree == 998
        out = subprocess.run(["df", "-B1", str(sub)], capture_output=True, text=True, check=True).stdout
        assert str(64 * MiB) in out
    finally:
        subprocess.run(["fusermount3", "-u", str(sub)], capture_output=True)
        wait_for(lambda: not is_mounted(sub), 30, "the subdirectory mount to go")
    daemon.assert_clean()


def test_cli_admin_api_and_status(daemon: Daemon, tmp_path: Path) -> None:
    admin(daemon, "POST", "/storage/volumes", {"name": "alpha"})
    admin(daemon, "POST", "/storage/volumes", {"name": "beta"})
    mount = Mount(daemon, tmp_path / "mnt")
    mount.start()
    try:
        (mount.path / "alpha" / "text").write_bytes(b"compress me " * 100_000)
        (mount.path / "alpha" / "sub").mkdir()
    finally:
        mount.stop()
    # The CLI: sizes with suffixes, a table, JSON.
    out = daemon.cli("quota", "set", "/alpha", "--bytes", "10G", "--inodes", "100").stdout
    assert "/alpha" in out and "10G" in out
    status, doc = admin(daemon, "GET", "/storage/volumes/alpha")
    assert doc["policy"]["quota_bytes"] == 10 << 30 and doc["policy"]["quota_inodes"] == 100
    assert doc["usage"]["bytes"] == 1_200_000 and doc["usage"]["compression_ratio"] > 2
    listed = json.loads(daemon.cli("quota", "list", "--json").stdout)
    assert {q["path"] for q in listed} == {"/alpha", "/beta"}  # every volume has a row
    # The admin API: set on a subdirectory, get, list, clear.
    status, doc = admin(daemon, "PUT", "/storage/quotas?path=/alpha/sub", {"max_bytes": 5000})
    assert status == 200 and doc == {
        "path": "/alpha/sub",
        "max_bytes": 5000,
        "max_inodes": None,
        "usage": {"bytes": 0, "inodes": 1, "stored_bytes": 0, "compression_ratio": None},
    }
    status, doc = admin(daemon, "GET", "/storage/quotas?path=/alpha/sub")
    assert status == 200 and doc["max_bytes"] == 5000
    status, doc = admin(daemon, "GET", "/storage/quotas")
    assert [q["path"] for q in doc["quotas"]] == ["/alpha", "/beta", "/alpha/sub"]
    assert admin(daemon, "PUT", "/storage/quotas?path=/alpha/sub", {"max_bytes": -1})[0] == 400
    assert admin(daemon, "PUT", "/storage/quotas?path=/nothing", {"max_bytes": 1})[0] == 404
    assert admin(daemon, "DELETE", "/storage/quotas?path=/alpha/sub")[0] == 204
    assert admin(daemon, "GET", "/storage/quotas?path=/alpha/sub")[0] == 404
    # A volume PUT changes the same row.
    admin(daemon, "PUT", "/storage/volumes/beta", {"quota_bytes": 1 << 50})
    got = json.loads(daemon.cli("quota", "get", "/beta", "--json").stdout)
    assert got["max_bytes"] == 1 << 50
    # Thin provisioning: more promised than the disks hold is allowed, and `dfs status` warns.
    st = json.loads(daemon.cli("status", "--json").stdout)
    prov = st["provisioning"]
    assert prov["provisioned_bytes"] == (10 << 30) + (1 << 50) and prov["warning"] is not None
    alpha = next(v for v in st["volumes"] if v["name"] == "alpha")
    assert alpha["usage"]["bytes"] == 1_200_000 and alpha["usage"]["quota_inodes"] == 100
    text = daemon.cli("status").stdout
    assert "WARNING: quotas promise" in text and "ratio" in text

    # Prometheus (values refreshed every few seconds: poll).
    def gauges() -> dict[str, float]:
        status, _, raw = http_call(
            daemon.admin_port, "GET", "/metrics", None, {"Authorization": f"Bearer {daemon.admin_token()}"}
        )
        assert status == 200
        lines = [ln.rsplit(" ", 1) for ln in raw.decode().splitlines() if ln and not ln.startswith("#")]
        return {k: float(v) for k, v in lines}

    wait_for(
        lambda: gauges().get("dfs_quota_provisioned_bytes") == float((10 << 30) + (1 << 50)),
        30,
        "the provisioned gauge",
    )
    found = gauges()
    assert found['dfs_volume_used_bytes{volume="alpha"}'] == 1_200_000
    assert found['dfs_volume_quota_inodes{volume="alpha"}'] == 100
    # Errors: a bad size, a missing path (EX_NOINPUT).
    res = daemon.cli("quota", "set", "/alpha", "--bytes", "12Q", check=False)
    assert res.returncode == 2
    res = daemon.cli("quota", "get", "/missing", check=False)
    assert res.returncode == 66
    daemon.cli("quota", "clear", "/alpha")
    got = json.loads(daemon.cli("quota", "get", "/alpha", "--json").stdout)
    assert got["max_bytes"] is None and got["used_inodes"] == 3
    daemon.assert_clean()
