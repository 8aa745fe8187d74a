"""Helpers for tests of piwsl and of its backends.

- :mod:`piwsl.testing.model_contract` — the model-contract suite every backend must pass
  (:func:`run_contract_suite`, :data:`CONTRACT_CHECKS`, the pytest mixin
  :class:`ModelContractTests`).
- :mod:`piwsl.testing.analytic` — analytic energy models with closed-form energies, forces and
  Hessians.
"""

from piwsl.testing.model_contract import (
    CONTRACT_CHECKS,
    DEFAULT_SETTINGS,
    ContractSettings,
    ModelContractTests,
    ModelFactory,
    random_crystal,
    random_molecule,
    random_rotation,
    run_contract_suite,
)

__all__ = [
    "CONTRACT_CHECKS",
    "DEFAULT_SETTINGS",
    "ContractSettings",
    "ModelContractTests",
    "ModelFactory",
    "random_crystal",
    "random_molecule",
    "random_rotation",
    "run_contract_suite",
]
