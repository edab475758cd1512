"""``lth-run``: the command-line entry point. Hydra composes the configuration here and nowhere else; the run
itself is :func:`lth_runner.session.run_experiment`, usable without Hydra.

This module imports no torch at import time, so ``lth-run --help`` and ``lth-run --cfg job`` answer quickly.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from lth_runner.config.schema import register_configs
from lth_runner.errors import UserError

# Config groups whose option names are numbers (sparsity=90): Hydra parses 90 as an int and refuses it as a group
# choice, so the entry point quotes such choices before Hydra sees them.
NUMERIC_GROUPS = ("sparsity",)
_NUMERIC_CHOICE = re.compile(rf"^(?P<head>[~+]{{0,2}}(?:{'|'.join(NUMERIC_GROUPS)}))=(?P<values>[0-9.]+(?:,[0-9.]+)*)$")


def config_dir() -> Path:
    """The ``conf/`` tree: shipped inside the package when installed, at the repository top in a checkout."""
    package = Path(__file__).resolve().parent
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


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _hydra_task(cfg: DictConfig) -> Any:
    from hydra.core.hydra_config import HydraConfig

    from lth_runner.config.validate import build_run_config
    from lth_runner.session import run_experiment

    try:
        run_cfg = build_run_config(cfg)
        summary = run_experiment(run_cfg, HydraConfig.get().runtime.output_dir)
    except UserError as err:
        print(f"lth-run: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    return summary.get("final", {}).get("best_val_test_acc")


def main() -> None:
    sys.argv = [sys.argv[0], *quote_numeric_choices(sys.argv[1:])]
    register_configs()
    _hydra_task()


if __name__ == "__main__":
    main()
