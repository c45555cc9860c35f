"""The one registry mechanism: methods, models, rewards, benchmarks and presets are each
a `Registry` filled by a decorator in the file that defines the entry.

    BENCHMARKS = Registry("benchmark", BenchmarkError)

    @BENCHMARKS.register("toy")
    class ToyBenchmark(Benchmark): ...

`discover(package)` imports every module of a package, so that a new entry is one new
file and never an edit to a list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from flowarena.core.errors import FlowArenaError

T = TypeVar("T")


class Registry(Generic[T]):
    """Short name -> entry (a class or a factory), in registration order."""

    def __init__(self, kind: str, error: type[FlowArenaError] = FlowArenaError):
        self.kind, self.error = kind, error
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: file the entry under `name` (also set as its `name` attribute)."""
        def deco(entry: T) -> T:
            self.add(name, entry)
            return entry
        return deco

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise self.error(f"{self.kind} {name!r} registered twice")
        try:
            entry.name = name  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # a frozen object keeps the name it has
            pass
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Unregister (a test's temporary entry)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        if not isinstance(name, str) or name not in self._entries:  # a list from a file, say
            raise self.error(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._entries.items()))

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def describe(entry) -> str:
    """An entry's one-line description: its `description`, else its docstring's first paragraph."""
    text = getattr(entry, "description", "") or (entry.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(str(text).split())


def discover(package: str, skip: set[str] = frozenset()) -> None:
    """Import every module of `package` (but `skip` and private ones): their decorators register."""
    pkg = importlib.import_module(package)
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in skip and not mod.name.startswith("_"):
            importlib.import_module(f"{package}.{mod.name}")
