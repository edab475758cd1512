"""``lth-run``: the command-line entry point, the only place a Hydra app runs. The run itself is
:func:`lth_runner.session.run_experiment`, usable without Hydra.

This module imports no torch at import time, so ``lth-run --help`` and ``lth-run --cfg job`` answer quickly.
"""

from __future__ import annotations

import os
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


def edge_overrides(args: list[str], environ: dict[str, str]) -> list[str]:
    """Command-line overrides the environment implies, or a one-line error for a launch that cannot work.

    Under torchrun every rank runs this program: they must agree on the output directory, so it is pinned to the
    rendezvous id unless the user chose one. SLURM launchers need submitit.
    """
    extra = []
    launcher = next((a.split("=", 1)[1] for a in args if a.startswith("hydra/launcher=")), None)
    if launcher in ("slurm", "local"):
        try:
            import hydra_plugins.hydra_submitit_launcher  # noqa: F401
        except ImportError:
            raise UserError(
                f"hydra/launcher={launcher} needs hydra-submitit-launcher: pip install "
                f"hydra-submitit-launcher (or choose the default launcher)"
            ) from None
    if int(environ.get("WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" in environ:
        run_id = environ["TORCHELASTIC_RUN_ID"]
        chosen = any(a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for a in args)
        if not chosen and run_id == "none":
            raise UserError(
                "under torchrun all ranks must share one output directory: pass hydra.run.dir=DIR (or "
                "start torchrun with --standalone or --rdzv-id=ID)"
            )
        if not chosen:
            extra += [
                f"hydra.run.dir=${{paths.output_root}}/runs/${{name}}/torchrun-{run_id}",
                f"hydra.sweep.dir=${{paths.output_root}}/sweeps/torchrun-{run_id}",
            ]
    return extra


def main() -> None:
    warnings.showwarning = _one_line_warning
    args = quote_numeric_choices(sys.argv[1:])
    try:
        args += edge_overrides(args, dict(os.environ))
    except UserError as err:
        print(f"lth-run: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.argv = [sys.argv[0], *args]
    register_configs()
    _hydra_task()


if __name__ == "__main__":
    main()
