"""How `dfs up` decides whether its daemon runs (issue 13): only an answer over the daemon's socket
counts; a pid file naming a zombie, an exiting or a reused pid, or a socket file nobody listens on,
must not stop it from starting one.  A daemon still holding the data dir is waited for, then named."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfs.cli import liveness, updown
from dfs.cli.app import CliError
from dfs.cli.connect import Endpoint
from dfs.cli.liveness import Found, Proc, Sock, Step
from dfs.cli.main import main
from dfs.core import config as config_mod
from dfs.core.config import Config
from tests.conftest import wait_for

DATA = Path("/srv/dfs/var")
SOCK = "unix:/srv/dfs/var/rpc.sock"


def decide(found: Found, waited_s: float = 0.0, limit_s: float = 30.0) -> liveness.Decision:
    return liveness.decide(found, waited_s=waited_s, limit_s=limit_s, data_dir=DATA, endpoint=SOCK)


# -- the decision -----------------------------------------------------------------------------
@pytest.mark.parametrize("proc", list(Proc))
@pytest.mark.parametrize("sock", list(Sock))
def test_an_answer_is_all_that_proves_a_daemon_runs(proc: Proc, sock: Sock) -> None:
    assert decide(Found(True, 123, proc, "S (sleeping)", sock)).step is Step.USE


@pytest.mark.parametrize("proc", [Proc.ZOMBIE, Proc.NONE, Proc.OTHER])
def test_a_killed_daemon_leaves_files_that_do_not_stop_a_start(proc: Proc) -> None:
    # The race of issue 13: the pid file names the daemon just killed (a zombie not yet reaped,
    # or by now another process), and its socket file is still there.
    d = decide(Found(False, 4242, proc, "Z (zombie)" if proc is Proc.ZOMBIE else "", Sock.STALE))
    assert d.step is Step.START
    assert d.remove_pid_file and d.remove_socket


def test_nothing_there_starts_and_removes_nothing() -> None:
    d = decide(Found(False, None, Proc.NONE, "", Sock.ABSENT))
    assert d == liveness.Decision(Step.START)


def test_a_path_that_is_not_a_socket_is_left_for_the_daemon_to_report() -> None:
    d = decide(Found(False, None, Proc.NONE, "", Sock.NOT_SOCKET))
    assert d.step is Step.START and not d.remove_socket


def test_a_daemon_still_holding_the_data_dir_is_waited_for_then_named() -> None:
    found = Found(False, 4242, Proc.DAEMON, "D (disk sleep)", Sock.LISTENING)
    assert decide(found, waited_s=5).step is Step.WAIT
    d = decide(found, waited_s=30)
    assert d.step is Step.FAIL
    assert "pid 4242" in d.message and "D (disk sleep)" in d.message
    assert str(DATA) in d.message and SOCK in d.message and "\n" not in d.message


def test_a_listener_that_does_not_answer_is_waited_for_then_named() -> None:
    found = Found(False, None, Proc.NONE, "", Sock.LISTENING)
    assert decide(found, waited_s=1).step is Step.WAIT
    d = decide(found, waited_s=31)
    assert d.step is Step.FAIL and SOCK in d.message and "no pid file" in d.message


# -- the look-ups -----------------------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "var"
    d.mkdir()
    return d


def _state(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("State:"):
            return line.split()[1]
    return ""


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that has exited and is not reaped yet: kill(pid, 0) still succeeds for it."""
    proc = subprocess.Popen(["true"])
    try:
        wait_for(lambda: _state(proc.pid) == "Z", 10, "the child to become a zombie")
        yield proc.pid
    finally:
        proc.wait()


