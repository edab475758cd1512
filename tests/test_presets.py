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
TABLE1_ROWS = ["l1", "lth", "lth_iter", "eb_fixed_paper", "dlth", "dlth_iter", "unilth", "unidlth"]
METHOD_FILES = sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml"))
# One method per sibling, so that the sweep of all siblings runs every method of Table 1 at least once.
SIBLING_RUNS = {
    "table1_vgg19_cifar10_cpu": ["method=unilth"],
    "table1_vgg19_cifar100_cpu": ["method=unidlth"],
    "table1_resnet50_cifar10_cpu": ["method=lth_iter"],
    "table1_resnet50_cifar100_cpu": ["method=dlth_iter"],
    "table2_vgg19_cifar10_cpu": ["method=unilth", "regularizer=explaw"],
    "table2_resnet50_cifar100_cpu": ["method=unidlth", "regularizer=tanlaw"],
    "table5_mobilenet_cifar10_cpu": ["method=eb_fixed", "method.fixed_epoch=2"],
    "table5_efficientnet_cifar10_cpu": ["method=l1", "method.finetune_epochs=1"],
}


def test_every_preset_has_a_sibling_and_every_sibling_is_run():
    siblings = sorted(p.stem for p in PRESET_DIR.glob("*_cpu.yaml"))
    assert siblings == sorted(f"{p}_cpu" for p in PRESETS) == sorted(SIBLING_RUNS)
    ran = {o.split("=")[1] for runs in SIBLING_RUNS.values() for o in runs if o.startswith("method=")}
    assert ran | {"lth", "dlth", "eb_fixed_paper"} >= set(TABLE1_ROWS)


@pytest.mark.parametrize("preset", ["demo", "mnist_lenet"])
def test_the_general_presets_work_with_every_method(preset):
    """Presets are method-neutral: every method file composes and validates with them (the method's own keys live
    in its file)."""
    for method in METHOD_FILES:
        if method == "eb_fixed_paper":  # the paper's epoch 37 needs its 200-epoch schedule (a one-line error here)
            continue
        cfg = build_run_config(compose_config([f"experiment={preset}", f"method={method}"]))
        assert cfg.method.controls == (["reinit"] if preset == "demo" else [])


def test_the_demo_runs_with_unidlth_and_its_control(tmp_path, data_root):
    overrides = ["experiment=demo", "method=unidlth", "trainer.epochs=3", "sparsity.rounds=2"]
    overrides += [
        "dataset.num_samples=1000",
        "logger.console=none",
        "logger.plots=false",
        f"paths.data_root={data_root}",
    ]
    summary = run_experiment(build_run_config(compose_config(overrides)), tmp_path)
    assert summary.complete and set(summary.final.controls) == {"reinit"}
    assert summary.final.kept == summary.rounds[-1].kept and summary.final.density == pytest.approx(0.05, abs=0.01)


@pytest.mark.parametrize("preset", PRESETS)
def test_paper_presets_compose_for_every_method_and_build_their_model(preset):
    for method in TABLE1_ROWS:
        cfg = build_run_config(compose_config([f"experiment=unilth/{preset}", f"method={method}"]))
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.trainer.batch_size) == ("sgd", 0.1, 0.9, 128)
        # one cosine per stage (no restart period): a 200-epoch run anneals over 200 epochs, a fine-tune over its own
        assert cfg.optim.scheduler.name == "cosine_restarts" and cfg.optim.scheduler.restart_epochs is None
        assert cfg.trainer.epochs == 200 and cfg.sparsity.rounds == 10
        if method == "eb_fixed_paper":
            assert cfg.method.fixed_epoch == 37  # the epoch seed 000 reports for its 200-epoch runs
        if method == "l1":
            assert cfg.method.scope == "layerwise"  # the row docs/methods.md describes
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
    summary = run_experiment(cfg, tmp_path).to_dict()
    assert summary["status"] == "complete"
    assert abs(summary["final"]["density"] - (1 - cfg.sparsity.target)) < 0.01
    assert summary["final"]["test_acc"] is not None and summary["cost"]["epochs_total"] > 0


