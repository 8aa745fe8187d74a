"""Registries by name with "did you mean …" errors (models, loss terms, reference backends)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Generic, TypeVar

from piwsl.errors import ConfigError

T = TypeVar("T")


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or a list of choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; choose one of {', '.join(repr(c) for c in choices)}"


def builtin_file(
    text: str, table: Mapping[str, str], package: str, error: Callable[[str], Exception], what: str
) -> Path | None:
    """``builtin:NAME`` → the file ``table[NAME]`` packaged in ``package``; None when ``text``
    does not start with ``builtin:``. An unknown name raises ``error`` naming the closest one."""
    if not text.startswith("builtin:"):
        return None
    name = text.split(":", 1)[1]
    if name not in table:
        raise error(f"unknown built-in {what} {name!r}{suggest(name, table)}")
    return Path(str(resources.files(package) / table[name]))


class Registry(Generic[T]):
    """A mapping from names to builders that explains unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}{suggest(name, self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def ordered(self) -> list[str]:
        """Names in registration order."""
        return list(self._entries)
