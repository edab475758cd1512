"""Name -> object registries for models, datasets, methods, pruning criteria, optimizers, learning-rate schedules,
penalty laws and controls.

A user adds an entry from their own module with the decorator and lists that module under ``plugins`` in the
config (or imports it before calling the library); the dispatcher never needs editing::

    @MODELS.register("mynet", inputs="image")
    def mynet(input_shape, num_classes, *, width: int = 64): ...

Built-in entries are *declared* in :mod:`lth_runner.catalog` by import path (``"module:attribute"``) with their
metadata, so that the configuration can be checked (names, option schemas) without importing torch; the object is
imported the first time it is used.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from lth_runner.errors import ConfigError

T = TypeVar("T")


class Entry(Generic[T]):
    """A registered name: the object (or where to import it from) and its metadata."""

    def __init__(self, name: str, target: T | str, meta: dict[str, Any]) -> None:
        self.name, self.meta = name, meta
        self._target = target
        self._lazy = isinstance(target, str)

    @property
    def obj(self) -> T:
        if self._lazy:
            module, _, attribute = str(self._target).partition(":")
            self._target = getattr(importlib.import_module(module), attribute)
            self._lazy = False
        return self._target  # type: ignore[return-value]

    def is_declared_as(self, obj: object) -> bool:
        """Whether ``obj`` is what this entry names (the same object, or the object at its import path)."""
        if not self._lazy:
            return self._target is obj
        return self._target == f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"


class Registry(Generic[T]):
    """A mapping from names to objects with a decorator for registration and a helpful miss message."""

    def __init__(self, kind: str, config_key: str | None = None) -> None:
        self.kind = kind
        self.config_key = config_key or kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T | None = None, **meta: Any) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj`` returns a decorator. Re-registering a name is an error."""

        def add(target: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and not existing.is_declared_as(target):
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = Entry(name, target, {**(existing.meta if existing else {}), **meta})
            return target

        return add if obj is None else add(obj)

    def declare(self, name: str, target: str, **meta: Any) -> None:
        """Register ``name`` by import path (``"package.module:attribute"``), imported on first use."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = Entry(name, target, dict(meta))

    def entry(self, name: str, *, key: str | None = None) -> Entry[T]:
        """The entry of ``name``, or a :class:`ConfigError` on ``key`` (default: the registry's config key) that
        lists the accepted names and suggests the closest ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(key or self.config_key, name, f"one of: {', '.join(self.names())}",
                              hint=did_you_mean(name, self.names())) from None  # fmt: skip

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def check(self, name: str, *, key: str | None = None) -> str:
        """``name`` if it is registered, else the one-line error of :meth:`entry`."""
        self.entry(name, key=key)
        return name

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


class RegistryUnion:
    """Several registries read as one name space: ``regularizer.name`` is a penalty law or a mask penalty."""

    def __init__(self, config_key: str, *registries: Registry[Any]) -> None:
        self.config_key, self.registries = config_key, registries

    def owner(self, name: str) -> Registry[Any] | None:
        """The registry that holds ``name`` (None when none does)."""
        return next((r for r in self.registries if name in r), None)

    def check(self, name: str, *, key: str | None = None) -> str:
        if self.owner(name) is None:
            raise ConfigError(key or self.config_key, name, f"one of: {', '.join(self.names())}",
                              hint=did_you_mean(name, self.names()))  # fmt: skip
        return name

    def names(self) -> list[str]:
        return sorted({n for r in self.registries for n in r.names()})

    def __contains__(self, name: object) -> bool:
        return any(name in r for r in self.registries)


def did_you_mean(word: object, choices: Iterable[str]) -> str | None:
    """``"did you mean X?"`` (or ``"X or Y"``) for near misses among ``choices``, else None."""
    close = difflib.get_close_matches(str(word), list(choices), n=2, cutoff=0.6)
    if not close:
        return None
    return f"did you mean {' or '.join(close)}?"
