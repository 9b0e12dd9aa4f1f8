"""Progress of a long CLI operation: how far, how fast, how long still; drawn on stderr.

:class:`Progress` is the pure model: ``done`` of ``total`` (None: not known), the rate smoothed
over the last :data:`RATE_WINDOW_S` seconds of samples, and the ETA from that rate.  It takes
the time as an argument, so tests drive it with a fake clock.  The ``*_line`` functions render
it as text; :class:`Reporter` puts that text on a stream in one of three modes:

- ``tty``: one line rewritten in place (``\\r``), at most every :data:`TTY_REDRAW_S`, fitted
  to the terminal's width; an operation with no total shows a spinner, the amount and the
  elapsed time instead of a bar (no invented percentages);
- ``lines``: stderr is a file or a pipe (a log, CI): one plain line at most every
  :data:`LINE_INTERVAL_S`, and one when the operation ends (not when it fails: then its
  error is the one line that says so);
- ``off``: ``--json``, where stdout carries the one result and stderr stays quiet.

Progress always goes to stderr so that stdout stays parseable.  :func:`ticking` is the one
trio adapter: it redraws while a single long call with no progress report of its own runs.
"""

from __future__ import annotations

import collections
import contextlib
import math
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Literal, TextIO

import trio

from dfs.cli.output import human

Mode = Literal["tty", "lines", "off"]

#: The rate is measured over the samples of the last this many seconds: long enough to smooth
#: out batch-sized steps, short enough to follow a real change of speed.
RATE_WINDOW_S = 10.0
#: Samples kept for the rate, whatever the update frequency (the oldest are dropped first).
MAX_SAMPLES = 256
#: A terminal line is redrawn at most this often (a redraw per 256-chunk batch would flicker).
TTY_REDRAW_S = 0.1
#: Without a terminal, one progress line at most this often (a log should not fill up).
LINE_INTERVAL_S = 10.0
#: How often :func:`ticking` redraws (a spinner's frame rate).
TICK_S = 0.2
SPINNER = "|/-\\"
#: The bar is never narrower than this, however narrow the terminal (the numbers then wrap).
MIN_BAR_CHARS = 10


class Progress:
    """``done`` of ``total`` units since ``start_s``; the rate over the recent samples."""

    def __init__(
        self,
        label: str,
        total: float | None,
        *,
        unit: str = "",
        start_s: float,
        window_s: float = RATE_WINDOW_S,
    ) -> None:
        assert total is None or total >= 0, total
        assert window_s > 0, window_s
        self.label = label
        self.total = total
        self.unit = unit  # "B": amounts print as KiB/MiB/...; else a plain count with this word
        self.start_s = start_s
        self.window_s = window_s
        self.done = 0.0
        self.now_s = start_s
        self.finished = False
        self._samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=MAX_SAMPLES)
        self._samples.append((start_s, 0.0))

    def update(self, done: float, now_s: float) -> None:
        """``done`` units so far (absolute) at ``now_s``.  A total that turns out too small
        grows with it (repair work found while it runs), so the fraction never passes 1."""
        assert done >= 0, done
        now_s = max(now_s, self.now_s)  # a clock never runs backwards here
        self.done = done
        self.now_s = now_s
        if self.total is not None and done > self.total:
            self.total = done
        self._samples.append((now_s, done))
        while len(self._samples) > 2 and now_s - self._samples[1][0] >= self.window_s:
            self._samples.popleft()  # keep one sample at or beyond the window's start

    def advance(self, amount: float, now_s: float) -> None:
        self.update(self.done + amount, now_s)

    def set_total(self, total: float | None) -> None:
        assert total is None or total >= 0, total
        self.total = total if total is None else max(total, self.done)

    def finish(self, now_s: float) -> None:
        """The operation ended: with a known total, all of it is done."""
        self.update(self.total if self.total is not None else self.done, now_s)
        self.finished = True

    def elapsed_s(self) -> float:
        return self.now_s - self.start_s

    def rate_per_s(self) -> float | None:
        """Units per second over the window; None until some time has passed."""
        t0, d0 = self._samples[0]
        t1, d1 = self._samples[-1]
        if t1 - t0 <= 0:
            return None
        return max(0.0, (d1 - d0) / (t1 - t0))

    def fraction(self) -> float | None:
        if self.total is None:
            return None
        if self.total == 0:
            return 1.0
        return min(1.0, self.done / self.total)

    def eta_s(self) -> float | None:
        """Seconds still to go at the current rate; None without a total or while nothing moves."""
        if self.total is None:
            return None
        left = self.total - self.done
        if left <= 0:
            return 0.0
        rate = self.rate_per_s()
        if not rate:
            return None
        return left / rate


