"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Everything piwsl writes for later (checkpoints, summaries, predictions, labelled data, reports,
benchmark results) goes through :func:`atomic_path`: the content is written to a temporary file
in the target's folder, flushed to disk, and renamed over the target (``os.replace`` is atomic on
one file system). A write that fails or is killed leaves the target as it was and no temporary
file behind (a kill -9 may leave one ``.NAME.*.tmp``, which no reader ever opens).

    with atomic_path("frames.extxyz") as tmp:  # any writer that takes a path
        ase.io.write(tmp, frames, format="extxyz")
    write_json("summary.json", {"steps": 10})
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_json", "write_text"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on leaving the block without an error it is
    fsynced and renamed to ``path`` (its folder created if needed), else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    # mkstemp makes the file private (0600); keep the target's mode, else the usual 0644
    os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: Any, indent: int | None = 2, **dumps: Any) -> Path:
    """Write ``data`` as JSON (ending in a newline) to ``path`` atomically; ``dumps`` go to
    :func:`json.dumps` (``default=str``, ``sort_keys=True``, …); returns the path."""
    return write_text(path, json.dumps(data, indent=indent, **dumps) + "\n")
