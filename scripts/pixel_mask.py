"""Paper 001 Figs. 3-4 at small scale: MNIST 0-vs-1 (and a harder pair) with logistic regression, the relaxed mask
selecting input pixels (preset ``experiment=concave/mnist01_pixels``).

1. Fig. 3: for l1 and log, sweep lambda with the value threshold (m > 0.5); record the pixels kept and the test
   accuracy of the retrained classifier on the pixels kept, seed 0.
2. Matched count: for each penalty, the lambda of the sweep whose value threshold keeps the fewest pixels still
   >= ``--pixels``; at that lambda, a count threshold keeps exactly ``--pixels`` pixels; seeds 0-2, for each pair.
3. Fig. 4: the learned ``--pixels``-pixel log mask (seed 0, 0-vs-1) as an image and test digits seen through it.

    python scripts/pixel_mask.py --out outputs/pixel_mask     # about 2 minutes on 2 CPU cores

Writes ``results.json``, ``fig3_lambda_sweep.png``, ``fig4_pixel_mask.png`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.errors import UserError
from lth_runner.session import run_experiment
from lth_runner.sparse import Mask

REPO = Path(__file__).resolve().parents[1]
LAMBDAS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def run(args: argparse.Namespace, out: Path, overrides: list[str]) -> dict:
    if not (out / "summary.json").exists():
        cfg = build_run_config(compose_config([
            "experiment=concave/mnist01_pixels", f"dataset.root={args.data}", "logger.console=none",
            "logger.plots=false", "logger.wandb.mode=disabled", "trainer.num_threads=1", *overrides,
        ]))  # fmt: skip
        run_experiment(cfg, out)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/pixel_mask")
    parser.add_argument("--data", default=str(REPO / "tests" / "data" / "mnist"))
    parser.add_argument("--pixels", type=int, default=8)
    parser.add_argument("--pairs", default="0-1,4-9")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    root = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    sparsity = round(1 - args.pixels / 784, 6)
    sweep: dict[str, list[dict]] = {}
    for penalty in ("mask_l1", "mask_log"):
        sweep[penalty] = []
        for lam in LAMBDAS:
            try:
                summary = run(args, root / "sweep" / f"{penalty}-{lam:g}", [
                    f"regularizer={penalty}", f"regularizer.coefficient={lam}", "method.threshold_mode=value",
                ])  # fmt: skip
            except UserError:  # m > 0.5 nowhere: no pixel left to retrain
                sweep[penalty].append({"lambda": lam, "pixels": 0, "test_acc": None, "relaxed_test_acc": None})
                print(f"sweep {penalty} lambda={lam:g}: 0 pixels")
                continue
            kept, acc = summary["final"]["kept"], 100 * summary["final"]["test_acc"]
            relaxed = 100 * summary["rounds"][0]["ticket"]["test_acc"]
            sweep[penalty].append({"lambda": lam, "pixels": kept, "test_acc": acc, "relaxed_test_acc": relaxed})
            print(f"sweep {penalty} lambda={lam:g}: {kept} pixels, retrained {acc:.2f}%, relaxed {relaxed:.2f}%")
    matched: dict[str, dict[str, list[float]]] = {}
    chosen: dict[str, float] = {}
    for penalty in ("mask_l1", "mask_log"):
        enough = [p for p in sweep[penalty] if p["pixels"] >= args.pixels]
        chosen[penalty] = min(enough, key=lambda p: p["pixels"])["lambda"] if enough else LAMBDAS[0]
    for pair in args.pairs.split(","):
        classes = pair.split("-")
        for penalty in ("mask_l1", "mask_log"):
            values = []
            for seed in seeds:
                summary = run(args, root / "matched" / f"{pair}-{penalty}-seed{seed}", [
                    f"regularizer={penalty}", f"regularizer.coefficient={chosen[penalty]}", f"seed={seed}",
                    f"dataset.classes=[{','.join(classes)}]", f"sparsity.target={sparsity}",
                ])  # fmt: skip
                assert summary["final"]["kept"] == args.pixels
                values.append(100 * summary["final"]["test_acc"])
            matched.setdefault(pair, {})[penalty] = values
            print(f"matched {pair} {penalty} (lambda {chosen[penalty]:g}): {values}")
    (root / "results.json").write_text(json.dumps({"sweep": sweep, "lambda": chosen, "matched": matched}, indent=1))
    print("\n| lambda | " + " | ".join(f"{p} pixels | {p} test %" for p in sweep) + " |")
    print("|---|" + "---|---|" * len(sweep))
    for i, lam in enumerate(LAMBDAS):
        cells = [f"{sweep[p][i]['pixels']} | {_pct(sweep[p][i]['test_acc'])}" for p in sweep]
        print(f"| {lam:g} | " + " | ".join(cells) + " |")
    print(f"\n| pair, {args.pixels} pixels | mask_l1 | mask_log |\n|---|---|---|")
    for pair, by in matched.items():
        cells = [f"{statistics.mean(v):.2f} +- {statistics.stdev(v) if len(v) > 1 else 0:.2f}" for v in by.values()]
        print(f"| {pair} | " + " | ".join(cells) + " |")
    figures(args, root, sweep, root / "matched" / f"{args.pairs.split(',')[0]}-mask_log-seed{seeds[0]}")


def figures(args: argparse.Namespace, root: Path, sweep: dict[str, list[dict]], run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, both) = plt.subplots(1, 3, figsize=(11, 3.2))
    for penalty, points in sweep.items():
        lams = [p["lambda"] for p in points]
        kept = [p for p in points if p["test_acc"] is not None]
        left.semilogx([p["lambda"] for p in kept], [p["test_acc"] for p in kept], marker="o", label=penalty)
        right.loglog(lams, [max(p["pixels"], 0.8) for p in points], marker="o", label=penalty)
        both.semilogx([p["pixels"] for p in kept], [p["test_acc"] for p in kept], marker="o", label=penalty)
    left.set(xlabel="lambda", ylabel="test accuracy (%)", title="retrained at m > 0.5")
    right.set(xlabel="lambda", ylabel="pixels kept", title="sparsity vs lambda")
    both.set(xlabel="pixels kept", ylabel="test accuracy (%)", title="accuracy vs pixels")
    left.legend()
    fig.tight_layout()
    fig.savefig(root / "fig3_lambda_sweep.png", dpi=120)

    mask = Mask.load(run_dir / "masks" / "round_01.pt")["fc.weight"].reshape(28, 28).float()
    images, labels = _test_digits(args)
    fig, axes = plt.subplots(2, 5, figsize=(8, 3.6))
    axes[0, 0].imshow(mask, cmap="gray_r")
    axes[0, 0].set_title(f"{int(mask.sum())}-pixel mask")
    axes[1, 0].axis("off")
    for k, ax in enumerate(axes[:, 1:].reshape(-1)):
        shown = images[k].clone()
        shown[mask == 0] = 0.5 * shown[mask == 0]  # what the classifier ignores, dimmed
        ax.imshow(shown, cmap="gray", vmin=0, vmax=1)
        ax.scatter(*torch.nonzero(mask.T).T.tolist(), s=6, c="red")
        ax.set_title(f"digit {labels[k]}", fontsize=8)
    for ax in axes.reshape(-1):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(root / "fig4_pixel_mask.png", dpi=120)
    print(f"figures: {root / 'fig3_lambda_sweep.png'}, {root / 'fig4_pixel_mask.png'}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _test_digits(args: argparse.Namespace) -> tuple[list[torch.Tensor], list[int]]:
    """Four zeros and four ones from the MNIST files (pixel values in [0, 1])."""
    from lth_runner.config.schema import MnistConfig
    from lth_runner.data.mnist import load_mnist

    arrays = load_mnist(MnistConfig(name="mnist"), Path(args.data))
    images, labels = [], []
    for digit in (0, 1):
        index = torch.nonzero(arrays.test_y == digit).flatten()[:4]
        images += [arrays.test_x[i, 0].float() / 255 for i in index]
        labels += [digit] * 4
    return images, labels


if __name__ == "__main__":
    main()
