"""``lth-run-analyze``'s library side: paper 002's analysis of any finished run (and round), written as JSON and
figures into the run directory.

For the chosen stage (by default the run's final ticket) the analysis loads the stage's final weights (its saved
``checkpoints/<stage>.final.pt``, or ``checkpoints/last.pt`` when that is the stage's), its mask (``masks/round_XX.pt``
of the round, or the run's final mask), and the initialisation (rebuilt from the run's seed, exactly as the method
built it), then computes on a seeded subset of the training split without augmentation:
- the Hessian trace by Hutchinson and the top eigenpair by power iteration, restricted to the subnetwork
  (:mod:`lth_runner.analysis.hessian`), and the 1-D training-loss landscape along that eigenvector (Fig. 2);
- the distance from the initialisation and the unpruned weights' quantiles (Sec. 3.3, Fig. 8);
- the spike-and-slab PAC-Bayes bound and the zero-mean Gaussian one, posterior scale optimised on a grid
  (:mod:`lth_runner.analysis.pac_bayes`, Sec. 4.2, Eqs. 2-5 and 16-17), on the whole training split by default.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lth_runner.analysis import hessian, landscape, pac_bayes, weights
from lth_runner.config.validate import read_run_config
from lth_runner.errors import UserError
from lth_runner.session import RunContext
from lth_runner.sparse import Mask, remaining_fraction
from lth_runner.sparse.mask import resolve_mask
from lth_runner.sparse.prunable import unwrap
from lth_runner.utils.io import write_json_atomic


@dataclass
class AnalysisOptions:
    """What ``lth-run-analyze`` computes (its command-line options)."""

    round: int | None = None  # None: the final ticket's round
    examples: int = 1000  # training examples of the Hessian and the landscape
    batch_size: int = 1000
    max_iter: int = 100
    tol: float = 1e-3
    subspace: str = "unpruned"  # unpruned | unpruned_weights | all
    alphas: tuple[float, ...] = landscape.DEFAULT_ALPHAS
    bound_examples: int | None = None  # None: the whole training split
    draws: int = 5  # Monte-Carlo draws of the posterior's error per sigma_q
    delta: float = 0.05
    sigma_q: tuple[float, ...] = pac_bayes.DEFAULT_SIGMA_Q
    sigma_p: tuple[float, ...] = pac_bayes.DEFAULT_SIGMA_P
    seed: int = 0
    plots: bool = True
    skip: tuple[str, ...] = field(default_factory=tuple)  # any of hessian, landscape, bound


def analyze_run(run_dir: str | Path, options: AnalysisOptions | None = None) -> dict[str, Any]:
    """Analyse ``run_dir`` and write ``analysis/round_XX/analysis.json`` (plus figures); returns the record."""
    options = options or AnalysisOptions()
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "summary.json").is_file():
        raise UserError(f"{run_dir}: not a run directory of lth-run (no config.yaml / summary.json)")
    cfg = read_run_config(run_dir / "config.yaml")
    summary = json.loads((run_dir / "summary.json").read_text())
    key, index = _stage(summary, options.round)
    started = time.perf_counter()
    run = RunContext(cfg, run_dir)
    model = run.new_model("init")
    init = {n: t.detach().clone() for n, t in unwrap(model).state_dict().items()}
    unwrap(model).load_state_dict(_weights(run_dir, key))
    model.eval()
    mask = _mask(run_dir, index, run.prunable(model))
    masks = {n: t.to(next(model.parameters()).device) for n, t in mask.items()}
    out_dir = run_dir / "analysis" / f"round_{index:02d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    trained = {n: p.detach() for n, p in model.named_parameters()}
    record: dict[str, Any] = {
        "run": str(run_dir),
        "stage": key,
        "round": index,
        "density": mask.density(),
        "kept": mask.num_kept(),
        "examples": options.examples,
        "distance_from_init": weights.distance_from_init(trained, init, masks),
        "unpruned_quantiles": weights.unpruned_quantiles(trained, masks),
    }
    generator = torch.Generator().manual_seed(options.seed)
    split = _train_split(run)
    batches = _subset(split, options.examples, options.batch_size, generator)
    if "hessian" not in options.skip:
        params, sub = hessian.subnetwork(model, masks, options.subspace)
        operator = hessian.HessianOperator(model, batches, params, sub)
        trace = hessian.hutchinson_trace(operator, max_iter=options.max_iter, tol=options.tol, generator=generator)
        top = hessian.top_eigenpair(operator, max_iter=options.max_iter, tol=options.tol, generator=generator)
        record["hessian"] = {
            "subspace": options.subspace,
            "dimension": operator.dimension(),
            "trace": trace.trace,
            "trace_std_error": trace.std_error,
            "trace_iterations": trace.iterations,
            "top_eigenvalue": top.value,
            "eigen_iterations": top.iterations,
            "train_loss": operator.loss(),
        }
        if "landscape" not in options.skip:
            curve = landscape.loss_along(model, params, top.vector, batches, options.alphas)
            record["landscape"] = {"alphas": curve.alphas, "loss": curve.losses, "accuracy": curve.accuracies}
            if options.plots:
                landscape.plot_landscape(curve, str(out_dir / "landscape.png"), f"{key}, density {mask.density():.1%}")
    if "bound" not in options.skip:
        record["pac_bayes"] = _bounds(split, model, trained, init, masks, cfg.sparsity.target, options, generator)
    if options.plots:
        weights.plot_distribution(trained, init, masks, str(out_dir / "weights.png"))
    record["seconds"] = round(time.perf_counter() - started, 3)
    write_json_atomic(out_dir / "analysis.json", record)
    record["wandb"] = log_to_wandb(cfg, run_dir, record, out_dir)
    return record


def log_to_wandb(cfg: Any, run_dir: Path, record: dict[str, Any], out_dir: Path) -> str | None:
    """Add the analysis to the run's own W&B run (its id in ``wandb_run_id``), when W&B is enabled for it:
    ``analysis/round_XX/*`` summary keys, the figures as images and the folder as an ``analysis`` artifact.
    Never fails the analysis: a problem is one warning line. Returns the mode used (None: not logged)."""
    from lth_runner.tracking.wandb_sink import RUN_ID_FILE, resolve_mode

    mode = resolve_mode(cfg.logger.wandb.mode)
    id_path = run_dir / RUN_ID_FILE
    if mode == "disabled" or not id_path.is_file():
        return None
    prefix = f"analysis/round_{record['round']:02d}"
    flat = {f"{prefix}/hessian_trace": record.get("hessian", {}).get("trace"),
            f"{prefix}/top_eigenvalue": record.get("hessian", {}).get("top_eigenvalue"),
            f"{prefix}/distance_from_init": record["distance_from_init"]["l2"]}  # fmt: skip
    for name in ("spike_and_slab", "gaussian_zero_mean"):
        if "pac_bayes" in record:
            flat[f"{prefix}/bound_{name}"] = record["pac_bayes"][name]["bound"]
    try:
        import wandb

        wb = cfg.logger.wandb
        run = wandb.init(project=wb.project, entity=wb.entity, id=id_path.read_text().strip(), resume="allow",
                         dir=str(run_dir.resolve()), mode="offline" if mode == "offline" else "online")  # fmt: skip
        run.summary.update({k: v for k, v in flat.items() if v is not None})
        images = {f"{prefix}/{p.stem}": wandb.Image(str(p)) for p in sorted(out_dir.glob("*.png"))}
        if images:
            run.log(images)
        artifact = wandb.Artifact(f"analysis-{run.id}", type="analysis")
        artifact.add_dir(str(out_dir), name=f"round_{record['round']:02d}")
        run.log_artifact(artifact)
        run.finish()
    except Exception as err:  # noqa: BLE001 - W&B is a view; the JSON on disk is the result
        import warnings

        warnings.warn(f"wandb: the analysis was not logged ({type(err).__name__}: {err})", stacklevel=2)
        return None
    return mode


def _stage(summary: dict[str, Any], round_index: int | None) -> tuple[str, int]:
    rounds = summary.get("rounds") or []
    if round_index is None:
        final = summary.get("final") or {}
        if not final.get("key"):
            raise UserError("the run has no final stage yet: finish it first, or name a round with --round")
        return final["key"], int(final.get("round", rounds[-1]["round"] if rounds else 0))
    chosen = [r for r in rounds if r["round"] == round_index]
    if not chosen:
        raise UserError(f"--round {round_index}: the run has rounds {', '.join(str(r['round']) for r in rounds)}")
    return chosen[0]["ticket"]["key"], round_index


def _weights(run_dir: Path, key: str) -> dict[str, torch.Tensor]:
    saved = run_dir / "checkpoints" / f"{key.replace('/', '_')}.final.pt"
    if saved.is_file():
        return torch.load(saved, map_location="cpu", weights_only=True)
    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():
        payload = torch.load(last, map_location="cpu", weights_only=False)
        if payload.get("key") == key:
            return payload["model"]
    raise UserError(
        f"{run_dir}: the weights of stage {key} were not kept; re-run with trainer.keep_round_weights=true to "
        f"analyse any round"
    )


def _mask(run_dir: Path, index: int, params: dict[str, torch.nn.Parameter]) -> Mask:
    folder = run_dir / "masks"
    if (folder / f"round_{index:02d}.pt").is_file():
        mask = Mask.load(folder / f"round_{index:02d}.pt")
    elif folder.is_dir() and any(folder.glob("*.pt")):
        mask = resolve_mask(run_dir)[1]
    else:
        mask = Mask.ones_like(params)  # a dense run
    if mask.names() != list(params):
        raise UserError(f"{run_dir}: its mask covers {', '.join(mask.names())}, the model prunes {', '.join(params)}")
    return mask


def _train_split(run: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split, normalised, without augmentation (gathered once for every tool)."""
    x, y = zip(*run.data.eval_batches("train"))
    return torch.cat(x), torch.cat(y)


def _subset(
    split: tuple[torch.Tensor, torch.Tensor], count: int | None, batch_size: int, generator: torch.Generator
) -> list:
    """A seeded subset of ``split`` in batches (``count=None``: all of it)."""
    x, y = split
    if count is not None and count < y.numel():
        index = torch.randperm(y.numel(), generator=generator)[:count].to(y.device)
        x, y = x[index], y[index]
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, y.numel(), batch_size)]


def _bounds(
    split: tuple[torch.Tensor, torch.Tensor],
    model: torch.nn.Module,
    trained: dict[str, torch.Tensor],
    init: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    target: float,
    options: AnalysisOptions,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Both bounds, each at its best posterior scale."""
    batches = _subset(split, options.bound_examples, options.batch_size, generator)
    n = sum(int(y.numel()) for _, y in batches)
    params = dict(model.named_parameters())
    others = [name for name in params if name not in masks]
    slab = {**masks, **{n: None for n in others}}
    everything = {name: None for name in params}
    density = remaining_fraction(target) if target > 0 else 1.0  # a dense run: no spike in the prior
    spike, gauss = {}, {}
    for sigma in options.sigma_q:
        spike[sigma] = pac_bayes.posterior_error(model, params, slab, sigma, batches, draws=options.draws,
                                                 generator=generator)  # fmt: skip
        gauss[sigma] = pac_bayes.posterior_error(model, params, everything, sigma, batches, draws=options.draws,
                                                 generator=generator)  # fmt: skip
    spike_bound = pac_bayes.optimise(
        spike,
        lambda sq, sp: pac_bayes.spike_and_slab_kl(trained, init, masks, sigma_q=sq, sigma_p=sp, density=density,
                                                   others=others),  # fmt: skip
        n=n, delta=options.delta, sigma_p_grid=options.sigma_p,
    )  # fmt: skip
    gauss_bound = pac_bayes.optimise(
        gauss, lambda sq, sp: pac_bayes.gaussian_kl(trained, sigma_q=sq, sigma_p=sp), n=n, delta=options.delta,
        sigma_p_grid=options.sigma_p,
    )  # fmt: skip
    train_error = pac_bayes.posterior_error(model, params, slab, 0.0, batches, draws=1, generator=generator)
    return {
        "examples": n,
        "draws": options.draws,
        "delta": options.delta,
        "prior_density": density,
        "train_error": train_error,
        "spike_and_slab": spike_bound.to_dict(),
        "gaussian_zero_mean": gauss_bound.to_dict(),
        "posterior_error_by_sigma": {"spike_and_slab": spike, "gaussian_zero_mean": gauss},
    }
