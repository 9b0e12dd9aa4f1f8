"""dfs/cli/progress.py: the progress model (rate over a window, ETA), its text and its throttled
drawing, all on a fake clock."""

from __future__ import annotations

import io

import pytest
import trio

from dfs.cli import progress
from dfs.cli.progress import Progress, Reporter, bar_line, format_duration, mode_for, plain_line


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def make(
    total: float | None, mode: progress.Mode, *, unit: str = "", width: int = 80
) -> tuple[Reporter, io.StringIO, FakeClock]:
    clock = FakeClock()
    out = io.StringIO()
    p = Progress("copying", total, unit=unit, start_s=clock())
    return Reporter(p, out, mode, clock=clock, width=lambda: width, line_interval_s=10.0), out, clock


def test_rate_follows_the_window_and_eta_uses_it() -> None:
    p = Progress("x", 1000, start_s=0.0, window_s=10.0)
    for t in range(1, 21):  # 1 unit/s for 20 s
        p.update(t, float(t))
    assert p.rate_per_s() == pytest.approx(1.0)
    for t in range(21, 41):  # then 10 units/s: after a full window only the new speed counts
        p.update(20 + 10 * (t - 20), float(t))
    assert p.rate_per_s() == pytest.approx(10.0)
    assert p.done == 220
    assert p.eta_s() == pytest.approx((1000 - 220) / 10.0)
    assert p.fraction() == pytest.approx(0.22)


def test_no_rate_before_time_passes_and_no_eta_without_total_or_movement() -> None:
    p = Progress("x", 10, start_s=5.0)
    assert p.rate_per_s() is None and p.eta_s() is None
    p.update(0, 8.0)
    assert p.rate_per_s() == 0.0 and p.eta_s() is None  # nothing moves: no invented ETA
    q = Progress("y", None, start_s=0.0)
    q.update(50, 5.0)
    assert q.rate_per_s() == pytest.approx(10.0)
    assert q.fraction() is None and q.eta_s() is None


