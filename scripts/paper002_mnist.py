"""Paper 002's experiments at MNIST scale (LeNet-300-100, the real MNIST test set split 8k/2k, 3 seeds).

    python scripts/paper002_mnist.py --out outputs/paper002 --part criteria   # Table 2: train-accuracy drops
    python scripts/paper002_mnist.py --out outputs/paper002 --part sam        # SGD vs SAM Hessian trace, same ticket
    python scripts/paper002_mnist.py --out outputs/paper002 --part l2_init    # l2_init vs none at a large lr

One recipe: SGD without momentum, batch 128, 16 epochs per stage (open_lth's MNIST setting), global pruning of the
hidden layers (the output layer dense), IMP to 90% in 5 geometric rounds, rewinding to the initialisation (paper 002
excludes late rewinding). ``criteria``: one-shot pruning of the trained dense network to 90% (``method=lth``, so the
drops are measured from the dense network, as Table 2's -89.7 for small_final implies) with
``method.criterion=large_final|small_final|random`` and ``method.record_train_drops=true`` (lr 0.1). ``sam``: the
seed's large_final 90% mask retrained from theta_0 with plain SGD and with SAM (rho 0.05) restricted to the mask,
then ``lth-run-analyze`` on both (Hessian trace on 1,000 training examples). ``l2_init``: IMP at lr 0.25 (0.4
diverges) with and without ``trainer.penalty.name=l2_init`` (lambda 2e-4).
Prints markdown tables and writes ``results_<part>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from lth_runner.analysis import AnalysisOptions, analyze_run
from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.session import run_experiment

REPO = Path(__file__).resolve().parents[1]


def recipe(args: argparse.Namespace) -> list[str]:
    return [
        "experiment=mnist_lenet", f"dataset.root={args.data}", "sparsity=90", "sparsity.schedule=geometric",
        "sparsity.rounds=5", f"trainer.epochs={args.epochs}", f"trainer.num_threads={args.threads}",
        "logger.console=none", "logger.plots=false", "logger.wandb.mode=disabled",
    ]  # fmt: skip


def run(args: argparse.Namespace, out: Path, overrides: list[str]) -> dict:
    if not (out / "summary.json").exists():
        run_experiment(build_run_config(compose_config([*recipe(args), *overrides])), out)
    return json.loads((out / "summary.json").read_text())


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {spread:.2f}"


def criteria(args: argparse.Namespace, root: Path, seeds: list[int]) -> dict:
    table: dict[str, dict[str, list[float]]] = {}
    for criterion in ("large_final", "small_final", "random"):
        rows = table.setdefault(criterion, {"pruning": [], "rewinding": [], "retraining": [], "test": []})
        for seed in seeds:
            summary = run(args, root / "criteria" / criterion / f"seed{seed}", [
                "method=lth", f"method.criterion={criterion}", "method.record_train_drops=true", f"seed={seed}",
            ])  # fmt: skip
            last = summary["details"]["train_drops"][-1]  # one shot: dense -> the 90% ticket
            for name in ("pruning", "rewinding", "retraining"):
                rows[name].append(100 * last[f"drop_after_{name}"])
            rows["test"].append(100 * summary["final"]["test_acc"])
            drops = [round(100 * last[f"drop_after_{n}"], 2) for n in ("pruning", "rewinding", "retraining")]
            print(f"{criterion} seed {seed}: drops {drops} test {summary['final']['test_acc']:.4f}", flush=True)
    print("\n| criterion | after pruning | after rewinding | after retraining | ticket test % |\n|---|---|---|---|---|")
    for criterion, rows in table.items():
        cells = " | ".join(mean_std(rows[k]) for k in ("pruning", "rewinding", "retraining", "test"))
        print(f"| {criterion} | {cells} |")
    return table


def sam(args: argparse.Namespace, root: Path, seeds: list[int]) -> dict:
    table: dict[str, dict[str, list[float]]] = {"sgd": {}, "sam": {}}
    for seed in seeds:
        source = root / "criteria" / "large_final" / f"seed{seed}"
        run(args, source, ["method=lth", "method.criterion=large_final", "method.record_train_drops=true",
                           f"seed={seed}"])  # fmt: skip
        for label, extra in (("sgd", []), ("sam", ["trainer.sam.enabled=true", "trainer.sam.rho=0.05"])):
            out = root / "sam" / label / f"seed{seed}"
            summary = run(args, out, ["method=lth", f"method.mask={source}", f"seed={seed}", *extra])
            record = analyze_run(out, AnalysisOptions(examples=1000, skip=("bound",), plots=True, seed=seed))
            rows = table[label]
            rows.setdefault("trace", []).append(record["hessian"]["trace"])
            rows.setdefault("top", []).append(record["hessian"]["top_eigenvalue"])
            rows.setdefault("test", []).append(100 * summary["final"]["test_acc"])
            print(
                f"{label} seed {seed}: trace {record['hessian']['trace']:.2f} top "
                f"{record['hessian']['top_eigenvalue']:.3f} test {summary['final']['test_acc']:.4f}",
                flush=True,
            )
    print("\n| optimizer | Hessian trace | top eigenvalue | test % |\n|---|---|---|---|")
    for label, rows in table.items():
        print(f"| {label} | {mean_std(rows['trace'])} | {mean_std(rows['top'])} | {mean_std(rows['test'])} |")
    return table


def l2_init(args: argparse.Namespace, root: Path, seeds: list[int]) -> dict:
    table: dict[str, dict[str, list[float]]] = {}
    for label, extra in (
        ("none", []),
        ("l2_init", ["trainer.penalty.name=l2_init", "trainer.penalty.coefficient=2e-4"]),
    ):
        rows = table.setdefault(label, {"dense": [], "ticket": []})
        for seed in seeds:
            summary = run(args, root / "l2_init" / label / f"seed{seed}", [
                "method=lth_iter", f"optim.lr={args.large_lr}", f"seed={seed}", *extra,
            ])  # fmt: skip
            rows["dense"].append(100 * summary["rounds"][0]["ticket"]["test_acc"])
            rows["ticket"].append(100 * summary["final"]["test_acc"])
            print(f"{label} seed {seed}: dense {rows['dense'][-1]:.2f} ticket {rows['ticket'][-1]:.2f}", flush=True)
    print(f"\n| lr {args.large_lr} | dense test % | 90% ticket test % | ticket - dense |\n|---|---|---|---|")
    for label, rows in table.items():
        gap = [t - d for t, d in zip(rows["ticket"], rows["dense"])]
        print(f"| {label} | {mean_std(rows['dense'])} | {mean_std(rows['ticket'])} | {mean_std(gap)} |")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/paper002")
    parser.add_argument("--data", default=str(REPO / "tests" / "data" / "mnist"))
    parser.add_argument("--part", choices=("criteria", "sam", "l2_init"), required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--large-lr", type=float, default=0.25)  # 0.4 diverges in the dense round (no momentum)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    root, seeds = Path(args.out), [int(s) for s in args.seeds.split(",")]
    result = {"criteria": criteria, "sam": sam, "l2_init": l2_init}[args.part](args, root, seeds)
    root.mkdir(parents=True, exist_ok=True)
    (root / f"results_{args.part}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
