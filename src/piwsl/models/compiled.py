"""Compiled training: energy *and* forces of a force field from one compiled graph.

``torch.compile`` cannot differentiate a graph that itself calls autograd, yet a loss on
conservative forces F = −∂E/∂R needs exactly that (a double backward). :class:`CompiledForceField`
therefore traces, once per kind of call, the function

    (parameters, buffers, positions, neighbour list, …) → (E, F)

with ``make_fx`` in symbolic mode. Autograd runs *while tracing*, so the backward operations that
give F are recorded as ordinary operations of the graph; ``torch.compile`` then compiles that
graph, and a training step needs only a first-order backward through a compiled graph, derived by
AOTAutograd (the idea of NequIP's compiled training mode). Direct-force models trace their forward
pass alone.

What makes the traced graph right:

- **saved outputs.** Autograd keeps some results for the backward (sqrt, exp, sigmoid) as detached
  tensors; recorded as they are, the second derivative would lose their dependence on the
  parameters (PaiNN's gradient was 30 % off). Tracing maps ``aten.detach`` to the identity.
- **shapes.** Atom, edge and structure counts are symbolic (duck sizing off, so a count equal to a
  feature width is not fused with it); a model whose trace turns a batch size into a constant
  (a Python ``int()`` of a size) is reported as not traceable. Inductor still specialises a few
  size ranges (it decomposes a small matrix product below about 30 atoms and chunks float sums
  over more than 4096 terms), so a run compiles once more per range it meets, not per batch
  (:attr:`CompileStats.recompiles`). Batches with fewer than two structures,
  atoms or edges run eagerly (sizes 0 and 1 would be specialised), as do calls without a gradient
  (validation, inference).
- **a check.** The first call of each compiled graph is compared with the eager model: energies,
  forces and the parameter gradient of a random functional of both. A mismatch, like a model that
  cannot be traced, logs a warning and that kind of call runs eagerly from then on.

**Inference** (``inference=True``, ``piwsl md --compile``): calls without a gradient run through
compiled graphs too — the same traced (E, F) function, compiled for a forward pass only (forces
of a conservative model are the traced backward, so no autograd runs at all). The first call is
checked against the eager model's energies and forces. For batched MD of small molecules the
model evaluation is several times faster than eager code on a CPU core
(``benchmarks/md_inference_speed.py``).

The wrapper has :class:`~piwsl.models.forces.ForceField`'s call signature, so the objective and the
physics terms use it unchanged; it holds the force field by reference (not as a submodule), so
checkpoints and parameter names are those of the eager model.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx

from piwsl.data.batch import Batch
from piwsl.models.base import trusted_species
from piwsl.models.forces import ForceField, conservative_forces

log = logging.getLogger(__name__)

#: the tensors of a batch the models read, and the dimension of each that grows with the batch
GEOMETRY = {
    "positions": 0,
    "numbers": 0,
    "batch": 0,
    "ptr": 0,
    "cell": 0,
    "pbc": 0,
    "edge_index": 1,
    "edge_shift": 0,
}
BACKENDS = ("inductor", "aot_eager")


class NotTraceableError(RuntimeError):
    """The model cannot be traced into one graph with symbolic batch sizes."""


@dataclass
class CompileStats:
    """What the compiled path did: graphs, compilations, time, eager fallbacks."""

    graphs: int = 0  #: graphs traced and compiled (one per kind of call: with/without forces)
    compiles: int = 0  #: compilations by the torch.compile backend (first ones + recompiles)
    compile_time_s: float = 0.0  #: tracing + compiling + checking, first call of each graph
    compiled_calls: int = 0
    eager_calls: int = 0
    eager_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def recompiles(self) -> int:
        """Compilations beyond the first of each graph (a shape or input change)."""
        return max(0, self.compiles - self.graphs)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recompiles": self.recompiles}


@contextlib.contextmanager
def _duck_shapes(enabled: bool) -> Iterator[None]:
    """Switch duck sizing (equal sizes share one symbol) for tracing and compiling."""
    from torch.fx.experimental import _config

    before = _config.use_duck_shape
    _config.use_duck_shape = enabled
    try:
        yield
    finally:
        _config.use_duck_shape = before


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def geometry_tensors(batch: Batch) -> list[torch.Tensor]:
    return [getattr(batch, name) for name in GEOMETRY]


def geometry_batch(tensors: tuple[torch.Tensor, ...]) -> Batch:
    """A :class:`Batch` of the geometry tensors only (the labels are not inputs of the graph)."""
    labels = dict.fromkeys(
        ("energy", "forces", "energy_mask", "forces_mask", "fixed", "frame_id"), None
    )
    return Batch(**dict(zip(GEOMETRY, tensors, strict=True)), **labels)


def state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name (the live tensors, not copies)."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def state_inputs(module: torch.nn.Module, names: list[str]) -> list[torch.Tensor]:
    """The state as graph inputs: 0-d tensors as 1-d (``torch.compile`` would turn a 0-d input
    into a symbolic float and restart its analysis once), reshaped back inside the graph."""
    state = state_dict(module)
    return [state[n].reshape(1) if state[n].dim() == 0 else state[n] for n in names]


def force_function(energy_model: torch.nn.Module, names: list[str], forces: bool) -> Callable:
    """``f(*state, *geometry) -> (E, F)`` (or ``(E,)``) of ``energy_model``, state by name."""
    conservative = forces and not energy_model.direct_forces
    n = len(names)
    shapes = {k: v.shape for k, v in state_dict(energy_model).items()}

    def f(*flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = {k: v.reshape(shapes[k]) for k, v in zip(names, flat[:n], strict=True)}
        batch = geometry_batch(flat[n:])
        if conservative:
            positions = batch.positions.detach().requires_grad_(True)
            batch = batch.with_positions(positions)
        with trusted_species():
            out = functional_call(energy_model, state, (batch,))
        if conservative:
            return out["energy"], conservative_forces(out["energy"], positions, True)
        return (out["energy"], out["forces"]) if forces else (out["energy"],)

    return f


def trace(function: Callable, inputs: list[torch.Tensor]) -> torch.fx.GraphModule:
    """``make_fx`` in symbolic mode, autograd unrolled, detach as identity (module docstring)."""
    with _duck_shapes(False), torch.enable_grad():
        return make_fx(
            function,
            tracing_mode="symbolic",
            decomposition_table={torch.ops.aten.detach.default: _identity},
            _allow_non_fake_inputs=True,
            _error_on_data_dependent_ops=True,
        )(*inputs)


def check_symbolic(graph: torch.fx.GraphModule, n_state: int) -> None:
    """Raise :class:`NotTraceableError` if tracing fixed a batch size to its example's value."""
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    inputs = [n for n in graph.graph.nodes if n.op == "placeholder"][n_state:]
    for node, (name, dim) in zip(inputs, GEOMETRY.items(), strict=True):
        size = node.meta["val"].shape[dim]
        if is_concrete_int(size):
            raise NotTraceableError(
                f"the traced graph holds the size of {name} (dimension {dim}) as the constant "
                f"{int(size)}: some operation of the model turns a batch size into a Python int"
            )


