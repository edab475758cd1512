"""Analysis tools for tickets (paper 002, Sakamoto & Sato): Hessian trace and top eigenpair restricted to the
subnetwork, the 1-D loss landscape, distance from the initialisation, and spike-and-slab PAC-Bayes bounds.
``analyze_run`` runs them all on a finished run; ``lth-run-analyze RUN_DIR`` is its command line."""

from lth_runner.analysis.run import AnalysisOptions, analyze_run

__all__ = ["AnalysisOptions", "analyze_run"]
