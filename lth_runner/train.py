"""``lth-run``: the command-line entry point, the only place a Hydra app runs. The run itself is
:func:`lth_runner.session.run_experiment`, usable without Hydra.

Before Hydra starts (and before torch is imported) the whole command is checked (:func:`lth_runner.cli.preflight`)
and ``--help`` is answered (:func:`lth_runner.cli.help_text`), so a mistake costs a second, not a run folder. A run
that fails on bad input or data, or is interrupted before it saved anything, removes the folder it was given.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import hydra
from omegaconf import DictConfig

from lth_runner.config.compose import config_dir, quote_numeric_choices
from lth_runner.errors import UserError


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _hydra_task(cfg: DictConfig) -> Any:
    from hydra.core.hydra_config import HydraConfig

    from lth_runner.config.validate import build_run_config
    from lth_runner.preemption import Interrupted
    from lth_runner.session import holds_results, remove_failed_run, run_experiment

    output_dir = HydraConfig.get().runtime.output_dir
    fresh = not holds_results(output_dir)
    try:
        summary = run_experiment(build_run_config(cfg), output_dir)
    except (UserError, Interrupted, KeyboardInterrupt) as err:
        if fresh:
            remove_failed_run(output_dir)
        if isinstance(err, UserError):  # Hydra would print it with a traceback hint and exit 1
            _fail(err)
        raise
    return summary.final.test_acc if summary.final is not None else None


def _fail(err: UserError) -> None:
    print(f"lth-run: error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
    sys.exit(2)


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
    from lth_runner import cli
    from lth_runner.preemption import Interrupted

    warnings.showwarning = _one_line_warning
    args = quote_numeric_choices(sys.argv[1:])
    command = cli.split_command(args)
    if command.wants_help:
        sys.stdout.write(cli.help_text(command.overrides))
        return
    args = [a if a != "--hydra-help" else "--help" for a in args]
    try:
        command.check_modes()
        args += edge_overrides(args, dict(os.environ))
        if command.runs:
            cli.preflight(command.overrides, multirun=command.multirun)
        sys.argv = [sys.argv[0], *args]
        _hydra_task()
        # After the last job (a multirun shares one process group): the ranks meet, then leave the group. Failure
        # paths skip the barrier; the exit handler of lth_runner.distributed tears the group down on every path.
        distributed = sys.modules.get("lth_runner.distributed")  # not imported for --help / --cfg: stay torch-free
        if distributed is not None:
            distributed.shutdown()
    except UserError as err:
        _fail(err)
    except Interrupted as stop:
        print(f"lth-run: {stop.message}", file=sys.stderr, flush=True)
        sys.exit(stop.code)
    except KeyboardInterrupt:
        print("lth-run: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
