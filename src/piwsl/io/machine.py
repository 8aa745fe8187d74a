"""What machine a result was measured on: the one description that MD reports and the
benchmarks record next to their numbers."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any


def _cpuinfo(key: str) -> str | None:
    """The first value of ``key`` in /proc/cpuinfo (None: no such file or key)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == key:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo), or the platform's processor string."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_kind() -> str:
    """What decides how torch's CPU kernels round: the vendor (MKL dispatches by it) and the
    instruction set torch picked, e.g. ``AuthenticAMD AVX2`` or ``GenuineIntel AVX512``. Two
    machines of one kind give bit-identical float results for the same torch build; across
    kinds float32 sums differ in the last bits."""
    import torch

    vendor = _cpuinfo("vendor_id") or platform.machine()
    return f"{vendor} {torch.backends.cpu.get_cpu_capability()}"


def machine_info(*, torch: bool = True, **extra: Any) -> dict[str, Any]:
    """Platform, CPU, core counts, load, Python, piwsl, and torch with its thread settings and
    GPU (``torch=False``: only if torch is imported already, so a light process stays light),
    plus ``extra``."""
    from piwsl import __version__

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "piwsl": __version__,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    if torch or "torch" in sys.modules:
        info.update(_torch_info())
    info.update(extra)
    return info


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {}
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_kind": cpu_kind(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
