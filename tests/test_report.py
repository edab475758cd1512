"""``lth-run-report``: runs found in a sweep, Table-1-style statistics computed by hand, CSV, figures, CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.report import build_report, build_tables, collect_runs, main
from lth_runner.report.figures import epoch_series, mean_band
from lth_runner.report.tables import method_order
from lth_runner.session import run_experiment
from lth_runner.utils.io import read_jsonl
from tests.conftest import REPO

SMALL = [
    "model=mlp",
    "dataset=mnist1d",
    "dataset.num_samples=1000",
    "model.hidden=[16]",
    "trainer.epochs=1",
    "sparsity.rounds=2",
    "logger.console=none",
    "logger.plots=false",
]
METHODS = ("lth_iter", "lth")  # built in the "wrong" order: the table must still list lth first
SPARSITIES = ("50", "90")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_root) -> Path:
    """A fake multirun sweep: <sweep>/<job>/ for method x sparsity x seed (8 runs, built once)."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    job = 0
    for method in METHODS:
        for sparsity in SPARSITIES:
            for seed in SEEDS:
                overrides = [*SMALL, f"paths.data_root={data_root}", f"method={method}", f"sparsity={sparsity}"]
                cfg = build_run_config(compose_config([*overrides, f"seed={seed}"]))
                run_experiment(cfg, root / str(job))
                job += 1
    return root


def copy_sweep(sweep: Path, tmp_path: Path) -> Path:
    target = tmp_path / "sweep"
    shutil.copytree(sweep, target, ignore=shutil.ignore_patterns("report", "checkpoints"))
    return target


def summaries(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("summary.json"))]


def by_hand(root: Path) -> dict[tuple[str, float], list[float]]:
    """Test accuracies (%) per (method, sparsity %) read straight from the summaries."""
    cells: dict[tuple[str, float], list[float]] = {}
    for s in summaries(root):
        if s["status"] == "complete":
            cells.setdefault((s["method"], round(100 * s["target_sparsity"], 6)), []).append(
                100 * s["final"]["test_acc"]
            )
    return cells


def sample_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def run_report_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lth_runner.report", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_collect_finds_every_run_of_a_sweep_and_a_single_run(sweep):
    runs = collect_runs(sweep)
    assert [r.rel for r in runs] == [str(i) for i in range(8)]  # job numbers in numeric order
    assert {(r.method, r.sparsity_pct, r.seed) for r in runs} == {
        (m, float(s), seed) for m in METHODS for s in SPARSITIES for seed in SEEDS
    }
    assert all(r.complete and r.model == "mlp" and r.dataset == "mnist1d" and r.variant == "" for r in runs)
    (single,) = collect_runs(sweep / "3")
    assert single.rel == "." and single.method == "lth_iter" and single.seed == 1 and single.target_sparsity == 0.9


def test_table_rows_columns_means_stds_and_best_match_the_summaries(sweep):
    (table,) = build_tables(collect_runs(sweep))
    assert (table.model, table.dataset) == ("mlp", "mnist1d")
    assert table.rows == ["lth", "lth_iter"]  # Table 1 order, not the order the runs were made in
    assert table.sparsities == [50.0, 90.0]
    expected = by_hand(sweep)
    for (method, sparsity), values in expected.items():
        cell = table.cell(method, sparsity)
        assert cell.n == len(values) == 2
        assert cell.mean == pytest.approx(sum(values) / 2, abs=1e-9)
        assert cell.std == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), abs=1e-9)
    for sparsity in table.sparsities:
        top = max(sum(v) / len(v) for (m, s), v in expected.items() if s == sparsity)
        best = [m for m in table.rows if table.cell(m, sparsity).best]
        assert best and all(sum(expected[(m, sparsity)]) / 2 == pytest.approx(top) for m in best)
        assert all(table.cell(m, sparsity).mean < top - 1e-9 for m in table.rows if m not in best)


def test_markdown_bolds_the_best_cell_and_lists_cost(sweep, tmp_path):
    report = build_report(sweep, tmp_path / "out", figures=False)
    text = (tmp_path / "out" / "table.md").read_text()
    assert text == report.markdown
    (table,) = report.tables
    accuracy_part = text.split("Training cost")[0]
    lines = {line.split("|")[1].strip(): line for line in accuracy_part.splitlines() if line.startswith("| lth")}
    accuracy = {m: [c.strip() for c in lines[m].split("|")[2:4]] for m in ("lth", "lth_iter")}
    for j, sparsity in enumerate(table.sparsities):
        for method in table.rows:
            cell = table.cell(method, sparsity)
            shown = f"{cell.mean:.2f} ± {cell.std:.2f}"
            assert accuracy[method][j] == (f"**{shown}**" if cell.best else shown)
    assert "| lth | 2 ep / " in text and "| lth_iter | 3 ep / " in text  # cost: 1 epoch x (1 + rounds) stages
    assert "n = 2 seeds per cell" in text and "Incomplete runs" not in text


