"""The Dask executor: tasks on a Dask ``distributed`` cluster (see :mod:`piwsl.io.executors`).

What runs where: this process (the *client*) reads the input, submits the tasks, receives the
results and writes the journal and the output; the *scheduler* hands tasks to *workers*; each
worker process runs one task at a time with ``threads_per_worker`` BLAS/OpenMP threads. piwsl
and the programs it calls (tblite, PySCF) must be importable on the workers.

- ``scheduler=None``: a ``LocalCluster`` of ``workers`` processes (one Dask thread each, the
  thread variables of :func:`~piwsl.io.executors.thread_env` set before they start), closed at
  the end of the run.
- ``scheduler="tcp://host:port"``: an existing cluster (``dask scheduler`` + ``dask worker``, or
  ``dask-jobqueue``); an address that cannot be reached within ``connect_timeout_s`` is a
  :class:`~piwsl.errors.ConfigError` naming it.

Tasks are submitted lazily, up to ``max(64, 4 × worker threads)`` at a time, so a huge run holds
little in memory while an adaptive cluster still sees enough queued work to scale up. A worker
that dies (killed, out of memory, a crashing program) has its tasks rescheduled by Dask; a task
that killed more than ``distributed.scheduler.allowed-failures`` (default 3) workers comes back
as :class:`~piwsl.io.executors.TaskLost`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Iterator
from itertools import islice
from typing import Any

from piwsl.errors import ConfigError, PiwslError
from piwsl.io.executors import (
    Executor,
    ExecutorSpec,
    Task,
    TaskLost,
    limit_threads,
    thread_env,
)

log = logging.getLogger(__name__)

#: fewest tasks kept submitted ahead of the results
MIN_WINDOW = 64


class ExecutorError(PiwslError, RuntimeError):
    """The cluster went away in the middle of a run (the journal keeps what was done)."""


def import_distributed() -> Any:
    """``distributed``, or a clear error naming the extra to install."""
    try:
        import distributed
    except ImportError as err:
        raise ConfigError(
            "the dask executor needs the packages dask and distributed: pip install 'piwsl[dask]'"
        ) from err
    return distributed


_THREADS: int | None = None


def _dask_call(fn: Callable[..., Any], context: Any, n_threads: int, args: tuple) -> Any:
    """Run one task on a worker (its thread pools pinned once per process)."""
    global _THREADS
    if n_threads != _THREADS:
        limit_threads(n_threads)
        _THREADS = n_threads
    return fn(context, *args)


def connect(spec: ExecutorSpec) -> tuple[Any, Any]:
    """(client, cluster or None): connect to ``spec.scheduler`` or start a ``LocalCluster``."""
    distributed = import_distributed()
    if spec.scheduler is None:
        import dask

        # set before each worker process starts (also restarts): thread pools, and no Dask
        # chatter from workers whose errors reach this process through their tasks anyway
        key = "distributed.nanny.pre-spawn-environ"
        environ = {**thread_env(spec.threads_per_worker), "DASK_LOGGING__DISTRIBUTED": "critical"}
        with dask.config.set({key: {**dask.config.get(key), **environ}}):
            cluster = distributed.LocalCluster(
                n_workers=spec.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env=thread_env(spec.threads_per_worker),
                silence_logs=logging.ERROR,
            )
        return distributed.Client(cluster), cluster
    try:
        client = distributed.Client(spec.scheduler, timeout=spec.connect_timeout_s)
    except (OSError, TimeoutError, ValueError, TypeError) as err:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {spec.scheduler!r} within "
            f"{spec.connect_timeout_s:g} s ({type(err).__name__}: {err}); check the address "
            "(tcp://HOST:PORT, as `dask scheduler` prints it) and that the scheduler is running"
        ) from None
    return client, None


class DaskExecutor(Executor):
    """Tasks on a Dask cluster (see the module docstring)."""

    def __init__(self, spec: ExecutorSpec) -> None:
        super().__init__(spec)
        import_distributed()  # (sets up Dask's logging, quieted next)
        # a cluster of our own prints no chatter (INFO, shutdown races) here: errors only
        self._log_levels = _quiet_dask(logging.ERROR) if spec.scheduler is None else []
        try:
            self.client, self.cluster = connect(spec)
        except BaseException:
            _restore(self._log_levels)
            raise
        self.address = spec.scheduler or self.client.scheduler.address

    def _window(self) -> int:
        threads = sum(self.client.nthreads().values())
        return max(MIN_WINDOW, 4 * threads)

    def map_unordered(
        self, fn: Callable[..., Any], context: Any, tasks: Iterable[Task]
    ) -> Iterator[tuple[Hashable, Any]]:
        from distributed import as_completed

        todo = iter(tasks)
        keys: dict[str, Hashable] = {}
        running = as_completed()
        window = self._window()

        def submit(n: int) -> None:
            for key, args in islice(todo, max(0, n)):
                threads = self.spec.threads_per_worker
                future = self.client.submit(_dask_call, fn, context, threads, args, pure=False)
                keys[future.key] = key
                running.add(future)

        submit(window)
        try:
            for future in running:
                yield keys.pop(future.key), self._outcome(future)
                future.release()
                if running.count() < window // 2:
                    window = self._window()
                    submit(window - running.count())
        finally:
            left = list(running.futures)
            if left:
                self.client.cancel(left)

    def _outcome(self, future: Any) -> Any:
        from distributed import KilledWorker

        if future.status == "finished":
            return future.result()
        if future.status == "cancelled":
            raise ExecutorError(
                f"lost the Dask scheduler at {self.address} in the middle of the run; what was "
                "done is kept: run the same command again to continue"
            )
        error = future.exception()
        if isinstance(error, KilledWorker):
            return TaskLost(f"its Dask workers died while running it ({error})")
        return future.result()  # raises fn's own error

    def close(self) -> None:
        levels = _quiet_dask(logging.CRITICAL)  # shutdown races log noise, not errors
        try:
            if self.client is not None:
                self.client.close()
                self.client = None
            if self.cluster is not None:
                self.cluster.close()
                self.cluster = None
        finally:
            _restore(levels)
            _restore(self._log_levels)
            self._log_levels = []


def _quiet_dask(level: int) -> list[tuple[logging.Handler, int]]:
    """Raise the level of Dask's console handlers in this process; their previous levels."""
    handlers = [h for h in logging.getLogger("distributed").handlers if h.level < level]
    old = [(h, h.level) for h in handlers if isinstance(h, logging.StreamHandler)]
    for handler, _ in old:
        handler.setLevel(level)
    return old


def _restore(levels: list[tuple[logging.Handler, int]]) -> None:
    for handler, level in reversed(levels):
        handler.setLevel(level)
