"""The built-in materials data set: GFN1-xTB energies, forces and stress of crystal snapshots.

What it is: thermal snapshots of three crystals — Si (diamond, 2×2×2 conventional cells, 64
atoms), rutile TiO₂ (2×2×2, 48 atoms) and anatase TiO₂ (2×2×1, 48 atoms) — at 300, 600 and 900 K,
each homogeneously strained (volume ±3 %, half of them with shear and uniaxial parts up to ±1 %),
labelled with periodic GFN1-xTB (tblite, Γ point only) energies, forces and stresses. It stands in
for a DFT data set of materials MD snapshots (the kind the PIWSL paper uses for its materials
experiments) at a cost this shared 2-core machine can pay.

Li₂O (antifluorite, ``--materials li2o``) is not shipped: in the 2×2×1 cell (48 atoms, c = 4.6 Å)
Γ-point GFN1-xTB drove the cell, relaxed within its space group, from c = 4.61 Å to 6.6 Å and
a = 4.78 Å per conventional cell in 88 BFGS steps with the energy still falling — a Γ-point
artefact of the short axis; a 2×2×2 cell (96 atoms) costs ~8× per frame, more than this machine had.

The snapshots are *not* MD: molecular dynamics, even with CHGNet as a cheap sampler (≈ 0.5 CPU-s
per step for 64 atoms), did not fit the CPU this machine leaves to it. They are Einstein-model
thermal displacements instead: every atom moves by an independent Gaussian with per-component
variance k_B T / k_Z, where k_Z is the on-site force constant of element Z, measured with
GFN1-xTB by displacing one atom of that element (0.02 Å along (1, 1, 1)/√3) in the relaxed crystal;
the mean displacement of each cell is removed. This gives each element its thermal amplitude at T
but not the correlations of real phonons (neighbours do not move together), so the snapshots are
rougher than MD ones at the same temperature.

The steps (each skipped when its file exists in ``--work``, so a killed run resumes; a killed
relaxation restarts from its last geometry; the labels go through piwsl's labelling journal, frame
by frame):

1. ``relax`` — each crystal's supercell relaxed with GFN1-xTB (tblite's ASE calculator,
   ``ase.filters.FrechetCellFilter`` + BFGS to 0.005 eV/Å, within its space group:
   ``ase.constraints.FixSymmetry``): the reference structures and lattice parameters
   (``builtin:materials_gfn1_relaxed``). Unconstrained, the rutile cell does not stay rutile
   under GFN1-xTB (see the README).
2. ``sample`` — the on-site force constants, then ``--frames`` strained Einstein snapshots per
   crystal and temperature (seeded).
3. ``label`` — GFN1-xTB through :func:`piwsl.labelling.label_structures` (journal, resumable).
4. ``assemble`` — per-frame provenance (material, supercell, temperature, strain, seed, sampler,
   force constants) joined to the labels; of each (crystal, temperature) the first two thirds go to
   ``materials_gfn1_train.extxyz``, the rest to ``materials_gfn1_test.extxyz``.

    python benchmarks/materials_data.py                 # everything
    python benchmarks/materials_data.py --stage relax   # one step
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, command_line, git_commit, machine_info

from piwsl.io.atomic import atomic_path, write_json

#: name → (builder, supercell repetition); the builders give the conventional cells
MATERIALS = ("si", "rutile", "anatase", "li2o")
#: the shipped set: Li₂O is left out (Γ-point GFN1-xTB collapses its 2×2×1 cell, see the README)
SHIPPED = ("si", "rutile", "anatase")
TEMPERATURES = (300.0, 600.0, 900.0)
METHOD = "gfn1-xtb"
REFERENCE = (
    "GFN1-xTB (tblite, ASE calculator, Γ point only, default electronic temperature): energy (eV), "
    "forces (eV/Å), stress (eV/Å³, ASE's sign) of the whole periodic supercell"
)
STANDS_IN_FOR = (
    "a DFT (e.g. PBE) data set of MD snapshots of crystals at several temperatures and strains, "
    "the kind the PIWSL paper uses for materials; GFN1-xTB at the Γ point is far from converged "
    "DFT (its lattice parameters differ from experiment by −6 … +11 %), so the numbers measure "
    "how well a model learns *this* reference, not real TiO₂ or Si"
)
SAMPLER = (
    "Einstein-model thermal displacements: independent Gaussians of variance k_B T / k_Z per "
    "component (k_Z: GFN1-xTB on-site force constant of element Z), mean removed, then a random "
    "symmetric strain (volume ±3 %; every second frame also shear/uniaxial ±1 %)"
)


def unit_cell(name: str):
    """The conventional cell of ``name`` at the experimental lattice parameters."""
    from ase.build import bulk
    from ase.spacegroup import crystal

    if name == "si":
        return bulk("Si", "diamond", a=5.431, cubic=True), (2, 2, 2)
    if name == "rutile":
        cell = crystal(
            ["Ti", "O"],
            basis=[(0, 0, 0), (0.3048, 0.3048, 0)],
            spacegroup=136,
            cellpar=[4.594, 4.594, 2.959, 90, 90, 90],
        )
        return cell, (2, 2, 2)
    if name == "anatase":
        cell = crystal(
            ["Ti", "O"],
            basis=[(0, 0, 0), (0, 0, 0.2081)],
            spacegroup=141,
            cellpar=[3.785, 3.785, 9.514, 90, 90, 90],
        )
        return cell, (2, 2, 1)
    if name == "li2o":
        return bulk("Li2O", "fluorite", a=4.61, cubic=True), (2, 2, 1)
    raise ValueError(f"unknown material {name!r}; choose from {', '.join(MATERIALS)}")


def write_atomic(frames: list, path: Path) -> None:
    import ase.io

    with atomic_path(path) as tmp:
        ase.io.write(str(tmp), frames, format="extxyz")


def relax(name: str, work: Path) -> Any:
    """The GFN1-xTB-relaxed supercell of ``name`` (cached in ``work``)."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    path = work / f"relaxed_{name}.extxyz"
    if path.exists():
        return ase.io.read(str(path))
    cell, reps = unit_cell(name)
    atoms = cell.repeat(reps)
    trajectory = work / f"relax_{name}.traj"
    if trajectory.exists() and trajectory.stat().st_size > 0:  # a killed relaxation: go on
        try:
            last = ase.io.read(str(trajectory), -1)
            atoms.set_cell(last.cell)
            atoms.positions = last.positions
        except Exception as err:  # a torn last record: start again
            print(f"relax {name}: cannot read {trajectory.name} ({err}); starting afresh")
    atoms.calc = TBLite(method="GFN1-xTB", verbosity=0)
    # within the space group: unconstrained, GFN1-xTB's 48-atom rutile cell breaks its symmetry
    # (BFGS went on lowering the energy by > 0.8 eV past a near-converged rutile cell)
    atoms.set_constraint(FixSymmetry(atoms, symprec=1e-3))
    start = time.perf_counter()
    opt = BFGS(
        FrechetCellFilter(atoms),
        logfile=str(work / f"relax_{name}.log"),
        trajectory=str(trajectory),
        append_trajectory=True,
    )
    opt.run(fmax=0.005, steps=200)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    stress = atoms.get_stress(voigt=False)
    out = atoms.copy()
    out.set_constraint()
    out.calc = SinglePointCalculator(out, energy=energy, forces=forces)
    out.info.update(
        material=name,
        supercell=" ".join(map(str, reps)),
        REF_energy=float(energy),
        REF_stress=np.asarray(stress),
        relax_steps=int(opt.nsteps),
        relax_wall_time_s=time.perf_counter() - start,
    )
    out.arrays["REF_forces"] = np.asarray(forces)
    out.calc = None
    write_atomic([out], path)
    return out