def test_csv_round_trips(sweep, tmp_path):
    report = build_report(sweep, tmp_path / "out", formats="csv", figures=False)
    assert not (tmp_path / "out" / "table.md").exists()
    with open(tmp_path / "out" / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["model", "dataset", "method", "sparsity", "mean", "std", "n", "best"]
    (table,) = report.tables
    assert [(r["method"], float(r["sparsity"])) for r in rows] == [(m, s) for m in table.rows for s in table.sparsities]
    expected = by_hand(sweep)
    for row in rows:
        values = expected[(row["method"], float(row["sparsity"]))]
        assert (row["model"], row["dataset"], int(row["n"])) == ("mlp", "mnist1d", 2)
        assert float(row["mean"]) == pytest.approx(sum(values) / 2, abs=1e-6)
        assert float(row["std"]) == pytest.approx(sample_std(values), abs=1e-6)
        assert row["best"] == ("true" if table.cell(row["method"], float(row["sparsity"])).best else "false")
    with open(tmp_path / "out" / "cost.csv", newline="") as handle:
        cost = {(r["method"], r["sparsity"]): float(r["epochs_mean"]) for r in csv.DictReader(handle)}
    assert cost == {("lth", "50"): 2, ("lth", "90"): 2, ("lth_iter", "50"): 3, ("lth_iter", "90"): 3}


def test_single_seed_cells_show_n_and_have_no_std(sweep, tmp_path):
    root = tmp_path / "seed0"
    for run in collect_runs(sweep):
        if run.seed == 0:
            shutil.copytree(run.path, root / run.rel, ignore=shutil.ignore_patterns("checkpoints"))
    report = build_report(root, figures=False)
    (table,) = report.tables
    cell = table.cell("lth", 90.0)
    assert cell.n == 1 and cell.std is None
    rows = [line for line in report.markdown.split("Training cost")[0].splitlines() if line.startswith("| lth")]
    assert len(rows) == 2 and all("±" not in row and row.count("(n=1)") == 2 for row in rows)
    assert f"| {cell.mean:.2f} (n=1) |" in rows[0] or f"| **{cell.mean:.2f}** (n=1) |" in rows[0]
    with open(root / "report" / "table.csv", newline="") as handle:
        assert {r["std"] for r in csv.DictReader(handle)} == {""}


def test_the_three_figures_are_written(sweep, tmp_path):
    report = build_report(sweep, tmp_path / "out")
    for name in ("accuracy_vs_epoch.png", "accuracy_vs_sparsity.png", "regularization_laws.png"):
        path = tmp_path / "out" / name
        assert path in report.written
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_epoch_axis_counts_every_trained_epoch_and_marks_density_changes(sweep):
    runs = collect_runs(sweep)
    run = next(r for r in runs if r.method == "lth_iter")
    series = epoch_series(run)
    assert series.epochs == [1, 2, 3] == list(range(1, int(run.summary.cost.epochs_total) + 1))
    assert series.density_changes == [1.5, 2.5]  # dense -> round 1 -> round 2
    records = [r for r in read_jsonl(run.path / "metrics.jsonl") if r["event"] == "epoch"]
    assert series.test_acc == pytest.approx([100 * r["test_acc"] for r in records])
    twins = [epoch_series(r) for r in runs if r.method == run.method and r.sparsity_pct == run.sparsity_pct]
    xs, means, lows, highs = mean_band(twins)
    assert xs == [1, 2, 3]
    for i in range(3):
        values = [s.test_acc[i] for s in twins]
        assert (means[i], lows[i], highs[i]) == pytest.approx((sum(values) / 2, min(values), max(values)))


def test_a_duplicated_epoch_record_keeps_the_last_and_adds_no_point(sweep, tmp_path):
    root = copy_sweep(sweep, tmp_path)
    metrics = root / "2" / "metrics.jsonl"
    records = read_jsonl(metrics)
    first = next(r for r in records if r["event"] == "epoch")
    replayed = dict(first, test_acc=0.5)  # the epoch re-run after a crash, logged again
    with open(metrics, "a") as handle:
        handle.write(json.dumps(replayed) + "\n")
    run = next(r for r in collect_runs(root) if r.rel == "2")
    epochs = run.epoch_records()
    assert len(epochs) == run.summary.cost.epochs_total == 3
    assert epochs[0]["key"] == first["key"] and epochs[0]["test_acc"] == 0.5  # last record, first position
    assert epoch_series(run).test_acc[0] == 50.0 and len(epoch_series(run).epochs) == 3


def test_an_incomplete_run_is_flagged_and_excluded_unless_asked(sweep, tmp_path):
    root = copy_sweep(sweep, tmp_path)
    shutil.copytree(root / "0", root / "10")  # lth_iter, 50%, seed 0 -> an interrupted seed 7
    summary = json.loads((root / "10" / "summary.json").read_text())
    summary.update(status="running", seed=7)
    summary["final"]["test_acc"] = 0.99
    (root / "10" / "summary.json").write_text(json.dumps(summary))
    (root / "9").mkdir()  # killed in its first stage: metrics but no summary yet
    (root / "9" / "metrics.jsonl").write_text('{"event": "run_start"}\n')

    assert [r.rel for r in collect_runs(root)] == [*map(str, range(8)), "10"]  # numeric, not "1", "10", "2"
    expected = by_hand(root)[("lth_iter", 50.0)]
    report = build_report(root, figures=False)
    (table,) = report.tables
    assert table.cell("lth_iter", 50.0).n == 2
    assert table.cell("lth_iter", 50.0).mean == pytest.approx(sum(expected) / 2)
    pending = report.markdown.split("## Incomplete runs")[1]
    assert "2 run(s) not complete, excluded" in pending
    assert "| `10` | lth_iter | mlp / mnist1d | 50% | 7 | running | 99.00 |" in pending
    assert "| `9` |" in pending and "no summary.json yet" in pending

    report = build_report(root, figures=False, include_incomplete=True)
    cell = report.tables[0].cell("lth_iter", 50.0)
    assert cell.n == 3 and cell.mean == pytest.approx((sum(expected) + 99.0) / 3)
    assert "included in the tables" in report.markdown


def test_runs_with_a_different_recipe_get_their_own_row(sweep, tmp_path):
    root = copy_sweep(sweep, tmp_path)
    for job in ("6", "7"):  # lth at 90%: pretend these were run with another learning rate
        config = root / job / "config.yaml"
        config.write_text(config.read_text().replace("lr: 0.1\n", "lr: 0.05\n", 1))
    (table,) = build_tables(collect_runs(root))
    assert table.rows == ["lth [optim.lr=0.05]", "lth [optim.lr=0.1]", "lth_iter"]
    assert table.cell("lth [optim.lr=0.05]", 90.0).n == 2 and table.cell("lth [optim.lr=0.05]", 50.0) is None
    assert table.cell("lth [optim.lr=0.1]", 50.0).n == 2


def test_method_order_follows_table_1_then_alphabetical():
    names = ["zeta", "unidlth", "abc", "lth_iter [optim.lr=0.1]", "l1", "eb", "lth", "dlth_iter", "unilth", "dlth"]
    assert sorted(names, key=method_order) == [
        "l1",
        "lth",
        "lth_iter [optim.lr=0.1]",
        "eb",
        "dlth",
        "dlth_iter",
        "unilth",
        "unidlth",
        "abc",
        "zeta",
    ]


def test_cli_writes_the_report_and_prints_the_table(sweep, tmp_path):
    out = tmp_path / "out"
    result = run_report_cli(str(sweep), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "| method | 50% | 90% |" in result.stdout and "| lth_iter |" in result.stdout
    for name in ("table.md", "table.csv", "cost.csv", "accuracy_vs_epoch.png", "regularization_laws.png"):
        assert (out / name).is_file() and str(out / name) in result.stdout
    assert (out / "table.md").read_text() in result.stdout


def test_default_output_is_path_report_and_main_returns_0(sweep, tmp_path, capsys):
    root = copy_sweep(sweep, tmp_path)
    assert main([str(root), "--format", "md"]) == 0
    assert (root / "report" / "table.md").is_file() and not (root / "report" / "table.csv").exists()
    assert "lth_iter" in capsys.readouterr().out
    assert main([str(root)]) == 0  # the report folder inside the sweep is not mistaken for a run
    assert len(collect_runs(root)) == 8


def test_empty_directory_exits_2_with_one_line(tmp_path):
    result = run_report_cli(str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("lth-run-report: error: no runs found")
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_unreadable_summary_and_bad_format_exit_2(sweep, tmp_path, capsys):
    root = copy_sweep(sweep, tmp_path)
    (root / "5" / "summary.json").write_text('{"status": "compl')
    result = run_report_cli(str(root))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "unreadable summary" in result.stderr and "5/summary.json" in result.stderr
    assert main([str(sweep), "--out", str(tmp_path / "x"), "--format", "pdf"]) == 2
    assert capsys.readouterr().err.startswith("lth-run-report: error: --format=pdf is not accepted")
