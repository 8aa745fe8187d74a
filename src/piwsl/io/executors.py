"""Executors: one unit of work per task, run in this process, a local process pool or on Dask,
results streamed back as each task completes.

The contract (used by labelling and the prior cache)::

    with make_executor(ExecutorSpec("dask", workers=4)) as executor:
        for key, outcome in executor.map_unordered(fn, context, tasks):
            journal.append(...)          # as soon as the task is done

``tasks`` is an iterable of ``(key, args)``, consumed lazily; each task runs
``fn(context, *args)`` on a worker, where ``fn`` is a module-level function and ``context`` a
picklable object (a labelling backend, a prior) shipped once per worker process (local pool) or
with each task (Dask). Outcomes arrive in completion order, each task exactly once: its result,
or a :class:`TaskLost` when it killed its worker process more than ``allowed_failures`` (3)
times (Dask: ``KilledWorker`` after ``distributed.scheduler.allowed-failures`` retries; the local
pool reruns the tasks in flight at a death one at a time, so only a task that dies alone counts).
Until then a task whose worker died is retried on another (or a restarted) worker. An exception
raised by ``fn`` is raised by the iteration (callers catch per-item errors in ``fn``).

Kinds (:class:`ExecutorSpec`):

- ``local``: ``workers`` processes of this machine (``workers=1``: in this process), each pinned to
  ``threads_per_worker`` BLAS/OpenMP threads, dying with their parent; at most two tasks per
  worker in flight, so a stopped run loses little work.
- ``dask``: a Dask ``distributed`` cluster — the scheduler at ``scheduler`` (``tcp://host:port``,
  e.g. started by ``dask-jobqueue`` on SLURM/PBS/LSF), or, without it, a ``LocalCluster`` of
  ``workers`` single-threaded processes started for the run. See
  :mod:`piwsl.io.dask_executor`.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from piwsl.errors import ConfigError

log = logging.getLogger(__name__)

#: the executor kinds
EXECUTORS: tuple[str, ...] = ("local", "dask")
#: environment variables that size the BLAS/OpenMP thread pools of PySCF, tblite, numpy, torch
THREAD_ENV_VARS: tuple[str, ...] = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

Task = tuple[Hashable, tuple]


@dataclass(frozen=True)
class TaskLost:
    """The outcome of a task whose worker process died too often while running it."""

    message: str


@dataclass(frozen=True)
class ExecutorSpec:
    """Where tasks run (see the module docstring); validated on construction.

    ``connect_timeout_s``: how long to try to reach a Dask scheduler; ``allowed_failures``: how
    often a task that killed its worker is retried before it is given up as :class:`TaskLost`
    (the local pool's; a Dask cluster uses ``distributed.scheduler.allowed-failures``, also 3).
    """

    kind: str = "local"
    workers: int = 1
    threads_per_worker: int = 1
    scheduler: str | None = None
    connect_timeout_s: float = 10.0
    allowed_failures: int = 3

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ConfigError(f"executor {self.kind!r}: choose one of {', '.join(EXECUTORS)}")
        if self.workers < 1:
            raise ConfigError(f"workers must be ≥ 1, got {self.workers}")
        if self.threads_per_worker < 1:
            raise ConfigError(f"threads per worker must be ≥ 1, got {self.threads_per_worker}")
        if self.scheduler is not None and self.kind != "dask":
            raise ConfigError(
                f"a scheduler address ({self.scheduler!r}) needs the dask executor "
                "(--executor dask / executor: dask)"
            )
        if not self.connect_timeout_s > 0:
            raise ConfigError(f"connect timeout must be > 0 s, got {self.connect_timeout_s}")

    def describe(self) -> str:
        if self.kind == "dask":
            where = self.scheduler or f"a local Dask cluster of {self.workers} workers"
            return f"dask ({where})"
        return f"local ({self.workers} process{'es' if self.workers > 1 else ''})"


class Executor(abc.ABC):
    """Runs ``fn(context, *args)`` per task and yields ``(key, outcome)`` as tasks complete."""

    def __init__(self, spec: ExecutorSpec) -> None:
        self.spec = spec

    @abc.abstractmethod
    def map_unordered(
        self, fn: Callable[..., Any], context: Any, tasks: Iterable[Task]
    ) -> Iterator[tuple[Hashable, Any]]:
        """Outcomes (result or :class:`TaskLost`) of all tasks, in completion order."""

    def close(self) -> None:  # noqa: B027 (nothing to release by default)
        """Release workers and connections (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_executor(spec: ExecutorSpec, n_tasks: int | None = None) -> Executor:
    """The executor of ``spec``; a local run of one worker (or one task) runs in this process."""
    if spec.kind == "dask":
        from piwsl.io.dask_executor import DaskExecutor

        return DaskExecutor(spec)
    if spec.workers == 1 or (n_tasks is not None and n_tasks <= 1):
        return InlineExecutor(spec)
    return PoolExecutor(spec)


# --------------------------------------------------------------------------------------------
# worker processes


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


def thread_env(n_threads: int) -> dict[str, str]:
    """The environment that pins a new worker process to ``n_threads`` BLAS/OpenMP threads."""
    return dict.fromkeys(THREAD_ENV_VARS, str(n_threads))


def worker_name() -> str:
    """``host:pid`` of this process (recorded with each labelled frame)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def die_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL this worker when the parent dies (a killed run)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# --------------------------------------------------------------------------------------------
# in this process


class InlineExecutor(Executor):
    """Every task in this process, one after the other."""

    def map_unordered(
        self, fn: Callable[..., Any], context: Any, tasks: Iterable[Task]
    ) -> Iterator[tuple[Hashable, Any]]:
        limit_threads(self.spec.threads_per_worker)
        for key, args in tasks:
            yield key, fn(context, *args)


# --------------------------------------------------------------------------------------------
# local process pool

_CONTEXT: Any = None


def _init_worker(context: Any, n_threads: int) -> None:
    global _CONTEXT
    die_with_parent()
    limit_threads(n_threads)
    _CONTEXT = context


def _pool_call(fn: Callable[..., Any], args: tuple) -> Any:
    return fn(_CONTEXT, *args)


class PoolExecutor(Executor):
    """``workers`` local processes (fork where available); a dead worker's tasks are retried.

    When a worker dies, every task in flight is a suspect: suspects then run one at a time, so a
    task that kills its worker is found exactly and counts a failure only when it ran alone.
    """

    def _pool(self, context: Any) -> ProcessPoolExecutor:
        import multiprocessing as mp

        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        return ProcessPoolExecutor(
            max_workers=self.spec.workers,
            mp_context=mp.get_context(method),
            initializer=_init_worker,
            initargs=(context, self.spec.threads_per_worker),
        )

    def _next(self, todo: Iterator[Task], suspects: list[Task], n_pending: int) -> Task | None:
        """The next task to submit: a suspect alone in the pool, else up to 2 per worker."""
        if suspects:
            return suspects.pop(0) if n_pending == 0 else None
        return next(todo, None) if n_pending < 2 * self.spec.workers else None

    def map_unordered(
        self, fn: Callable[..., Any], context: Any, tasks: Iterable[Task]
    ) -> Iterator[tuple[Hashable, Any]]:
        todo, suspects = iter(tasks), []
        deaths: dict[Hashable, int] = {}
        pending: dict[Future, Task] = {}
        pool = self._pool(context)
        try:
            while True:
                broken = False
                while not broken and (task := self._next(todo, suspects, len(pending))):
                    try:
                        pending[pool.submit(_pool_call, fn, task[1])] = task
                    except BrokenProcessPool:  # a worker died since the last wait
                        suspects.insert(0, task)
                        broken = True
                if not pending and not broken:
                    return
                done = wait(pending, return_when=FIRST_COMPLETED)[0] if pending else set()
                broken |= any(isinstance(f.exception(), BrokenProcessPool) for f in done)
                if broken:
                    yield from self._after_death(pending, suspects, deaths)
                    pool.shutdown(wait=True, cancel_futures=True)
                    pool = self._pool(context)
                    continue
                for future in done:
                    yield pending.pop(future)[0], future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _after_death(
        self, pending: dict[Future, Task], suspects: list[Task], deaths: dict[Hashable, int]
    ) -> Iterator[tuple[Hashable, Any]]:
        """A worker died: finished results are kept; the rest become suspects, and a task that
        died alone counts one failure (given up as :class:`TaskLost` after ``allowed_failures``
        retries)."""
        alone = len(pending) == 1
        again = []
        for future, task in pending.items():
            error = future.exception() if future.done() else None
            if future.done() and not isinstance(error, BrokenProcessPool):
                yield task[0], future.result()  # a result, or fn's own error raised
            elif not alone:
                again.append(task)
            elif (n := deaths.get(task[0], 0) + 1) > self.spec.allowed_failures:
                yield task[0], TaskLost(f"its worker process died {n} times while running it")
            else:
                deaths[task[0]] = n
                again.append(task)
        pending.clear()
        log.warning(
            "a worker process died; %d task(s) run again, one at a time, in a fresh pool",
            len(again),
        )
        suspects[:0] = again
