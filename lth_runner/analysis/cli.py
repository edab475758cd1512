"""``lth-run-analyze RUN_DIR``: paper 002's analysis of a finished run (:func:`lth_runner.analysis.analyze_run`)."""

from __future__ import annotations

import argparse
import sys

from lth_runner.errors import UserError


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected an integer >= 1")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text}: expected a number in (0, 1)")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0.0:
        raise argparse.ArgumentTypeError(f"{text}: expected a number >= 0")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lth-run-analyze",
        description="Hessian trace and top eigenvalue restricted to the ticket, the 1-D loss landscape along the "
        "top eigenvector, distance from the initialisation, and the spike-and-slab PAC-Bayes bound beside the "
        "zero-mean Gaussian one (paper 002). Writes RUN_DIR/analysis/round_XX/analysis.json and figures.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--round", type=int, help="the round whose ticket is analysed (default: the final one)")
    parser.add_argument("--examples", type=_positive, default=1000, help="training examples of the Hessian (1000)")
    parser.add_argument("--max-iter", type=_positive, default=100, help="Hutchinson probes / power iterations (100)")
    parser.add_argument("--tol", type=_non_negative, default=1e-3, help="relative change that stops them (1e-3)")
    parser.add_argument("--subspace", default="unpruned", choices=("unpruned", "unpruned_weights", "all"))
    parser.add_argument("--bound-examples", type=_positive, help="training examples of the bound (default: all)")
    parser.add_argument("--draws", type=_positive, default=5, help="posterior samples per sigma (5)")
    parser.add_argument("--delta", type=_fraction, default=0.05, help="confidence of the bound (0.05)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("hessian", "landscape", "bound"))
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="seed of the example subset and the probes")
    args = parser.parse_args(argv)
    from lth_runner.analysis.run import AnalysisOptions, analyze_run

    options = AnalysisOptions(
        round=args.round, examples=args.examples, max_iter=args.max_iter, tol=args.tol, subspace=args.subspace,
        bound_examples=args.bound_examples, draws=args.draws, delta=args.delta, seed=args.seed,
        plots=not args.no_plots, skip=tuple(args.skip),
    )  # fmt: skip
    try:
        record = analyze_run(args.run_dir, options)
    except UserError as err:
        print(f"lth-run-analyze: error: {err}", file=sys.stderr)
        return 2
    print(f"{record['stage']} (round {record['round']}, density {100 * record['density']:.2f}%, "
          f"{record['kept']:,} weights kept)")  # fmt: skip
    distance = record["distance_from_init"]
    relative = f" ({distance['relative']:.3f} of ||m theta_init||)" if distance["relative"] is not None else ""
    print(f"distance from init ||m (theta - theta_init)||: {distance['l2']:.4g}{relative}")
    if "hessian" in record:
        h = record["hessian"]
        print(f"Hessian trace ({h['subspace']}, {record['examples']} examples): {h['trace']:.4g} "
              f"+- {h['trace_std_error']:.2g} ({h['trace_iterations']} probes)")  # fmt: skip
        print(f"top eigenvalue: {h['top_eigenvalue']:.4g} ({h['eigen_iterations']} iterations)")
    if "pac_bayes" in record:
        b = record["pac_bayes"]
        for name, label in (("spike_and_slab", "spike-and-slab"), ("gaussian_zero_mean", "Gaussian, zero mean")):
            bound = b[name]
            print(f"PAC-Bayes bound, {label}: {bound['bound']:.4f} (train error under Q {bound['train_error']:.4f}, "
                  f"KL {bound['kl']:.4g}, sigma_q {bound['sigma_q']:.3g}, sigma_p {bound['sigma_p']:.3g}, "
                  f"n {bound['n']}, delta {bound['delta']})")  # fmt: skip
    print(f"written: {args.run_dir}/analysis/round_{record['round']:02d}/ ({record['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
