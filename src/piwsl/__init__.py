"""piwsl: machine-learned interatomic potentials with physics-informed weak supervision.

Layout (data → model → forces → losses → training → evaluation and MD):

- :mod:`piwsl.data` — readers, frames with label masks, E0s, splits, neighbour lists, batches
- :mod:`piwsl.models` — the model contract, the conservative-force wrapper, SchNet, PaiNN, registry
- :mod:`piwsl.physics` — displacements, PITC (Taylor) and PISC (spatial) consistency losses
- :mod:`piwsl.objective` — named, weighted loss terms (supervised + physics)
- :mod:`piwsl.training` — Lightning module, EMA, checkpoints, resume
- :mod:`piwsl.evaluation` — metrics, per-element errors, non-conservativeness, parity plots
- :mod:`piwsl.calculator` — the ASE calculator
- :mod:`piwsl.cli` — the ``piwsl`` command
"""

__version__ = "0.1.0"

__all__ = ["__version__"]


def __getattr__(name: str):
    if name == "PiwslCalculator":
        from piwsl.calculator import PiwslCalculator

        return PiwslCalculator
    raise AttributeError(name)
