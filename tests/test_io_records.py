"""piwsl.io.jsonable and piwsl.io.machine: what results record beside their numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from piwsl.io import jsonable


def test_numpy_values_become_python_numbers_and_lists():
    value = {
        "n": np.int64(3),
        "x": np.float32(0.5),
        "ok": np.bool_(True),
        "a": np.arange(4).reshape(2, 2),
        "t": (1, 2.5, "s", None),
        7: "int key",
    }
    out = jsonable(value)
    assert out == {
        "n": 3,
        "x": 0.5,
        "ok": True,
        "a": [[0, 1], [2, 3]],
        "t": [1, 2.5, "s", None],
        "7": "int key",
    }
    assert type(out["n"]) is int and type(out["x"]) is float and type(out["ok"]) is bool
    assert json.loads(json.dumps(out, allow_nan=False)) == out  # strict JSON, round-trips


def test_non_finite_numbers_become_null_and_other_objects_their_text():
    out = jsonable([math.nan, np.float64(np.inf), -math.inf, Path("runs/a"), object])
    assert out[:3] == [None, None, None]
    assert out[3] == "runs/a"
    assert out[4] == repr(object)
    json.dumps(out, allow_nan=False)  # no NaN/Infinity tokens


def test_machine_info_describes_this_machine_and_stays_light_without_torch():
    import subprocess
    import sys

    from piwsl.io import machine_info

    info = machine_info(note="x")
    assert info["cpu_count"] >= 1 and info["cpu"] and info["platform"] and info["piwsl"]
    assert info["torch"] and info["torch_threads"] >= 1 and info["note"] == "x"
    json.dumps(jsonable(info), allow_nan=False)
    # torch=False in a process without torch: no torch entry, and torch is not imported
    code = (
        "import sys; from piwsl.io.machine import machine_info; i = machine_info(torch=False); "
        "print('torch' in i, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