class CompiledForceField:
    """A :class:`ForceField` whose training calls run through compiled graphs (module docstring).

    ``backend``: the ``torch.compile`` backend, ``"inductor"`` (code generation) or
    ``"aot_eager"`` (traced and differentiated like inductor, but run op by op: fast to build,
    for tests). ``inference``: calls without a gradient (MD, prediction) are compiled too.
    ``stats`` counts graphs, compilations, time and eager calls.
    """

    def __init__(
        self, model: ForceField, backend: str = "inductor", inference: bool = False
    ) -> None:
        if backend not in BACKENDS:
            from piwsl.errors import ConfigError

            raise ConfigError(f"unknown compile backend {backend!r}; use one of {BACKENDS}")
        self.model = model
        self.backend = backend
        self.inference = inference
        self.option = "piwsl md --compile" if inference else "training.compile"  # for messages
        self.stats = CompileStats()
        #: (forces?, device, dtype, gradient?) → (compiled graph, state names), or None: eager
        self._graphs: dict[tuple, tuple[Callable, list[str]] | None] = {}

    # ---- the ForceField contract, forwarded ---------------------------------------------------
    @property
    def training(self) -> bool:
        return self.model.training

    @property
    def energy_model(self) -> torch.nn.Module:
        return self.model.energy_model

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    @property
    def elements(self) -> list[int]:
        return self.model.elements

    @property
    def direct_forces(self) -> bool:
        return self.model.direct_forces

    @property
    def hparams(self) -> dict[str, Any]:
        return self.model.hparams

    # ---- calls --------------------------------------------------------------------------------
    def __call__(
        self, batch: Batch, compute_forces: bool = True, create_graph: bool | None = None
    ) -> dict[str, torch.Tensor]:
        if create_graph is None:
            create_graph = self.model.training
        grad = bool(create_graph and torch.is_grad_enabled())
        key = (bool(compute_forces), batch.positions.device, batch.positions.dtype, grad)
        reason = self._eager_reason(batch, grad)
        if reason is None and key not in self._graphs:
            self.model.energy_model.species(batch.numbers)  # unknown elements: the eager error
            self._graphs[key] = self._build(batch, bool(compute_forces), grad)
        if reason is None and self._graphs[key] is None:
            reason = "not compiled (see the warning)"
        if reason is not None:
            self.stats.eager_calls += 1
            self.stats.eager_reasons[reason] = self.stats.eager_reasons.get(reason, 0) + 1
            return self.model(batch, compute_forces=compute_forces, create_graph=create_graph)
        self.stats.compiled_calls += 1
        return self._run(self._graphs[key], batch)

    def _eager_reason(self, batch: Batch, grad: bool) -> str | None:
        if not grad and not self.inference:
            return "no gradient"
        sizes = (batch.n_structures, batch.positions.shape[0], batch.edge_index.shape[1])
        if min(sizes) < 2:
            return "fewer than 2 structures, atoms or edges"
        return None

    def _run(self, graph: tuple[Callable, list[str]], batch: Batch) -> dict[str, torch.Tensor]:
        compiled, names = graph
        geometry = geometry_tensors(batch)
        for tensor, dim in zip(geometry, GEOMETRY.values(), strict=True):
            torch._dynamo.maybe_mark_dynamic(tensor, dim)
        with _duck_shapes(False):
            outs = compiled(*state_inputs(self.model.energy_model, names), *geometry)
        out = {"energy": outs[0]}
        if len(outs) > 1:
            out["forces"] = outs[1]
        return out

    # ---- building -----------------------------------------------------------------------------
    def _backend_fn(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        from torch._dynamo.backends.registry import lookup_backend

        self.stats.compiles += 1
        return lookup_backend(self.backend)(gm, example_inputs)

    def _build(
        self, batch: Batch, forces: bool, grad: bool = True
    ) -> tuple[Callable, list[str]] | None:
        """Trace, compile and check one kind of call; None (with a warning) if that fails."""
        start = time.perf_counter()
        em = self.model.energy_model
        names = [n for n, _ in em.named_parameters()] + [n for n, _ in em.named_buffers()]
        what = f"{type(em).__name__} ({'energy + forces' if forces else 'energy'})"
        function = force_function(em, names, forces)
        try:
            graph = trace(function, state_inputs(em, names) + geometry_tensors(batch))
            check_symbolic(graph, len(names))
        except Exception as err:  # any tracing failure: train eagerly, say why
            self._warn_eager(f"{what} cannot be traced into one graph", err)
            return None
        built = (torch.compile(graph, backend=self._backend_fn, fullgraph=True), names)
        self.stats.graphs += 1
        if not self._agrees(built, batch, forces, what, grad):
            return None
        self.stats.compile_time_s += time.perf_counter() - start
        log.info(
            "%s: %s traced and compiled in %.1f s",
            self.option,
            what,
            time.perf_counter() - start,
        )
        return built

    def _warn_eager(self, text: str, err: Exception) -> None:
        """Warn that a kind of call runs eagerly: ``text`` and the error's first line."""
        first = str(err).splitlines()[0] if str(err) else ""
        log.warning(
            "%s: %s (%s: %s); these calls run eagerly", self.option, text, type(err).__name__, first
        )

    def _agrees(
        self, graph: tuple[Callable, list[str]], batch: Batch, forces: bool, what: str,
        grad: bool = True,
    ) -> bool:  # fmt: skip
        """First call of a new graph against the eager model: outputs and, for a training graph,
        parameter gradients.

        The gradient is that of a random linear functional of energies and forces (a loss on
        both), so the compiled backward (compiled here too) is checked along with the forward.
        An inference graph runs, and is checked, without a gradient.
        """
        with torch.set_grad_enabled(grad):
            eager = self.model(batch, compute_forces=forces, create_graph=grad)
            try:
                fast = self._run(graph, batch)
            except Exception as err:  # a backend failure: run eagerly, say why
                self._warn_eager(f"compiling {what} failed", err)
                return False
        tol = 1e-3 if batch.positions.dtype == torch.float32 else 1e-7
        n_atoms = batch.n_atoms.to(torch.float64)
        errors = {
            "energy per atom (eV)": ((fast["energy"] - eager["energy"]).detach() / n_atoms).abs()
        }
        bounds = {"energy per atom (eV)": 0.1 * tol}
        pairs = [("gradient", *self._gradients(fast, eager))] if grad else []
        if "forces" in eager:
            pairs.append(("forces", fast["forces"].detach(), eager["forces"].detach()))
        for name, a, b in pairs:
            errors[name] = (a - b).abs().detach()
            bounds[name] = tol * float(b.abs().max()) if b.numel() else 0.0
        worst = {k: float(v.max()) if v.numel() else 0.0 for k, v in errors.items()}
        bad = {k: v for k, v in worst.items() if not v <= bounds[k] + 1e-12}
        if bad:
            log.warning(
                "%s: the compiled %s differs from the eager model (%s); these calls run eagerly",
                self.option,
                what,
                ", ".join(f"{k} off by {v:.3g}, allowed {bounds[k]:.3g}" for k, v in bad.items()),
            )
        return not bad

    def _gradients(
        self, fast: dict[str, torch.Tensor], eager: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The parameter gradients of one random linear functional of both models' outputs."""
        params = [p for p in self.model.energy_model.parameters() if p.requires_grad]
        generator = torch.Generator().manual_seed(0)
        weights = {
            k: torch.randn(v.shape, generator=generator, dtype=torch.float64).to(v)
            for k, v in eager.items()
        }

        def gradient(out: dict[str, torch.Tensor]) -> torch.Tensor:
            value = sum((weights[k] * out[k]).sum() for k in weights)
            grads = torch.autograd.grad(value, params, allow_unused=True) if params else []
            flat = [g.reshape(-1) for g in grads if g is not None]
            return torch.cat(flat).double() if flat else torch.zeros(0, dtype=torch.float64)

        return gradient(fast), gradient(eager)