def random_strain(rng: np.random.Generator, shear: bool) -> np.ndarray:
    """A symmetric strain: isotropic part U(−3, 3) %, with ``shear`` also deviatoric and shear
    components U(−1, 1) %."""
    eps = np.eye(3) * rng.uniform(-0.03, 0.03)
    if shear:
        extra = rng.uniform(-0.01, 0.01, size=(3, 3))
        eps = eps + 0.5 * (extra + extra.T)
    return eps


def force_constants(name: str, work: Path, step: float = 0.02) -> dict[str, float]:
    """On-site force constant (eV/Å²) of each element of ``name``: one atom displaced by
    ``step`` Å along (1, 1, 1)/√3 in the relaxed crystal, k = −ΔF·d/|d|² (GFN1-xTB)."""
    from ase.data import chemical_symbols

    from piwsl.labelling.backends import make_backend

    path = work / f"force_constants_{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    relaxed = relax(name, work)
    backend = make_backend(METHOD)
    base = backend.compute(relaxed)["forces"]
    direction = np.ones(3) / np.sqrt(3.0)
    out = {}
    for z in sorted(set(relaxed.numbers.tolist())):
        i = int(np.flatnonzero(relaxed.numbers == z)[0])
        moved = relaxed.copy()
        moved.positions[i] += step * direction
        forces = backend.compute(moved)["forces"]
        out[chemical_symbols[z]] = float(-(forces[i] - base[i]) @ direction / step)
    write_json(path, out, indent=2)
    return out