# ---------------------------------------------------------------------------- mask search (papers 003 and 004)
SEARCH_PRESETS = {
    "jackpots/table1_vgg19_cifar10": ["sr_popup", "edge_popup", "prune_at_init", "lth", "set", "rigl"],
    "jackpots/table1_resnet32x2_cifar10": ["sr_popup", "edge_popup", "prune_at_init", "lth", "set", "rigl"],
    "jackpots/table5_resnet50_imagenet": ["sr_popup", "edge_popup"],
    "jackpots/table1_obd_vgg19_cifar10": ["obd"],
    "jackpots/table1_obd_resnet32x2_cifar10": ["obd"],
    "jackpots/lenet_mnist": ["sr_popup", "edge_popup", "prune_at_init", "lth"],
    "slt_eps/mlp_mnist": ["slt_eps", "edge_popup"],
}
SEARCH_SIBLING_RUNS = {
    "jackpots/table1_vgg19_cifar10_cpu": ["method=sr_popup", "method.search_epochs=1", "method.pretrain_epochs=1"],
    "jackpots/table1_resnet32x2_cifar10_cpu": ["method=prune_at_init", "method.criterion=grasp"],
    "jackpots/table5_resnet50_imagenet_cpu": ["method=edge_popup", "method.search_epochs=1"],
    "jackpots/table1_obd_vgg19_cifar10_cpu": [],
    "jackpots/table1_obd_resnet32x2_cifar10_cpu": ["sparsity.obd_hessian=hutchinson", "sparsity.obd_samples=4"],
    "jackpots/lenet_mnist_cpu": ["method=sr_popup", "method.search_epochs=1", "trainer.epochs=1"],
    "slt_eps/mlp_mnist_cpu": ["method=slt_eps", "method.sparsities=[0.5]", "trainer.epochs=1"],
}


def test_every_search_preset_has_a_sibling_that_runs():
    folders = {p.split("/")[0] for p in SEARCH_PRESETS}
    found = sorted(
        f"{folder}/{p.stem}" for folder in folders for p in (REPO / "conf" / "experiment" / folder).glob("*.yaml")
    )
    assert found == sorted([*SEARCH_PRESETS, *SEARCH_SIBLING_RUNS])
    assert sorted(SEARCH_SIBLING_RUNS) == sorted(f"{p}_cpu" for p in SEARCH_PRESETS)


@pytest.mark.parametrize("preset", sorted(SEARCH_PRESETS))
def test_search_presets_compose_for_their_rows(preset):
    for method in SEARCH_PRESETS[preset]:
        cfg = build_run_config(compose_config([f"experiment={preset}", f"method={method}"]))
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.scheduler.name) == (
            "sgd", 0.1, 0.9, "cosine"
        )  # fmt: skip


@pytest.mark.parametrize("sibling", sorted(SEARCH_SIBLING_RUNS))
@pytest.mark.filterwarnings("ignore:MNIST. only the 10k test files")
def test_search_cpu_siblings_run(sibling, tmp_path):
    overrides = [f"experiment={sibling}", *SEARCH_SIBLING_RUNS[sibling], "logger.console=none", "logger.plots=false",
                 f"paths.data_root={tmp_path / 'data'}"]  # fmt: skip
    cfg = build_run_config(compose_config(overrides))
    summary = run_experiment(cfg, tmp_path / "run").to_dict()
    assert summary["status"] == "complete" and summary["final"]["test_acc"] is not None


# Paper 001 (relaxed masks, concave regularizers): each preset with the rows its comment lists, and CPU siblings.
CONCAVE_PRESETS = {
    "concave/fig5_resnet20_cifar10": [
        ["regularizer=mask_log"],
        ["method=cs", "method.threshold_mode=target"],
        ["method=lth_iter"],
    ],
    "concave/cs_resnet20_cifar10": [[]],
}
CONCAVE_SIBLING_RUNS = {
    "concave/fig5_resnet20_cifar10_cpu": ["regularizer=mask_log", "trainer.epochs=2", "method.rewind_to=1"],
    "concave/cs_resnet20_cifar10_cpu": ["method.rounds=2", "trainer.epochs=3", "method.rewind_to=1"],
    "concave/mnist01_pixels": ["trainer.epochs=3"],
}


def test_every_concave_preset_has_a_sibling_that_runs():
    found = sorted(f"concave/{p.stem}" for p in (REPO / "conf" / "experiment" / "concave").glob("*.yaml"))
    assert found == sorted([*CONCAVE_PRESETS, *CONCAVE_SIBLING_RUNS])
    assert all(f"{p}_cpu" in CONCAVE_SIBLING_RUNS for p in CONCAVE_PRESETS)


@pytest.mark.parametrize("preset", sorted(CONCAVE_PRESETS))
def test_concave_presets_compose_for_their_rows(preset):
    for row in CONCAVE_PRESETS[preset]:
        cfg = build_run_config(compose_config([f"experiment={preset}", *row]))
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.scheduler.name) == (
            "sgd", 0.1, 0.9, "multistep"
        )  # fmt: skip
        if cfg.method.name == "cs":
            assert (cfg.regularizer.name, cfg.regularizer.coefficient, cfg.method.rounds) == ("mask_l1", 1e-8, 3)
        if cfg.method.name == "lth_iter":
            assert cfg.regularizer.name == "none"


