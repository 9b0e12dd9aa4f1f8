"""Is this data dir's daemon running?  What ``dfs up`` does about what it finds.

Only an answer over the daemon's own socket proves a daemon is running.  A pid
file and a socket file outlive a daemon killed with SIGKILL, and ``kill(pid, 0)``
also succeeds for a killed process that has not finished exiting or is a zombie
not yet reaped (a daemon started by ``dfs up`` is reparented to init, which may
reap late), or for an unrelated process that was given the pid again.  So
:func:`decide` is a pure function of what was found, and the look-ups that gather
it (``/proc``, the socket) are small helpers beside it.  Linux only, as FUSE here is.
"""

from __future__ import annotations

import contextlib
import enum
import os
import socket
import stat
from pathlib import Path
from typing import NamedTuple


class Proc(enum.Enum):
    """The process a pid file names."""

    NONE = "none"  # no pid file, or no such process
    ZOMBIE = "zombie"  # exited, not yet reaped: it holds no file, lock or socket any more
    OTHER = "other"  # alive but holds nothing in the data dir: the pid was given to another process
    DAEMON = "daemon"  # alive and holds files in the data dir open (their locks with them)


class Sock(enum.Enum):
    """The unix socket file of the data dir."""

    ABSENT = "absent"
    STALE = "stale"  # a socket file nobody listens on (connect is refused)
    LISTENING = "listening"  # something accepts connections there
    NOT_SOCKET = "not a socket"


class Found(NamedTuple):
    """What ``dfs up`` found about the data dir's daemon, at one moment."""

    answered: bool  # the daemon answered a ping over its own endpoint
    pid: int | None  # from the pid file
    proc: Proc
    proc_state: str  # as /proc shows it, e.g. "D (disk sleep)"; "" when there is no process
    sock: Sock


class Step(enum.Enum):
    USE = "use"  # a daemon answers: use it
    START = "start"  # none runs: start one (after the clean-up the decision asks for)
    WAIT = "wait"  # one is going away or not answering yet: look again shortly
    FAIL = "fail"  # it did not settle in time: report ``message``


class Decision(NamedTuple):
    step: Step
    message: str = ""  # for WAIT, what is awaited; for FAIL, the one line to report
    remove_pid_file: bool = False
    remove_socket: bool = False


def decide(found: Found, *, waited_s: float, limit_s: float, data_dir: Path, endpoint: str) -> Decision:
    """What to do about ``found``, after ``waited_s`` of at most ``limit_s`` spent waiting."""
    if found.answered:
        return Decision(Step.USE)
    expired = waited_s >= limit_s
    if found.proc is Proc.DAEMON:
        # Killed but still exiting (e.g. in an uninterruptible fsync), or hung: a second daemon
        # must not open the same stores while this one holds them.
        state = found.proc_state or "state unknown"
        what = f"dfsd (pid {found.pid}, {state}) still has files in {data_dir} open"
        if not expired:
            return Decision(Step.WAIT, f"{what}; waiting for it to exit")
        return Decision(
            Step.FAIL,
            f"{what} but did not answer on {endpoint} nor exit within {limit_s:.0f}s; "
            f"stop it (kill {found.pid}) and run dfs up again",
        )
    if found.sock is Sock.LISTENING:
        # No pid to wait for, yet something accepts connections: a daemon still starting, or a
        # stranger; starting another daemon would only fail on the busy socket.
        if not expired:
            return Decision(Step.WAIT, f"something listens on {endpoint} but does not answer yet")
        pid_note = f"pid file names pid {found.pid} ({found.proc.value})" if found.pid else "no pid file"
        return Decision(
            Step.FAIL,
            f"something listens on {endpoint} but no dfsd answered there within {limit_s:.0f}s "
            f"({pid_note}); stop it and run dfs up again",
        )
    return Decision(
        Step.START,
        remove_pid_file=found.pid is not None,  # its process is gone, a zombie, or not ours
        remove_socket=found.sock is Sock.STALE,
    )


# -- look-ups ------------------------------------------------------------------------------
def read_pid(pid_path: Path) -> int | None:
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def process_of(pid: int | None, data_dir: Path) -> tuple[Proc, str]:
    """What ``pid`` is now, and its state as /proc shows it."""
    if pid is None:
        return Proc.NONE, ""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return Proc.NONE, ""
    state = next(
        (line[len("State:") :].strip() for line in status.splitlines() if line.startswith("State:")), ""
    )
    if state[:1] in ("Z", "X"):
        return Proc.ZOMBIE, state
    return (Proc.DAEMON if _holds_files_in(pid, data_dir) else Proc.OTHER), state


def _holds_files_in(pid: int, data_dir: Path) -> bool:
    top = str(data_dir.resolve()) + os.sep
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except FileNotFoundError:
        return False  # it exited meanwhile
    except PermissionError:
        return True  # another user's process: cannot tell, so do not start a rival beside it
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}").startswith(top):
                return True
        except OSError:
            continue  # closed meanwhile
    return False


def socket_state(path: Path) -> Sock:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Sock.ABSENT
    if not stat.S_ISSOCK(st.st_mode):
        return Sock.NOT_SOCKET
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return Sock.STALE
        except FileNotFoundError:
            return Sock.ABSENT
        except OSError:
            return Sock.LISTENING  # e.g. a full backlog: a listener, just a busy one
    return Sock.LISTENING


def remove_stale_socket(path: Path) -> None:
    """Unlink ``path`` if it still is a socket nobody listens on (asked again right before)."""
    if socket_state(path) is Sock.STALE:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_pid_file(pid_path: Path, pid: int) -> None:
    """Unlink the pid file if it still names ``pid`` (a daemon starting meanwhile writes its own)."""
    if read_pid(pid_path) == pid:
        with contextlib.suppress(FileNotFoundError):
            pid_path.unlink()
