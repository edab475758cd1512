"""Methods: a registry of functions that run one experiment in a :class:`~lth_runner.session.RunContext` and
return its summary. The built-ins are declared in :mod:`lth_runner.catalog`; register a new one with its config
dataclass::

    @METHODS.register("mymethod", config=MyMethodConfig)
    def my_method(run: RunContext) -> Summary: ...
"""

from __future__ import annotations

from lth_runner.catalog import METHODS

__all__ = ["METHODS"]
