"""One small registry by name, with errors a user can act on (merge methods and optimizers are kept in one).

A name registered twice is a programming error (ValueError); an unknown name is one UsageError line that
suggests the closest registered name and lists them all.
"""

from __future__ import annotations

import difflib
from typing import Generic, TypeVar

from evomerge.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Things of one `kind` by name; `sorted_names` lists them alphabetically, else in registration order."""

    def __init__(self, kind: str, sorted_names: bool = False) -> None:
        self.kind = kind
        self.sorted_names = sorted_names
        self._items: dict[str, T] = {}

    def copy(self) -> Registry[T]:
        """A registry of the same entries that registers apart from this one (tests register into a copy)."""
        twin: Registry[T] = Registry(self.kind, self.sorted_names)
        twin._items = dict(self._items)
        return twin

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UsageError(self.unknown(name)) from None

    def unknown(self, name: str) -> str:
        """What is wrong with a name nothing is registered under: the closest name, the registered ones."""
        names = self.names()
        return f"unknown {self.kind} '{name}'{suggestion(name, names)}; available: {', '.join(names)}"

    def names(self) -> list[str]:
        return sorted(self._items) if self.sorted_names else list(self._items)

    def items(self) -> list[T]:
        """The registered things, in the order of `names`."""
        return [self._items[name] for name in self.names()]


def suggestion(name: str, candidates: list[str]) -> str:
    """` (did you mean 'X'?)` for the candidate closest to a mistyped `name`; nothing when none is close."""
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
