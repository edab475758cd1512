"""The L1 baseline (magnitude pruning of a pre-trained network, then fine-tuning): filter and weight selection by
hand, end to end on MNIST-1D, loading pre-trained weights, errors, the CLI and resuming after SIGKILL."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch import nn

import lth_runner.methods.l1  # noqa: F401  (registers method=l1 until lth_runner.methods imports it)
from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.errors import UserError
from lth_runner.methods.l1 import filter_density, filter_mask, filters_kept, l1_mask, weight_mask
from lth_runner.models.mlp import MLP
from lth_runner.session import run_experiment
from lth_runner.sparse import Mask, MaskEnforcer, kept_count
from lth_runner.utils.io import read_jsonl
from tests.conftest import QUIET_MNIST1D, run_cli, without_timings

BASE = QUIET_MNIST1D
LAYERS = {"fc1.weight": (32, 40), "fc2.weight": (32, 32), "fc3.weight": (10, 32)}
PRUNABLE = sum(a * b for a, b in LAYERS.values())  # 2624


def run(out, data_root, *overrides, method="l1"):
    cfg = build_run_config(compose_config([*BASE, f"method={method}", f"paths.data_root={data_root}", *overrides]))
    return run_experiment(cfg, out).to_dict(), out


def epochs(out, key):
    return [r for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "epoch" and r["key"] == key]


# ------------------------------------------------------------------------------------------ selection by hand
def conv_with_filters(*filters: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(2, len(filters), 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.stack(filters))
    return conv


def test_filter_pruning_removes_the_filters_with_the_smallest_l1_norms():
    signs = torch.tensor([1.0, -1.0]).repeat(9)[:18].view(2, 3, 3)  # mixed signs: the norm is sum |w|
    spike = torch.zeros(2, 3, 3)
    spike[1, 2, 2] = 5.0  # one large weight, L1 norm 5
    conv = conv_with_filters(
        0.5 * signs,  # L1 norm 9
        spike,  # 5: the largest single weight of all, yet a small filter
        -0.2 * torch.ones(2, 3, 3),  # 3.6
        0.4 * signs,  # 7.2
    )
    original = conv.weight.detach().clone()
    mask = filter_mask({"conv.weight": conv.weight}, 0.5)  # keep kept_count(4, 0.5) = 2 filters
    MaskEnforcer({"conv.weight": conv.weight}, mask).apply_to_weights()
    assert filters_kept(mask) == {"conv.weight": 2}
    kept_filters = [0, 3]
    assert torch.equal(conv.weight[kept_filters], original[kept_filters])  # survivors untouched
    assert not conv.weight[[1, 2]].any()  # every weight of a removed filter is zero
    assert mask.num_kept() == 2 * 18 and filter_density(mask) == 0.5
    # unstructured magnitude pruning at the same density would keep the spike: the structures differ
    assert weight_mask({"conv.weight": original}, 0.5, "layerwise")["conv.weight"][1, 1, 2, 2]


def test_filter_pruning_counts_ties_and_the_one_filter_minimum():
    equal = conv_with_filters(*[torch.ones(2, 3, 3)] * 4)
    assert filter_mask({"w": equal.weight}, 0.5)["w"].flatten(1).all(1).tolist() == [True, True, False, False]
    # kept_count(4, 0.1) = floor(0.9) = 0, but every layer keeps at least one filter: the largest
    graded = conv_with_filters(*[torch.full((2, 3, 3), v) for v in (0.1, 0.3, 0.2, -0.05)])
    assert filter_mask({"w": graded.weight}, 0.1)["w"].flatten(1).all(1).tolist() == [False, True, False, False]
    # linear layers lose whole output neurons (rows); 7 of 10 rows at density 0.65 (kept_count rounds half up)
    linear = nn.Linear(6, 10)
    with torch.no_grad():
        linear.weight.copy_(torch.arange(10.0).flip(0).unsqueeze(1).expand(10, 6))
    rows = filter_mask({"fc": linear.weight}, 0.65)["fc"]
    assert rows.all(1).tolist() == [True] * 7 + [False] * 3 and (rows.all(1) | ~rows.any(1)).all()


def test_weight_structure_keeps_exact_counts_in_every_layer():
    torch.manual_seed(0)
    weights = {"a": torch.randn(10), "b": torch.randn(5, 5), "c": torch.randn(3, 7)}
    mask = l1_mask(weights, 0.7, structure="weight", scope="layerwise")
    # kept_count(n, 0.3): 10 -> 3, 25 -> floor(8.0) = 8, 21 -> floor(6.8) = 6
    assert mask.layer_kept() == {"a": 3, "b": 8, "c": 6}
    for name, w in weights.items():
        order = w.abs().flatten().argsort(descending=True)
        expected = torch.zeros(w.numel(), dtype=torch.bool)
        expected[order[: mask.layer_kept()[name]]] = True
        assert torch.equal(mask[name].flatten(), expected)
    assert l1_mask(weights, 0.7, structure="weight", scope="global").num_kept() == kept_count(56, 0.3) == 17


# ------------------------------------------------------------------------------------------------ end to end
def test_pretrain_prune_finetune_on_mnist1d(tmp_path, data_root):
    summary, out = run(
        tmp_path,
        data_root,
        "sparsity.target=0.75",
        "sparsity.scope=layerwise",
        "method.finetune_epochs=3",
        "method.finetune_lr_scale=0.1",
    )
    assert summary["status"] == "complete" and summary["prunable_weights"] == PRUNABLE
    mask = Mask.load(out / "masks/l1.pt")
    assert mask.layer_kept() == {"fc1.weight": 320, "fc2.weight": 256, "fc3.weight": 80}
    assert summary["final"]["density"] == 0.25 and summary["final"]["kept"] == 656
    assert summary["details"]["l1"]["weight_density"] == 0.25
    assert summary["details"]["l1"]["source"] == "pretrain/dense" and summary["details"]["l1"]["structure"] == "weight"

    # the mask keeps the largest |w| of every layer of the pre-trained weights
    pretrained = torch.load(out / "checkpoints/pretrain_dense.final.pt", weights_only=True)
    assert mask == weight_mask({n: pretrained[n] for n in LAYERS}, 0.25, "layerwise")

    assert summary["cost"]["epochs_per_stage"] == {"pretrain/dense": 2, "finetune/ticket": 3}
    assert [r["lr"] for r in epochs(out, "pretrain/dense")] == [0.1, 0.1]
    assert [r["lr"] for r in epochs(out, "finetune/ticket")] == pytest.approx([0.01] * 3, rel=1e-12)
    assert {r["density"] for r in epochs(out, "finetune/ticket")} == {0.25}
    finetune = epochs(out, "finetune/ticket")
    best = max(finetune, key=lambda r: r["val_acc"])
    assert (
        summary["final"]["test_acc"] == best["test_acc"]
        and summary["final"]["final_test_acc"] == finetune[-1]["test_acc"]
    )
    final_weights = torch.load(out / "checkpoints/last.pt", weights_only=True)["model"]
    for name in LAYERS:
        assert not final_weights[name][~mask[name]].any()  # pruned weights stayed at zero while fine-tuning
    dense = epochs(out, "pretrain/dense")[-1]
    assert summary["details"]["l1"]["pretrained"] == {"val_acc": dense["val_acc"], "test_acc": dense["test_acc"]}


def test_finetuning_starts_from_the_masked_pretrained_weights(tmp_path, data_root):
    summary, out = run(tmp_path, data_root, "method.finetune_epochs=1", "method.finetune_lr_scale=1e-7")
    pretrained = torch.load(out / "checkpoints/pretrain_dense.final.pt", weights_only=True)
    tuned = torch.load(out / "checkpoints/last.pt", weights_only=True)["model"]
    mask = Mask.load(out / "masks/l1.pt")
    assert mask.num_kept() == kept_count(PRUNABLE, 0.2)  # sparsity=80, global scope: the project default
    for name, value in pretrained.items():
        expected = value * mask[name] if name in mask else value
        assert torch.allclose(tuned[name], expected, atol=1e-5), name  # lr 1e-8 barely moves them
    assert epochs(out, "finetune/ticket")[0]["lr"] == pytest.approx(1e-8)


def test_no_finetuning_delivers_the_pruned_network(tmp_path, data_root):
    summary, out = run(tmp_path, data_root, "method.finetune_epochs=0")
    assert summary["cost"]["epochs_per_stage"] == {"pretrain/dense": 2}  # nothing fine-tuned
    pruned = summary["details"]["l1"]["pruned"]
    assert summary["final"]["test_acc"] == summary["final"]["final_test_acc"] == pruned["test_acc"] is not None
    # the pruned accuracy, recomputed by hand from the saved weights and mask
    from lth_runner.data import build_data

    model = MLP(40, [32, 32], 10)
    model.load_state_dict(torch.load(out / "checkpoints/pretrain_dense.final.pt", weights_only=True))
    mask = Mask.load(out / "masks/l1.pt")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in mask:
                param.mul_(mask[name])
    cfg = build_run_config(compose_config([*BASE, "method=l1", f"paths.data_root={data_root}"]))
    data = build_data(cfg.dataset, data_root=data_root, batch_size=64, eval_batch_size=1000, device="cpu")
    correct = total = 0
    for x, y in data.eval_batches("test"):
        correct += int((model(x).argmax(1) == y).sum())
        total += y.numel()
    assert pruned["test_acc"] == correct / total


def test_loading_an_lth_run_directory_gives_the_in_run_masks(tmp_path, data_root):
    lth_dir = tmp_path / "lth"
    run(lth_dir, data_root, "sparsity=50", "trainer.keep_round_weights=true", method="lth")
    in_run, in_run_dir = run(tmp_path / "in_run", data_root, "sparsity=50", "method.finetune_epochs=1")
    loaded, loaded_dir = run(
        tmp_path / "loaded", data_root, "sparsity=50", "method.finetune_epochs=1", f"method.pretrained={lth_dir}"
    )
    # l1's pre-training is LTH's dense stage: same initialisation, same data order, same weights
    assert _same(
        torch.load(lth_dir / "checkpoints/round00_dense.final.pt", weights_only=True),
        torch.load(in_run_dir / "checkpoints/pretrain_dense.final.pt", weights_only=True),
    )
    assert Mask.load(loaded_dir / "masks/l1.pt") == Mask.load(in_run_dir / "masks/l1.pt")
    assert loaded["details"]["l1"]["source"] == str(lth_dir / "checkpoints/round00_dense.final.pt")
    assert loaded["details"]["l1"]["source_kind"] == "run_dir"
    assert loaded["details"]["l1"]["pretrained"] == in_run["details"]["l1"]["pretrained"]
    assert loaded["final"] == {**in_run["final"], "seconds": loaded["final"]["seconds"]}
    assert loaded["cost"]["epochs_per_stage"] == {"finetune/ticket": 1}
    assert not (loaded_dir / "checkpoints/pretrain_dense.final.pt").exists()


def test_filter_structure_from_a_state_dict_file(tmp_path, data_root):
    torch.manual_seed(3)
    state = MLP(40, [32, 32], 10).state_dict()
    path = tmp_path / "weights.pt"
    torch.save({"model": state, "step": 7}, path)  # the layout of checkpoints/last.pt
    summary, out = run(
        tmp_path / "run",
        data_root,
        f"method.pretrained={path}",
        "method.structure=filter",
        "sparsity=50",
        "sparsity.exclude_last=true",
        "method.finetune_epochs=1",
    )
    mask = Mask.load(out / "masks/l1.pt")
    assert mask.names() == ["fc1.weight", "fc2.weight"]
    for name in mask.names():  # the 16 rows of largest L1 norm, computed directly from the file
        keep = state[name].abs().sum(1).argsort(descending=True)[:16]
        expected = torch.zeros(32, dtype=torch.bool)
        expected[keep] = True
        assert torch.equal(mask[name], expected.unsqueeze(1).expand_as(state[name]))
    assert summary["details"]["l1"]["filter_density"] == 0.5
    assert summary["details"]["l1"]["layer_filters_kept"] == {"fc1.weight": 16, "fc2.weight": 16}
    assert summary["final"]["density"] == (16 * 40 + 16 * 32) / (32 * 40 + 32 * 32) == 0.5
    assert summary["details"]["l1"]["source"] == str(path) and summary["details"]["l1"]["source_kind"] == "file"
    assert summary["cost"]["stages"] == 1


def test_filter_structure_weight_density_follows_fan_in(tmp_path, data_root):
    summary, out = run(tmp_path, data_root, "method.structure=filter", "sparsity=70", "method.finetune_epochs=1")
    # kept_count(32, 0.3) = 10, kept_count(10, 0.3) = 3 output units; the classifier is pruned too (with a warning)
    assert summary["details"]["l1"]["layer_filters_kept"] == {"fc1.weight": 10, "fc2.weight": 10, "fc3.weight": 3}
    assert summary["final"]["kept"] == 10 * 40 + 10 * 32 + 3 * 32
    assert summary["details"]["l1"]["filter_density"] == 23 / 74
    messages = [r["text"] for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "message"]
    assert any("classifier fc3.weight" in m for m in messages)


def test_filter_structure_on_a_conv_network(tmp_path, data_root):
    overrides = [
        "method=l1",
        "method.structure=filter",
        "dataset=synthetic",
        "dataset.shape=[3,8,8]",
        "dataset.train_size=128",
        "dataset.test_size=64",
        "model=conv2",
        "trainer.epochs=1",
        "sparsity=50",
        "sparsity.exclude_last=true",
        "logger.console=none",
        "logger.plots=false",
        f"paths.data_root={data_root}",
    ]
    out = tmp_path
    summary = run_experiment(build_run_config(compose_config(overrides)), out).to_dict()
    mask = Mask.load(out / "masks/l1.pt")
    pretrained = torch.load(out / "checkpoints/pretrain_dense.final.pt", weights_only=True)
    tuned = torch.load(out / "checkpoints/last.pt", weights_only=True)["model"]
    for name, keep in mask.items():
        rows = keep.flatten(1)
        assert (rows.all(1) | ~rows.any(1)).all()  # whole filters: all weights kept or all removed
        norms = pretrained[name].abs().flatten(1).sum(1)
        assert norms[rows.all(1)].min() >= norms[~rows.all(1)].max()  # the largest L1 norms survive
        assert int(rows.all(1).sum()) == keep.shape[0] // 2
        assert not tuned[name][~keep].any()
    assert mask.names()[:2] == ["conv1.weight", "conv2.weight"] and "fc3.weight" not in mask
    assert summary["details"]["l1"]["filter_density"] == 0.5 and summary["final"]["density"] == 0.5


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------------- errors
def test_a_missing_pretrained_path_is_a_one_line_user_error(tmp_path, data_root):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(UserError) as err:
        run(tmp_path / "run", data_root, f"method.pretrained={missing}")
    assert "\n" not in str(err.value) and str(missing) in str(err.value)


def test_a_run_directory_without_dense_weights_is_a_one_line_user_error(tmp_path, data_root):
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    (tmp_path / "old" / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(UserError) as err:
        run(tmp_path / "run", data_root, f"method.pretrained={tmp_path / 'old'}")
    text = str(err.value)
    assert "\n" not in text and str(tmp_path / "old") in text and "trainer.keep_round_weights=true" in text
    for name in ("pretrain_dense.final.pt", "round00_dense.final.pt", "search_dense.final.pt"):
        assert name in text


def test_mismatching_or_unreadable_weights_are_one_line_user_errors(tmp_path, data_root):
    narrow = tmp_path / "narrow.pt"
    torch.save(MLP(40, [32, 16], 10).state_dict(), narrow)
    with pytest.raises(UserError) as err:
        run(tmp_path / "a", data_root, f"method.pretrained={narrow}")
    assert "\n" not in str(err.value)
    assert "fc2.weight has shape (16, 32) there and (32, 32) in the model" in str(err.value)

    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint\nat all")
    with pytest.raises(UserError, match="is not a readable PyTorch weights file") as err:
        run(tmp_path / "b", data_root, f"method.pretrained={garbage}")
    assert "\n" not in str(err.value)

    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in MLP(40, [32, 32], 10).state_dict().items() if k != "fc3.bias"}, partial)
    with pytest.raises(UserError, match="has no tensor 'fc3.bias'"):
        run(tmp_path / "c", data_root, f"method.pretrained={partial}")


# -------------------------------------------------------------------------------------------------------- CLI
CLI = [
    "model=mlp",
    "dataset=mnist1d",
    "method=l1",
    "dataset.num_samples=1000",
    "model.hidden=[32,32]",
    "trainer.epochs=2",
    "trainer.batch_size=64",
    "trainer.num_threads=1",
    "sparsity=50",
    "logger.console=plain",
    "logger.plots=false",
]
PLUGIN = "plugins=[lth_runner.methods.l1]"


def test_the_cli_runs_l1(tmp_path, data_root):
    result = run_cli(*CLI, PLUGIN, f"hydra.run.dir={tmp_path / 'run'}", data_root=data_root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pruned to density 50.00% (1,312 of 2,624 weights)" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "l1" and summary["status"] == "complete" and summary["final"]["kept"] == 1312


def test_the_cli_reports_a_missing_pretrained_path_in_one_line(tmp_path, data_root):
    failed = run_cli(
        *CLI, PLUGIN, f"hydra.run.dir={tmp_path / 'bad'}", "method.pretrained=/no/such/run", data_root=data_root
    )
    assert failed.returncode == 2
    errors = failed.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("lth-run: error: method.pretrained='/no/such/run'")


@pytest.mark.slow  # three CLI runs: about 15 s on an idle 2-core machine, 30 s on a busy one
def test_a_run_killed_while_finetuning_resumes_to_the_same_result(tmp_path, data_root, monkeypatch):
    reference = run_cli(*CLI, PLUGIN, f"hydra.run.dir={tmp_path / 'reference'}", data_root=data_root)
    assert reference.returncode == 0, reference.stderr[-2000:]
    with monkeypatch.context() as patch:
        patch.setenv("LTH_KILL_AT", "finetune/ticket:15")  # 12 steps per epoch: mid-way through the second epoch
        killed = run_cli(
            *CLI,
            "plugins=[lth_runner.methods.l1,tests.fault_injection]",
            f"hydra.run.dir={tmp_path / 'run'}",
            data_root=data_root,
        )
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "running"
    resumed = run_cli(*CLI, PLUGIN, f"hydra.run.dir={tmp_path / 'run'}", data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert sum(r["event"] == "prune" for r in records) == 1  # the saved mask was read back, not recomputed
    assert len([r for r in records if r["event"] == "epoch" and r["key"] == "pretrain/dense"]) == 2
    restarts = [r for r in records if r["event"] == "stage_start" and r["key"] == "finetune/ticket"]
    assert [r["resumed"] for r in restarts] == [False, True]
    want, got = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("reference", "run"))
    assert without_timings(got) == without_timings(want)
    assert Mask.load(tmp_path / "run/masks/l1.pt") == Mask.load(tmp_path / "reference/masks/l1.pt")


def test_pretrained_auto_trains_the_dense_model_once_for_two_concurrent_jobs(tmp_path):
    """Two jobs with the same recipe start together: one trains and caches the dense model under the data root,
    the other waits for it and loads it; both prune the same weights."""
    import subprocess
    import sys

    from tests.conftest import REPO

    data_root = tmp_path / "data"
    env = dict(os.environ, LTH_DATA_ROOT=str(data_root), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "lth_runner.train", *BASE, "method=l1", "method.pretrained=auto"]
    jobs = [
        subprocess.Popen([*command, f"hydra.run.dir={tmp_path / name}"], cwd=REPO, env=env, stderr=subprocess.PIPE)
        for name in ("a", "b")
    ]
    for job in jobs:
        assert job.wait(timeout=300) == 0, job.stderr.read().decode()[-2000:]
    cached = sorted(p.name for p in (data_root / "pretrained").iterdir() if p.suffix in (".pt", ".json"))
    assert len(cached) == 2 and cached[0].startswith("mlp-")  # one weights file and its record
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("a", "b")]
    assert sorted(s["details"]["l1"]["source_kind"] for s in summaries) == ["cache", "trained"]
    assert Mask.load(tmp_path / "a" / "masks" / "l1.pt") == Mask.load(tmp_path / "b" / "masks" / "l1.pt")
    record = json.loads((data_root / "pretrained" / cached[0]).read_text())  # the .json sorts first
    assert record["recipe"]["epochs"] == 2 and record["accuracy"]["test_acc"] is not None
    trained = next(s for s in summaries if s["details"]["l1"]["source_kind"] == "trained")
    assert trained["cost"]["epochs_per_stage"].get("pretrain/dense") == 2
