"""The labelling runner: label structures with a backend in parallel, resumably, frame by frame.

Input: any file :func:`piwsl.data.read_frames` reads (extxyz, ASE formats, ASE db, rMD17 npz,
``builtin:…``). Existing labels in the input are *not* carried over (a stale ``energy`` would
otherwise be read back as a label of a frame whose reference calculation failed).

Resumability: every finished frame — success or failure — is appended as one JSON line to a
journal next to the output (``OUTPUT.journal.jsonl``), flushed and fsynced before the next one is
accepted. Each line holds the frame index, a SHA-256 hash of numbers + positions + cell + pbc,
the labels and the provenance. The first line records the backend and its options. A run that is
killed restarts from the journal: frames already journaled are never recomputed (failed ones only
with ``retry_failed``), a torn last line is dropped, and a frame whose hash differs from the input
(the input file changed) or a different backend is an error rather than silently mixed data.

Output (written atomically once every frame has a journal entry): extxyz with, per frame,
``REF_energy`` (eV) in ``atoms.info``, ``REF_forces`` (eV/Å) in ``atoms.arrays`` and — for periodic
cells, where the backend gives it — ``REF_stress`` (3×3, eV/Å³, ASE's sign) in ``atoms.info`` for
successful frames, and provenance keys ``REF_method``, ``REF_basis``, ``REF_program``,
``REF_program_version``, ``REF_wall_time_s``, ``REF_status`` ("ok" / "failed"), ``REF_error``
(failed frames), ``REF_frame`` (input index) plus backend-specific details. Failed frames are kept,
with ``REF_status="failed"`` and no ``REF_`` labels, and listed in ``OUTPUT.summary.json``.

Parallelism: ``n_workers`` processes (``concurrent.futures.ProcessPoolExecutor``); each worker is
pinned to ``threads_per_worker`` BLAS/OpenMP threads (default 1) and dies with its parent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from piwsl.errors import ConfigError, DataError
from piwsl.labelling.backends import Backend, make_backend

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


# ----------------------------------------------------------------------------------------------
# frames and hashes
# ----------------------------------------------------------------------------------------------


def structure_hash(numbers, positions, cell=None, pbc=None) -> str:
    """SHA-256 (hex, 16 characters) of atomic numbers, positions (Å), cell and pbc."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(numbers, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(positions, dtype=np.float64).tobytes())
    h.update(
        np.ascontiguousarray(np.zeros((3, 3)) if cell is None else cell, dtype=np.float64).tobytes()
    )
    h.update(np.ascontiguousarray(np.zeros(3) if pbc is None else pbc, dtype=bool).tobytes())
    return h.hexdigest()[:16]


def atoms_hash(atoms) -> str:
    return structure_hash(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)


def load_structures(source, index: str | int | slice = ":") -> list:
    """Structures to label as bare ``ase.Atoms`` (input labels dropped), from a path or a list."""
    from ase import Atoms

    if isinstance(source, (str, Path)):
        from piwsl.data import read_frames

        frames = select(read_frames(source), index)
        return [
            Atoms(numbers=f.numbers, positions=f.positions, cell=f.cell, pbc=f.pbc) for f in frames
        ]
    images = list(source)
    out = []
    for atoms in images:
        if not isinstance(atoms, Atoms):
            atoms = atoms.to_atoms()
        out.append(
            Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        )
    return out


def select(items: list, index: str | int | slice = ":") -> list:
    """Items picked by an ASE-style index: ``3``, ``"-1"``, ``"10:20"``, ``"::5"``, a slice."""
    if isinstance(index, int):
        return [items[index]]
    if isinstance(index, slice):
        return items[index]
    text = str(index).strip()
    try:
        if ":" not in text:
            return [items[int(text)]]
        parts = [int(p) if p.strip() else None for p in text.split(":")]
    except (ValueError, IndexError) as err:
        raise ConfigError(f"bad frame index {index!r} for {len(items)} frames") from err
    if len(parts) > 3:
        raise ConfigError(f"bad frame index {index!r}")
    return items[slice(*parts)]


