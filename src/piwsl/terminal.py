"""Output to a terminal or to a log file: the console and the progress bars of every command.

On a terminal: rich's console and tqdm's bars. Elsewhere (output redirected to a file, a batch
job's log, a pipe) a carriage-return bar would write thousands of overwritten lines into the
log, and a console wrapped at 80 columns would break paths and numbers in two. There:

- :func:`make_console` never wraps a line (``soft_wrap``), so every value stays on one line;
- :func:`progress_bar` prints a plain line (done/total, %, rate, elapsed, estimate of the time
  left) at most every :data:`PLAIN_INTERVAL_S` seconds and once at the end.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from rich.console import Console

#: Seconds between two plain progress lines when the output is not a terminal.
PLAIN_INTERVAL_S = 30.0


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where progress goes) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def make_console(stderr: bool = False) -> Console:
    """A rich console; off a terminal its lines are never wrapped inside a value."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.soft_wrap = True
    return console


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class PlainProgress:
    """tqdm's ``update`` / ``set_postfix_str`` / ``close`` as occasional plain lines."""

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        interval_s: float = PLAIN_INTERVAL_S,
        stream: IO[str] | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start_n = initial
        self.interval_s = interval_s
        self.stream = stream
        self.postfix = ""
        self.start = self.last = time.perf_counter()
        self.closed = False

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.interval_s:
            self.last = now
            self._write()

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def line(self) -> str:
        """The current state in one line, units included."""
        elapsed = time.perf_counter() - self.start
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: " if self.desc else ""]
        if self.total:
            parts.append(f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f} %)")
        else:
            parts.append(f"{self.n} {self.unit}")
        parts.append(f", {rate:.3g} {self.unit}/s, {_duration(elapsed)} elapsed")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f", ~{_duration((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(f" [{self.postfix}]")
        return "".join(parts)

    def _write(self) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        print(self.line(), file=stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.start_n:
                self._write()


class NullProgress(PlainProgress):
    """A progress bar that shows nothing (``enabled=False``)."""

    def __init__(self) -> None:
        super().__init__(None)

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


def progress_bar(
    total: int | None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    initial: int = 0,
    leave: bool = True,
):
    """A tqdm bar on a terminal, a :class:`PlainProgress` elsewhere, a :class:`NullProgress`
    when not ``enabled``; all have ``update``, ``set_postfix_str`` and ``close``."""
    if not enabled:
        return NullProgress()
    if not is_terminal():
        return PlainProgress(total, desc=desc, unit=unit, initial=initial)
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        smoothing=0.1,
        dynamic_ncols=True,
        mininterval=0.5,
        leave=leave,
    )
