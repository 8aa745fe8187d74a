"""The one conversion of piwsl's values to plain JSON types, for files written for later
(run summaries, MD reports, provenance, prior settings): equal inputs give equal JSON, so a
value round-trips through a file or a cache header and compares equal afterwards."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """``value`` in plain JSON types: mappings with ``str`` keys, lists for tuples and arrays,
    Python numbers for NumPy scalars, ``None`` for NaN and ±inf (JSON has neither), paths as
    strings, and ``repr`` of anything else."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)
