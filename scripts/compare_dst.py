"""Paper 004's baselines at equal training epochs on real MNIST: SET, RigL, OBD, LTH-Iter and SR-popup, LeNet-300-100,
3 seeds, 90 / 95 / 98% sparsity (docs/results.md).

One recipe (``experiment=jackpots/lenet_mnist``: SGD lr 0.1, cosine, momentum 0.9, weight decay 5e-4, batch 128, the
classifier dense) and one budget of ``--budget`` epochs (passes over the training split with a backward pass) per run:

- SET, RigL: the whole budget sparse from step 0 (ERK densities, update every 100 steps until 75%, alpha 0.3);
- OBD: half dense pre-training, half fine-tuning (at lr 0.01) after the one-shot prune (Fisher diagonal);
- OBD-Hutchinson (not in the default list): OBD with Hutchinson's diagonal (100 probes);
- Magnitude: OBD's pipeline with global |w| instead of the saliency (``method=l1 method.scope=global``), the control
  that says what the Hessian adds;
- LTH-Iter: 4 geometric rounds, 5 trainings of budget/5 epochs (dense, then rewind to the initialisation and retrain);
- SR-popup: half dense pre-training (``method.pretrained=auto``, a cache per sparsity so that every run trains and
  counts its own), half searching the mask on the frozen trained weights.

    python scripts/compare_dst.py --out outputs/dst_mnist                 # about 25 min on 2 CPU cores
    python scripts/compare_dst.py --seeds 0 --sparsities 90 --budget 10   # a quick look

Writes ``results.json`` (test accuracy, epochs and seconds per run) and prints a markdown table (mean +- std over
seeds, epochs and median seconds per run); the runs are under ``OUT/runs`` (``lth-run-report OUT/runs``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.session import run_experiment

REPO = Path(__file__).resolve().parents[1]


def methods(budget: int) -> dict[str, list[str]]:
    half = budget // 2
    return {
        "SET": ["method=set", f"trainer.epochs={budget}"],
        "RigL": ["method=rigl", f"trainer.epochs={budget}"],
        "OBD": ["method=obd", f"trainer.epochs={half}", f"method.finetune_epochs={budget - half}"],
        "OBD-Hutchinson": [
            "method=obd",
            "sparsity.obd_hessian=hutchinson",
            f"trainer.epochs={half}",
            f"method.finetune_epochs={budget - half}",
        ],  # fmt: skip
        "Magnitude": [
            "method=l1",
            "method.scope=global",
            f"trainer.epochs={half}",
            f"method.finetune_epochs={budget - half}",
        ],  # fmt: skip
        "LTH-Iter": [
            "method=lth_iter",
            "sparsity.schedule=geometric",
            "sparsity.rounds=4",
            f"trainer.epochs={budget // 5}",
        ],  # fmt: skip
        "SR-popup": [
            "method=sr_popup",
            "method.pretrained=auto",
            f"method.pretrain_epochs={half}",
            f"method.search_epochs={budget - half}",
            f"trainer.epochs={budget - half}",
        ],  # fmt: skip
    }


def recipe(args: argparse.Namespace) -> list[str]:
    return [
        "experiment=jackpots/lenet_mnist",
        f"dataset.root={args.data}",
        f"paths.data_root={Path(args.out) / 'cache'}",
        f"trainer.num_threads={args.threads}",
        "logger.console=none",
        "logger.plots=false",
        "logger.wandb.mode=disabled",
    ]


def run(args: argparse.Namespace, out: Path, overrides: list[str]) -> dict:
    if not (out / "summary.json").exists():
        run_experiment(build_run_config(compose_config([*recipe(args), *overrides])), out)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/dst_mnist")
    parser.add_argument("--data", default=str(REPO / "tests" / "data" / "mnist"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sparsities", default="90,95,98")
    parser.add_argument("--budget", type=int, default=30, help="training epochs per run, every method")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="SET,RigL,OBD,Magnitude,LTH-Iter,SR-popup")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    sparsities = [int(s) for s in args.sparsities.split(",")]
    chosen = args.methods.split(",")
    table = methods(args.budget)
    root = Path(args.out)
    results: dict[str, dict[int, list[dict]]] = {m: {s: [] for s in sparsities} for m in chosen}
    for sparsity in sparsities:
        for method in chosen:
            for seed in seeds:
                out = root / "runs" / method / f"s{sparsity}" / f"seed{seed}"
                overrides = [*table[method], f"sparsity={sparsity}", f"seed={seed}"]
                if method == "SR-popup":  # its dense network trained in every run, its epochs in the run's cost
                    overrides.append(f"paths.data_root={root / 'cache' / f's{sparsity}'}")
                summary = run(args, out, overrides)
                cost = summary["cost"]
                row = {
                    "test_acc": 100 * summary["final"]["test_acc"],
                    "density": summary["final"]["density"],
                    "epochs": cost["epochs_total"],
                    "seconds": cost["seconds_total"],
                }
                one_shot = summary["details"].get("obd") or summary["details"].get("l1")
                if one_shot:  # the pruned network before fine-tuning
                    row["pruned_test_acc"] = 100 * one_shot["pruned"]["test_acc"]
                results[method][sparsity].append(row)
                print(f"{method:9s} s={sparsity} seed={seed}: {row['test_acc']:.2f}% "
                      f"density {100 * row['density']:.2f}% {row['epochs']} epochs {row['seconds']:.1f}s",
                      flush=True)  # fmt: skip
    (root / "results.json").write_text(json.dumps({"budget": args.budget, "runs": results}, indent=1))
    print("\n| method | " + " | ".join(f"{s}%" for s in sparsities) + " | epochs | seconds (median) |")
    print("|---|" + "---|" * (len(sparsities) + 2))
    for method in chosen:
        cells = []
        for s in sparsities:
            accs = [r["test_acc"] for r in results[method][s]]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.2f} +- {spread:.2f}")
        runs = [r for s in sparsities for r in results[method][s]]
        epochs = sorted({r["epochs"] for r in runs})
        seconds = statistics.median(r["seconds"] for r in runs)
        print(f"| {method} | " + " | ".join(cells) + f" | {'/'.join(map(str, epochs))} | {seconds:.1f} |")
    pruned = [m for m in chosen if "pruned_test_acc" in results[m][sparsities[0]][0]]
    if pruned:
        print("\nbefore fine-tuning (the one-shot prune of the pre-trained network):\n")
        print("| method | " + " | ".join(f"{s}%" for s in sparsities) + " |")
        print("|---|" + "---|" * len(sparsities))
        for method in pruned:
            cells = []
            for s in sparsities:
                accs = [r["pruned_test_acc"] for r in results[method][s]]
                cells.append(f"{statistics.mean(accs):.2f} +- {statistics.stdev(accs) if len(accs) > 1 else 0.0:.2f}")
            print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
