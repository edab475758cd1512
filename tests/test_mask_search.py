"""edge-popup and SR-popup (lth_runner/methods/mask_search.py): the restriction, budgets, frozen weights, resume."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lth_runner.config.compose import compose_config
from lth_runner.config.schema import MaskSearchConfig
from lth_runner.config.validate import build_run_config
from lth_runner.errors import ConfigError, UserError
from lth_runner.methods.mask_search import (
    SWAP_SCHEDULES,
    RestrictedSwap,
    layer_budget,
    restricted_swap,
    swap_count,
)
from lth_runner.models import build_model
from lth_runner.session import run_experiment
from lth_runner.sparse import Mask, kept_count, prune_to_density
from lth_runner.sparse.score_mask import ScoreMaskedModel
from lth_runner.utils.io import read_jsonl
from lth_runner.utils.seeding import derive_seed
from tests.conftest import TINY_MNIST1D, assert_killed_run_resumes_identically, run_cli, without_timings

BASE = [*TINY_MNIST1D, "logger.console=none", "logger.plots=false"]
LAYERS = {"fc1.weight": 40 * 32, "fc2.weight": 32 * 32, "fc3.weight": 32 * 10}


def config(data_root, *overrides):
    return build_run_config(compose_config([*BASE, f"paths.data_root={data_root}", *overrides]))


# ------------------------------------------------------------------------------------------- the restriction
def test_restricted_swap_revives_the_largest_candidates_and_prunes_the_smallest_by_hand():
    """m and keep below: 3 kept, 3 pruned; the threshold between them is the 3rd smallest m = 0.98, so
    Psi* = {pruned, m > 0.98} = {1 (0.99)} and Phi* = {kept, m <= 0.98} = {0 (0.90)}."""
    m = torch.tensor([0.90, 0.99, 1.00, 0.98, 1.20, 0.50])
    keep = torch.tensor([True, False, True, False, True, False])
    new, q, candidates = restricted_swap(m, keep, 1.0)
    assert (q, candidates) == (1, 1) and new.tolist() == [False, True, True, False, True, False]
    assert restricted_swap(m, keep, 0.0)[1] == 0
    # four candidates each side: a fraction 0.3 swaps ceil(1.2) = 2, the extremes first
    m = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.7, 0.6])
    keep = torch.tensor([True, True, True, True, False, False, False, False])
    new, q, candidates = restricted_swap(m, keep, 0.3)
    assert (q, candidates) == (2, 4)
    assert new.tolist() == [False, False, True, True, True, True, False, False]
    assert int(new.sum()) == 4


def test_swap_schedules_follow_their_formulas():
    cfg = MaskSearchConfig(name="sr_popup")
    assert [SWAP_SCHEDULES["poly4"](t, 10, cfg) for t in (0, 5, 10)] == [1.0, 0.5**4, 0.0]
    assert SWAP_SCHEDULES["inverse"](5, 10, cfg) == 0.5**4
    assert SWAP_SCHEDULES["cosine"](5, 10, cfg) == pytest.approx(0.5)
    # the reference CIFAR script: ceil((1 - epoch/E)^4) is 1 for every epoch of the search (never restricts)
    assert {SWAP_SCHEDULES["reference_epoch"](t, 30, cfg, steps_per_epoch=10) for t in range(30)} == {1.0}
    assert swap_count(7, (1 - 3 / 10) ** 4) == math.ceil(7 * 0.7**4) == 2


def test_the_restriction_hook_swaps_q_t_per_layer_at_iteration_t():
    torch.manual_seed(0)
    layer = torch.nn.Linear(10, 10, bias=False)
    scores = {"weight": torch.rand(10, 10)}
    wrapper = ScoreMaskedModel(layer, scores, {"weight": 50}, rank_by="value")
    wrapper.set_keep(Mask({"weight": torch.arange(100).view(10, 10) % 2 == 0}))  # far from the top-k of m
    before = wrapper.mask()
    cfg = MaskSearchConfig(name="sr_popup", swap_schedule="poly4")
    hook = RestrictedSwap(wrapper, cfg, total_steps=10, steps_per_epoch=5)
    _, expected_q, candidates = restricted_swap(wrapper.ranked()["weight"], wrapper.keep("weight"), (1 - 3 / 10) ** 4)
    hook.after_step(SimpleNamespace(step=3, stage=SimpleNamespace(start_step=0)))
    changed = int((wrapper.keep("weight") != before["weight"]).sum())
    assert candidates > 0 and expected_q == math.ceil(candidates * 0.7**4) and changed == 2 * expected_q
    assert int(wrapper.keep("weight").sum()) == 50


def test_layer_budgets_uniform_global_and_from_one_global_magnitude_threshold():
    weights = {"a": torch.tensor([5.0, 4.0, 3.0, 2.0]), "b": torch.tensor([1.0, 0.5, 6.0, 0.1])}
    assert layer_budget(weights, 0.5, "uniform") == {"a": 2, "b": 2}
    assert layer_budget(weights, 0.5, "global") == 4
    assert layer_budget(weights, 0.5, "global_magnitude") == {"a": 3, "b": 1}  # 6, 5, 4, 3 survive
    mask = Mask({"a": torch.tensor([True, False, True, False]), "b": torch.tensor([False, False, True, False])})
    reference = Mask({"a": torch.tensor([True, True, True, False]), "b": torch.tensor([False, False, False, True])})
    assert mask.kept_overlap(reference) == 2 / 3  # the overlap reported against the magnitude mask


# -------------------------------------------------------------------------------------------------- runs
def test_edge_popup_keeps_exact_per_layer_counts_and_never_moves_a_weight(tmp_path, data_root):
    summary = run_experiment(config(data_root, "method=edge_popup", "trainer.keep_round_weights=true"), tmp_path)
    mask = Mask.load(tmp_path / "masks" / "search.pt")
    assert {n: int(m.sum()) for n, m in mask.items()} == {n: kept_count(c, 0.2) for n, c in LAYERS.items()}
    assert summary.final.kept == mask.num_kept() and summary.final.test_acc is not None
    searched = torch.load(tmp_path / "checkpoints" / "search_scores.final.pt", weights_only=True)
    cfg = config(data_root, "method=edge_popup")
    init = build_model(cfg.model, (40,), 10, seed=derive_seed(cfg.seed, "model", "init"))  # what RunContext builds
    for name, value in init.state_dict().items():
        assert torch.equal(searched[f"model.{name}"], value), name  # weights and biases bit-identical
    kept_scores = searched["scores.fc1__weight"].abs()[mask["fc1.weight"]]
    assert kept_scores.min() >= searched["scores.fc1__weight"].abs()[~mask["fc1.weight"]].max()  # the top-k |s|


def test_sr_popup_starts_from_the_magnitude_mask_with_global_magnitude_budgets(tmp_path, data_root):
    summary = run_experiment(config(data_root, "method=sr_popup", "method.pretrain_epochs=2"), tmp_path).to_dict()
    section = summary["details"]["search"]
    assert section["overlap_with_magnitude"]["start"] == 1.0 and section["source_kind"] in ("trained", "cache")
    assert "fc3.weight" not in section["layer_kept"]  # the classifier stays dense
    assert sum(section["layer_kept"].values()) == kept_count(LAYERS["fc1.weight"] + LAYERS["fc2.weight"], 0.2)
    mask = Mask.load(tmp_path / "masks" / "search.pt")
    assert {n: int(m.sum()) for n, m in mask.items()} == section["layer_kept"]
    assert section["swaps"] > 0 and 0 < section["overlap_with_magnitude"]["end"] <= 1.0


@pytest.mark.slow  # three subprocess runs, a kill and a resume (15-22 s): in the slow suite, which .ci/run runs
def test_a_search_killed_mid_epoch_resumes_to_the_same_summary_and_mask(tmp_path, data_root):
    overrides = [*BASE, "method=sr_popup", "method.pretrain_epochs=2", "trainer.epochs=3", "logger.console=plain"]
    # the pre-trained weights cached first, so both runs report them as found in the cache (whatever ran before)
    assert run_cli(*overrides, f"hydra.run.dir={tmp_path / 'warm'}", data_root=data_root).returncode == 0
    # 12 steps per epoch: in the second epoch
    assert_killed_run_resumes_identically(tmp_path, overrides, "search/scores:20", ["search"], data_root)


def test_bad_search_options_fail_in_one_line(data_root):
    with pytest.raises(ConfigError, match="method.score_init='magnitud' is not accepted: did you mean magnitude"):
        config(data_root, "method=edge_popup", "method.score_init=magnitud")
    with pytest.raises(ConfigError, match="method.weight_init"):
        config(data_root, "method=sr_popup", "method.weight_init=signed_constant")


def test_comparing_two_masks_by_hand_and_from_the_command_line(tmp_path):
    import subprocess
    import sys

    from lth_runner.report.masks import compare
    from tests.conftest import REPO

    a = Mask({"w": torch.tensor([True, True, False, False]), "v": torch.tensor([True, False])})
    b = Mask({"w": torch.tensor([True, False, True, False]), "v": torch.tensor([True, False])})
    result = compare(a, b)
    assert result["layers"]["w"] == {
        "entries": 4, "kept_a": 2, "kept_b": 2, "overlap": 0.5, "jaccard": 1 / 3, "hamming": 2, "eq7_kept": 0.0,
    }  # fmt: skip
    assert result["total"]["overlap"] == 2 / 3 and result["total"]["jaccard"] == 0.5
    (tmp_path / "run" / "masks").mkdir(parents=True)
    a.save(tmp_path / "run" / "masks" / "search.pt")
    b.save(tmp_path / "b.pt")
    cli = [sys.executable, "-m", "lth_runner.report.masks"]
    shown = subprocess.run([*cli, str(tmp_path / "run"), str(tmp_path / "b.pt")], cwd=REPO, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1].split() == ["total", "6", "3", "3", "0.6667", "0.5000", "2"]
    other = Mask({"w": torch.ones(4, dtype=torch.bool)})
    other.save(tmp_path / "c.pt")
    failed = subprocess.run([*cli, str(tmp_path / "b.pt"), str(tmp_path / "c.pt")], cwd=REPO, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert failed.returncode == 2 and failed.stderr.strip().count("\n") == 0 and "different tensors" in failed.stderr


def test_a_found_mask_retrains_under_lth_and_prune_at_init_ranks_the_initial_weights(tmp_path, data_root):
    search = run_experiment(config(data_root, "method=edge_popup"), tmp_path / "search")
    found = Mask.load(tmp_path / "search" / "masks" / "search.pt")
    retrained = run_experiment(
        config(data_root, "method=lth", f"method.mask={tmp_path / 'search'}"), tmp_path / "retrain"
    )
    assert Mask.load(tmp_path / "retrain" / "masks" / "round_01.pt") == found
    assert retrained.final.kept == search.final.kept and "round00/dense" not in retrained.cost.epochs_per_stage
    assert retrained.details["given_mask"] == str(tmp_path / "search")
    with pytest.raises(UserError, match="method.mask: .* covers fc1.weight, fc2.weight, fc3.weight, this run prunes"):
        run_experiment(
            config(data_root, "method=lth", f"method.mask={tmp_path / 'search'}", "sparsity.exclude_last=true"),
            tmp_path / "bad",
        )

    at_init = run_experiment(config(data_root, "method=prune_at_init", "method.criterion=magnitude"), tmp_path / "pai")
    cfg = config(data_root, "method=prune_at_init")
    init = build_model(cfg.model, (40,), 10, seed=derive_seed(cfg.seed, "model", "init"))
    expected = prune_to_density({n: init.state_dict()[n].abs() for n in LAYERS}, 0.2, scope="global")
    assert Mask.load(tmp_path / "pai" / "masks" / "round_01.pt") == expected and at_init.final.test_acc is not None
    snip = run_experiment(config(data_root, "method=prune_at_init"), tmp_path / "snip")
    snip_mask = Mask.load(tmp_path / "snip" / "masks" / "round_01.pt")
    assert (
        snip_mask.num_kept() == expected.num_kept()
        and snip_mask != expected
        and snip.final.kept == kept_count(sum(LAYERS.values()), 0.2)
    )


def test_slt_eps_stays_in_the_epsilon_box_and_keeps_the_mask_with_the_lowest_validation_loss(tmp_path, data_root):
    from lth_runner.methods.slt_eps import radii

    overrides = ["method=slt_eps", "method.eps=0.02", "method.sparsities=[0.3,0.7]", "trainer.keep_round_weights=true"]
    summary = run_experiment(config(data_root, *overrides), tmp_path).to_dict()
    cfg = config(data_root, *overrides)
    init = build_model(cfg.model, (40,), 10, seed=derive_seed(cfg.seed, "model", "init")).state_dict()
    pgd = torch.load(tmp_path / "checkpoints" / "pgd_dense.final.pt", weights_only=True)
    moved = [n for n in LAYERS if not torch.equal(pgd[n], init[n])]
    assert moved == list(LAYERS)  # PGD moved every prunable weight ...
    assert all((pgd[n] - init[n]).abs().max() <= 0.02 + 1e-6 for n in LAYERS)  # ... never out of the box
    assert all(torch.equal(pgd[n], init[n]) for n in ("fc1.bias", "fc2.bias", "fc3.bias"))  # perturb=prunable
    section = summary["details"]["slt"]
    rows = {row["sparsity"]: row for row in section["grid"]}
    assert sorted(rows) == [0.0, 0.3, 0.7]
    assert section["best_sparsity"] == min((0.3, 0.7), key=lambda s: rows[s]["val_loss"])
    assert Mask.load(tmp_path / "masks" / "best.pt") == Mask.load(
        tmp_path / "masks" / f"s{round(100 * section['best_sparsity']):02d}.pt"
    )
    searched = torch.load(tmp_path / "checkpoints" / "popup_s70.final.pt", weights_only=True)
    assert all(torch.equal(searched[f"model.{n}"], pgd[n]) for n in LAYERS)  # the search froze W_T
    weights = {"a": torch.tensor([1.0, -1.0, 1.0, -1.0]), "b": torch.tensor([2.0])}
    assert radii(weights, 0.1, "relative_std") == {"a": pytest.approx(0.1 * 1.1547005), "b": 0.1}


def test_the_report_draws_the_sparsity_by_epsilon_table_of_an_eps_sweep(tmp_path, data_root):
    from lth_runner.report import build_report

    for eps in ("0", "0.05"):
        run_experiment(
            config(data_root, "method=slt_eps", f"method.eps={eps}", "method.sparsities=[0.5]", "trainer.epochs=1"),
            tmp_path / "sweep" / f"eps{eps}",
        )
    report = build_report(tmp_path / "sweep")
    table = report.markdown.split("Strong tickets with epsilon-perturbation: mlp / mnist1d")[1]
    header, _, unpruned, pruned, best = table.splitlines()[2:7]
    assert header == "| s \\ eps | 0 | 0.05 |" and unpruned.startswith("| 0 | ") and pruned.startswith("| 0.5 | ")
    assert best.split("|")[2:4] == pruned.split("|")[2:4]  # one pruned sparsity: the best is that row
    assert (tmp_path / "sweep" / "report" / "slt_eps_grid.png").exists()


def test_controls_and_a_fine_tune_train_the_weights_after_the_search(tmp_path, data_root):
    """The search freezes the weights; afterwards they train again (a frozen network's loss would not move)."""
    summary = run_experiment(
        config(data_root, "method=edge_popup", "method.finetune_epochs=2", "method.controls=[reinit,random_prune]"),
        tmp_path,
    )
    assert set(summary.final.controls) == {"reinit", "random_prune"}
    losses: dict[str, list[float]] = {}
    for record in read_jsonl(tmp_path / "metrics.jsonl"):
        if record["event"] == "epoch":
            losses.setdefault(record["key"], []).append(record["train_loss"])
    trained = [k for k in losses if k != "search/scores"]
    assert "finetune/ticket" in trained and len(trained) == 3
    assert all(losses[k][-1] < losses[k][0] for k in trained), losses


@pytest.mark.parametrize("budget", ["uniform", "global", "global_magnitude"])
def test_every_budget_keeps_its_exact_count(tmp_path, data_root, budget):
    summary = run_experiment(config(data_root, "method=edge_popup", f"method.layer_budget={budget}"), tmp_path)
    mask = Mask.load(tmp_path / "masks" / "search.pt")
    if budget == "uniform":
        assert mask.layer_kept() == {n: kept_count(c, 0.2) for n, c in LAYERS.items()}
    else:
        assert mask.num_kept() == kept_count(sum(LAYERS.values()), 0.2) == summary.final.kept
    if budget == "global_magnitude":
        assert mask.layer_kept() == summary.details["search"]["layer_kept"]


def test_the_papers_weight_distributions_for_a_search_from_scratch():
    from lth_runner.methods.mask_search import reinitialise

    weights = {"w": torch.nn.Parameter(torch.zeros(64, 50))}
    reinitialise(weights, "signed_constant", torch.Generator().manual_seed(0))
    values = weights["w"].detach().unique()
    assert torch.allclose(values, torch.tensor([-math.sqrt(2 / 50), math.sqrt(2 / 50)]))
    assert abs(float((weights["w"] > 0).float().mean()) - 0.5) < 0.05  # random signs
    reinitialise(weights, "kaiming_normal", torch.Generator().manual_seed(0))
    assert abs(float(weights["w"].detach().std()) - math.sqrt(2 / 50)) < 0.01


def test_timm_weights_offline_fail_in_one_line_naming_the_alternatives(tmp_path, data_root):
    result = run_cli(
        "method=sr_popup", "model=timm", "model.name=resnet10t", "dataset=synthetic", "dataset.shape=[3,32,32]",
        "method.pretrained=timm:resnet10t", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}",
        data_root=data_root, env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.startswith("lth-run: error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "method.pretrained=timm:resnet10t" in lines[0] and "method.pretrained=auto" in lines[0]
    assert "Traceback" not in result.stderr


def test_slt_eps_trains_its_controls_at_the_best_mask(tmp_path, data_root):
    summary = run_experiment(
        config(data_root, "method=slt_eps", "method.sparsities=[0.3,0.7]", "method.controls=[reinit]"), tmp_path
    )
    best_round = [0.3, 0.7].index(summary.details["slt"]["best_sparsity"]) + 1
    assert summary.final.controls["reinit"].test_acc is not None
    assert (
        set(summary.rounds[best_round].controls) == {"reinit"} and summary.rounds[best_round].kept == summary.final.kept
    )


def test_review_fixes_colliding_sparsities_junk_masks_and_a_resumed_given_mask(tmp_path, data_root):
    with pytest.raises(ConfigError, match="method.sparsities"):
        config(data_root, "method=slt_eps", "method.sparsities=[0.12,0.125]")
    (tmp_path / "junk.pt").write_text("not a mask")
    with pytest.raises(UserError, match="junk.pt: not a mask file of lth_runner"):
        run_experiment(config(data_root, "method=lth", f"method.mask={tmp_path / 'junk.pt'}"), tmp_path / "bad")
    search = tmp_path / "search"
    run_experiment(config(data_root, "method=edge_popup"), search)
    first = run_experiment(config(data_root, "method=lth", f"method.mask={search}"), tmp_path / "retrain")
    (search / "masks" / "search.pt").unlink()  # the source is gone; the run reads back its own copy
    again = run_experiment(config(data_root, "method=lth", f"method.mask={search}"), tmp_path / "retrain")
    assert without_timings(again.to_dict()) == without_timings(first.to_dict())
