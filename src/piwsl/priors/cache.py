"""Prior values of many frames: computed once (in parallel processes if asked), cached on disk.

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
SHA-256 of numbers, positions, cell and pbc (:func:`piwsl.labelling.runner.structure_hash`) and
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
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from piwsl.data.frames import Frame
from piwsl.errors import ConfigError, PriorError
from piwsl.priors.base import Prior

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
    from piwsl.labelling.runner import structure_hash

    return structure_hash(frame.numbers, frame.positions, frame.cell, frame.pbc)


# --------------------------------------------------------------------------------------------
# one cache file


@contextlib.contextmanager
def _locked(fd: int, exclusive: bool) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _cut_torn_tail(fd: int) -> int:
    """Truncate a last line without newline (a killed writer); return the new size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    keep, block = 0, 65536
    end = size
    while end > 0:
        start = max(0, end - block)
        chunk = os.pread(fd, end - start, start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            keep = start + at + 1
            break
        end = start
    os.ftruncate(fd, keep)
    log.warning("prior cache: cut a torn last line (%d bytes) of an interrupted run", size - keep)
    return keep


class CacheFile:
    """One append-only cache file (see the module docstring)."""

    def __init__(self, path: Path, spec: dict[str, Any]) -> None:
        self.path = path
        self.spec = spec
        self._fd: int | None = None
        self.n_appended = 0

    def header(self) -> bytes:
        return (
            json.dumps({"format": FORMAT, "version": VERSION, "spec": self.spec}) + "\n"
        ).encode()

    def read(self) -> dict[str, tuple[float, np.ndarray]]:
        """Every complete record, by structure hash (forces still flat)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as err:
            log.warning("prior cache %s cannot be read (%s); computing afresh", self.path, err)
            return {}
        lines = raw.split(b"\n")[:-1]  # the part after the last newline is torn (or empty)
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
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        flat = np.asarray(forces, dtype=np.float64).ravel().tolist()
        line = json.dumps({"k": key, "e": float(energy), "f": flat}) + "\n"
        with _locked(self._fd, exclusive=True):
            if _cut_torn_tail(self._fd) == 0:
                os.write(self._fd, self.header())
            os.write(self._fd, line.encode())
        self.n_appended += 1

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


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
) -> PriorValues:
    """The prior's values for ``frames``: read from the cache, the rest computed and appended.

    ``workers > 1`` computes in that many processes (one thread each); ``progress`` shows a progress
    bar. Identical structures are computed once.
    """
    if workers < 1:
        raise ConfigError(f"prior.workers must be ≥ 1, got {workers}")
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
        with contextlib.closing(_compute(prior, todo_frames, workers, progress)) as computed:
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
    prior: Prior, frames: list[Frame], workers: int, progress: bool
) -> Iterator[tuple[int, float, np.ndarray]]:
    """(position in ``frames``, energy, forces) as each frame is done."""
    if not frames:
        return
    from piwsl.terminal import progress_bar

    bar = progress_bar(len(frames), desc=f"prior {prior.name}", unit="frame", enabled=progress)
    try:
        if workers == 1 or len(frames) == 1:
            for k, frame in enumerate(frames):
                energy, forces = prior.checked(frame)
                bar.update(1)
                yield k, energy, forces
        else:
            for k, energy, forces in _pool(prior, frames, workers):
                bar.update(1)
                yield k, energy, forces
    finally:
        bar.close()


_WORKER_PRIOR: Prior | None = None


def _init_worker(prior: Prior) -> None:
    global _WORKER_PRIOR
    from piwsl.labelling.runner import _die_with_parent, limit_threads

    _die_with_parent()
    limit_threads(1)
    _WORKER_PRIOR = prior


def _worker_chunk(start: int, frames: list[Frame]) -> list[tuple[int, float, np.ndarray]]:
    assert _WORKER_PRIOR is not None, "worker not initialised"
    return [(start + n, *_WORKER_PRIOR.checked(f)) for n, f in enumerate(frames)]


def _pool(
    prior: Prior, frames: list[Frame], workers: int
) -> Iterator[tuple[int, float, np.ndarray]]:
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    size = max(1, min(16, math.ceil(len(frames) / (8 * workers))))
    chunks = [(s, frames[s : s + size]) for s in range(0, len(frames), size)]
    chunks.reverse()
    executor = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context(method),
        initializer=_init_worker,
        initargs=(prior,),
    )
    pending: set[Future] = set()
    try:
        while chunks or pending:
            while chunks and len(pending) < 2 * workers:
                pending.add(executor.submit(_worker_chunk, *chunks.pop()))
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield from future.result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
