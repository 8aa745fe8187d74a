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
``REF_program_version``, ``REF_wall_time_s`` and ``REF_cpu_time_s`` (the frame's calculation
time and the CPU time of its worker process, summed over its tasks: less CPU than wall time means
a worker waited for a core), ``REF_worker`` (``host:pid`` of the worker(s) that computed it), ``REF_status`` ("ok" /
"failed"), ``REF_error`` (failed frames), ``REF_frame`` (input index) plus backend-specific
details. Failed frames are kept, with ``REF_status="failed"`` and no ``REF_`` labels, and listed in
``OUTPUT.summary.json``.

Parallelism (:mod:`piwsl.io.executors`): one task per frame — per energy for finite-difference
forces (6N + 1 tasks, combined into the frame's record once all are done) — on this process,
``n_workers`` local processes, or a Dask cluster (``executor="dask"``, ``scheduler``); each
worker is pinned to ``threads_per_worker`` BLAS/OpenMP threads (default 1). Results are journaled
as they complete, whichever executor ran them, so a killed run resumes the same way. A worker
that dies has its tasks retried; a frame whose task killed its workers too often is recorded as
failed (``--retry-failed`` runs it again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from piwsl.errors import ConfigError, DataError
from piwsl.io.atomic import atomic_path, write_json
from piwsl.io.executors import ExecutorSpec, TaskLost, make_executor, worker_name
from piwsl.io.hashing import atoms_hash, structure_hash
from piwsl.io.journal import JsonLines
from piwsl.labelling.backends import Backend, make_backend
from piwsl.terminal import progress_bar

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1
__all__ = ["LabelSummary", "journal_path", "label_file", "label_structures", "structure_hash"]


# ----------------------------------------------------------------------------------------------
# structures
# ----------------------------------------------------------------------------------------------


def load_structures(source, index: str | int | slice = ":") -> list:
    """Structures to label as bare ``ase.Atoms`` (input labels dropped), from a path or a list
    of Atoms or Frames."""
    from piwsl.data.frames import Frame

    if isinstance(source, (str, Path)):
        from piwsl.data import read_frames

        return [f.to_atoms(labels=False) for f in select(read_frames(source), index)]
    return [
        (item if isinstance(item, Frame) else Frame.from_atoms(item)).to_atoms(labels=False)
        for item in source
    ]


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
# tasks: one per frame, or per calculation of a frame (finite differences)
# ----------------------------------------------------------------------------------------------


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".replace("\n", " ").strip()[:2000]


def run_subtask(backend: Backend, atoms) -> dict[str, Any]:
    """One calculation (on a worker): its output or its error, wall and CPU time (s), worker."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result: dict[str, Any] = {"ok": True, "out": backend.compute_subtask(atoms)}
    except Exception as err:  # every backend failure is recorded per frame, never dropped
        result = {"ok": False, "error": _error_text(err)}
    result["wall_time_s"] = time.perf_counter() - t0
    result["cpu_time_s"] = time.process_time() - c0
    result["worker"] = worker_name()
    return result


def _checked(out: dict[str, Any], n_atoms: int) -> tuple[float, list | None]:
    """Energy and forces (as lists) of a backend output, or an error for absurd values."""
    energy = float(out["energy"])
    if not math.isfinite(energy):
        raise FloatingPointError(f"non-finite energy {energy}")
    forces = out.get("forces")
    if forces is None:
        return energy, None
    forces = np.asarray(forces, dtype=np.float64)
    if forces.shape != (n_atoms, 3):
        raise ValueError(f"forces have shape {forces.shape}, expected ({n_atoms}, 3)")
    if not np.all(np.isfinite(forces)):
        raise FloatingPointError("non-finite forces")
    return energy, forces.tolist()


def _checked_stress(out: dict[str, Any]) -> list | None:
    """The stress (3×3 list, eV/Å³) of a backend output, None without one; an error if absurd."""
    stress = out.get("stress")
    if stress is None:
        return None
    stress = np.asarray(stress, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(stress)):
        raise FloatingPointError("non-finite stress")
    return stress.tolist()


def frame_record(backend: Backend, index: int, atoms, key: str, parts: list[Any]) -> dict[str, Any]:
    """The journal record of frame ``index`` (structure hash ``key``) from the results of its
    subtasks, in order.

    A failed or lost subtask makes the frame ``status="failed"`` (its first error recorded);
    ``wall_time_s`` and ``cpu_time_s`` are sums over the subtasks, ``worker`` the workers that ran
    them.
    """
    record: dict[str, Any] = {"index": index, "hash": key}
    done = [p for p in parts if not isinstance(p, TaskLost)]
    failed = [p.message for p in parts if isinstance(p, TaskLost)]
    failed += [p["error"] for p in done if not p["ok"]]
    if failed:
        message = failed[0]
        if len(parts) > 1:
            message = f"{len(failed)} of {len(parts)} calculations failed, first: {message}"
        record.update(status="failed", error=message, provenance=backend.base_provenance())
    else:
        try:
            out = backend.combine(atoms, [p["out"] for p in done])
            energy, forces = _checked(out, len(atoms))
            provenance = {**backend.base_provenance(), **dict(out.get("provenance", {}))}
            stress = _checked_stress(out)
            record.update(status="ok", energy=energy, forces=forces, provenance=provenance)
            if stress is not None:
                record["stress"] = stress
        except Exception as err:  # absurd values or a failing combination: this frame only
            record.update(
                status="failed", error=_error_text(err), provenance=backend.base_provenance()
            )
    record["wall_time_s"] = float(sum(p["wall_time_s"] for p in done))
    record["cpu_time_s"] = float(sum(p["cpu_time_s"] for p in done))
    record["worker"] = ",".join(sorted({p["worker"] for p in done})) or "unknown"
    return record


class FrameTasks:
    """Turns frames into tasks and collects the tasks' results into frame records."""

    def __init__(self, backend: Backend, images: list) -> None:
        self.backend = backend
        self.images = images
        self._atoms: dict[int, Any] = {}
        self._hash: dict[int, str] = {}
        self._parts: dict[int, list[Any]] = {}
        self._left: dict[int, int] = {}

    def tasks(self, todo: Iterable[int]) -> Iterator[tuple[tuple[int, int], tuple]]:
        """``((frame, k), (backend subtask structure,))`` for every subtask of every frame."""
        for i in todo:
            atoms = self.images[i].copy()
            atoms.info["label_index"] = i
            self._hash[i] = atoms_hash(atoms)
            subtasks = self.backend.subtasks(atoms)
            self._atoms[i] = atoms
            self._parts[i] = [None] * len(subtasks)
            self._left[i] = len(subtasks)
            for k, sub in enumerate(subtasks):
                yield (i, k), (sub,)

    def add(self, key: Any, outcome: Any) -> dict[str, Any] | None:
        """Record one task's outcome; the frame's record once all its tasks are in."""
        i, k = key
        if i not in self._left or self._parts[i][k] is not None:
            log.warning("ignoring a second result of frame %d, task %d", i, k)
            return None
        self._parts[i][k] = outcome
        self._left[i] -= 1
        if self._left[i]:
            return None
        del self._left[i]
        parts = self._parts.pop(i)
        return frame_record(self.backend, i, self._atoms.pop(i), self._hash.pop(i), parts)


# ----------------------------------------------------------------------------------------------
# journal
# ----------------------------------------------------------------------------------------------


def journal_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".journal.jsonl")


class Journal:
    """The labelling journal: records of finished frames by index, fsynced line by line, on
    :class:`piwsl.io.journal.JsonLines` (one run at a time; a torn last line is cut at open)."""

    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.header = header
        self.records: dict[int, dict[str, Any]] = {}
        self._file = JsonLines(
            self.path, {"journal": header}, hold_lock=True, owner="`piwsl label`"
        )
        try:
            self._file.cut_torn_tail()
            self._load()
            self._file.write_header_if_empty()
        except Exception:
            self._file.close()
            raise

    def _load(self) -> None:
        lines = self._file.lines()
        if not lines:  # a new journal (or one with only a torn header)
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
        self._file.append(record)
        self.records[int(record["index"])] = record

    def close(self) -> None:
        self._file.close()


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
    executor: str = "local",
    scheduler: str | None = None,
    connect_timeout_s: float = 10.0,
) -> LabelSummary:
    """Label ``structures`` (a file or a list of Atoms/Frames) and write ``output`` (extxyz).

    ``backend`` is a name for :func:`~piwsl.labelling.backends.make_backend` (with ``options``)
    or a ready :class:`Backend`. ``max_frames`` stops after that many newly computed frames
    (the journal keeps them; the output is written only when all frames are done).
    ``executor``: ``"local"`` (``n_workers`` processes of this machine) or ``"dask"`` (the Dask
    scheduler at ``scheduler``, or a ``LocalCluster`` of ``n_workers`` processes), see
    :mod:`piwsl.io.executors`; journal, resume and output are the same either way. A scheduler
    not reached within ``connect_timeout_s`` is a :class:`~piwsl.errors.ConfigError`.
    """
    t_start = time.perf_counter()
    spec = ExecutorSpec(executor, n_workers, threads_per_worker, scheduler, connect_timeout_s)
    if isinstance(backend, str):
        backend = make_backend(backend, **(options or {}))
    images = load_structures(structures, index=index)
    output = Path(output)
    header = {**backend.describe(), "n_frames": len(images), "version": JOURNAL_VERSION}
    journal = Journal(journal_path(output), header)
    summary = LabelSummary(str(output), str(journal.path), backend.name, len(images))
    try:
        todo = _frames_to_do(images, journal, retry_failed)
        summary.n_from_journal = len(images) - len(todo)
        if max_frames is not None:
            todo = todo[: max(0, int(max_frames))]
        _run(backend, images, todo, journal, spec, summary, progress)
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


