"""The model-contract test-suite: checks every piwsl backend must pass.

A backend is given as a *factory* ``make_model(elements, cutoff, dtype) -> ForceField`` that
returns a freshly initialised (random-weight) model of working dtype ``dtype``. The checks build
small random molecules and small periodic crystals, run the model and assert physics:

- output contract (shapes, float64 energies, finiteness, metadata, ``validate_output``);
- float32 runs and agrees with float64 (same weights), E0s kept in float64;
- forces: finite differences (float64) for conservative models; equivariance for direct ones;
- invariance of E / equivariance of F under rotations (proper and improper), translations and
  permutations, for molecules and crystals;
- a mixed-size batch gives the per-structure results;
- periodic: positions wrapped by lattice vectors; a cell smaller than the cutoff (atoms see their
  own images) agrees with an explicit supercell;
- neighbour-list skin 0 vs 1 Å gives identical results;
- isolated atoms and far-away atoms are finite, force-free and additive;
- unknown elements raise :class:`~piwsl.errors.UnknownElementError`;
- double backward: ``gradcheck`` of forces w.r.t. positions and of a force loss w.r.t. a parameter
  tensor, and a force loss reaches most parameters;
- stress (conservative models): σ = (1/V) ∂E/∂ε against central differences of the energy under
  symmetric strains of positions and cell (:func:`strain_fd_stress`), the virial of a molecule
  against Σ r_i ⊗ F_i, batch equals single; a direct-force model refuses stress.

Use it three ways: :func:`run_contract_suite` (all checks, one aggregated error),
the individual ``check_*`` functions (listed in :data:`CONTRACT_CHECKS`, convenient for
``pytest.mark.parametrize``), or subclass :class:`ModelContractTests` in a test module and define
``make_model``. Every check takes well under a second for a tiny model (8-16 features).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from piwsl.data.batch import Batch, frames_to_batch
from piwsl.data.frames import Frame
from piwsl.data.neighbors import neighbor_list
from piwsl.errors import ConfigError, UnknownElementError
from piwsl.models.base import validate_output

ModelFactory = Callable[[list[int], float, torch.dtype], torch.nn.Module]


@dataclass(frozen=True)
class ContractSettings:
    """Structures and tolerances of the contract checks (lengths in Å, energies in eV)."""

    elements: tuple[int, ...] = (1, 6, 8)
    cutoff: float = 3.0  # Å
    seed: int = 0
    molecule_sizes: tuple[int, ...] = (5, 8)
    atol_energy: float = 1e-9  # eV, float64 comparisons of equal quantities
    atol_forces: float = 1e-9  # eV/Å
    rtol: float = 1e-9
    fd_step: float = 1e-4  # Å
    fd_rtol: float = 1e-5  # relative to max |F|
    fd_atol: float = 1e-7  # eV/Å
    min_force: float = 1e-6  # eV/Å: a model whose forces are all below this is rejected
    skin: float = 1.0  # Å
    unknown_element: int = 26  # Fe
    extra: dict = field(default_factory=dict)  # free-form, for backend-specific checks


DEFAULT_SETTINGS = ContractSettings()


# ----------------------------------------------------------------------------- structures


def random_molecule(
    rng: np.random.Generator,
    n_atoms: int,
    elements: tuple[int, ...] | list[int],
    min_distance: float = 0.9,
) -> Frame:
    """``n_atoms`` random atoms in a compact cube, no pair closer than ``min_distance`` Å."""
    side = 1.2 * n_atoms ** (1.0 / 3.0) + 0.6
    for _ in range(1000):
        positions = rng.uniform(0.0, side, size=(n_atoms, 3))
        d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
        d[np.diag_indices(n_atoms)] = np.inf
        if d.min() >= min_distance:
            numbers = rng.choice(np.asarray(elements), size=n_atoms)
            numbers[: min(len(elements), n_atoms)] = list(elements)[: min(len(elements), n_atoms)]
            return Frame(numbers=numbers, positions=positions)
    raise RuntimeError(f"could not place {n_atoms} atoms {min_distance} Å apart")


def random_crystal(
    rng: np.random.Generator,
    n_atoms: int,
    elements: tuple[int, ...] | list[int],
    lengths: tuple[float, float, float] = (3.2, 3.4, 3.6),
    min_distance: float = 0.9,
) -> Frame:
    """A slightly triclinic periodic cell with ``n_atoms`` random atoms (images ≥ min_distance)."""
    cell = np.diag(lengths) + rng.uniform(-0.3, 0.3, size=(3, 3)) * (1 - np.eye(3))
    for _ in range(1000):
        frac = rng.uniform(0.0, 1.0, size=(n_atoms, 3))
        positions = frac @ cell
        edges, _ = neighbor_list(positions, cell, np.ones(3, bool), min_distance)
        if edges.shape[1] == 0:
            numbers = rng.choice(np.asarray(elements), size=n_atoms)
            return Frame(numbers=numbers, positions=positions, cell=cell, pbc=np.ones(3, bool))
    raise RuntimeError(f"could not place {n_atoms} atoms {min_distance} Å apart in the cell")


def random_rotation(rng: np.random.Generator, proper: bool = True) -> np.ndarray:
    """A random orthogonal 3×3 matrix with det +1 (``proper``) or −1."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q = -q
    return q


