"""dfs/cli/doctor.py: each host check against temporary files, sockets and fixed values."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dfs.cli import doctor
from dfs.cli.doctor import FAIL, OK, WARN, Check, ClockSample
from dfs.core import config as config_mod
from dfs.core.errors import EX_FAILURE
from dfs.net.certs import create_ca

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def cfg_for(data: Path, extra: str = "") -> config_mod.Config:
    return config_mod.parse(f'[node]\ndata_dir = "{data}"\n{extra}', env={})


def test_fuse_device_missing_not_a_device_and_present(tmp_path: Path) -> None:
    missing = doctor.check_fuse_device(tmp_path / "fuse")
    assert missing.status == WARN and "does not exist" in missing.message and "modprobe fuse" in missing.fix
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert "not a character device" in doctor.check_fuse_device(plain).message
    assert doctor.check_fuse_device(Path("/dev/null")).status == OK  # a character device that opens


def test_fusermount_and_allow_other(tmp_path: Path) -> None:
    assert doctor.check_fusermount(lambda name: None).status == WARN
    assert doctor.check_fusermount(lambda name: f"/usr/bin/{name}").status == OK
    conf = tmp_path / "fuse.conf"
    conf.write_text("# user_allow_other\nmount_max = 1000\n")
    assert doctor.check_allow_other(conf, euid=0).status == OK  # root needs nothing
    needs = doctor.check_allow_other(conf, euid=1000)
    assert needs.status == WARN and "user_allow_other" in needs.fix
    conf.write_text("user_allow_other  # for dfs\n")
    assert doctor.check_allow_other(conf, euid=1000).status == OK


def test_config_parses_or_fails_with_the_reason(tmp_path: Path) -> None:
    good = tmp_path / "dfs.conf"
    good.write_text(f'[node]\ndata_dir = "{tmp_path}"\n')
    check, cfg = doctor.check_config(good, env={})
    assert check.status == OK and cfg is not None and cfg.data_path == tmp_path
    bad = tmp_path / "bad.conf"
    bad.write_text("[node]\nno_such_key = 1\n")
    check, cfg = doctor.check_config(bad, env={})
    assert check.status == FAIL and cfg is None and "no_such_key" in check.message
    check, cfg = doctor.check_config(tmp_path / "absent.conf", env={})
    assert check.status == FAIL and "cannot read" in check.message


def test_data_dir(tmp_path: Path) -> None:
    assert doctor.check_data_dir(tmp_path).status == OK
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind
    assert doctor.check_data_dir(tmp_path / "new").status == WARN
    (tmp_path / "file").write_text("")
    assert doctor.check_data_dir(tmp_path / "file").status == FAIL


@pytest.mark.parametrize(
    ("avail", "status"), [(50, OK), (10, OK), (9, WARN), (2, WARN), (1, FAIL), (0, FAIL)]
)
def test_free_space_thresholds(avail: int, status: str) -> None:
    check = doctor.free_space_check(Path("/data"), avail * 2**30, 100 * 2**30)
    assert check.status == status, check
    assert f"{avail:.1f} GiB free of 100.0 GiB" in check.message


def test_free_space_of_a_data_dir_not_made_yet_is_its_disks(tmp_path: Path) -> None:
    assert doctor.check_free_space(tmp_path / "a" / "b").message.startswith(str(tmp_path / "a" / "b"))


def test_credentials_with_loose_modes_are_flagged(tmp_path: Path) -> None:
    for name in ("node.credential", "admin.credential", "client.credential", "admin.token", "s3-root.json"):
        (tmp_path / name).write_text("x")
        os.chmod(tmp_path / name, 0o600)
    os.chmod(tmp_path / "node.credential", 0o640)
    (tmp_path / "gossip.keyring").write_text("k")
    os.chmod(tmp_path / "gossip.keyring", 0o644)
    checks = {c.name: c for c in doctor.credential_checks(cfg_for(tmp_path), env={})}
    node = checks["node credential"]
    assert (
        node.status == FAIL
        and "mode 640" in node.message
        and node.fix == f"chmod 600 {tmp_path}/node.credential"
    )
    assert checks["gossip keyring"].status == FAIL
    assert all(checks[n].status == OK for n in ("admin credential", "client credential", "admin token"))
    assert checks["master key"].status == OK  # none: only the primary makes one, when needed


def test_missing_credentials_warn_but_a_joining_node_without_the_secret_fails(tmp_path: Path) -> None:
    checks = {c.name: c for c in doctor.credential_checks(cfg_for(tmp_path), env={})}
    assert checks["node credential"].status == WARN and "at its start" in checks["node credential"].fix
    joining = cfg_for(tmp_path, '[cluster]\nmeta = "10.0.0.1:7400"\n')
    checks = {c.name: c for c in doctor.credential_checks(joining, env={})}
    assert (
        checks["node credential"].status == FAIL and "copy node.credential" in checks["node credential"].fix
    )
    named = cfg_for(tmp_path, f'[storage]\nmaster_key_file = "{tmp_path}/mk"\n')
    checks = {c.name: c for c in doctor.credential_checks(named, env={})}
    assert checks["master key"].status == FAIL  # named in dfs.conf, so it must be there
    checks = {c.name: c for c in doctor.credential_checks(named, env={"DFS_MASTER_KEY": "00" * 32})}
    assert checks["master key"].status == OK


def test_certificate_expiry() -> None:
    valid, _ = create_ca("a", valid_days=365, now=NOW)
    soon, _ = create_ca("b", valid_days=10, now=NOW)
    gone, _ = create_ca("c", valid_days=1, now=NOW - timedelta(days=5))
    assert doctor.certificate_check("ca", valid, NOW).status == OK
    check = doctor.certificate_check("ca", soon, NOW)
    assert check.status == WARN and "in 10 day(s)" in check.message and "dfs node cert" in check.fix
    assert doctor.certificate_check("ca", gone, NOW).status == FAIL
    assert doctor.certificate_check("ca", soon + valid, NOW).status == WARN  # the first to expire decides
    assert doctor.certificate_check("ca", b"not a pem", NOW).status == FAIL


def test_certificate_files_from_the_config(tmp_path: Path) -> None:
    assert [c.status for c in doctor.certificate_checks(cfg_for(tmp_path), NOW)] == [OK]
    pem, _ = create_ca("a", valid_days=20, now=NOW)
    (tmp_path / "ca.pem").write_bytes(pem)
    cfg = cfg_for(tmp_path, f'[tls]\ncert_file = "{tmp_path}/none.pem"\nca_file = "{tmp_path}/ca.pem"\n')
    checks = doctor.certificate_checks(cfg, NOW)
    assert [(c.name, c.status) for c in checks] == [("tls cert", FAIL), ("tls ca", WARN)]


def test_clock_skew() -> None:
    close = {"a": ClockSample(0.004, 0.001), "b": ClockSample(-0.2, 0.001)}
    assert doctor.clock_skew_check(close, []).status == OK
    assert (
        doctor.clock_skew_check({"a": ClockSample(0.0, 0.0), "b": ClockSample(5.0, 0.1)}, []).status == WARN
    )
    far = doctor.clock_skew_check({"a": ClockSample(-20.0, 0.0), "b": ClockSample(20.0, 0.0)}, [])
    assert far.status == FAIL and "b ahead of a" in far.message and "set-ntp" in far.fix
    # A slow answer is no evidence of skew: the round trip's uncertainty is taken off.
    assert doctor.clock_skew_check({"a": ClockSample(1.5, 1.0)}, []).status == OK
    silent = doctor.clock_skew_check(close, ["c"])
    assert silent.status == WARN and "no time from c" in silent.message
    assert doctor.clock_skew_check({}, ["a"]).status == WARN


def test_ports_free_held_by_our_daemon_or_taken(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    assert doctor.check_port("rpc", address, 7400, (socket.SOCK_STREAM,), None).message.endswith("free")
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        ours = doctor.check_port("rpc", address, 7400, (socket.SOCK_STREAM,), os.getpid())
        theirs = doctor.check_port("rpc", address, 7400, (socket.SOCK_STREAM,), None)
    assert ours.status == OK and f"pid {os.getpid()}" in ours.message
    assert theirs.status == FAIL and f"(pid {os.getpid()})" in theirs.message and "another port" in theirs.fix
    elsewhere = doctor.check_port("s3", "192.0.2.1:9000", 9000, (socket.SOCK_STREAM,), None)
    assert elsewhere.status == FAIL and "not an address of this host" in elsewhere.message
    assert doctor.check_port("s3", "host:port", 9000, (socket.SOCK_STREAM,), None).status == FAIL


def test_exit_status_and_format() -> None:
    ok, warn, fail = Check("a", OK, "fine"), Check("b", WARN, "hm", "do x"), Check("c", FAIL, "bad", "do y")
    assert doctor.exit_status([ok, warn]) == 0
    assert doctor.exit_status([ok, warn], strict=True) == EX_FAILURE
    assert doctor.exit_status([ok, fail]) == EX_FAILURE
    assert doctor.worst([]) == OK and doctor.worst([warn, ok]) == WARN
    assert doctor.format_check(ok, 3) == "ok    a    fine"
    assert doctor.format_check(fail) == "fail  c  bad  (fix: do y)"
