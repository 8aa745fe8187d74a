"""The loss-term contract and the registry of terms.

A :class:`Term` has a registry ``name`` (also its name in the logs: ``train_<name>_raw`` and
``train_<name>_weighted``), a ``weight``, and declares what it needs (:class:`Needs`): which copies
of the batch — ``A`` (the training positions), ``B = A + d2``, ``C = A + d1`` — must be evaluated
and where forces are needed. Called on the evaluated copies (:class:`~piwsl.physics.CopyOutputs`)
and the batch, it returns its raw value, a scalar tensor; the objective multiplies by the weight.

A *supervised* term (one that reads labels at A) also says how many labelled items its value is
a mean over (:meth:`Term.count`): validation then averages it over the whole validation set.

Adding a term is one class and one registration::

    from piwsl.objective import Term, Needs, register_term

    @register_term("energy_l1")
    class EnergyL1(Term):
        def needs(self) -> Needs:
            return Needs()                       # A only, no forces

        def __call__(self, out, batch):
            mask = batch.energy_mask
            return (out.energy["A"][mask] - batch.energy[mask]).abs().mean()

after which ``loss.terms.energy_l1: 0.5`` uses it (a term from outside the package is found
through the ``piwsl.terms`` entry point group or the config's ``plugins`` list, see
:mod:`piwsl.plugins`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from piwsl.errors import ConfigError
from piwsl.registry import Registry, suggest

if TYPE_CHECKING:
    from piwsl.data.batch import Batch
    from piwsl.objective.config import EnergyConvention
    from piwsl.physics.terms import CopyOutputs

#: The copies a term can ask for, in evaluation order.
COPIES = ("A", "B", "C")


@dataclass(frozen=True)
class Needs:
    """What a term needs evaluated: ``copies`` (A always) and ``forces_at`` (a subset)."""

    copies: frozenset[str] = field(default_factory=lambda: frozenset({"A"}))
    forces_at: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        copies = frozenset(self.copies) | {"A"}
        forces_at = frozenset(self.forces_at)
        unknown = sorted((copies | forces_at) - set(COPIES))
        if unknown:
            raise ValueError(f"unknown copies {unknown}; use {', '.join(COPIES)}")
        object.__setattr__(self, "copies", copies | forces_at)
        object.__setattr__(self, "forces_at", forces_at)

    def __or__(self, other: Needs) -> Needs:
        return Needs(self.copies | other.copies, self.forces_at | other.forces_at)

    @property
    def displaced(self) -> bool:
        """Whether a displaced copy (B or C) is needed."""
        return bool(self.copies - {"A"})

    @classmethod
    def union(cls, needs: Iterable[Needs]) -> Needs:
        out = cls()
        for n in needs:
            out = out | n
        return out


class Term:
    """A named, weighted loss term (see the module docstring).

    Subclasses set options in ``__init__`` (keyword arguments after ``weight``; they are the keys
    a config may give under ``loss.terms.<name>``), implement :meth:`needs` and :meth:`__call__`,
    and are registered with :func:`register_term`.
    """

    #: registry and logging name, set by :func:`register_term`
    name: ClassVar[str] = "term"
    #: the options a config may set (``loss.terms.<name>.<option>``); None: every keyword
    #: argument of ``__init__`` after ``weight``
    config_options: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = float(weight)

    @classmethod
    def from_config(cls, weight: float, convention: EnergyConvention, **options: Any) -> Term:
        """Build from ``loss.terms.<name>``; the built-in terms take their units from
        ``convention``, other terms ignore it unless they override this."""
        return cls(weight, **options)

    def needs(self) -> Needs:
        """The copies and forces this term reads (independent of the batch)."""
        return Needs()

    def active(self, batch: Batch) -> bool:
        """Whether the term enters the loss of ``batch`` (default: a positive weight)."""
        return self.weight > 0

    def count(self, batch: Batch) -> torch.Tensor | None:
        """Labelled items the raw value of ``batch`` is a mean over (supervised terms); None
        for a term that needs no labels (it is then left out of the validation loss)."""
        return None

    def __call__(self, out: CopyOutputs, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight})"


#: name → term class
TERMS: Registry[type[Term]] = Registry("loss term")


def register_term(name: str):
    """Class decorator: register a :class:`Term` subclass under ``name``."""

    def decorator(cls: type[Term]) -> type[Term]:
        if not (isinstance(cls, type) and issubclass(cls, Term)):
            raise TypeError(f"loss term {name!r} must be a subclass of piwsl.objective.Term")
        cls.name = name
        TERMS.add(name, cls)
        return cls

    return decorator


def term_class(name: str) -> type[Term]:
    """The registered term ``name`` (ConfigError with a "did you mean" otherwise)."""
    from piwsl.plugins import load_plugins

    load_plugins()
    return TERMS.get(name)


#: The built-in terms in the order they are summed; terms from elsewhere follow.
BUILTIN_ORDER = ("energy", "forces", "taylor", "spatial", "taylor_two_point")


def term_order() -> list[str]:
    """The order configured terms are evaluated and summed: :data:`BUILTIN_ORDER`, then the
    other registered terms in registration order."""
    from piwsl.plugins import load_plugins

    load_plugins()
    return [*BUILTIN_ORDER, *(n for n in TERMS.ordered() if n not in BUILTIN_ORDER)]


def term_options(cls: type[Term]) -> dict[str, Any]:
    """The options a config may give a term class (name → default), ``weight`` excluded."""
    params = inspect.signature(cls.__init__).parameters
    options = {
        n: p.default
        for n, p in params.items()
        if n not in ("self", "weight") and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    if cls.config_options is not None:
        options = {n: options.get(n) for n in cls.config_options}
    return options


def check_term_options(name: str, options: dict[str, Any], where: str) -> None:
    """ConfigError naming ``where.<key>`` for an option the term does not take."""
    known = term_options(term_class(name))
    for key, value in options.items():
        if key not in known:
            hint = suggest(key, known) if known else f"; term {name!r} takes only a weight"
            raise ConfigError(f"{where}.{key}: unknown option of loss term {name!r}{hint}")
        default = known[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(default, (int, float)) and not isinstance(default, bool) and not number:
            raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
