"""Prior values of many frames: computed once (local processes or Dask if asked), cached on disk.

:func:`prior_values` returns the prior's energy and forces for every frame, reading what a
previous run computed and computing only the rest. The cache is one append-only JSON-lines file
per (data file, prior spec)::

    <folder>/<data file name>.<prior name>-<hash of the prior spec>.jsonl
    line 1:  {"format": "piwsl-prior-cache", "version": 1, "spec": {...}}   provenance
    then:    {"k": <structure hash>, "e": <energy, eV>, "f": [<forces, eV/Å, flattened>]}

``<folder>`` is ``prior.cache_dir`` when given; else ``.piwsl_prior_cache/`` next to the data file
when that folder is writable (a folder without write permission bits counts as read-only even
for root), else the user cache ``$XDG_CACHE_HOME/piwsl/priors`` (``~/.cache/piwsl/priors``); frames
of packaged (``builtin:``) or in-memory data always go to the user cache. A record's key is the
SHA-256 of numbers, positions, cell and pbc (:func:`piwsl.io.hashing.structure_hash`) and
the file belongs to one prior spec (method, program version, charge, multiplicity, settings), so a
changed structure or another prior never reads a stale value.

Every frame is appended the moment it is done, as one ``write`` under an exclusive ``flock``, so
a killed run loses at most the frames in flight, concurrent runs on the same data may share a file,
and a re-run computes only what is missing. A torn last line (a writer killed mid-write) is
ignored on reading and cut off before the next append. Numbers are written with Python's
shortest round-trip float representation: cached values are bit-identical to computed ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from piwsl.data.frames import Frame
from piwsl.errors import ConfigError, PriorError
from piwsl.io.executors import ExecutorSpec, TaskLost, make_executor
from piwsl.io.hashing import structure_hash
from piwsl.io.journal import JsonLines
from piwsl.priors.base import Prior
from piwsl.terminal import progress_bar

log = logging.getLogger(__name__)

CACHE_FOLDER = ".piwsl_prior_cache"
FORMAT = "piwsl-prior-cache"
VERSION = 1


# --------------------------------------------------------------------------------------------
# where


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/piwsl/priors`` (default ``~/.cache/piwsl/priors``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "piwsl" / "priors"


def writable_dir(path: Path) -> bool:
    """An existing folder we may write to and that is not marked read-only (no ``w`` bits)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    marked = bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return stat.S_ISDIR(mode) and marked and os.access(path, os.W_OK | os.X_OK)


def source_file(source: str) -> Path | None:
    """The data file a frame came from, or None (packaged or in-memory data)."""
    if source.startswith("builtin:") or source.startswith("<"):
        return None
    path = Path(source).expanduser()
    return path if path.is_file() else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "data"


def spec_key(spec: dict[str, Any]) -> str:
    """16 hex characters of the SHA-256 of the canonical JSON of a prior spec."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cache_path(source: str, spec: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    """The cache file of the frames of ``source`` under the prior ``spec`` (module docstring)."""
    data = source_file(source)
    name = data.name if data is not None else _slug(source.strip("<>").replace(":", "_"))
    filename = f"{name}.{_slug(str(spec.get('name', 'prior')))}-{spec_key(spec)}.jsonl"
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / filename
    if data is not None and writable_dir(data.parent):
        return data.parent / CACHE_FOLDER / filename
    return user_cache_dir() / filename


def frame_key(frame: Frame) -> str:
    """Hash of numbers, positions, cell and pbc (the record key)."""
    return structure_hash(frame.numbers, frame.positions, frame.cell, frame.pbc)


# --------------------------------------------------------------------------------------------
# one cache file


class CacheFile:
    """One append-only cache file (see the module docstring) on
    :class:`piwsl.io.journal.JsonLines`: shared by concurrent runs, locked per append."""

    def __init__(self, path: Path, spec: dict[str, Any]) -> None:
        self.path = path
        self.spec = spec
        header = {"format": FORMAT, "version": VERSION, "spec": spec}
        self._file = JsonLines(path, header, hold_lock=False, fsync=False)

    @property
    def n_appended(self) -> int:
        return self._file.n_appended

    def read(self) -> dict[str, tuple[float, np.ndarray]]:
        """Every complete record, by structure hash (forces still flat)."""
        try:
            lines = self._file.lines()
        except OSError as err:
            log.warning("prior cache %s cannot be read (%s); computing afresh", self.path, err)
            return {}
        if not lines:
            return {}
        self._check_header(lines[0])
        records: dict[str, tuple[float, np.ndarray]] = {}
        bad = 0
        for line in lines[1:]:
            try:
                item = json.loads(line)
                records[str(item["k"])] = (float(item["e"]), np.asarray(item["f"], np.float64))
            except (ValueError, KeyError, TypeError):
                bad += 1
        if bad:
            log.warning("prior cache %s: %d unreadable lines skipped", self.path, bad)
        return records

    def _check_header(self, line: bytes) -> None:
        try:
            head = json.loads(line)
        except ValueError:
            head = None
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise PriorError(
                f"prior cache {str(self.path)!r} is not a piwsl prior cache (bad first line); "
                "delete it to start it afresh"
            )
        if head.get("spec") != self.spec:
            raise PriorError(
                f"prior cache {str(self.path)!r} was written for another prior "
                f"({head.get('spec')}); delete it to start it afresh"
            )

    def append(self, key: str, energy: float, forces: np.ndarray) -> None:
        """Add one record: a single ``write`` under an exclusive lock."""
        flat = np.asarray(forces, dtype=np.float64).ravel().tolist()
        self._file.append({"k": key, "e": float(energy), "f": flat})

    def close(self) -> None:
        self._file.close()


# --------------------------------------------------------------------------------------------
# all frames


@dataclass
class PriorValues:
    """A prior's energies (float64 ``[S]``, eV) and forces (``[n_i, 3]``, eV/Å) per frame."""

    energies: np.ndarray
    forces: list[np.ndarray]
    n_cached: int = 0
    n_computed: int = 0
    wall_time_s: float = 0.0
    files: list[Path] = field(default_factory=list)

    def summary(self, prior: Prior) -> str:
        where = ", ".join(sorted({str(p.parent) for p in self.files})) or "not cached"
        return (
            f"prior {prior.describe()}: {len(self.energies)} frames ({self.n_cached} from the "
            f"cache, {self.n_computed} computed in {self.wall_time_s:.1f} s); cache {where}"
        )


