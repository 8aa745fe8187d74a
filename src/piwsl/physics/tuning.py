"""``physics.evaluation = "auto"``: choose how the displaced copies are evaluated by timing it.

The evaluation modes (:func:`piwsl.physics.evaluate_copies`) give the same losses and gradients
but not the same speed: one fused pass over all copies wins where the model is small against the
per-pass overhead, separate passes win where a fused pass of a large batch leaves the caches
(``benchmarks/results/physics_step_cost.md``, direct-force PaiNN: one fused pass ran at 0.91× the
speed of three passes on aspirin and 1.09× on ethanol). Like ``cudnn.benchmark``, :class:`EvaluationTuner` tries
them on the first real training steps and keeps the fastest:

- the candidates are the modes whose passes differ for the copies the run needs (for a direct-force
  model, or where every copy needs forces, ``split`` is the fused pass and is tried once);
- ``warmup`` rounds of one step per candidate are not timed (first calls allocate, compile);
- then ``trials`` rounds, the order reversed every other round so that a drift in load hits
  the candidates alike; a step is timed from :meth:`EvaluationTuner.pick` (when the copies are
  evaluated) to :meth:`EvaluationTuner.stop` (the training loop calls it after the optimiser
  step) or, where nobody calls it, to the next :meth:`~EvaluationTuner.pick`;
- the candidate with the smallest median step time is kept for the rest of the run.

On a GPU the timed steps synchronise the device at their start and end (only those steps).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)

#: The mode used before a choice exists (validation, pinned fields) and the tie-breaking order.
DEFAULT_MODE = "split"
#: Untimed rounds and timed steps per candidate (a run with two candidates spends its first 12
#: steps on the trial; five steps each keep one step disturbed by other load from deciding).
WARMUP, TRIALS = 1, 5


class EvaluationTuner:
    """Times the candidate evaluation modes on real steps and keeps the fastest (see the
    module docstring). ``clock``: seconds, :func:`time.perf_counter` by default."""

    def __init__(
        self,
        warmup: int = WARMUP,
        trials: int = TRIALS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if warmup < 0 or trials < 1:
            raise ValueError(f"need warmup >= 0 and trials >= 1, got {warmup}, {trials}")
        self.warmup, self.trials, self.clock = warmup, trials, clock
        self.candidates: list[str] = []
        self.times: dict[str, list[float]] = {}
        self.chosen: str | None = None
        self._calls = 0
        self._open: tuple[str, float, torch.device | None] | None = None

    def pick(self, candidates: Sequence[str], timed: bool, device: torch.device | None) -> str:
        """The mode of this evaluation; ``timed``: a training step that may be timed."""
        self.stop()
        if self.chosen is not None or not timed:
            return self.chosen or DEFAULT_MODE
        if not self.candidates:
            self.candidates = list(candidates)
            self.times = {mode: [] for mode in self.candidates}
            if len(self.candidates) == 1:
                return self._choose()
        mode = self._scheduled(self._calls)
        self._calls += 1
        if self._calls > self.warmup * len(self.candidates):
            _synchronize(device)
            self._open = (mode, self.clock(), device)
        return mode

    def stop(self) -> None:
        """End the timed step (after the optimiser step); a no-op outside timed steps."""
        if self._open is None:
            return
        mode, start, device = self._open
        _synchronize(device)
        self.times[mode].append(self.clock() - start)
        self._open = None
        if all(len(t) >= self.trials for t in self.times.values()):
            self._choose()

    def state_dict(self) -> dict:
        """The choice and its timings (a resumed run keeps the choice; an unfinished trial
        starts over)."""
        if self.chosen is None:
            return {}
        return {"chosen": self.chosen, "candidates": self.candidates, "times": self.times}

    def load_state_dict(self, state: dict) -> None:
        if state.get("chosen") is not None:
            self.chosen = str(state["chosen"])
            self.candidates = list(state["candidates"])
            self.times = {m: [float(t) for t in v] for m, v in state["times"].items()}

    def _scheduled(self, call: int) -> str:
        """Round ``call // n`` of the n candidates, every other round in reverse order."""
        n = len(self.candidates)
        position = call % n
        if (call // n) % 2:
            position = n - 1 - position
        return self.candidates[position]

    def _choose(self) -> str:
        medians = {mode: self.median_s(mode) for mode in self.candidates}
        self.chosen = min(self.candidates, key=lambda m: (medians[m] or 0.0, m != DEFAULT_MODE))
        if len(self.candidates) > 1:
            log.info("physics.evaluation=auto: %s", self.describe())
        return self.chosen

    def median_s(self, mode: str) -> float | None:
        times = self.times.get(mode)
        return statistics.median(times) if times else None

    def summary(self) -> dict:
        """The choice and the timings it rests on (for the run's summary.json)."""
        return {
            "mode": "auto",
            "chosen": self.chosen,
            "candidates": list(self.candidates),
            "median_step_ms": {
                m: None if self.median_s(m) is None else round(1e3 * self.median_s(m), 2)
                for m in self.candidates
            },
            "timed_steps": {m: len(self.times.get(m, [])) for m in self.candidates},
        }

    def describe(self) -> str:
        """One line: the choice and every candidate's median step time (ms)."""
        return describe_choice(self.summary())


def describe_choice(summary: dict) -> str:
    """One line from :meth:`EvaluationTuner.summary`: the choice and the median step times."""
    chosen, candidates = summary["chosen"], summary["candidates"]
    if chosen is None:
        return "no choice yet (too few training steps with displaced copies)"
    if len(candidates) == 1:
        return f"'{chosen}' (the only distinct way to evaluate these copies)"
    ms, steps = summary["median_step_ms"], summary["timed_steps"]
    times = ", ".join(f"{m} {ms[m]:.1f} ms" for m in candidates if ms.get(m) is not None)
    n = min(steps.values())
    return f"chose '{chosen}' (median step time over {n} timed steps each: {times})"


def _synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
