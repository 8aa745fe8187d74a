"""The built-in materials data set: GFN1-xTB energies, forces and stress of crystal snapshots.

What it is: molecular-dynamics snapshots of four crystals — Si (diamond, 64 atoms), rutile and
anatase TiO₂ (48 atoms each) and Li₂O (antifluorite, 48 atoms) — at 300, 600 and 900 K, each
snapshot homogeneously strained (volume ±3 %, half of them with shear and uniaxial parts up to
±1 %), labelled with periodic GFN1-xTB (tblite, Γ point only) energies, forces and stresses. It
stands in for a DFT data set of materials MD (the kind the PIWSL paper uses for its materials
experiments) at a cost this machine can pay: ≈ 10–30 s per frame on one core.

The steps (each skipped when its file exists in ``--work``, so a killed run resumes; the labels
go through piwsl's labelling journal, frame by frame):

1. ``relax`` — each crystal's supercell relaxed with GFN1-xTB (tblite's ASE calculator,
   ``ase.filters.FrechetCellFilter`` + BFGS to 0.005 eV/Å): the reference structures and lattice
   parameters (``builtin:materials_gfn1_relaxed``).
2. ``sample`` — Langevin NVT MD (piwsl's sampler, :func:`piwsl.labelling.sampling.sample_md`) in
   the relaxed cell with CHGNet 0.4.2 (pretrained weights from its wheel) as the cheap sampling
   potential: 2 fs steps, friction 0.02/fs, 40 steps discarded, then one frame every 15 steps.
   CHGNet only chooses the positions; it labels nothing. Then every frame is strained by its own
   random symmetric ε (positions and cell, X → X(1 + ε)).
3. ``label`` — GFN1-xTB through :func:`piwsl.labelling.label_structures` (journal, resumable).
4. ``assemble`` — per-frame provenance (material, supercell, temperature, MD step, seed, sampler,
   strain) joined to the labels; the first two thirds of each trajectory go to
   ``materials_gfn1_train.extxyz``, the last third to ``materials_gfn1_test.extxyz`` (later in time
   and strained independently, but from the same trajectories: not an independent test set).

    python benchmarks/materials_data.py                 # everything (≈ 2–3 h on 1 loaded core)
    python benchmarks/materials_data.py --stage relax   # one step
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, command_line, git_commit, machine_info

#: name → (builder, supercell repetition); the builders give the conventional cells
MATERIALS = ("si", "rutile", "anatase", "li2o")
TEMPERATURES = (300.0, 600.0, 900.0)
METHOD = "gfn1-xtb"


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

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    ase.io.write(str(tmp), frames, format="extxyz")
    os.replace(tmp, path)


def relax(name: str, work: Path) -> Any:
    """The GFN1-xTB-relaxed supercell of ``name`` (cached in ``work``)."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    path = work / f"relaxed_{name}.extxyz"
    if path.exists():
        return ase.io.read(str(path))
    cell, reps = unit_cell(name)
    atoms = cell.repeat(reps)
    atoms.calc = TBLite(method="GFN1-xTB", verbosity=0)
    start = time.perf_counter()
    opt = BFGS(FrechetCellFilter(atoms), logfile=str(work / f"relax_{name}.log"))
    opt.run(fmax=0.005, steps=200)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    stress = atoms.get_stress(voigt=False)
    out = atoms.copy()
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


def sample(name: str, temperature: float, n_frames: int, work: Path, seed: int) -> list:
    """Strained CHGNet-MD snapshots of the relaxed supercell (cached in ``work``)."""
    import ase.io
    from chgnet.model.dynamics import CHGNetCalculator

    from piwsl.labelling.sampling import SamplingConfig, sample_md

    path = work / f"sampled_{name}_{int(temperature)}K.extxyz"
    if path.exists():
        return ase.io.read(str(path), ":")
    start = relax(name, work)
    start.calc = None
    config = SamplingConfig(
        temperature_K=temperature,
        n_frames=n_frames,
        every=15,
        equilibration_steps=40,
        timestep_fs=2.0,
        friction_per_fs=0.02,
        seed=seed,
    )
    t0 = time.perf_counter()
    frames = sample_md(start, CHGNetCalculator(use_device="cpu"), config, progress=True)
    wall = time.perf_counter() - t0
    rng = np.random.default_rng(seed + 1)
    import chgnet

    for k, atoms in enumerate(frames):
        eps = random_strain(rng, shear=bool(k % 2))
        deform = np.eye(3) + eps
        atoms.set_cell(atoms.cell.array @ deform, scale_atoms=False)
        atoms.positions = atoms.positions @ deform
        atoms.info.update(
            material=name,
            supercell=start.info["supercell"],
            strain=eps,
            sampler=f"CHGNet {chgnet.__version__} Langevin NVT",
            sample_wall_time_s=wall / len(frames),
        )
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
        key = (source.info["material"], float(source.info["sample_temperature_K"]))
        by_trajectory.setdefault(key, []).append(target)
    for frames in by_trajectory.values():
        cut = (2 * len(frames) + 2) // 3
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
    parser.add_argument("--frames", type=int, default=12, help="frames per trajectory")
    parser.add_argument("--materials", nargs="+", default=list(MATERIALS))
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
        **counts,
        "materials": args.materials,
        "temperatures_K": args.temperatures,
    }
    (out_dir / "materials_gfn1.provenance.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
