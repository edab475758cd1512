"""Growing-regularization laws (seed 000, Sec. 3.3 and Fig. 2): how the L2 penalty coefficient rises from 0 to
its ceiling ``R_ceil`` over a stage of ``E`` epochs, as a function of the current epoch ``phi``.

    linear   R = R_ceil * phi / E
    loglaw   R = R_ceil * ln(phi / E + 1) / ln 2
    explaw   R = R_ceil * (e^(phi / E) - 1) / (e - 1)
    tanlaw   R = (R_ceil / 2) * (tan(pi * phi / (2E) - pi / 4) + 1)

Each is 0 at phi = 0 and R_ceil at phi = E. LogLaw is concave (strong early), ExpLaw convex (weak for long), TanLaw
slow in the middle and steep at both ends. A law is a pure function of ``p = phi / E`` in [0, 1], registered in
``LAWS`` (:mod:`lth_runner.catalog`) under the name ``regularizer.name`` takes.
"""

from __future__ import annotations

import math

from lth_runner.catalog import LAWS


def none(p: float) -> float:
    return 0.0


def linear(p: float) -> float:
    return p


def loglaw(p: float) -> float:
    return math.log(p + 1.0) / math.log(2.0)


def explaw(p: float) -> float:
    return (math.exp(p) - 1.0) / (math.e - 1.0)


def tanlaw(p: float) -> float:
    return 0.5 * (math.tan(math.pi * p / 2.0 - math.pi / 4.0) + 1.0)


def law_fraction(law: str, progress: float) -> float:
    """The fraction of the ceiling reached at ``progress = phi / E`` (clamped to [0, 1])."""
    return LAWS.get(law)(min(max(progress, 0.0), 1.0))


def penalty_coefficient(law: str, phi: float, total_epochs: float, ceiling: float) -> float:
    """``alpha`` of the penalty ``alpha * ||w_S||^2`` after ``phi`` of ``total_epochs`` epochs."""
    if total_epochs <= 0:
        return ceiling * law_fraction(law, 1.0)
    return ceiling * law_fraction(law, phi / total_epochs)
