"""The paper's experiment presets (seed 000, Appendix D): every preset composes for every method of Table 1 and builds
its model; every CPU-sized sibling keeps its recipe and runs end to end."""

from __future__ import annotations

import pytest
import torch

from lth_runner.config.compose import compose_config
from lth_runner.config.validate import build_run_config
from lth_runner.models import build_model
from lth_runner.session import run_experiment
from tests.conftest import REPO

PRESET_DIR = REPO / "conf" / "experiment" / "unilth"
PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.endswith("_cpu"))
TABLE1_ROWS = ["l1", "lth", "lth_iter", "eb_fixed", "dlth", "dlth_iter", "unilth", "unidlth"]
# One method per sibling, so that the sweep of all siblings runs every method of Table 1 at least once.
SIBLING_RUNS = {
    "table1_vgg19_cifar10_cpu": ["method=unilth"],
    "table1_vgg19_cifar100_cpu": ["method=unidlth"],
    "table1_resnet50_cifar10_cpu": ["method=lth_iter"],
    "table1_resnet50_cifar100_cpu": ["method=dlth_iter"],
    "table2_vgg19_cifar10_cpu": ["method=unilth", "regularizer=explaw"],
    "table2_resnet50_cifar100_cpu": ["method=unidlth", "regularizer=tanlaw"],
    "table5_mobilenet_cifar10_cpu": ["method=eb_fixed"],
    "table5_efficientnet_cifar10_cpu": ["method=l1", "method.finetune_epochs=1"],
}


def test_every_preset_has_a_sibling_and_every_sibling_is_run():
    siblings = sorted(p.stem for p in PRESET_DIR.glob("*_cpu.yaml"))
    assert siblings == sorted(f"{p}_cpu" for p in PRESETS) == sorted(SIBLING_RUNS)
    assert {o.split("=")[1] for runs in SIBLING_RUNS.values() for o in runs if o.startswith("method=")} | {
        "lth",
        "dlth",
        "l1",
    } >= set(TABLE1_ROWS) - {"lth"}


@pytest.mark.parametrize("preset", PRESETS)
def test_paper_presets_compose_for_every_method_and_build_their_model(preset):
    for method in TABLE1_ROWS:
        cfg = build_run_config(compose_config([f"experiment=unilth/{preset}", f"method={method}"]))
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.trainer.batch_size) == ("sgd", 0.1, 0.9, 128)
        assert cfg.optim.scheduler.name == "cosine_restarts" and cfg.optim.scheduler.restart_epochs == 200
        assert cfg.trainer.epochs == 200 and cfg.sparsity.rounds == 10
    classes = 100 if cfg.dataset.name == "cifar100" else 10
    model = build_model(cfg.model, (3, 32, 32), classes, seed=0).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, classes)


@pytest.mark.parametrize("sibling", sorted(SIBLING_RUNS))
def test_cpu_siblings_keep_the_recipe_and_run(sibling, tmp_path):
    overrides = [f"experiment=unilth/{sibling}", *SIBLING_RUNS[sibling], "logger.console=none", "logger.plots=false"]
    cfg = build_run_config(compose_config(overrides))
    parent = build_run_config(
        compose_config([f"experiment=unilth/{sibling.removesuffix('_cpu')}", *SIBLING_RUNS[sibling]])
    )
    assert cfg.optim.name == parent.optim.name and cfg.optim.lr == parent.optim.lr
    assert cfg.optim.scheduler.name == parent.optim.scheduler.name and cfg.model.arch == parent.model.arch
    summary = run_experiment(cfg, tmp_path)
    assert summary["status"] == "complete"
    assert abs(summary["final"]["density"] - (1 - cfg.sparsity.target)) < 0.01
    assert summary["final"]["test_acc"] is not None and summary["cost"]["epochs_total"] > 0