def prior_values(
    prior: Prior,
    frames: Sequence[Frame],
    cache_dir: str | Path | None = None,
    workers: int = 1,
    progress: bool = False,
    executor: str = "local",
    scheduler: str | None = None,
) -> PriorValues:
    """The prior's values for ``frames``: read from the cache, the rest computed and appended.

    ``executor="local"`` computes in ``workers`` processes of this machine (one thread each),
    ``"dask"`` on the Dask scheduler at ``scheduler`` or a ``LocalCluster`` of ``workers``
    processes (:mod:`piwsl.io.executors`); ``progress`` shows a progress bar. Identical structures
    are computed once.
    """
    if workers < 1:
        raise ConfigError(f"prior.workers must be ≥ 1, got {workers}")
    run_on = ExecutorSpec(executor, workers, 1, scheduler)
    t0 = time.perf_counter()
    spec = prior.spec()
    files = _open_files(frames, spec, cache_dir)
    keys = [frame_key(f) for f in frames]
    known: dict[str, tuple[float, np.ndarray]] = {}
    for cache in {id(c): c for c in files}.values():
        known.update(cache.read())
    todo: dict[str, int] = {}  # structure hash → first frame with it
    for k, key in enumerate(keys):
        if key not in known and key not in todo:
            todo[key] = k
    todo_keys, todo_index = list(todo), list(todo.values())
    try:
        todo_frames = [frames[k] for k in todo_index]
        with contextlib.closing(_compute(prior, todo_frames, run_on, progress)) as computed:
            for n, energy, forces in computed:
                known[todo_keys[n]] = (energy, forces)
                _append(files[todo_index[n]], todo_keys[n], energy, forces)
    finally:
        for cache in {id(c): c for c in files}.values():
            cache.close()
    energies = np.array([known[key][0] for key in keys], dtype=np.float64)
    forces = [
        known[key][1].reshape(f.n_atoms, 3).copy() for key, f in zip(keys, frames, strict=True)
    ]
    return PriorValues(
        energies=energies,
        forces=forces,
        n_cached=len(frames) - sum(1 for key in keys if key in todo),
        n_computed=len(todo),
        wall_time_s=time.perf_counter() - t0,
        files=sorted({c.path for c in files}),
    )


def _open_files(
    frames: Sequence[Frame], spec: dict[str, Any], cache_dir: str | Path | None
) -> list[CacheFile]:
    """The cache file of each frame (one object per data source)."""
    by_source: dict[str, CacheFile] = {}
    by_path: dict[Path, CacheFile] = {}
    out = []
    for frame in frames:
        if frame.source not in by_source:
            path = cache_path(frame.source, spec, cache_dir)
            by_source[frame.source] = by_path.setdefault(path, CacheFile(path, spec))
        out.append(by_source[frame.source])
    return out


_WARNED: set[Path] = set()


def _append(cache: CacheFile, key: str, energy: float, forces: np.ndarray) -> None:
    try:
        cache.append(key, energy, forces)
    except OSError as err:
        if cache.path not in _WARNED:
            _WARNED.add(cache.path)
            log.warning(
                "prior cache %s cannot be written (%s): values are not kept; set prior.cache_dir",
                cache.path,
                err,
            )


# --------------------------------------------------------------------------------------------
# computing


def _compute(
    prior: Prior, frames: list[Frame], run_on: ExecutorSpec, progress: bool
) -> Iterator[tuple[int, float, np.ndarray]]:
    """(position in ``frames``, energy, forces) as each task (a chunk of frames) is done.

    Cheap priors (~ms a frame) are computed in chunks of up to 16 frames per task, ~8 tasks per
    worker, so that the per-task overhead of a pool or a cluster stays small; one frame a task
    in this process.
    """
    if not frames:
        return
    inline = run_on.kind == "local" and (run_on.workers == 1 or len(frames) == 1)
    size = 1 if inline else max(1, min(16, math.ceil(len(frames) / (8 * run_on.workers))))
    tasks = [(s, (s, frames[s : s + size])) for s in range(0, len(frames), size)]
    bar = progress_bar(len(frames), desc=f"prior {prior.name}", unit="frame", enabled=progress)
    try:
        with make_executor(run_on, n_tasks=len(tasks)) as pool:
            for start, outcome in pool.map_unordered(_prior_chunk, prior, tasks):
                if isinstance(outcome, TaskLost):
                    first = frames[start]
                    raise PriorError(
                        f"prior {prior.name!r}: the task computing file {first.source!r}, frame "
                        f"{first.index} (and the next {size - 1}) was lost: {outcome.message}"
                    )
                bar.update(len(outcome))
                yield from outcome
    finally:
        bar.close()


def _prior_chunk(prior: Prior, start: int, frames: list[Frame]) -> list[tuple[int, float, Any]]:
    """Energies and forces of a chunk of frames (on a worker)."""
    return [(start + n, *prior.checked(f)) for n, f in enumerate(frames)]