# -- text ------------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``0.4s``, ``17s``, ``2m05s``, ``1h02m``: coarser as it grows (an ETA is never that precise)."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    s = math.ceil(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_amount(value: float, unit: str) -> str:
    if unit == "B":
        return human(value)
    return f"{value:.0f}" + (f" {unit}" if unit else "")


def format_rate(rate: float | None, unit: str) -> str:
    if rate is None:
        return "-/s"
    if unit == "B":
        return f"{human(rate)}/s"
    shown = f"{rate:.1f}" if rate < 10 else f"{rate:.0f}"
    return f"{shown} {unit}/s" if unit else f"{shown}/s"


def _numbers(p: Progress) -> str:
    """``1.0 MiB/4.0 MiB  25%  2.0 MiB/s  ETA 2.0s``; without a total ``1.0 MiB  2.0 MiB/s  3.0s``,
    or just the elapsed time while nothing is counted (a single call that reports nothing)."""
    rate = format_rate(p.rate_per_s(), p.unit)
    if p.total is None:
        if p.done == 0:
            return format_duration(p.elapsed_s())
        return f"{format_amount(p.done, p.unit)}  {rate}  {format_duration(p.elapsed_s())}"
    fraction = p.fraction() or 0.0
    if p.finished:
        when = f"in {format_duration(p.elapsed_s())}"
    else:
        eta = p.eta_s()
        when = "ETA " + (format_duration(eta) if eta is not None else "-")
    if p.unit == "B":
        amount = f"{human(p.done)}/{human(p.total)}"
    else:
        amount = f"{p.done:.0f}/{format_amount(p.total, p.unit)}"
    return f"{amount} {fraction * 100:3.0f}%  {rate}  {when}"


def bar_line(p: Progress, width: int, frame: int = 0) -> str:
    """One terminal line of at most ``width - 1`` characters (the last column would wrap on
    some terminals): ``label [#####.....] numbers``, or ``label | numbers`` without a total."""
    numbers = _numbers(p)
    if p.total is None:
        spin = "done" if p.finished else SPINNER[frame % len(SPINNER)]
        line = f"{p.label} {spin} {numbers}"
    else:
        room = width - 1 - len(p.label) - len(numbers) - 4  # "label [" + "] " + numbers
        bar_chars = max(MIN_BAR_CHARS, room)
        filled = int(bar_chars * (p.fraction() or 0.0))
        line = f"{p.label} [{'#' * filled}{'.' * (bar_chars - filled)}] {numbers}"
    return line[: max(1, width - 1)]


def plain_line(p: Progress) -> str:
    """One line for a log: ``label: numbers`` (``done`` appended at the end)."""
    return f"{p.label}: {_numbers(p)}" + (", done" if p.finished else "")


# -- drawing ---------------------------------------------------------------------------------------


def mode_for(stream: TextIO, as_json: bool) -> Mode:
    """``off`` with --json, ``tty`` when ``stream`` is a terminal, else ``lines``."""
    if as_json:
        return "off"
    try:
        return "tty" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # a closed or odd stream: draw nothing
        return "off"


def terminal_width() -> int:
    return shutil.get_terminal_size().columns