@pytest.fixture
def holder(data_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A live process with a file of the data dir open, as a daemon that does not answer."""
    with open(data_dir / "dfsd.log", "ab") as log:
        proc = subprocess.Popen(["sleep", "600"], stdout=log)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def stranger() -> Iterator[int]:
    """A live process that has nothing to do with dfs (the pid handed out again)."""
    proc = subprocess.Popen(["sleep", "600"], stdout=subprocess.DEVNULL)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_process_of(
    data_dir: Path, zombie: int, holder: subprocess.Popen[bytes], stranger: int, tmp_path: Path
) -> None:
    assert liveness.process_of(None, data_dir) == (Proc.NONE, "")
    proc, state = liveness.process_of(zombie, data_dir)
    assert proc is Proc.ZOMBIE and state.startswith("Z")
    assert liveness.process_of(holder.pid, data_dir)[0] is Proc.DAEMON
    assert liveness.process_of(stranger, data_dir)[0] is Proc.OTHER
    # A sibling directory whose name starts the same is not the data dir.
    (tmp_path / "var2").mkdir()
    assert liveness.process_of(holder.pid, tmp_path / "var2")[0] is Proc.OTHER
    holder.kill()
    holder.wait()
    assert liveness.process_of(holder.pid, data_dir)[0] is Proc.NONE


def test_socket_state_and_safe_removal(data_dir: Path) -> None:
    path = data_dir / "rpc.sock"
    assert liveness.socket_state(path) is Sock.ABSENT
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen()
        assert liveness.socket_state(path) is Sock.LISTENING
        liveness.remove_stale_socket(path)
        assert path.exists(), "a socket someone listens on must stay"
    # Closed without unlinking, as a daemon killed with SIGKILL leaves it.
    assert liveness.socket_state(path) is Sock.STALE
    liveness.remove_stale_socket(path)
    assert not path.exists()
    path.write_text("not a socket")
    assert liveness.socket_state(path) is Sock.NOT_SOCKET
    liveness.remove_stale_socket(path)
    assert path.exists()


def test_remove_pid_file_only_while_it_names_the_pid(data_dir: Path) -> None:
    pid_path = data_dir / "dfsd.pid"
    pid_path.write_text("111\n")
    liveness.remove_pid_file(pid_path, 222)  # a daemon started meanwhile wrote its own
    assert liveness.read_pid(pid_path) == 111
    liveness.remove_pid_file(pid_path, 111)
    assert not pid_path.exists()
    assert liveness.read_pid(pid_path) is None
    pid_path.write_text("garbage")
    assert liveness.read_pid(pid_path) is None


# -- dfs up's loop over them (no daemon: nothing answers on the socket) -------------------------
@pytest.fixture
def cfg(data_dir: Path) -> Config:
    return config_mod.replace(config_mod.parse("", origin="defaults"), node={"data_dir": str(data_dir)})


def _own(cfg: Config) -> Endpoint:
    return Endpoint(f"unix:{cfg.unix_socket_path}")


def _stale_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen()


def test_settle_starts_over_a_zombie_pid_and_a_stale_socket(cfg: Config, zombie: int) -> None:
    (cfg.data_path / "dfsd.pid").write_text(f"{zombie}\n")
    _stale_socket(cfg.unix_socket_path)
    assert updown._settle(cfg, _own(cfg)) is False  # start one
    assert not (cfg.data_path / "dfsd.pid").exists()
    assert not cfg.unix_socket_path.exists()
    assert updown._daemon_pid(cfg) is None  # what `dfs down` signals: never a zombie


def test_settle_starts_over_a_reused_pid(cfg: Config, stranger: int) -> None:
    (cfg.data_path / "dfsd.pid").write_text(f"{stranger}\n")
    assert updown._settle(cfg, _own(cfg)) is False
    assert not (cfg.data_path / "dfsd.pid").exists()
    assert updown._daemon_pid(cfg) is None  # `dfs down` must not signal a stranger


def test_settle_names_a_daemon_that_neither_answers_nor_exits(
    cfg: Config, holder: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(updown, "_STOP_WAIT_S", 0.3)
    (cfg.data_path / "dfsd.pid").write_text(f"{holder.pid}\n")
    _stale_socket(cfg.unix_socket_path)
    with pytest.raises(CliError) as info:
        updown._settle(cfg, _own(cfg))
    message = info.value.message
    assert f"pid {holder.pid}" in message and "did not answer" in message and str(cfg.data_path) in message
    assert (cfg.data_path / "dfsd.pid").exists(), "the pid file of a live daemon stays"
    assert updown._daemon_pid(cfg) == holder.pid


def test_settle_waits_for_a_dying_daemon_then_starts(
    cfg: Config, holder: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    (cfg.data_path / "dfsd.pid").write_text(f"{holder.pid}\n")
    steps: list[Step] = []
    real_decide = liveness.decide

    def recording(*args: object, **kwargs: object) -> liveness.Decision:
        d = real_decide(*args, **kwargs)  # type: ignore[arg-type]
        steps.append(d.step)
        return d

    monkeypatch.setattr(liveness, "decide", recording)
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(updown._settle(cfg, _own(cfg))))
    worker.start()
    try:
        wait_for(lambda: Step.WAIT in steps, 20, "dfs up to wait for the holder")
    finally:
        holder.kill()  # it exits while dfs up waits
        worker.join(60)
    assert result == [False]
    assert steps[-1] is Step.START
    assert not (cfg.data_path / "dfsd.pid").exists()


def test_down_leaves_a_stranger_alone_and_removes_the_stale_pid_file(tmp_path: Path, stranger: int) -> None:
    from click.testing import CliRunner

    var = tmp_path / "var"
    var.mkdir()
    updown.up_config(tmp_path)  # writes var/dfs.conf
    (var / "dfsd.pid").write_text(f"{stranger}\n")
    res = CliRunner().invoke(main, ["down", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert Path(f"/proc/{stranger}").exists() and liveness.process_of(stranger, var)[0] is Proc.OTHER
    assert not (var / "dfsd.pid").exists()