def sample(name: str, temperature: float, n_frames: int, work: Path, seed: int) -> list:
    """Strained Einstein-model thermal snapshots of the relaxed supercell (cached in ``work``)."""
    import ase.io
    from ase import units

    path = work / f"sampled_{name}_{int(temperature)}K.extxyz"
    if path.exists():
        return ase.io.read(str(path), ":")
    relaxed = relax(name, work)
    k = force_constants(name, work)
    sigma = np.array([np.sqrt(units.kB * temperature / k[s]) for s in relaxed.symbols])
    rng = np.random.default_rng(seed)
    frames = []
    for j in range(n_frames):
        atoms = relaxed.copy()
        atoms.calc = None
        u = rng.normal(size=(len(atoms), 3)) * sigma[:, None]
        atoms.positions = atoms.positions + u - u.mean(axis=0)
        eps = random_strain(rng, shear=bool(j % 2))
        deform = np.eye(3) + eps
        atoms.set_cell(atoms.cell.array @ deform, scale_atoms=False)
        atoms.positions = atoms.positions @ deform
        atoms.info = {
            "material": name,
            "supercell": relaxed.info["supercell"],
            "sample_temperature_K": temperature,
            "sample_seed": seed,
            "sample_index": j,
            "sampler": "Einstein-model thermal displacements (GFN1-xTB on-site force constants)",
            "strain": eps,
        }
        frames.append(atoms)
    write_atomic(frames, path)
    return frames


def label(frames: list, work: Path) -> list:
    """GFN1-xTB labels through piwsl's labelling journal (resumable)."""
    import ase.io

    from piwsl.labelling import label_structures

    unlabelled = work / "unlabelled.extxyz"
    if not unlabelled.exists():
        write_atomic(frames, unlabelled)
    labelled = work / "labelled.extxyz"
    summary = label_structures(str(unlabelled), str(labelled), backend=METHOD, progress=True)
    print(summary.text())
    if not labelled.exists():
        raise SystemExit("labelling unfinished; run again to continue")
    return ase.io.read(str(labelled), ":")


def assemble(sampled: list, labelled: list, out_dir: Path) -> dict[str, Any]:
    """Join provenance and labels; split each trajectory 2/3 train, last 1/3 test."""
    train, test = [], []
    by_trajectory: dict[tuple[str, float], list] = {}
    for source, target in zip(sampled, labelled, strict=True):
        if target.info.get("REF_status") != "ok":
            print(f"dropping a failed frame: {target.info.get('REF_error')}")
            continue
        target.info.update({k: v for k, v in source.info.items() if k not in target.info})
        key = (str(source.info["material"]), float(source.info["sample_temperature_K"]))
        by_trajectory.setdefault(key, []).append(target)
    for frames in by_trajectory.values():
        cut = (2 * len(frames)) // 3
        train.extend(frames[:cut])
        test.extend(frames[cut:])
    write_atomic(train, out_dir / "materials_gfn1_train.extxyz")
    write_atomic(test, out_dir / "materials_gfn1_test.extxyz")
    return {"n_train": len(train), "n_test": len(test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(ROOT / "runs" / "materials_data"))
    parser.add_argument("--out", default=str(ROOT / "src" / "piwsl" / "datasets"))
    parser.add_argument("--stage", choices=["relax", "sample", "label", "all"], default="all")
    parser.add_argument("--frames", type=int, default=8, help="frames per crystal and T")
    parser.add_argument("--materials", nargs="+", default=list(SHIPPED), choices=MATERIALS)
    parser.add_argument("--temperatures", nargs="+", type=float, default=list(TEMPERATURES))
    args = parser.parse_args()
    work, out_dir = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    relaxed = [relax(name, work) for name in args.materials]
    if args.stage == "relax":
        return
    sampled = []
    for m, name in enumerate(args.materials):
        for t, temperature in enumerate(args.temperatures):
            sampled.extend(sample(name, temperature, args.frames, work, seed=100 * m + t))
    if args.stage == "sample":
        return
    labelled = label(sampled, work)
    counts = assemble(sampled, labelled, out_dir)
    write_atomic(relaxed, out_dir / "materials_gfn1_relaxed.extxyz")
    record = {
        "command": command_line(),
        "commit": git_commit(),
        "machine": machine_info(),
        "reference": REFERENCE,
        "stands_in_for": STANDS_IN_FOR,
        "sampler": SAMPLER,
        **counts,
        "relaxed_cellpar_A_deg": {
            str(a.info["material"]): [round(float(x), 4) for x in a.cell.cellpar()] for a in relaxed
        },
        "materials": args.materials,
        "temperatures_K": args.temperatures,
        "force_constants_eV_per_A2": {m: force_constants(m, work) for m in args.materials},
    }
    write_json(out_dir / "materials_gfn1.provenance.json", record, indent=2)


if __name__ == "__main__":
    main()
