"""MACE backend: mace-torch's ``ScaleShiftMACE`` behind piwsl's model contract.

This module owns the ``"mace"`` model (registered here, built lazily so that mace-torch stays an
optional dependency), the conversion of a piwsl :class:`~piwsl.data.batch.Batch` into MACE's inputs,
the export of a trained piwsl MACE to a model file that mace-torch's own ``MACECalculator`` loads
(:func:`export_to_mace`), the import of a model file written by mace-torch for fine-tuning
(:func:`from_mace_model`) and parameter freezing (:func:`freeze`, :func:`unfreeze`).

Energies (eV). piwsl's base class adds the reference energies, so that

    E = Σ_i ( E0[Z_i] + shift + scale · e_i ),

where ``e_i`` is MACE's *interaction* energy of atom i (pair repulsion, if any, plus all readouts)
*before* MACE's own scale/shift. MACE's own ``atomic_energies`` and ``scale_shift`` are therefore
never used inside piwsl (kept at 0 / identity); :func:`export_to_mace` folds piwsl's E0s, shift and
scale into them, :func:`from_mace_model` takes them out again. Nothing is counted twice.

Graph convention. piwsl's ``edge_index`` row 0 is the centre i, row 1 the neighbour j, and the
edge vector is ``r_j - r_i + S·cell``. MACE names row 0 the *sender*, row 1 the *receiver* and uses
``vector = r_receiver - r_sender + shift``, aggregating messages on the receiver. piwsl's list is
passed unchanged: the vectors are identical to those mace-torch builds from its own (ASE/matscipy)
neighbour list, and both lists are full (every pair both ways), so the model computes exactly what
mace-torch computes. Edge vectors are recomputed from ``batch.positions`` on every call, so autograd
(forces, and the double backward of force / physics losses) sees them.

Forces are never computed by MACE itself: :class:`~piwsl.models.forces.ForceField` differentiates
the energy (with ``create_graph`` while training).

Installation (mace-torch 0.3.16 pins e3nn 0.4.4, which does not import on torch 2.13)::

    pip install -c constraints.txt "piwsl[mace]"        # e3nn 0.6 and mace's runtime deps
    pip install -c constraints.txt --no-deps mace-torch==0.3.16
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from piwsl.data.batch import Batch, edge_vectors
from piwsl.errors import CheckpointError, ConfigError, PiwslError
from piwsl.models.base import EnergyModel
from piwsl.models.registry import register_model

INSTALL_HINT = (
    'pip install -c constraints.txt "piwsl[mace]" && '
    "pip install -c constraints.txt --no-deps mace-torch==0.3.16 "
    "(or scripts/install_mace.sh)"
)

#: MACE's usual hyper-parameters (the defaults of mace-torch's ``mace_run_train``).
DEFAULTS: dict[str, Any] = {
    "num_channels": 128,
    "max_L": 1,
    "hidden_irreps": None,  # overrides num_channels / max_L, e.g. "32x0e + 32x1o"
    "max_ell": 3,
    "correlation": 3,
    "num_interactions": 2,
    "num_bessel": 8,
    "num_polynomial_cutoff": 5,
    "radial_MLP": [64, 64, 64],
    "MLP_irreps": "16x0e",
    "avg_num_neighbors": 10.0,
    "interaction": "RealAgnosticResidualInteractionBlock",
    "interaction_first": "RealAgnosticResidualInteractionBlock",
    "gate": "silu",
    "use_reduced_cg": False,
    "radial_type": "bessel",
    "distance_transform": "None",
    "pair_repulsion": False,
}


class MaceNotInstalledError(PiwslError, ImportError):
    """mace-torch (or e3nn) is not installed."""


def import_mace():
    """Import mace-torch (before e3nn, as it requires) or raise :class:`MaceNotInstalledError`."""
    try:
        import mace  # noqa: F401  (must precede e3nn: it sets torch.load defaults e3nn needs)
        from e3nn import o3
        from mace import modules
    except ImportError as err:
        raise MaceNotInstalledError(
            f"the 'mace' model needs mace-torch 0.3.16 and e3nn 0.6, which are not installed "
            f"({err}). Install them with: {INSTALL_HINT}"
        ) from err
    return modules, o3


# ----------------------------------------------------------------------------- configuration


def _hidden_irreps(o3, num_channels: int, max_L: int) -> str:
    irreps = (num_channels * o3.Irreps.spherical_harmonics(max_L)).sort()[0].simplify()
    return str(irreps)


def mace_config_from_hparams(**hparams: Any) -> dict[str, Any]:
    """MACE constructor arguments (plain JSON-like values) from piwsl's friendly hyper-parameters.

    ``cutoff`` (Å) becomes ``r_max``; unknown keys raise :class:`ConfigError` with a suggestion.
    """
    from piwsl.registry import suggest

    _, o3 = import_mace()
    unknown = [k for k in hparams if k not in DEFAULTS and k != "cutoff"]
    if unknown:
        raise ConfigError(
            f"unknown MACE hyper-parameter {unknown[0]!r}"
            f"{suggest(unknown[0], [*DEFAULTS, 'cutoff'])}"
        )
    h = {**DEFAULTS, **hparams}
    hidden = h["hidden_irreps"] or _hidden_irreps(o3, int(h["num_channels"]), int(h["max_L"]))
    correlation = h["correlation"]
    return {
        "r_max": float(h["cutoff"]),
        "num_bessel": int(h["num_bessel"]),
        "num_polynomial_cutoff": int(h["num_polynomial_cutoff"]),
        "max_ell": int(h["max_ell"]),
        "interaction_cls": str(h["interaction"]),
        "interaction_cls_first": str(h["interaction_first"]),
        "num_interactions": int(h["num_interactions"]),
        "hidden_irreps": str(o3.Irreps(hidden)),
        "MLP_irreps": str(o3.Irreps(h["MLP_irreps"])),
        "avg_num_neighbors": float(h["avg_num_neighbors"]),
        "correlation": list(correlation)
        if isinstance(correlation, list | tuple)
        else int(correlation),
        "gate": None if h["gate"] in (None, "None") else str(h["gate"]),
        "radial_MLP": [int(x) for x in h["radial_MLP"]],
        "use_reduced_cg": bool(h["use_reduced_cg"]),
        "radial_type": str(h["radial_type"]),
        "distance_transform": str(h["distance_transform"]),
        "pair_repulsion": bool(h["pair_repulsion"]),
        "heads": ["Default"],
    }


def _instantiate(elements: list[int], config: dict[str, Any]):
    """A ``ScaleShiftMACE`` with zero atomic energies and identity scale/shift."""
    modules, o3 = import_mace()
    kwargs = dict(config)
    heads = list(kwargs.pop("heads", ["Default"]))
    for key in ("interaction_cls", "interaction_cls_first"):
        name = kwargs[key]
        if name not in modules.interaction_classes:
            raise ConfigError(
                f"unknown MACE interaction block {name!r}; choose one of "
                f"{sorted(modules.interaction_classes)}"
            )
        kwargs[key] = modules.interaction_classes[name]
    if "readout_cls" in kwargs:
        kwargs["readout_cls"] = modules.readout_classes[kwargs["readout_cls"]]
    gate = kwargs.pop("gate")
    if gate is not None and gate not in modules.gate_dict:
        raise ConfigError(f"unknown MACE gate {gate!r}; choose one of {sorted(modules.gate_dict)}")
    kwargs["gate"] = modules.gate_dict[gate] if gate is not None else None
    for key in ("hidden_irreps", "MLP_irreps", "edge_irreps"):
        if kwargs.get(key) is not None:
            kwargs[key] = o3.Irreps(kwargs[key])
    n = len(heads)
    shape = (len(elements),) if n == 1 else (n, len(elements))
    from mace.tools.torch_tools import default_dtype

    with default_dtype(torch.float64):
        return _scale_shift_mace(modules, elements, shape, heads, kwargs)


def _scale_shift_mace(modules, elements, shape, heads, kwargs):
    import numpy as np

    n = len(heads)
    return modules.ScaleShiftMACE(
        atomic_numbers=list(elements),
        num_elements=len(elements),
        atomic_energies=np.zeros(shape),
        atomic_inter_scale=1.0 if n == 1 else [1.0] * n,
        atomic_inter_shift=0.0 if n == 1 else [0.0] * n,
        heads=heads,
        **kwargs,
    )


# ----------------------------------------------------------------------------- the model


class MaceModel(EnergyModel):
    """mace-torch's ``ScaleShiftMACE`` as a piwsl energy model (conservative).

    Build it with :func:`piwsl.models.build_model` (``"mace"``, hyper-parameters in
    :data:`DEFAULTS`; ``cutoff`` is MACE's ``r_max`` in Å) or from a mace-torch model file with
    :func:`from_mace_model`. ``mace_config`` (full MACE constructor arguments as plain values)
    overrides the friendly hyper-parameters; ``head`` picks the readout head of multi-head models.
    """

    direct_forces = False

    def __init__(
        self,
        elements: list[int],
        cutoff: float = 5.0,
        mace_config: dict[str, Any] | None = None,
        head: str | None = None,
        **hparams: Any,
    ) -> None:
        super().__init__(elements, cutoff)
        if mace_config is None:
            mace_config = mace_config_from_hparams(cutoff=cutoff, **hparams)
        elif hparams:
            raise ConfigError(
                "give either mace_config or MACE hyper-parameters, not both "
                f"(got {sorted(hparams)})"
            )
        if abs(float(mace_config["r_max"]) - self.cutoff) > 1e-9:
            raise ConfigError(
                f"cutoff {self.cutoff} Å differs from the MACE r_max {mace_config['r_max']} Å"
            )
        self.mace_config = mace_config
        self.mace = _instantiate(self.elements, mace_config)
        heads = list(self.mace.heads)
        if head is None:
            if len(heads) > 1 and "Default" not in heads:
                raise ConfigError(f"this MACE model has heads {heads}; choose one with head=")
            head = "Default" if "Default" in heads else heads[0]
        if head not in heads:
            raise ConfigError(f"MACE head {head!r} not found; the model has heads {heads}")
        self.head = head
        self.head_index = heads.index(head)
        # MACE is built in float64 (its CG / U-matrix constants exact), then follows torch's
        # default dtype like every piwsl model; converting back to float64 restores the exact
        # constants (see _apply).
        self._capture_exact_buffers()
        self.mace.to(torch.get_default_dtype())

    def _capture_exact_buffers(self) -> None:
        self._exact_buffers = {
            name: b.detach().to("cpu", torch.float64, copy=True)
            for name, b in self.mace.named_buffers()
            if b.is_floating_point() and b.dtype == torch.float64
        }

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        exact = getattr(self, "_exact_buffers", {})
        with torch.no_grad():
            for name, buf in self.mace.named_buffers():
                ref = exact.get(name)
                if ref is None or buf.dtype != torch.float64 or ref.shape != buf.shape:
                    continue
                ref = ref.to(buf.device)
                # a constant rounded by a float32 round trip gets its exact value back
                if not torch.equal(buf, ref) and torch.equal(buf.float(), ref.float()):
                    buf.copy_(ref)
        return self

    def atomic_outputs(self, batch: Batch) -> tuple[torch.Tensor, None]:
        m = self.mace
        node_attrs = nn.functional.one_hot(
            self.species(batch.numbers), num_classes=self.n_species
        ).to(batch.positions.dtype)
        edge_index = batch.edge_index  # row 0 = MACE sender, row 1 = MACE receiver
        vectors = edge_vectors(batch)  # r_receiver - r_sender + shift, from positions
        lengths = torch.linalg.norm(vectors, dim=-1, keepdim=True)
        node_heads = torch.full_like(batch.numbers, self.head_index)

        node_feats = m.node_embedding(node_attrs)
        edge_attrs = m.spherical_harmonics(vectors)
        edge_feats, cutoff = m.radial_embedding(lengths, node_attrs, edge_index, m.atomic_numbers)
        contributions = []
        if hasattr(m, "pair_repulsion_fn"):
            contributions.append(
                m.pair_repulsion_fn(lengths, node_attrs, edge_index, m.atomic_numbers)
            )
        features = []
        for i, (interaction, product) in enumerate(zip(m.interactions, m.products, strict=True)):
            node_feats, sc = interaction(
                node_attrs=node_attrs,
                node_feats=node_feats,
                edge_attrs=edge_attrs,
                edge_feats=edge_feats,
                edge_index=edge_index,
                cutoff=cutoff,
                first_layer=(i == 0),
            )
            node_feats = product(node_feats=node_feats, sc=sc, node_attrs=node_attrs)
            features.append(node_feats)
        for i, readout in enumerate(m.readouts):
            feats = features[-1] if len(m.readouts) == 1 else features[i]
            contributions.append(readout(feats, node_heads)[:, self.head_index])
        return torch.stack(contributions).sum(0), None


@register_model("mace")
def build_mace(**hparams: Any) -> MaceModel:
    import_mace()  # a clear error before anything else when mace-torch is missing
    return MaceModel(**hparams)


def _energy_model(model) -> MaceModel:
    inner = getattr(model, "energy_model", model)
    if not isinstance(inner, MaceModel):
        raise TypeError(f"expected a piwsl MACE model, got {type(inner).__name__}")
    return inner


# ----------------------------------------------------------------------------- export / import


def to_mace_module(model, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A stand-alone mace-torch ``ScaleShiftMACE`` equal to ``model`` (E0s/shift/scale folded in).

    ``dtype`` defaults to float64 so that large E0s (~10³ eV) are not rounded.
    """
    em = _energy_model(model)
    module = copy.deepcopy(em.mace).to(device="cpu", dtype=dtype)
    h = em.head_index
    with torch.no_grad():
        e0 = em.e0[torch.tensor(em.elements)].to(dtype)
        ae = module.atomic_energies_fn.atomic_energies
        if ae.dim() == 1:
            ae.copy_(e0)
        else:
            ae[h].copy_(e0)
        for name, value in (("scale", em.energy_scale), ("shift", em.energy_shift)):
            buf = getattr(module.scale_shift, name)
            if buf.dim() == 0:
                buf.fill_(float(value))
            else:
                buf[h] = float(value)
    module.eval()
    return module


def export_to_mace(model, path: str | Path, dtype: torch.dtype = torch.float64) -> Path:
    """Write ``model`` (piwsl MACE, ForceField or EnergyModel) as a mace-torch model file.

    The file is a ``torch.save`` of a ``mace.modules.ScaleShiftMACE`` (as written by
    ``mace_run_train``), loadable with ``mace.calculators.MACECalculator(model_paths=path)``.
    """
    from piwsl.models.io import atomic_save

    path = Path(path)
    atomic_save(to_mace_module(model, dtype), path)
    return path


def _to_list(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist"):  # numpy
        return value.tolist()
    return value


def mace_config_of(module: nn.Module) -> dict[str, Any]:
    """Plain MACE constructor arguments of a mace-torch ``ScaleShiftMACE`` (for rebuilding it)."""
    modules, _ = import_mace()
    from mace.tools.scripts_utils import extract_config_mace_model

    name = type(module).__name__
    if name != "ScaleShiftMACE":
        raise CheckpointError(
            f"only mace-torch ScaleShiftMACE models (what mace_run_train writes) can be loaded, "
            f"got {name}"
        )
    raw = extract_config_mace_model(module)
    if raw.get("embedding_specs") is not None:
        raise CheckpointError(
            "MACE models with extra embeddings (embedding_specs) are not supported"
        )
    if raw.get("cueq_config") is not None and getattr(raw["cueq_config"], "enabled", False):
        raise CheckpointError(
            "this MACE model uses cuEquivariance; convert it first with "
            "`python -m mace.cli.convert_cueq_e3nn`"
        )
    gate = raw["gate"]
    gate_name = None
    if gate is not None:
        names = [k for k, f in modules.gate_dict.items() if f is gate]
        if not names:
            raise CheckpointError(f"unsupported MACE gate {gate!r}")
        gate_name = names[0]
    transform = raw["distance_transform"]
    inter = [m.__class__.__name__ for m in module.interactions]
    return {
        "r_max": float(raw["r_max"]),
        "num_bessel": int(raw["num_bessel"]),
        "num_polynomial_cutoff": int(raw["num_polynomial_cutoff"]),
        "max_ell": int(raw["max_ell"]),
        "interaction_cls": inter[-1],
        "interaction_cls_first": inter[0],
        "num_interactions": int(raw["num_interactions"]),
        "hidden_irreps": str(raw["hidden_irreps"]),
        "MLP_irreps": str(raw["MLP_irreps"]),
        "avg_num_neighbors": float(raw["avg_num_neighbors"]),
        "correlation": int(raw["correlation"]),
        "gate": gate_name,
        "radial_MLP": [int(x) for x in raw["radial_MLP"]],
        "use_reduced_cg": bool(raw["use_reduced_cg"]),
        "use_so3": bool(raw["use_so3"]),
        "use_agnostic_product": bool(raw["use_agnostic_product"]),
        "use_last_readout_only": bool(raw["use_last_readout_only"]),
        "use_edge_irreps_first": bool(raw["use_edge_irreps_first"]),
        "edge_irreps": None if raw["edge_irreps"] is None else str(raw["edge_irreps"]),
        "readout_cls": raw["readout_cls"].__name__,
        "radial_type": str(raw["radial_type"]),
        "distance_transform": "None" if transform in (None, "None") else str(transform),
        "pair_repulsion": bool(raw["pair_repulsion"]),
        "apply_cutoff": bool(raw["apply_cutoff"]),
        "heads": [str(h) for h in raw["heads"]],
    }


def from_mace_model(source: str | Path | nn.Module, head: str | None = None):
    """Load a mace-torch model (file or module) as a piwsl :class:`~piwsl.models.ForceField`.

    MACE's atomic energies become piwsl's E0s and its scale/shift piwsl's ``energy_scale`` /
    ``energy_shift`` (for ``head``); the weights are copied. The result trains like any piwsl
    model (e.g. fine-tuning with :func:`freeze`) and saves with :func:`piwsl.models.save_model`.
    """
    from piwsl.models.registry import build_model

    import_mace()
    if isinstance(source, nn.Module):
        module, where = source, f"<{type(source).__name__}>"
    else:
        where = str(source)
        if not Path(source).exists():
            raise CheckpointError(f"MACE model file {where!r} does not exist")
        try:
            module = torch.load(source, map_location="cpu", weights_only=False)
        except Exception as err:  # torch raises many types for corrupt files
            raise CheckpointError(f"cannot read MACE model file {where!r}: {err}") from err
        if not isinstance(module, nn.Module):
            raise CheckpointError(
                f"{where} holds a {type(module).__name__}, not a mace-torch model module"
            )
    config = mace_config_of(module)
    elements = [int(z) for z in module.atomic_numbers]
    dtype = next(module.parameters()).dtype
    ff = build_model(
        "mace", elements=elements, cutoff=config["r_max"], mace_config=config, head=head
    )
    ff = ff.to(dtype)  # before loading, so that float64 weights are not rounded
    em = ff.energy_model
    missing, unexpected = em.mace.load_state_dict(module.state_dict(), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not fit the rebuilt MACE (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    h = em.head_index
    ae = module.atomic_energies_fn.atomic_energies.detach().double()
    e0 = ae if ae.dim() == 1 else ae[h]
    scale = module.scale_shift.scale.detach().double()
    shift = module.scale_shift.shift.detach().double()
    em.set_reference(
        {z: float(e) for z, e in zip(elements, e0.tolist(), strict=True)},
        shift=float(shift if shift.dim() == 0 else shift[h]),
        scale=float(scale if scale.dim() == 0 else scale[h]),
    )
    with torch.no_grad():  # piwsl applies E0s / scale / shift; MACE's own stay neutral
        em.mace.atomic_energies_fn.atomic_energies.zero_()
        em.mace.scale_shift.scale.fill_(1.0)
        em.mace.scale_shift.shift.fill_(0.0)
    if dtype == torch.float64:
        em._capture_exact_buffers()  # the file's own (float64) constants are the exact ones
    return ff


# ----------------------------------------------------------------------------- fine-tuning


def freeze(model: nn.Module, patterns: list[str] | str) -> list[str]:
    """Set ``requires_grad=False`` on parameters matching glob ``patterns``; return their names.

    A pattern matches a parameter's full name (``energy_model.mace.interactions.0.linear.weight``)
    or its name relative to the MACE module (``interactions.0.*``, ``readouts.*``,
    ``node_embedding.*``); ``!pattern`` takes a previous selection back. A pattern that matches
    nothing raises :class:`ConfigError` listing all parameter names. Build the optimizer after
    freezing (or give it only trainable parameters). Same as :func:`piwsl.models.finetune.freeze`,
    which works for every backend.
    """
    from piwsl.models.finetune import freeze as _freeze

    return _freeze(model, patterns)


def unfreeze(model: nn.Module, patterns: list[str] | str = "*") -> list[str]:
    """Set ``requires_grad=True`` on parameters matching glob ``patterns``; return their names."""
    from piwsl.models.finetune import unfreeze as _unfreeze

    return _unfreeze(model, patterns)


def average_num_neighbors(batches: list[Batch] | Batch, cutoff: float) -> float:
    """Mean number of neighbours within ``cutoff`` Å per atom (MACE's ``avg_num_neighbors``)."""
    if isinstance(batches, Batch):
        batches = [batches]
    edges = atoms = 0
    for b in batches:
        with torch.no_grad():
            r = torch.linalg.norm(edge_vectors(b), dim=-1)
        edges += int((r < cutoff).sum())
        atoms += int(b.positions.shape[0])
    if atoms == 0:
        raise ValueError("no atoms to count neighbours of")
    return edges / atoms