@pytest.mark.parametrize("sibling", sorted(CONCAVE_SIBLING_RUNS))
@pytest.mark.filterwarnings("ignore:MNIST. only the 10k test files")
def test_concave_cpu_siblings_run(sibling, tmp_path):
    overrides = [f"experiment={sibling}", *CONCAVE_SIBLING_RUNS[sibling], "logger.console=none", "logger.plots=false",
                 f"dataset.root={REPO / 'tests' / 'data' / 'mnist'}", "trainer.num_threads=1"]  # fmt: skip
    cfg = build_run_config(compose_config(overrides))
    summary = run_experiment(cfg, tmp_path / "run").to_dict()
    assert summary["status"] == "complete" and summary["final"]["test_acc"] > 0.5
    if sibling.endswith("mnist01_pixels"):
        assert summary["final"]["kept"] == 8


# Paper 002 (PAC-Bayes analysis): the Table 1 / Fig. 1 / Fig. 3 presets and their CPU siblings.
PAC_BAYES_PRESETS = {
    "pac_bayes/table1_resnet20_cifar10": (["trainer.sam.enabled=true"], ["trainer.nvrm.enabled=true"]),
    "pac_bayes/table1_vgg16_cifar10": ([],),
    "pac_bayes/fig3_l2_init_resnet20_cifar10": (["trainer.penalty.name=l2_norm"],),
    "pac_bayes/fig1_label_noise_resnet20_cifar10": (["dataset.label_noise=0.2", "optim.lr=0.1"],),
}


def test_every_pac_bayes_preset_has_a_cpu_sibling():
    found = sorted(f"pac_bayes/{p.stem}" for p in (REPO / "conf" / "experiment" / "pac_bayes").glob("*.yaml"))
    assert found == sorted([*PAC_BAYES_PRESETS, *(f"{p}_cpu" for p in PAC_BAYES_PRESETS)])


@pytest.mark.parametrize("preset", sorted(PAC_BAYES_PRESETS))
def test_pac_bayes_presets_compose_for_their_rows(preset):
    for row in PAC_BAYES_PRESETS[preset]:
        cfg = build_run_config(compose_config([f"experiment={preset}", *row]))
        assert (cfg.method.name, cfg.method.rewind_to, cfg.sparsity.schedule, cfg.sparsity.rate) == (
            "lth_iter", 0, "fixed_fraction", 0.2
        )  # fmt: skip
        assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.trainer.epochs) == (0.9, 1e-4, 160)


@pytest.mark.parametrize("preset", sorted(PAC_BAYES_PRESETS))
@pytest.mark.filterwarnings("ignore:MNIST. only the 10k test files")
def test_pac_bayes_cpu_siblings_run(preset, tmp_path):
    overrides = [f"experiment={preset}_cpu", "trainer.epochs=1", "sparsity.rounds=1", "logger.console=none",
                 "logger.plots=false", f"dataset.root={REPO / 'tests' / 'data' / 'mnist'}",
                 "trainer.num_threads=1"]  # fmt: skip
    summary = run_experiment(build_run_config(compose_config(overrides)), tmp_path / "run").to_dict()
    assert summary["status"] == "complete" and summary["final"]["test_acc"] > 0.5


# ------------------------------------------------------------------------------ dynamic sparse training (RigL)
def test_the_rigl_preset_is_rigls_cifar_recipe():
    cfg = build_run_config(compose_config(["experiment=dst/rigl_wrn22_2_cifar10"]))
    assert (cfg.model.name, cfg.trainer.epochs, cfg.trainer.batch_size, cfg.sparsity.target) == (
        "wrn-22-2",
        250,
        128,
        0.9,
    )
    assert (cfg.optim.nesterov, cfg.optim.weight_decay, cfg.optim.scheduler.gamma) == (True, 5e-4, 0.2)
    # the reference's lr boundaries, 30k / 60k / 90k steps of 50,000 / 128 per epoch
    assert [round(m * 50000 / 128) for m in cfg.optim.scheduler.milestones] == [30000, 60000, 90000]
    assert (cfg.method.name, cfg.method.delta_t, cfg.method.alpha, cfg.method.t_end) == ("rigl", 100, 0.3, 0.75)
    assert cfg.sparsity.exclude_first and not cfg.sparsity.exclude_last
    assert (
        build_run_config(compose_config(["experiment=dst/rigl_wrn22_2_cifar10", "method=set"])).method.grow == "random"
    )


def test_the_rigl_cpu_sibling_runs(tmp_path):
    overrides = ["experiment=dst/rigl_wrn22_2_cifar10_cpu", "logger.console=none", "logger.plots=false"]
    summary = run_experiment(build_run_config(compose_config(overrides)), tmp_path).to_dict()
    assert summary["status"] == "complete" and summary["details"]["dst"]["updates"] == 2
    assert abs(summary["final"]["density"] - 0.1) < 0.005