# ----------------------------------------------------------------------------------------------
# worker side
# ----------------------------------------------------------------------------------------------

_WORKER_BACKEND: Backend | None = None


def limit_threads(n_threads: int = 1) -> None:
    """Pin BLAS/OpenMP to ``n_threads`` in this process (env for later loads, PySCF if loaded)."""
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(n_threads)
    if "pyscf" in sys.modules:
        with contextlib.suppress(AttributeError, OSError):
            sys.modules["pyscf"].lib.num_threads(n_threads)
    if "torch" in sys.modules:
        with contextlib.suppress(RuntimeError):
            sys.modules["torch"].set_num_threads(n_threads)


def _die_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL this worker when the parent dies (a killed run)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _init_worker(backend: Backend, n_threads: int) -> None:
    global _WORKER_BACKEND
    _die_with_parent()
    limit_threads(n_threads)
    _WORKER_BACKEND = backend


def compute_frame(backend: Backend, index: int, atoms) -> dict[str, Any]:
    """Label one frame; any exception becomes a ``status="failed"`` record (never raised)."""
    key = atoms_hash(atoms)
    atoms = atoms.copy()
    atoms.info["label_index"] = index
    t0 = time.perf_counter()
    record: dict[str, Any] = {"index": index, "hash": key}
    try:
        out = backend.compute(atoms)
        energy = float(out["energy"])
        if not math.isfinite(energy):
            raise FloatingPointError(f"non-finite energy {energy}")
        forces = out.get("forces")
        if forces is not None:
            forces = np.asarray(forces, dtype=np.float64)
            if forces.shape != (len(atoms), 3):
                raise ValueError(f"forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
            if not np.all(np.isfinite(forces)):
                raise FloatingPointError("non-finite forces")
            forces = forces.tolist()
        stress = out.get("stress")
        if stress is not None:
            stress = np.asarray(stress, dtype=np.float64).reshape(3, 3)
            if not np.all(np.isfinite(stress)):
                raise FloatingPointError("non-finite stress")
            record["stress"] = stress.tolist()
        record.update(
            status="ok",
            energy=energy,
            forces=forces,
            provenance={**backend.base_provenance(), **dict(out.get("provenance", {}))},
        )
    except Exception as err:  # every backend failure is recorded per frame, never dropped
        message = f"{type(err).__name__}: {err}".replace("\n", " ").strip()
        record.update(status="failed", error=message[:2000], provenance=backend.base_provenance())
    record["wall_time_s"] = time.perf_counter() - t0
    return record


def _worker_compute(index: int, atoms) -> dict[str, Any]:
    assert _WORKER_BACKEND is not None, "worker not initialised"
    return compute_frame(_WORKER_BACKEND, index, atoms)


# ----------------------------------------------------------------------------------------------
# journal
# ----------------------------------------------------------------------------------------------


def journal_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".journal.jsonl")