def _transform(frame: Frame, positions: np.ndarray, cell: np.ndarray | None = None) -> Frame:
    return Frame(
        numbers=frame.numbers.copy(),
        positions=positions,
        cell=frame.cell.copy() if cell is None else cell,
        pbc=frame.pbc.copy(),
    )


# ----------------------------------------------------------------------------- helpers


def _make(factory: ModelFactory, settings: ContractSettings, dtype: torch.dtype):
    with torch.random.fork_rng(devices=[]):  # reproducible weights, global RNG left alone
        torch.manual_seed(settings.seed)
        model = factory(list(settings.elements), settings.cutoff, dtype)
    model.eval()
    return model


def _batch(model, frames: list[Frame], dtype: torch.dtype, skin: float = 0.0) -> Batch:
    return frames_to_batch(frames, model.cutoff, skin=skin, dtype=dtype)


def _predict(
    model, frames: list[Frame] | Batch, dtype: torch.dtype = torch.float64, skin: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = frames if isinstance(frames, Batch) else _batch(model, frames, dtype, skin)
    out = model(batch, compute_forces=True, create_graph=False)
    return out["energy"].detach(), out["forces"].detach()


def _close(
    actual: torch.Tensor | np.ndarray,
    expected: torch.Tensor | np.ndarray,
    what: str,
    atol: float,
    rtol: float = 0.0,
) -> None:
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    diff = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    if not bool((diff <= bound).all()) or not bool(torch.isfinite(actual).all()):
        worst = float(diff.max()) if diff.numel() else 0.0
        raise AssertionError(
            f"{what}: max |difference| {worst:.3e} exceeds tolerance "
            f"(atol {atol:.1e}, rtol {rtol:.1e}); largest reference value "
            f"{float(expected.abs().max()) if expected.numel() else 0.0:.3e}"
        )


def _tol(settings: ContractSettings, forces: torch.Tensor) -> float:
    return settings.atol_forces * max(1.0, float(forces.abs().max()))


def _structures(settings: ContractSettings, rng: np.random.Generator) -> list[Frame]:
    frames = [random_molecule(rng, n, settings.elements) for n in settings.molecule_sizes]
    frames.append(random_crystal(rng, 3, settings.elements))
    return frames


# ----------------------------------------------------------------------------- checks


def check_output_contract(factory: ModelFactory, settings: ContractSettings = DEFAULT_SETTINGS):
    """Shapes, float64 energies, finite values, metadata, ``validate_output``, compute_forces."""
    model = _make(factory, settings, torch.float64)
    if abs(float(model.cutoff) - settings.cutoff) > 1e-12:
        raise AssertionError(f"model.cutoff is {model.cutoff} Å, asked for {settings.cutoff} Å")
    missing = set(settings.elements) - {int(z) for z in model.elements}
    if missing:
        raise AssertionError(f"model.elements {model.elements} lacks {sorted(missing)}")
    if not isinstance(model.direct_forces, bool):
        raise AssertionError("model.direct_forces must be a bool")
    rng = np.random.default_rng(settings.seed)
    batch = _batch(model, _structures(settings, rng), torch.float64)
    out = model(batch)
    validate_output(out, batch)
    if out["energy"].dtype != torch.float64:
        raise AssertionError(f"energy must be float64, got {out['energy'].dtype}")
    if out["forces"].dtype != torch.float64:
        raise AssertionError(f"a float64 model gave {out['forces'].dtype} forces")
    if float(out["forces"].detach().abs().max()) < settings.min_force:
        raise AssertionError(
            f"all forces are below {settings.min_force} eV/Å: the model ignores positions"
        )
    energy_only = model(batch, compute_forces=False)
    validate_output(energy_only, batch, forces=False)
    if "forces" in energy_only:
        raise AssertionError("compute_forces=False still returned forces")
    _close(energy_only["energy"].detach(), out["energy"].detach(), "energy without forces", 1e-12)


def check_float32(factory: ModelFactory, settings: ContractSettings = DEFAULT_SETTINGS):
    """A float32 model runs, agrees with the float64 one (same weights) and keeps E0s in float64."""
    model64 = _make(factory, settings, torch.float64)
    model32 = _make(factory, settings, torch.float32)
    model32.load_state_dict(model64.state_dict())
    frames = _structures(settings, np.random.default_rng(settings.seed + 1))
    e64, f64 = _predict(model64, frames, torch.float64)
    batch32 = _batch(model32, frames, torch.float32)
    out32 = model32(batch32)
    validate_output(out32, batch32)
    if out32["energy"].dtype != torch.float64:
        raise AssertionError(f"float32 model: energy must be float64, got {out32['energy'].dtype}")
    if out32["forces"].dtype != torch.float32:
        raise AssertionError(f"float32 model: forces are {out32['forces'].dtype}, not float32")
    scale = max(1.0, float(f64.abs().max()))
    _close(out32["energy"].detach(), e64, "float32 vs float64 energy", 1e-4, 1e-5)
    _close(out32["forces"].detach(), f64, "float32 vs float64 forces", 1e-4 * scale, 1e-4)
    energy_model = getattr(model32, "energy_model", None)
    if energy_model is not None and hasattr(energy_model, "set_reference"):
        # large E0s must be added in float64 even by a float32 model
        e0s = {z: -1000.123456789 * z - 0.987654321 for z in settings.elements}
        energy_model.set_reference(e0s)
        e_ref = model32(batch32, compute_forces=False)["energy"].detach()
        expected = torch.zeros_like(e_ref).index_add(
            0,
            batch32.batch,
            torch.tensor([e0s[int(z)] for z in batch32.numbers], dtype=torch.float64),
        )
        _close(e_ref - out32["energy"].detach(), expected, "E0 sum of a float32 model", 1e-8)


def check_forces(factory: ModelFactory, settings: ContractSettings = DEFAULT_SETTINGS):
    """Conservative: forces equal −dE/dR by central differences (float64, molecule and crystal).

    Direct: forces are rotation-equivariant (finite differences do not apply).
    """
    model = _make(factory, settings, torch.float64)
    if model.direct_forces:
        check_rotation(factory, settings)
        return
    rng = np.random.default_rng(settings.seed + 2)
    frames = [random_molecule(rng, settings.molecule_sizes[0], settings.elements)]
    frames.append(random_crystal(rng, 2, settings.elements))
    h = settings.fd_step
    for frame in frames:
        # one neighbour list with a skin serves all displaced copies
        batch = _batch(model, [frame], torch.float64, skin=4 * h)
        _, forces = _predict(model, batch)
        if float(forces.abs().max()) < settings.min_force:
            raise AssertionError("forces vanish; the finite-difference check would be vacuous")
        base = batch.positions.clone()
        fd = torch.zeros_like(base)
        for a in range(base.shape[0]):
            for c in range(3):
                plus, minus = base.clone(), base.clone()
                plus[a, c] += h
                minus[a, c] -= h
                e_plus = model(batch.with_positions(plus), compute_forces=False)["energy"].sum()
                e_minus = model(batch.with_positions(minus), compute_forces=False)["energy"].sum()
                fd[a, c] = -(e_plus - e_minus).detach() / (2 * h)
        kind = "crystal" if frame.pbc.any() else "molecule"
        atol = settings.fd_atol + settings.fd_rtol * float(forces.abs().max())
        _close(forces, fd, f"{kind}: autograd forces vs finite differences", atol)


def check_rotation(factory: ModelFactory, settings: ContractSettings = DEFAULT_SETTINGS):
    """E invariant, F equivariant under proper and improper rotations (molecule and crystal)."""
    model = _make(factory, settings, torch.float64)
    rng = np.random.default_rng(settings.seed + 3)
    for frame in _structures(settings, rng)[1:]:
        e, f = _predict(model, [frame])
        for proper in (True, False):
            q = random_rotation(rng, proper)
            rotated = _transform(frame, frame.positions @ q.T, frame.cell @ q.T)
            e_r, f_r = _predict(model, [rotated])
            kind = ("proper" if proper else "improper") + (
                " rotation, crystal" if frame.pbc.any() else " rotation, molecule"
            )
            _close(e_r, e, f"{kind}: energy", settings.atol_energy, settings.rtol)
            _close(f_r, f @ torch.as_tensor(q.T), f"{kind}: forces", _tol(settings, f))


def check_translation(factory: ModelFactory, settings: ContractSettings = DEFAULT_SETTINGS):
    """E and F unchanged by a rigid translation (molecule and crystal)."""
    model = _make(factory, settings, torch.float64)
    rng = np.random.default_rng(settings.seed + 4)
    for frame in _structures(settings, rng)[1:]:
        e, f = _predict(model, [frame])
        moved = _transform(frame, frame.positions + rng.normal(size=3) * 3.0)
        e_t, f_t = _predict(model, [moved])
        kind = "crystal" if frame.pbc.any() else "molecule"
        _close(e_t, e, f"translated {kind}: energy", settings.atol_energy, settings.rtol)
        _close(f_t, f, f"translated {kind}: forces", _tol(settings, f))


def check_permutation(factory: ModelFactory, settings: ContractSettings = DEFAULT_SETTINGS):
    """E invariant, F permuted along with the atoms (molecule and crystal)."""
    model = _make(factory, settings, torch.float64)
    rng = np.random.default_rng(settings.seed + 5)
    for frame in _structures(settings, rng)[1:]:
        e, f = _predict(model, [frame])
        perm = rng.permutation(frame.n_atoms)
        permuted = Frame(
            numbers=frame.numbers[perm],
            positions=frame.positions[perm],
            cell=frame.cell,
            pbc=frame.pbc,
        )
        e_p, f_p = _predict(model, [permuted])
        kind = "crystal" if frame.pbc.any() else "molecule"
        _close(e_p, e, f"permuted {kind}: energy", settings.atol_energy, settings.rtol)
        _close(f_p, f[torch.as_tensor(perm)], f"permuted {kind}: forces", _tol(settings, f))


def check_batch_equals_single(factory: ModelFactory, settings: ContractSettings = DEFAULT_SETTINGS):
    """A mixed-size batch (two molecules and a crystal) gives each structure's own result."""
    model = _make(factory, settings, torch.float64)
    frames = _structures(settings, np.random.default_rng(settings.seed + 6))
    e_batch, f_batch = _predict(model, frames)
    offset = 0
    for s, frame in enumerate(frames):
        e, f = _predict(model, [frame])
        n = frame.n_atoms
        _close(
            e_batch[s : s + 1],
            e,
            f"batched energy of structure {s}",
            settings.atol_energy,
            settings.rtol,
        )
        _close(
            f_batch[offset : offset + n], f, f"batched forces of structure {s}", _tol(settings, f)
        )
        offset += n
    # the same structure twice in one batch (equal sizes must not be reshaped together)
    e2, _ = _predict(model, [frames[0], frames[0]])
    _close(
        e2,
        e_batch[:1].repeat(2),
        "structure repeated in a batch",
        settings.atol_energy,
        settings.rtol,
    )


def check_wrapped_positions(factory: ModelFactory, settings: ContractSettings = DEFAULT_SETTINGS):
    """Atoms moved by whole lattice vectors give the same energy and forces."""
    model = _make(factory, settings, torch.float64)
    rng = np.random.default_rng(settings.seed + 7)
    frame = random_crystal(rng, 4, settings.elements)
    e, f = _predict(model, [frame])
    shifts = rng.integers(-2, 3, size=(frame.n_atoms, 3))
    shifts[0] = (1, -1, 2)  # at least one atom leaves the cell
    unwrapped = _transform(frame, frame.positions + shifts @ frame.cell)
    e_u, f_u = _predict(model, [unwrapped])
    _close(e_u, e, "unwrapped crystal: energy", settings.atol_energy, settings.rtol)
    _close(f_u, f, "unwrapped crystal: forces", _tol(settings, f))


def check_periodic_images(factory: ModelFactory, settings: ContractSettings = DEFAULT_SETTINGS):
    """Cells smaller than the cutoff (atoms see their own images) agree with explicit supercells.

    A one-atom cubic cell has zero force by symmetry; a rattled two-atom cell repeated 2×2×1 has
    4× its energy and the same forces on every copy.
    """
    model = _make(factory, settings, torch.float64)
    a = 0.8 * settings.cutoff
    single = Frame(
        numbers=[settings.elements[0]], positions=np.zeros((1, 3)), cell=np.eye(3) * a, pbc=True
    )
    batch = _batch(model, [single], torch.float64)
    if int(batch.edge_index.shape[1]) == 0:
        raise AssertionError("one-atom cell smaller than the cutoff has no image neighbours")
    e1, f1 = _predict(model, batch)
    if not bool(torch.isfinite(e1).all()):
        raise AssertionError("one-atom periodic cell: energy is not finite")
    _close(f1, torch.zeros_like(f1), "one-atom cubic cell: force (zero by symmetry)", 1e-8)

    rng = np.random.default_rng(settings.seed + 8)
    cell = np.diag([0.9 * settings.cutoff, 0.85 * settings.cutoff, 1.1 * settings.cutoff])
    cell[1, 0] = 0.3
    frac = np.array([[0.1, 0.2, 0.15], [0.55, 0.6, 0.7]]) + rng.uniform(-0.05, 0.05, (2, 3))
    numbers = np.array(
        settings.elements[:2] if len(settings.elements) > 1 else settings.elements * 2
    )
    small = Frame(numbers=numbers, positions=frac @ cell, cell=cell, pbc=True)
    reps = np.array([[i, j, 0] for i in range(2) for j in range(2)])
    big = Frame(
        numbers=np.tile(numbers, len(reps)),
        positions=np.concatenate([small.positions + r @ cell for r in reps]),
        cell=cell * np.array([[2], [2], [1]]),
        pbc=True,
    )
    e_small, f_small = _predict(model, [small])
    e_big, f_big = _predict(model, [big])
    _close(
        e_big,
        4 * e_small,
        "2×2×1 supercell energy vs 4 × cell",
        4 * settings.atol_energy,
        settings.rtol,
    )
    _close(f_big, f_small.repeat(4, 1), "supercell forces vs cell forces", _tol(settings, f_small))


def check_skin(factory: ModelFactory, settings: ContractSettings = DEFAULT_SETTINGS):
    """Neighbour lists with skin 0 and ``settings.skin`` give identical energies and forces."""
    model = _make(factory, settings, torch.float64)
    frames = _structures(settings, np.random.default_rng(settings.seed + 9))
    tight = _batch(model, frames, torch.float64, skin=0.0)
    loose = _batch(model, frames, torch.float64, skin=settings.skin)
    if loose.edge_index.shape[1] <= tight.edge_index.shape[1]:
        raise AssertionError("the skin added no edges; the check would be vacuous")
    e0, f0 = _predict(model, tight)
    e1, f1 = _predict(model, loose)
    _close(e1, e0, f"energy with skin {settings.skin} Å vs 0", settings.atol_energy, settings.rtol)
    _close(f1, f0, f"forces with skin {settings.skin} Å vs 0", _tol(settings, f0))


def check_isolated_atoms(factory: ModelFactory, settings: ContractSettings = DEFAULT_SETTINGS):
    """A lone atom is finite and force-free; a far-away atom adds its own energy and no force."""
    model = _make(factory, settings, torch.float64)
    lone = Frame(numbers=[settings.elements[-1]], positions=np.zeros((1, 3)))
    e_atom, f_atom = _predict(model, [lone])
    if not (bool(torch.isfinite(e_atom).all()) and bool(torch.isfinite(f_atom).all())):
        raise AssertionError("isolated atom: output is not finite")
    _close(f_atom, torch.zeros_like(f_atom), "isolated atom: force", 1e-10)
    rng = np.random.default_rng(settings.seed + 10)
    mol = random_molecule(rng, settings.molecule_sizes[0], settings.elements)
    far = mol.positions.max(axis=0) + 2.5 * settings.cutoff
    both = Frame(
        numbers=np.append(mol.numbers, settings.elements[-1]),
        positions=np.vstack([mol.positions, far]),
    )
    e_mol, f_mol = _predict(model, [mol])
    e_both, f_both = _predict(model, [both])
    _close(
        e_both,
        e_mol + e_atom,
        "molecule + far atom: energy additivity",
        settings.atol_energy,
        settings.rtol,
    )
    _close(f_both[:-1], f_mol, "molecule + far atom: molecule forces", _tol(settings, f_mol))
    _close(f_both[-1:], torch.zeros_like(f_both[-1:]), "far atom: force", 1e-10)


def check_unknown_element(factory: ModelFactory, settings: ContractSettings = DEFAULT_SETTINGS):
    """An element outside ``model.elements`` raises :class:`UnknownElementError`."""
    model = _make(factory, settings, torch.float64)
    z = settings.unknown_element
    if z in model.elements:
        raise AssertionError(f"settings.unknown_element Z={z} is known to the model")
    rng = np.random.default_rng(settings.seed + 11)
    mol = random_molecule(rng, 4, settings.elements)
    numbers = mol.numbers.copy()
    numbers[1] = z
    bad = Frame(numbers=numbers, positions=mol.positions)
    try:
        model(_batch(model, [bad], torch.float64))
    except UnknownElementError:
        return
    raise AssertionError(f"a structure with Z={z} did not raise UnknownElementError")


def check_double_backward(factory: ModelFactory, settings: ContractSettings = DEFAULT_SETTINGS):
    """gradcheck of F(R) and of a force loss w.r.t. a parameter; force losses reach the weights."""
    model = _make(factory, settings, torch.float64)
    rng = np.random.default_rng(settings.seed + 12)
    mol = random_molecule(rng, 4, settings.elements)
    # plus an atom without neighbours: zero-length vector features must stay differentiable
    frame = Frame(
        numbers=np.append(mol.numbers, settings.elements[0]),
        positions=np.vstack([mol.positions, mol.positions.max(axis=0) + 2.5 * settings.cutoff]),
    )
    batch = _batch(model, [frame], torch.float64, skin=0.5)

    def forces_of(positions: torch.Tensor) -> torch.Tensor:
        return model(batch.with_positions(positions), create_graph=True)["forces"]

    positions = batch.positions.clone().requires_grad_(True)
    if not torch.autograd.gradcheck(forces_of, (positions,), eps=1e-6, atol=1e-6, rtol=1e-4):
        raise AssertionError("gradcheck of forces w.r.t. positions failed")

    target = torch.as_tensor(rng.normal(size=(frame.n_atoms, 3)))
    params = dict(model.named_parameters())
    loss = ((model(batch, create_graph=True)["forces"] - target) ** 2).sum()
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    nonzero = []
    for name, g in zip(params, grads, strict=True):
        if g is not None and not bool(torch.isfinite(g).all()):
            raise AssertionError(f"force-loss gradient of parameter {name!r} is not finite")
        if g is not None and bool((g != 0).any()):
            nonzero.append(name)
    if len(nonzero) < max(1, len(params) // 2):
        raise AssertionError(
            f"a loss on forces reaches only {len(nonzero)} of {len(params)} parameter tensors"
        )
    # the earliest (deepest in the graph) small parameter tensor, else the smallest one
    small = [n for n in nonzero if params[n].numel() <= 256]
    name = small[0] if small else min(nonzero, key=lambda n: params[n].numel())

    def loss_of(p: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, {name: p}, (batch,), {"create_graph": True})
        return ((out["forces"] - target) ** 2).sum()

    p = params[name].detach().clone().requires_grad_(True)
    if not torch.autograd.gradcheck(loss_of, (p,), eps=1e-6, atol=1e-6, rtol=1e-4):
        raise AssertionError(f"gradcheck of a force loss w.r.t. parameter {name!r} failed")


def strained(positions: np.ndarray, cell: np.ndarray, eps: np.ndarray):
    """Positions and cell under the strain ``eps`` (3×3, rows are vectors): X (1 + ε)."""
    deform = np.eye(3) + eps
    return positions @ deform, cell @ deform


def strain_fd_stress(
    energy: Callable[[np.ndarray, np.ndarray], float],
    positions: np.ndarray,
    cell: np.ndarray,
    h: float = 1e-5,
) -> np.ndarray:
    """σ_ab = (1/V) ∂E/∂ε_ab by central differences of ``energy(positions, cell)`` (eV) under
    symmetric strains ±h (ε_ab = ε_ba = h/2), 3×3 in eV/Å³ — ASE's sign convention."""
    volume = abs(float(np.linalg.det(cell)))
    out = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            eps = np.zeros((3, 3))
            eps[a, b] += 0.5 * h
            eps[b, a] += 0.5 * h
            e_plus = energy(*strained(positions, cell, eps))
            e_minus = energy(*strained(positions, cell, -eps))
            out[a, b] = out[b, a] = (e_plus - e_minus) / (2 * h * volume)
    return out


def check_stress(factory: ModelFactory, settings: ContractSettings = DEFAULT_SETTINGS):
    """Conservative: the stress equals central differences of the energy under strain (a
    triclinic crystal, float64), forces are unchanged by computing it, a molecule's virial is
    Σ r_i ⊗ F_i and its stress NaN, a mixed batch gives each structure's own stress.

    Direct: ``compute_stress=True`` raises :class:`~piwsl.errors.ConfigError`.
    """
    model = _make(factory, settings, torch.float64)
    rng = np.random.default_rng(settings.seed + 13)
    crystal = random_crystal(rng, 3, settings.elements)
    if model.direct_forces:
        try:
            model(_batch(model, [crystal], torch.float64), compute_stress=True)
        except ConfigError:
            return
        raise AssertionError("a direct-force model computed a stress")
    h = 1e-5
    batch = _batch(model, [crystal], torch.float64, skin=0.2)

    def energy(positions: np.ndarray, cell: np.ndarray) -> float:
        moved = batch.with_positions(torch.as_tensor(positions))
        moved.cell = torch.as_tensor(cell).unsqueeze(0)
        return float(model(moved, compute_forces=False)["energy"].detach().sum())

    out = model(batch, compute_stress=True, create_graph=False)
    stress = out["stress"][0]
    fd = strain_fd_stress(energy, crystal.positions, crystal.cell, h)
    if float(np.abs(fd).max()) < 1e-6:
        raise AssertionError("the stress vanishes; the finite-difference check would be vacuous")
    _close(
        stress,
        fd,
        "stress vs finite differences of the energy under strain",
        1e-6 * max(1.0, float(np.abs(fd).max())) + 1e-8,
    )
    _close(out["virial"][0], -stress * crystal.volume, "virial = −σ V", 1e-10)
    _, forces = _predict(model, batch)
    _close(out["forces"], forces, "forces computed with the stress", _tol(settings, forces))

    mol = random_molecule(rng, settings.molecule_sizes[0], settings.elements)
    both = model(_batch(model, [mol, crystal], torch.float64), compute_stress=True)
    if not bool(torch.isnan(both["stress"][0]).all()):
        raise AssertionError("a molecule (no volume) has a finite stress")
    r = torch.as_tensor(mol.positions)
    f_mol = both["forces"][: mol.n_atoms].detach()
    expected = torch.einsum("ni,nj->ij", r, f_mol)
    expected = 0.5 * (expected + expected.T)
    _close(
        both["virial"][0].detach(), expected, "molecule: virial vs Σ r ⊗ F", _tol(settings, f_mol)
    )
    _close(
        both["stress"][1].detach(), stress, "stress of the crystal batched with a molecule", 1e-9
    )


CONTRACT_CHECKS: dict[str, Callable[[ModelFactory, ContractSettings], None]] = {
    "output_contract": check_output_contract,
    "float32": check_float32,
    "forces": check_forces,
    "rotation": check_rotation,
    "translation": check_translation,
    "permutation": check_permutation,
    "batch_equals_single": check_batch_equals_single,
    "wrapped_positions": check_wrapped_positions,
    "periodic_images": check_periodic_images,
    "skin": check_skin,
    "isolated_atoms": check_isolated_atoms,
    "unknown_element": check_unknown_element,
    "double_backward": check_double_backward,
    "stress": check_stress,
}


def run_contract_suite(
    factory: ModelFactory,
    settings: ContractSettings = DEFAULT_SETTINGS,
    checks: list[str] | None = None,
) -> dict[str, float]:
    """Run the named checks (all by default); return seconds per check, raise listing failures."""
    names = list(CONTRACT_CHECKS) if checks is None else checks
    unknown = [n for n in names if n not in CONTRACT_CHECKS]
    if unknown:
        raise ValueError(f"unknown contract checks {unknown}; choose from {list(CONTRACT_CHECKS)}")
    timings: dict[str, float] = {}
    failures: list[str] = []
    for name in names:
        start = time.perf_counter()
        try:
            CONTRACT_CHECKS[name](factory, settings)
        except (AssertionError, RuntimeError, ValueError) as err:
            failures.append(f"{name}: {type(err).__name__}: {err}")
        timings[name] = time.perf_counter() - start
    if failures:
        raise AssertionError(
            f"{len(failures)} of {len(names)} model-contract checks failed:\n" + "\n".join(failures)
        )
    return timings


class ModelContractTests:
    """pytest mixin: subclass as ``TestMyModel(ModelContractTests)`` and define ``make_model``.

    ``make_model(self, elements, cutoff, dtype)`` returns a fresh ForceField; override
    ``settings`` to change structures or tolerances. One test per entry of CONTRACT_CHECKS.
    """

    settings: ContractSettings = DEFAULT_SETTINGS

    def make_model(self, elements: list[int], cutoff: float, dtype: torch.dtype):
        raise NotImplementedError("define make_model(elements, cutoff, dtype) -> ForceField")


def _make_test(check: Callable[[ModelFactory, ContractSettings], None]):
    def test(self) -> None:
        check(self.make_model, self.settings)

    test.__doc__ = check.__doc__
    return test


for _name, _check in CONTRACT_CHECKS.items():
    setattr(ModelContractTests, f"test_{_name}", _make_test(_check))
