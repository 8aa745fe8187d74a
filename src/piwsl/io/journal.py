"""Append-only JSON-lines journals: a header line, then one record per line.

The one implementation behind the labelling journal (:class:`piwsl.labelling.runner.Journal`)
and the prior cache (:class:`piwsl.priors.cache.CacheFile`). Guarantees:

- every record is one ``write`` of one complete line (``O_APPEND``), optionally fsynced, so a
  killed writer leaves at most one torn last line;
- readers see complete lines only; a torn last line is cut off before the next append (and at
  open for a journal that holds its lock), so the file never keeps a torn line in its middle;
- ``hold_lock=True``: an exclusive ``flock`` from open to close, a second writer is refused
  (one labelling run per output); ``hold_lock=False``: each append takes the lock for its own
  write only, so concurrent runs may share the file (the prior cache);
- the header is written when the file is empty (a new file, or one whose only line was torn).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from piwsl.errors import ConfigError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def locked(fd: int) -> Iterator[None]:
    """An exclusive ``flock`` on ``fd`` for the duration of the block (no-op off POSIX)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def cut_torn_tail(fd: int, path: Path) -> int:
    """Truncate a last line without newline (a killed writer); return the new size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    keep, block, end = 0, 65536, size
    while end > 0:
        start = max(0, end - block)
        at = os.pread(fd, end - start, start).rfind(b"\n")
        if at >= 0:
            keep = start + at + 1
            break
        end = start
    os.ftruncate(fd, keep)
    log.warning("%s: cut a torn last line (%d bytes) of an interrupted run", path, size - keep)
    return keep


def complete_lines(path: Path) -> list[bytes]:
    """The complete lines of ``path`` (header first); a torn last line is left out."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    return raw.split(b"\n")[:-1]


class JsonLines:
    """One append-only JSON-lines file (see the module docstring).

    ``owner`` names the program in the error when another run holds the lock.
    """

    def __init__(
        self,
        path: str | Path,
        header: dict[str, Any],
        *,
        hold_lock: bool = False,
        fsync: bool = True,
        owner: str = "piwsl",
    ) -> None:
        self.path = Path(path)
        self.header = header
        self.hold_lock = hold_lock
        self.fsync = fsync
        self.owner = owner
        self._fd: int | None = None
        self.n_appended = 0
        if hold_lock:
            self.open()

    def open(self) -> int:
        """Open (and create) the file; with ``hold_lock`` take the run-long lock or fail."""
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            if self.hold_lock:
                _lock_or_refuse(fd, self.path, self.owner)
            self._fd = fd
        return self._fd

    def cut_torn_tail(self) -> int:
        """Cut a torn last line now; the file's new size."""
        return cut_torn_tail(self.open(), self.path)

    def write_header_if_empty(self) -> None:
        fd = self.open()
        with contextlib.nullcontext() if self.hold_lock else locked(fd):
            if cut_torn_tail(fd, self.path) == 0:
                self._write(fd, self._line(self.header))

    def append(self, record: dict[str, Any]) -> None:
        """Add one record as a single write (after the header when the file is empty)."""
        line = self._line(record)
        fd = self.open()
        with contextlib.nullcontext() if self.hold_lock else locked(fd):
            if cut_torn_tail(fd, self.path) == 0:
                os.write(fd, self._line(self.header))
            self._write(fd, line)
        self.n_appended += 1

    def lines(self) -> list[bytes]:
        """Complete lines of the file, header first (a torn last line left out)."""
        return complete_lines(self.path)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)  # also releases a held flock
            self._fd = None

    @staticmethod
    def _line(item: dict[str, Any]) -> bytes:
        return (json.dumps(item) + "\n").encode("utf-8")

    def _write(self, fd: int, data: bytes) -> None:
        os.write(fd, data)
        if self.fsync:
            os.fsync(fd)


def _lock_or_refuse(fd: int, path: Path, owner: str) -> None:
    """Take an exclusive non-blocking ``flock`` on ``fd``, or close it and refuse."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        raise ConfigError(
            f"journal {str(path)!r} is in use by another running {owner}; "
            "wait for it or write to another output"
        ) from err