class Journal:
    """Append-only JSONL record of finished frames (fsynced line by line)."""

    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.header = header
        self.records: dict[int, dict[str, Any]] = {}
        self.n_torn = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._lock()
        try:
            if self.path.stat().st_size > 0:
                self._load()
        except Exception:
            self._handle.close()
            raise
        if self.path.stat().st_size == 0:  # a new journal (or one with only a torn header)
            self._handle.write(json.dumps({"journal": header}) + "\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def _lock(self) -> None:
        """Refuse a second concurrent run on the same journal (POSIX advisory lock)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            self._handle.close()
            raise ConfigError(
                f"journal {str(self.path)!r} is in use by another running `piwsl label`; "
                "wait for it or write to another output"
            ) from err

    def _load(self) -> None:
        raw = self.path.read_bytes()
        if not raw.endswith(b"\n"):  # torn last line of a killed run: cut it off
            keep = raw.rfind(b"\n") + 1
            log.warning(
                "journal %s: dropping a torn last line (%d bytes)", self.path, len(raw) - keep
            )
            self.n_torn += 1
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)
            raw = raw[:keep]
        lines = raw.decode("utf-8").splitlines()
        if not lines:  # only a torn header: start the journal afresh
            return
        try:
            header = json.loads(lines[0])["journal"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(
                "first line is not a piwsl labelling journal header",
                file=str(self.path),
                hint="delete the journal or choose another output",
            ) from err
        for key in ("backend", "options", "n_frames"):
            if header.get(key) != self.header.get(key):
                raise ConfigError(
                    f"journal {str(self.path)!r} was written with {key}={header.get(key)!r}, "
                    f"this run has {key}={self.header.get(key)!r}; delete the journal to start "
                    "over, or write to another output file"
                )
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
                index = int(record["index"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise DataError(
                    f"line {number} is not a valid journal record", file=str(self.path)
                ) from err
            self.records[index] = record  # a later line (a retry) supersedes an earlier one

    def append(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.records[int(record["index"])] = record

    def close(self) -> None:
        self._handle.close()


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------


@dataclass
class LabelSummary:
    """What a labelling run did (wall times in s)."""

    output: str
    journal: str
    backend: str
    n_frames: int
    n_ok: int = 0
    n_failed: int = 0
    n_computed_now: int = 0
    n_from_journal: int = 0
    wall_time_s: float = 0.0
    compute_time_s: float = 0.0  # sum of per-frame wall times of all frames in the output
    failed: list[dict[str, Any]] = field(default_factory=list)  # [{"index", "error"}]

    def text(self) -> str:
        lines = [
            f"labelled {self.n_frames} frames with {self.backend}: {self.n_ok} ok, "
            f"{self.n_failed} failed ({self.n_computed_now} computed now, "
            f"{self.n_from_journal} from the journal) in {self.wall_time_s:.1f} s",
            f"output: {self.output}",
        ]
        for item in self.failed[:20]:
            lines.append(f"  frame {item['index']} failed: {item['error']}")
        if len(self.failed) > 20:
            lines.append(f"  … and {len(self.failed) - 20} more failed frames (see summary JSON)")
        return "\n".join(lines)


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from piwsl.terminal import progress_bar

    return progress_bar(total, desc=desc, unit="frame", enabled=enabled, initial=initial)


def label_structures(
    structures,
    output: str | Path,
    backend: str | Backend = "gfn2-xtb",
    options: dict[str, Any] | None = None,
    n_workers: int = 1,
    threads_per_worker: int = 1,
    retry_failed: bool = False,
    progress: bool = True,
    index: str | int | slice = ":",
    max_frames: int | None = None,
) -> LabelSummary:
    """Label ``structures`` (a file or a list of Atoms/Frames) and write ``output`` (extxyz).

    ``backend`` is a name for :func:`~piwsl.labelling.backends.make_backend` (with ``options``)
    or a ready :class:`Backend`. ``max_frames`` stops after that many newly computed frames
    (the journal keeps them; the output is written only when all frames are done).
    """
    t_start = time.perf_counter()
    if n_workers < 1:
        raise ConfigError(f"n_workers must be ≥ 1, got {n_workers}")
    if isinstance(backend, str):
        backend = make_backend(backend, **(options or {}))
    images = load_structures(structures, index=index)
    hashes = [atoms_hash(a) for a in images]
    output = Path(output)
    header = {**backend.describe(), "n_frames": len(images), "version": JOURNAL_VERSION}
    journal = Journal(journal_path(output), header)
    summary = LabelSummary(str(output), str(journal.path), backend.name, len(images))
    try:
        for idx, record in journal.records.items():
            if idx >= len(images) or record.get("hash") != hashes[idx]:
                raise DataError(
                    f"journal entry for frame {idx} does not match the input structure "
                    "(different positions/numbers): the input changed since the journal was "
                    "written",
                    file=str(journal.path),
                    frame=idx,
                    hint="delete the journal to start over, or write to another output",
                )
        todo = [
            i
            for i in range(len(images))
            if i not in journal.records
            or (retry_failed and journal.records[i].get("status") != "ok")
        ]
        summary.n_from_journal = len(images) - len(todo)
        if max_frames is not None:
            todo = todo[: max(0, int(max_frames))]
        bar = _progress(len(images), summary.n_from_journal, progress, backend.name)
        try:
            if n_workers == 1 or len(todo) <= 1:
                limit_threads(threads_per_worker)
                for i in todo:
                    journal.append(compute_frame(backend, i, images[i]))
                    summary.n_computed_now += 1
                    bar.update(1)
            else:
                _run_pool(
                    backend, images, todo, journal, n_workers, threads_per_worker, bar, summary
                )
        finally:
            bar.close()
    finally:
        journal.close()
    missing = [i for i in range(len(images)) if i not in journal.records]
    if missing:
        log.info("%d frames still to label; run again to continue", len(missing))
    else:
        write_output(images, journal.records, output, summary)
    summary.wall_time_s = time.perf_counter() - t_start
    if not missing:
        _write_summary(output, summary)
    return summary


def _run_pool(backend, images, todo, journal, n_workers, threads, bar, summary) -> None:
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.get_context(method)
    pending: set[Future] = set()
    queue = list(reversed(todo))
    executor = ProcessPoolExecutor(
        max_workers=n_workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(backend, threads),
    )
    try:
        # keep at most 2 tasks per worker in flight so a stop loses little work
        while queue or pending:
            while queue and len(pending) < 2 * n_workers:
                i = queue.pop()
                pending.add(executor.submit(_worker_compute, i, images[i]))
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                journal.append(future.result())
                summary.n_computed_now += 1
                bar.update(1)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _flat(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return json.dumps(value)


def write_output(
    images: list, records: dict[int, dict], output: Path, summary: LabelSummary
) -> None:
    """Write the labelled extxyz (atomically) from the journal records, in input order."""
    import ase.io

    out_images = []
    summary.n_ok = summary.n_failed = 0
    summary.failed = []
    summary.compute_time_s = 0.0
    for i, atoms in enumerate(images):
        record = records[i]
        atoms = atoms.copy()
        atoms.calc = None
        info = atoms.info
        info.clear()
        prov = record.get("provenance", {})
        for key, value in prov.items():
            info[f"REF_{key}"] = _flat(value)
        info["REF_status"] = record["status"]
        info["REF_wall_time_s"] = float(record.get("wall_time_s", float("nan")))
        info["REF_frame"] = i
        summary.compute_time_s += info["REF_wall_time_s"]
        if record["status"] == "ok":
            summary.n_ok += 1
            info["REF_energy"] = float(record["energy"])
            if record.get("forces") is not None:
                atoms.arrays["REF_forces"] = np.asarray(record["forces"], dtype=np.float64)
            if record.get("stress") is not None:
                info["REF_stress"] = np.asarray(record["stress"], dtype=np.float64)
        else:
            summary.n_failed += 1
            info["REF_error"] = str(record.get("error", "unknown error"))
            summary.failed.append({"index": i, "error": info["REF_error"]})
        out_images.append(atoms)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    ase.io.write(str(tmp), out_images, format="extxyz")
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, output)


def _write_summary(output: Path, summary: LabelSummary) -> None:
    path = output.with_name(output.name + ".summary.json")
    path.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")


def label_file(input_path: str | Path, output: str | Path, **kwargs: Any) -> LabelSummary:
    """Shorthand of :func:`label_structures` for a file."""
    return label_structures(input_path, output, **kwargs)


def iter_records(journal: str | Path) -> Iterable[dict[str, Any]]:
    """The frame records of a journal file (header skipped), in the order they were written."""
    with open(journal, encoding="utf-8") as handle:
        next(handle, None)
        for line in handle:
            if line.endswith("\n"):
                yield json.loads(line)