def test_total_grows_when_more_work_turns_up_and_samples_are_bounded() -> None:
    p = Progress("x", 10, start_s=0.0)
    p.update(15, 1.0)
    assert p.total == 15 and p.fraction() == 1.0 and p.eta_s() == 0.0
    p.set_total(12)  # never below what is done
    assert p.total == 15
    for t in range(10 * progress.MAX_SAMPLES):
        p.update(15 + t, 1.0 + t / 1000)
    assert len(p._samples) <= progress.MAX_SAMPLES
    empty = Progress("z", 0, start_s=0.0)
    assert empty.fraction() == 1.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0.0s"),
        (0.24, "0.2s"),
        (9.94, "9.9s"),
        (9.96, "10s"),
        (59, "59s"),
        (60, "1m00s"),
        (125, "2m05s"),
        (3600, "1h00m"),
        (3723, "1h02m"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_bar_line_fits_the_width_and_shows_amounts_rate_and_eta() -> None:
    p = Progress("sending", 4 * 2**20, unit="B", start_s=0.0)
    p.update(2**20, 1.0)
    for width in (40, 80, 200):
        line = bar_line(p, width)
        assert len(line) <= width - 1
    line = bar_line(p, 120)
    assert line.startswith("sending [") and "1.0 MiB/4.0 MiB" in line and " 25%" in line
    assert "1.0 MiB/s" in line and "ETA 3.0s" in line
    inner = line[line.index("[") + 1 : line.index("]")]
    assert len(inner) >= progress.MIN_BAR_CHARS and inner.count("#") == len(inner) // 4


def test_bar_line_without_total_spins_and_shows_elapsed() -> None:
    p = Progress("collecting", None, start_s=0.0)
    p.update(0, 7.0)
    frames = {bar_line(p, 80, frame)[len("collecting ")] for frame in range(4)}
    assert frames == set(progress.SPINNER)
    assert bar_line(p, 80, 0) == "collecting | 7.0s"  # nothing counted: no invented numbers
    p.update(3, 8.0)
    assert "3  0.4/s  8.0s" in bar_line(p, 80)
    p.finish(8.0)
    assert "collecting done" in bar_line(p, 80)


def test_plain_line() -> None:
    p = Progress("verifying chunks", 200, unit="chunks", start_s=0.0)
    p.update(50, 5.0)
    assert plain_line(p) == "verifying chunks: 50/200 chunks  25%  10 chunks/s  ETA 15s"
    p.finish(10.0)
    assert plain_line(p).endswith("in 10s, done")


def test_lines_mode_throttles_to_one_line_per_interval_plus_the_end() -> None:
    rep, out, clock = make(100, "lines")
    for _ in range(25):  # an update every second for 25 s
        clock.now_s += 1
        rep.advance(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines  # at 10 s and 20 s; nothing in the first interval
    assert lines[0].startswith("copying: 10/100  10%") and "\r" not in out.getvalue()
    rep.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("copying: 100/100") and lines[-1].endswith("done")


def test_a_short_operation_prints_only_its_end() -> None:
    rep, out, clock = make(3, "lines")
    with rep:
        for _ in range(3):
            clock.now_s += 0.5
            rep.advance(1)
    assert out.getvalue().count("\n") == 1 and "done" in out.getvalue()


def test_tty_mode_rewrites_one_line_throttled_and_ends_it() -> None:
    rep, out, clock = make(1000, "tty", width=60)
    for _ in range(100):  # 100 updates within 0.5 s: at most one redraw per 0.1 s
        clock.now_s += 0.005
        rep.advance(1)
    text = out.getvalue()
    assert 1 <= text.count("\r") <= 6 and "\n" not in text
    assert all(len(chunk) == 59 for chunk in text.split("\r")[1:])  # padded to cover the last
    rep.note("resuming after record 7")
    rep.close()
    text = out.getvalue()
    assert "\rresuming after record 7" in text and text.endswith("\n")
    assert "100%" in text.rstrip("\n").split("\r")[-1]


def test_off_mode_writes_nothing_and_a_failure_is_not_drawn_as_done() -> None:
    rep, out, clock = make(10, "off")
    with rep:
        clock.now_s += 100
        rep.advance(5)
    assert out.getvalue() == ""
    rep, out, clock = make(10, "lines")
    with pytest.raises(RuntimeError), rep:
        clock.now_s += 1
        rep.advance(4)
        raise RuntimeError("cut")
    assert out.getvalue() == ""  # the error is the one line on stderr
    rep, out, clock = make(10, "tty")
    with pytest.raises(RuntimeError), rep:
        clock.now_s += 1
        rep.advance(4)
        raise RuntimeError("cut")
    assert "4/10" in out.getvalue() and out.getvalue().endswith("\n") and "100%" not in out.getvalue()


def test_mode_for() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert mode_for(io.StringIO(), False) == "lines"
    assert mode_for(Tty(), False) == "tty"
    assert mode_for(Tty(), True) == "off"


async def test_ticking_redraws_while_a_single_call_runs(autojump_clock: trio.testing.MockClock) -> None:
    out = io.StringIO()
    rep = Reporter(
        Progress("sweeping", None, start_s=trio.current_time()),
        out,
        "lines",
        clock=trio.current_time,
        line_interval_s=1.0,
    )
    async with progress.ticking(rep, interval_s=0.25):
        await trio.sleep(5)  # the call, reporting nothing itself
    lines = out.getvalue().splitlines()
    assert 4 <= len(lines) <= 6, lines
    assert lines[0] == "sweeping: 1.0s" and lines[-1] == "sweeping: 5.0s, done"


async def test_ticking_passes_the_body_error_on_as_itself(autojump_clock: trio.testing.MockClock) -> None:
    out = io.StringIO()
    rep = Reporter(Progress("x", None, start_s=0.0), out, "lines", clock=trio.current_time)
    with pytest.raises(KeyError):  # not an ExceptionGroup around it
        async with progress.ticking(rep):
            await trio.sleep(1)
            raise KeyError("body")
    assert out.getvalue() == ""  # a failure adds no progress line
