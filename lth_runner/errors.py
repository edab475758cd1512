"""Errors that end a run with one line for the user instead of a traceback."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """A problem the user can fix (bad input, missing files); the CLI prints ``str(err)`` and exits with code 2."""


class ConfigError(UserError):
    """A configuration value that is not accepted; names the key, the value and what is accepted, with a hint such
    as "did you mean resnet50?" for near misses."""

    def __init__(self, key: str, value: Any, accepted: str, *, hint: str | None = None) -> None:
        self.key, self.value, self.accepted, self.hint = key, value, accepted, hint
        lead = f"{hint} " if hint else ""
        super().__init__(f"{key}={value!r} is not accepted: {lead}expected {accepted}")


class DataNotFoundError(UserError):
    """A dataset that is neither on disk nor downloadable; says where it looked and how to provide it."""
