"""Methods: a registry of functions that run one experiment in a :class:`~lth_runner.session.RunContext` and
return its summary. Register a new one with its config dataclass::

    @METHODS.register("mymethod", config=MyMethodConfig)
    def my_method(run: RunContext) -> dict: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lth_runner.registry import Registry

METHODS: Registry[Callable[..., dict[str, Any]]] = Registry("method", "method.name")

__all__ = ["METHODS"]

from lth_runner.methods import dlth, eb, l1, lth, unilth  # noqa: E402,F401