def _frames_to_do(images: list, journal: Journal, retry_failed: bool) -> list[int]:
    """Frames without a journal record (and failed ones with ``retry_failed``); a record of a
    structure that is not the input's is an error."""
    hashes = [atoms_hash(a) for a in images]
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
    return [
        i
        for i in range(len(images))
        if i not in journal.records or (retry_failed and journal.records[i].get("status") != "ok")
    ]


def _run(
    backend: Backend,
    images: list,
    todo: list[int],
    journal: Journal,
    spec: ExecutorSpec,
    summary: LabelSummary,
    progress: bool,
) -> None:
    """Compute the frames ``todo`` on the executor of ``spec``, journaling each when done."""
    sizes = [backend.n_subtasks(a) for a in images]
    per_frame = all(n == 1 for n in sizes)
    todo_set = set(todo)
    bar = progress_bar(
        total=sum(sizes),
        initial=sum(n for i, n in enumerate(sizes) if i not in todo_set),
        desc=f"{backend.name} [{spec.describe()}]",
        unit="frame" if per_frame else "task",
        enabled=progress,
    )
    with contextlib.closing(bar):
        if not todo:
            return
        frames = FrameTasks(backend, images)
        with make_executor(spec, n_tasks=sum(sizes[i] for i in todo)) as pool:
            for key, outcome in pool.map_unordered(run_subtask, backend, frames.tasks(todo)):
                bar.update(1)
                record = frames.add(key, outcome)
                if record is not None:
                    journal.append(record)
                    summary.n_computed_now += 1


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
        if "cpu_time_s" in record:
            info["REF_cpu_time_s"] = float(record["cpu_time_s"])
        info["REF_frame"] = i
        if "worker" in record:
            info["REF_worker"] = str(record["worker"])
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
    with atomic_path(output) as tmp:
        ase.io.write(str(tmp), out_images, format="extxyz")


def _write_summary(output: Path, summary: LabelSummary) -> None:
    write_json(output.with_name(output.name + ".summary.json"), asdict(summary))


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
