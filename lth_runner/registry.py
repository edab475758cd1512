"""Name -> object registries for models, datasets, methods and pruning criteria.

A user adds an entry from their own module with the decorator and lists that module under ``plugins`` in the
config (or imports it before calling the library); the dispatcher never needs editing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from lth_runner.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A mapping from names to objects with a decorator for registration and a helpful miss message."""

    def __init__(self, kind: str, config_key: str | None = None) -> None:
        self.kind = kind
        self.config_key = config_key or kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T | None = None, **meta: Any) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj`` returns a decorator. Re-registering a name is an error."""

        def add(target: T) -> T:
            if name in self._entries and self._entries[name].obj is not target:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = Entry(name, target, dict(meta))
            return target

        return add if obj is None else add(obj)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self.config_key, name, f"one of: {', '.join(self.names())}") from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