class Reporter:
    """Draws one :class:`Progress` on ``stream`` in ``mode``, throttled by ``clock``."""

    def __init__(
        self,
        progress: Progress,
        stream: TextIO,
        mode: Mode,
        *,
        clock: Callable[[], float] = time.monotonic,
        width: Callable[[], int] = terminal_width,
        line_interval_s: float = LINE_INTERVAL_S,
        redraw_s: float = TTY_REDRAW_S,
    ) -> None:
        self.progress = progress
        self.stream = stream
        self.mode: Mode = mode
        self.clock = clock
        self.width = width
        self.line_interval_s = line_interval_s
        self.redraw_s = redraw_s
        self._drawn_s: float | None = None  # when the last line or redraw went out
        self._frame = 0
        self._closed = False

    def update(self, done: float) -> None:
        self.progress.update(done, self.clock())
        self._maybe_draw()

    def advance(self, amount: float) -> None:
        self.progress.advance(amount, self.clock())
        self._maybe_draw()

    def set_total(self, total: float | None) -> None:
        self.progress.set_total(total)

    def tick(self) -> None:
        """Time passes with nothing new: the spinner and elapsed time move on."""
        self.progress.update(self.progress.done, self.clock())
        self._maybe_draw()

    def _maybe_draw(self) -> None:
        if self.mode == "off" or self._closed:
            return
        now = self.progress.now_s
        last = self._drawn_s
        if self.mode == "tty":
            if last is None or now - last >= self.redraw_s:
                self._draw_tty()
        elif now - (self.progress.start_s if last is None else last) >= self.line_interval_s:
            # The first line only after an interval too: a short operation prints just its end.
            self._write(plain_line(self.progress) + "\n")

    def _draw_tty(self) -> None:
        self._frame += 1
        width = max(MIN_BAR_CHARS + 2, self.width())
        line = bar_line(self.progress, width, self._frame)
        # Pad to the full width: a shorter line must cover the previous one's tail.
        self._write("\r" + line.ljust(width - 1))

    def _write(self, text: str) -> None:
        self._drawn_s = self.progress.now_s
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.mode = "off"  # stderr went away (a closed pipe): progress is not worth failing for

    def note(self, text: str) -> None:
        """A message while progress is drawn: on a line of its own, the bar redrawn below it."""
        if self.mode == "tty" and self._drawn_s is not None and not self._closed:
            self._write("\r" + text.ljust(max(1, self.width() - 1)) + "\n")
            self._draw_tty()
        else:
            self._write(text + "\n")

    def close(self, *, ok: bool = True) -> None:
        """Draw the end: the full bar or a last line, ``done``.  A failed operation (not
        ``ok``) adds no line of its own: its error is the one line that says what happened
        (on a terminal, the bar stays as it stood and the error starts below it)."""
        if self._closed:
            return
        if ok:
            self.progress.finish(self.clock())
        else:
            self.progress.update(self.progress.done, self.clock())
        if self.mode == "tty" and (ok or self._drawn_s is not None):
            self._draw_tty()
            self._write("\n")
        elif self.mode == "lines" and ok:
            self._write(plain_line(self.progress) + "\n")
        self._closed = True

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(ok=exc_type is None)


def reporter(
    label: str, total: float | None, *, unit: str = "", as_json: bool = False, stream: TextIO | None = None
) -> Reporter:
    """A :class:`Reporter` on stderr (or ``stream``) in the mode its kind and --json call for."""
    out = sys.stderr if stream is None else stream
    return Reporter(Progress(label, total, unit=unit, start_s=time.monotonic()), out, mode_for(out, as_json))


@contextlib.asynccontextmanager
async def ticking(rep: Reporter, interval_s: float = TICK_S) -> AsyncIterator[Reporter]:
    """Redraw ``rep`` every ``interval_s`` while the body runs (a single call with no progress
    of its own: the spinner and elapsed time show it is alive); closes it when the body ends."""

    async def tick() -> None:
        while True:
            await trio.sleep(interval_s)
            rep.tick()

    with rep:
        try:
            async with trio.open_nursery() as nursery:
                if rep.mode != "off":
                    nursery.start_soon(tick)
                yield rep
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The ticker never fails: the one error is the body's, passed on as it was raised
            # (a CliError must reach click as itself, not inside a group).
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
