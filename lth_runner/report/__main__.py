"""``python -m lth_runner.report PATH``: the same as ``lth-run-report PATH``."""

from lth_runner.report import main

raise SystemExit(main())
