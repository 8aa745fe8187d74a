"""What labelling, training, the prior cache and MD share: executors, journals, structure
hashes, atomic writes.

- :mod:`piwsl.io.executors` — one unit of work per task on this process, a local process pool
  or a Dask cluster (:mod:`piwsl.io.dask_executor`), results streamed back as they complete
- :mod:`piwsl.io.journal` — append-only, fsynced JSON-lines journals (torn lines cut, locking)
- :mod:`piwsl.io.hashing` — the SHA-256 key of a structure
- :mod:`piwsl.io.atomic` — every file piwsl writes for later: temporary file, fsync, rename
- :mod:`piwsl.io.jsonable` — values to plain JSON types (NumPy scalars, NaN, paths)
- :mod:`piwsl.io.machine` — the machine a result was measured on (CPU, cores, load, versions)
"""

from piwsl.io.atomic import atomic_path, write_json, write_text
from piwsl.io.executors import (
    EXECUTORS,
    Executor,
    ExecutorSpec,
    TaskLost,
    limit_threads,
    make_executor,
    worker_name,
)
from piwsl.io.hashing import atoms_hash, structure_hash
from piwsl.io.journal import JsonLines
from piwsl.io.jsonable import jsonable
from piwsl.io.machine import machine_info

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorSpec",
    "JsonLines",
    "TaskLost",
    "atomic_path",
    "atoms_hash",
    "jsonable",
    "limit_threads",
    "machine_info",
    "make_executor",
    "structure_hash",
    "worker_name",
    "write_json",
    "write_text",
]
