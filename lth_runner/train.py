"""``lth-run``: the command-line entry point, the only place a Hydra app runs. The run itself is
:func:`lth_runner.session.run_experiment`, usable without Hydra.

This module imports no torch at import time, so ``lth-run --help`` and ``lth-run --cfg job`` answer quickly.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import hydra
from omegaconf import DictConfig

from lth_runner.config.compose import config_dir, quote_numeric_choices
from lth_runner.config.schema import register_configs
from lth_runner.errors import UserError


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


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"lth-run: warning: {message}", file=file or sys.stderr, flush=True)


def main() -> None:
    warnings.showwarning = _one_line_warning
    sys.argv = [sys.argv[0], *quote_numeric_choices(sys.argv[1:])]
    register_configs()
    _hydra_task()


if __name__ == "__main__":
    main()
