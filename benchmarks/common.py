"""What every benchmark records beside its numbers: the machine, the git commit, and paths that
mean something on another machine (relative to the checkout, never this machine's absolute ones).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# the benchmarks import these from here, beside the rest of a result's provenance
from piwsl.io.machine import machine_info  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
#: Where every benchmark writes its results.
RESULTS = ROOT / "benchmarks" / "results"

#: An absolute path inside a text: starts with "/", not preceded by a word character, a dot, a
#: colon or a slash (URLs, relative paths), and runs until whitespace, a quote or a bracket.
_ABSOLUTE = re.compile(r"(?<![\w.:/~-])/[^\s'\"`,;|()\[\]{}<>]+")
#: Interpreters, written as ``python`` in recorded commands.
_PYTHON = re.compile(r".*/bin/python(\d+(\.\d+)?)?$")


def relative(path: str | Path, root: Path = ROOT) -> str:
    """``path`` as recorded in results: relative to the checkout ``root`` when it lies in the same
    top-level folder (``benchmarks/results/x.json``, ``../shared/data/...``; a relative ``path``
    is taken relative to the working directory first), ``python`` for an interpreter,
    ``builtin:`` names and anything else (``/tmp/…``, system files) unchanged."""
    text = str(path)
    if not text or ":" in text.split("/", 1)[0]:  # builtin:NAME, URLs
        return text
    if not text.startswith("/"):  # relative to the working directory
        text = os.path.abspath(text)
    if text == sys.executable or _PYTHON.match(text):
        return "python"
    top = "/" + root.parts[1] if len(root.parts) > 1 else "/"
    if text == top or text.startswith(top + "/"):
        return os.path.relpath(text, root)
    return text


def portable(text: str, root: Path = ROOT) -> str:
    """``text`` (a command line, a message) with every absolute path in it :func:`relative`."""
    return _ABSOLUTE.sub(lambda m: relative(m.group(0), root), text)


def command_line(argv: list[str] | None = None, script: str | None = None) -> str:
    """The command that ran this benchmark, as recorded: ``python benchmarks/x.py --opt ...``
    with paths relative to the checkout."""
    args = sys.argv[1:] if argv is None else argv
    script = script or relative(Path(sys.argv[0]).resolve())
    return portable(" ".join(["python", script, *map(str, args)]))


#: git pathspec: everything but the benchmark results
EXCLUDE_RESULTS = ":(exclude)benchmarks/results"


def git_commit() -> str:
    """HEAD's hash, with ``" (+ uncommitted changes)"`` when tracked files other than results
    are modified (benchmarks/results/ is written by running benchmarks, not code); where
    the checkout has no git (a copy on a lent machine), ``$PIWSL_BENCHMARK_COMMIT`` or
    ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", EXCLUDE_RESULTS],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("PIWSL_BENCHMARK_COMMIT", "unknown")
    return head + (" (+ uncommitted changes)" if dirty else "")


def provenance_lines(
    command: str | Sequence[str] | None,
    commit: str | None,
    machine: dict[str, Any] | None,
    date: str | None = None,
    *,
    extra: str | None = None,
    commit_note: str | None = None,
    per_run_threads: int | None = None,
    more: Sequence[str] = (),
) -> list[str]:
    """The provenance lines at the top of every benchmark report, one format for all:

    - ``Command: `…```` (several: ``Commands (oldest first): `…`; `…```);
    - ``Commit: `…```` and `` (commit_note)`` when given;
    - ``Machine: <cpu>, <n> CPUs, <platform>, torch <version> (<threads> thread(s),
      OMP_NUM_THREADS=<n>), GPU <name>`` from the keys of :func:`machine_info` that ``machine``
      has (others ignored, missing or None ones left out), then ``; extra``. Where the numbers
      come from separate run processes, ``per_run_threads`` (their thread count) replaces this
      process's threads: ``torch <version> (<n> thread(s) per run)``;
    - ``Date: …``;
    - the lines of ``more`` (``Versions: …``, ``Budget: …``).

    Lines without a value are left out; every line but the last ends in two spaces (a markdown
    line break)."""
    lines = []
    commands = [command] if isinstance(command, str) else list(command or [])
    if len(commands) == 1:
        lines.append(f"Command: `{commands[0]}`")
    elif commands:
        lines.append("Commands (oldest first): " + "; ".join(f"`{c}`" for c in commands))
    if commit:
        lines.append(f"Commit: `{commit}`" + (f" ({commit_note})" if commit_note else ""))
    m = {k: v for k, v in (machine or {}).items() if v is not None}
    threads = []
    if per_run_threads is not None:
        threads.append(f"{per_run_threads} thread(s) per run")
    else:
        if "torch_threads" in m:
            threads.append(f"{m['torch_threads']} thread(s)")
        if "OMP_NUM_THREADS" in m:
            threads.append(f"OMP_NUM_THREADS={m['OMP_NUM_THREADS']}")
    torch = ", ".join(threads)
    if "torch" in m:
        torch = f"torch {m['torch']}" + (f" ({torch})" if torch else "")
    parts = [
        m.get("cpu"),
        f"{m['cpu_count']} CPUs" if "cpu_count" in m else None,
        m.get("platform"),
        torch,
        f"GPU {m['cuda']}" if m.get("cuda") else None,
    ]
    described = ", ".join(str(p) for p in parts if p)
    machine_line = "; ".join(x for x in (described, extra) if x)
    if machine_line:
        lines.append(f"Machine: {machine_line}")
    if date:
        lines.append(f"Date: {date}")
    lines += [x for x in more if x]
    return [x + "  " for x in lines[:-1]] + lines[-1:]


#: method → the method it is compared with (the method names of benchmarks/rmd17_cells.py):
#: the physics terms against plain training, the physics terms on a Δ correction against Δ alone.
BASELINES = {"piwsl_2nd": "plain", "piwsl": "plain", "delta_piwsl_2nd": "delta"}


def baseline_of(method: str, present: set[str] | list[str]) -> str | None:
    """The method of ``present`` that ``method`` is compared with: its ``BASELINES`` entry (the
    variant keys in brackets ignored), else plain training (the first ``plain…`` name); None for
    the baseline itself or when it is absent."""
    base = BASELINES.get(method.split("[")[0], "plain")
    name = next((m for m in sorted(present) if m == base or m.startswith(base + "[")), None)
    if name is None and base != "plain":
        name = next((m for m in sorted(present) if m.startswith("plain")), None)
    return None if name == method else name


#: One colour per method in every plot of the studies (plain training always the same colour).
METHOD_COLORS = {
    "plain": "C0",
    "piwsl_2nd": "C1",
    "piwsl": "C3",
    "delta": "C2",
    "delta_piwsl_2nd": "C4",
}


def method_rank(method: str) -> tuple[int, str]:
    """Legend order: the methods of METHOD_COLORS first, in its order."""
    order = list(METHOD_COLORS)
    return (order.index(method) if method in order else len(order), method)
