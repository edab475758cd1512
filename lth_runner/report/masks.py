"""``lth-run-masks A B``: compare the masks of any two runs (or mask files), per layer and in total.

``A`` and ``B`` are mask files (``masks/*.pt``) or run directories; a run directory gives the mask named by
``--name`` (default: its final mask, the last ``round_XX`` or the single other mask it holds). Printed per layer and
in total: kept counts, the kept overlap ``|A & B| / |A|`` (Lottery Jackpots Table 6), the Jaccard index
``|A & B| / |A | B|``, the Hamming distance (entries kept by exactly one), and Eq. 7 ``1 - Hamming / k`` with ``k``
the kept count of ``A``. ``--json`` writes the same figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lth_runner.errors import UserError
from lth_runner.sparse.mask import Mask, resolve_mask


def compare(a: Mask, b: Mask) -> dict[str, Any]:
    """Per-layer and total comparison figures of two masks over the same tensors (the :class:`Mask` methods)."""
    if a.names() != b.names() or any(a[n].shape != b[n].shape for n in a.names()):
        raise UserError("the two masks cover different tensors (different models or sparsity exclusions)")

    def figures(x: Mask, y: Mask) -> dict[str, Any]:
        both = x.intersection(y)
        either = x.num_kept() + y.num_kept() - both
        return {
            "entries": x.numel(),
            "kept_a": x.num_kept(),
            "kept_b": y.num_kept(),
            "overlap": x.kept_overlap(y),
            "jaccard": both / either if either else 1.0,
            "hamming": x.hamming(y),
            "eq7_kept": x.overlap(y, denominator="kept"),
        }

    layers = {n: figures(Mask({n: a[n].cpu()}), Mask({n: b[n].cpu()})) for n in a.names()}
    return {"layers": layers, "total": figures(a.to("cpu"), b.to("cpu"))}


def format_table(result: dict[str, Any]) -> str:
    header = f"{'layer':<28} {'entries':>9} {'kept A':>8} {'kept B':>8} {'overlap':>8} {'jaccard':>8} {'hamming':>8}"
    lines = [header]
    for name, row in [*result["layers"].items(), ("total", result["total"])]:
        lines.append(
            f"{name:<28} {row['entries']:>9} {row['kept_a']:>8} {row['kept_b']:>8} {row['overlap']:>8.4f} "
            f"{row['jaccard']:>8.4f} {row['hamming']:>8}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lth-run-masks", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="mask file or run directory")
    parser.add_argument("b", help="mask file or run directory")
    parser.add_argument("--name", help="mask name inside run directories (e.g. round_05, search)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    try:
        (path_a, a), (path_b, b) = resolve_mask(args.a, args.name), resolve_mask(args.b, args.name)
        result = compare(a, b)
    except UserError as err:
        print(f"lth-run-masks: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"A: {path_a}\nB: {path_b}")
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps({"a": str(path_a), "b": str(path_b), **result}, indent=2))


if __name__ == "__main__":
    main()
