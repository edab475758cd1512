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

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=quote_numeric_choices(list(overrides or [])))


# Names of multirun job directories, in conf/config.yaml:
#   hydra.sweep.subdir: ${lth_subdir:${hydra.job.num},${hydra.job.override_dirname}}
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9=,._+~@%:-]+")
_MAX_NAME = 200  # bytes; file names may not exceed 255


def subdir_name(num: int | str, overrides: str = "") -> str:
    """``3`` and ``seed=1,sparsity='90'`` -> ``3_seed=1,sparsity=90``: the job number, then its overrides without
    quotes, with ``/``, spaces and other characters unsafe in a file name replaced by ``-``; a name too long for a
    file system keeps its head and ends with a hash of the whole."""
    cleaned = _UNSAFE_IN_NAME.sub("-", str(overrides).replace("'", "").replace('"', "")).strip("-")
    name = f"{num}_{cleaned}" if cleaned else str(num)
    if len(name.encode()) > _MAX_NAME:
        import hashlib

        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name.encode()[: _MAX_NAME - 11].decode(errors="ignore") + "-" + digest
    return name


def neutral_override_keys() -> list[str]:
    """Every override key that names a result-neutral setting (``logger``, ``logger.wandb.mode``, ...): what
    multirun job folder names leave out (Hydra's ``override_dirname.exclude_keys`` wants exact keys)."""
    import dataclasses
    import typing

    from lth_runner.config.schema import RunConfig, is_result_neutral

    def keys(schema: type, prefix: str = "") -> list[str]:
        found, hints = [], typing.get_type_hints(schema)
        for spec in dataclasses.fields(schema):
            key = f"{prefix}{spec.name}"
            found.append(key)
            nested = hints.get(spec.name)
            if isinstance(nested, type) and dataclasses.is_dataclass(nested):
                found += keys(nested, key + ".")
        return found

    return [key for key in keys(RunConfig) if is_result_neutral(key)]


def register_resolvers() -> None:
    """OmegaConf resolvers the configs use (idempotent). Called on import of :mod:`lth_runner.config`, so a SLURM
    job unpickling the Hydra launcher has them before it resolves its output directory."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("lth_subdir"):
        OmegaConf.register_new_resolver("lth_subdir", subdir_name)
    if not OmegaConf.has_resolver("lth_gpus"):
        OmegaConf.register_new_resolver("lth_gpus", gpus_per_node)
    if not OmegaConf.has_resolver("lth_neutral_keys"):
        OmegaConf.register_new_resolver("lth_neutral_keys", neutral_override_keys)


def gpus_per_node(device: str, devices: int) -> int | None:
    """GPUs a SLURM job asks for: one per process when the trainer is told to use CUDA, none otherwise (``auto``
    on a cluster must say which it wants: a CPU partition cannot grant GPUs)."""
    return int(devices) if str(device).startswith("cuda") else None
