"""Paper 001's comparison at matched sparsity on real MNIST: relaxed mask with l1, with log, Continuous
Sparsification and IMP (LTH-Iter), LeNet-300-100, every method at exactly the same density.

l1 and log pull with different strength (from m = 1 the normalised log penalty's slope is 0.21x l1's), so they are
never compared at one lambda. For each penalty and sparsity, seed 0 calibrates lambda by bisection in log space: the
largest lambda whose value threshold (m > 0.5) still keeps at least the target density, i.e. where the relaxed mask
itself lands on the target. Every run then thresholds by count, so all four methods keep exactly
``kept_count(n, 1 - s)`` weights. One recipe for all: SGD lr 0.1 without momentum, batch 128, ``--epochs`` per
training run (each relaxed round and CS round, each IMP round), rewinding to the weights of epoch 2, global scope.

    python scripts/compare_relaxed.py --out outputs/concave_mnist            # about 30 min on 2 CPU cores
    python scripts/compare_relaxed.py --seeds 0 --sparsities 90 --epochs 4   # a quick look
    python scripts/compare_relaxed.py --out outputs/concave_mnist_fast --methods "relaxed (l1),relaxed (log)" \
        --mask-lr 1.0                    # the masks 10x faster than the weights: the penalty's equilibrium

Writes ``results.json``, prints a markdown table (mean +- std over seeds) and saves ``accuracy_vs_sparsity.png``;
the runs are under ``OUT/runs`` (``lth-run-report OUT/runs`` tabulates them with their cost), the calibration runs
under ``OUT/calibration``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.session import run_experiment

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "relaxed (l1)": ["method=relaxed_mask", "regularizer=mask_l1"],
    "relaxed (log)": ["method=relaxed_mask", "regularizer=mask_log"],
    "cs": ["method=cs", "method.threshold_mode=target"],
    "lth_iter": ["method=lth_iter", "method.rewind_to=2", "sparsity.rounds=5"],
}


def recipe(args: argparse.Namespace) -> list[str]:
    return [
        "model=lenet_300_100",
        "dataset=mnist",
        f"dataset.root={args.data}",
        "optim.lr=0.1",
        "optim.momentum=0.0",
        f"trainer.epochs={args.epochs}",
        "trainer.num_threads=1" if args.threads == 1 else f"trainer.num_threads={args.threads}",
        "sparsity.scope=global",
        "logger.console=none",
        "logger.plots=false",
        "logger.wandb.mode=disabled",
    ]


def run(args: argparse.Namespace, out: Path, overrides: list[str]):
    if args.mask_lr is not None and "method=relaxed_mask" in overrides:
        overrides = [*overrides, f"method.mask_lr={args.mask_lr}"]
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    cfg = build_run_config(compose_config([*recipe(args), *overrides]))
    run_experiment(cfg, out)
    return json.loads((out / "summary.json").read_text())


def above_threshold(args: argparse.Namespace, penalty: str, sparsity: int, lam: float) -> float:
    """The density the value threshold m > 0.5 keeps after the relaxed stage at ``lam`` (seed 0)."""
    out = Path(args.out) / "calibration" / f"{penalty}-s{sparsity}-lam{lam:.3e}"
    overrides = [*METHODS[f"relaxed ({penalty})"], f"regularizer.coefficient={lam}", f"sparsity={sparsity}"]
    summary = run(args, out, [*overrides, "method.retrain_epochs=1", "method.rewind_to=0", "seed=0"])
    return summary["details"]["relaxed"]["rounds"][-1]["above_threshold"]


def calibrate(args: argparse.Namespace, penalty: str, sparsity: int) -> float:
    """The largest lambda (to a factor 10^(width / 2^probes)) whose value threshold keeps >= the target density."""
    density = 1 - sparsity / 100
    low, high = math.log10(args.lam_low), math.log10(args.lam_high)
    if above_threshold(args, penalty, sparsity, 10**low) < density:
        return 10**low
    for _ in range(args.probes):
        mid = (low + high) / 2
        if above_threshold(args, penalty, sparsity, 10**mid) >= density:
            low = mid
        else:
            high = mid
    return float(f"{10**low:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/concave_mnist")
    parser.add_argument("--data", default=str(REPO / "tests" / "data" / "mnist"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sparsities", default="90,95,98")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--probes", type=int, default=6, help="bisection steps calibrating lambda")
    parser.add_argument("--lam-low", type=float, default=1e-4)
    parser.add_argument("--lam-high", type=float, default=1e-1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--mask-lr", type=float, help="method.mask_lr of the relaxed methods (default: optim.lr)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    sparsities = [int(s) for s in args.sparsities.split(",")]
    methods = args.methods.split(",")
    root = Path(args.out)
    lambdas: dict[str, float] = {}
    results: dict[str, dict[int, list[float]]] = {m: {s: [] for s in sparsities} for m in methods}
    for sparsity in sparsities:
        for method in methods:
            extra = list(METHODS[method])
            if method.startswith("relaxed"):
                penalty = method.split("(")[1].rstrip(")")
                lam = lambdas.setdefault(f"{penalty}-{sparsity}", calibrate(args, penalty, sparsity))
                extra.append(f"regularizer.coefficient={lam}")
            for seed in seeds:
                label = method.replace(" ", "_").replace("(", "").replace(")", "")
                out = root / "runs" / label / f"s{sparsity}" / f"seed{seed}"
                summary = run(args, out, [*extra, f"sparsity={sparsity}", f"seed={seed}"])
                results[method][sparsity].append(100 * summary["final"]["test_acc"])
                print(f"{method:14s} s={sparsity} seed={seed}: {results[method][sparsity][-1]:.2f}% "
                      f"(density {100 * summary['final']['density']:.2f}%)", flush=True)  # fmt: skip
    (root / "results.json").write_text(json.dumps({"lambdas": lambdas, "test_acc": results}, indent=1))
    print("\n| method | " + " | ".join(f"{s}%" for s in sparsities) + " |")
    print("|---|" + "---|" * len(sparsities))
    for method in methods:
        cells = []
        for s in sparsities:
            values = results[method][s]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            lam = lambdas.get(f"{method.split('(')[-1].rstrip(')')}-{s}")
            cells.append(f"{statistics.mean(values):.2f} +- {spread:.2f}" + (f" (lambda {lam:g})" if lam else ""))
        print(f"| {method} | " + " | ".join(cells) + " |")
    plot(root / "accuracy_vs_sparsity.png", results, sparsities)


def plot(path: Path, results: dict[str, dict[int, list[float]]], sparsities: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, by_sparsity in results.items():
        means = [statistics.mean(by_sparsity[s]) for s in sparsities]
        spreads = [statistics.stdev(by_sparsity[s]) if len(by_sparsity[s]) > 1 else 0 for s in sparsities]
        ax.errorbar(sparsities, means, yerr=spreads, marker="o", capsize=3, label=method)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("LeNet-300-100, real MNIST 8k/2k, matched sparsity")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
