"""Composing the configuration the way ``lth-run`` does, for library use and tests (no Hydra app needed)."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

# Config groups whose option names are numbers (sparsity=90): Hydra parses 90 as an int and refuses it as a group
# choice, so such choices are quoted before Hydra sees them.
NUMERIC_GROUPS = ("sparsity",)
_NUMERIC_CHOICE = re.compile(rf"^(?P<head>[~+]{{0,2}}(?:{'|'.join(NUMERIC_GROUPS)}))=(?P<values>[0-9.]+(?:,[0-9.]+)*)$")


def config_dir() -> Path:
    """The ``conf/`` tree: shipped inside the package when installed, at the repository top in a checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"lth-runner's conf/ directory is missing (looked in {package} and {package.parent})")


def quote_numeric_choices(args: list[str]) -> list[str]:
    """``sparsity=90`` -> ``sparsity='90'`` and ``sparsity=50,90`` -> ``sparsity='50','90'``."""
    quoted = []
    for arg in args:
        match = _NUMERIC_CHOICE.match(arg)
        if match:
            values = ",".join(f"'{v}'" for v in match["values"].split(","))
            arg = f"{match['head']}={values}"
        quoted.append(arg)
    return quoted


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The configuration ``lth-run OVERRIDES`` would run (without the ``hydra`` section's runtime fields)."""
    from hydra import compose, initialize_config_dir

    from lth_runner.config.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=quote_numeric_choices(list(overrides or [])))
