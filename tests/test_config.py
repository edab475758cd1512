"""Configuration: composition by group, numeric presets, typed validation with one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lth_runner.config.compose import compose_config, config_dir, quote_numeric_choices
from lth_runner.config.schema import CifarConfig, LTHConfig, Mnist1dConfig, RunConfig
from lth_runner.config.validate import build_run_config
from lth_runner.errors import ConfigError
from tests.conftest import REPO, run_cli


def build(*overrides: str) -> RunConfig:
    return build_run_config(compose_config(list(overrides)))


def test_default_composition_is_typed_and_is_the_fields_usual_setting():
    cfg = build()
    assert isinstance(cfg.method, LTHConfig) and isinstance(cfg.dataset, CifarConfig)
    assert cfg.model.arch == "resnet20" and cfg.model.kwargs == {"width": 16}
    assert cfg.name == "lth_iter-resnet20-cifar10"
    demo = build("experiment=demo")
    assert isinstance(demo.dataset, Mnist1dConfig) and demo.model.kwargs["hidden"] == [200, 200]


def test_sparsity_presets_are_named_by_target_and_keys_still_override():
    assert quote_numeric_choices(["sparsity=90", "sparsity=50,90", "sparsity.target=0.8"]) == [
        "sparsity='90'",
        "sparsity='50','90'",
        "sparsity.target=0.8",
    ]
    assert build("sparsity=90").sparsity.target == 0.9
    assert build("sparsity=90", "sparsity.target=0.85").sparsity.target == 0.85
    assert build("sparsity=95").sparsity.rounds == 10  # presets inherit the rest from sparsity/base


def test_groups_compose_models_datasets_methods():
    cfg = build("model=resnet20", "dataset=cifar10", "method=lth", "optim=adam")
    assert cfg.model.kwargs == {"width": 16}
    assert cfg.dataset.name == "cifar10" and cfg.dataset.augment and cfg.dataset.verify_checksums
    assert cfg.method.name == "lth" and cfg.optim.name == "adam" and cfg.optim.lr == pytest.approx(1.2e-3)
    timm = build("model=timm", "model.name=resnet10t")
    assert timm.model.name == "resnet10t" and timm.model.kwargs["name"] == "resnet10t"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.epochs=abc", "trainer.epochs='abc' is not accepted: expected an integer"),
        ("trainer.epochs=0", "trainer.epochs=0 is not accepted: expected a number >= 1"),
        ("sparsity.target=1.5", "sparsity.target=1.5 is not accepted: expected a number >= 0.0 and < 1.0"),
        ("sparsity.scope=blockwise", "sparsity.scope='blockwise' is not accepted: expected one of: global, layerwise"),
        ("+trainer.epoch=3", "trainer.epoch=3 is not accepted: did you mean epochs? expected one of the keys epochs,"),
        (
            "dataset=mnist1d +dataset.verify_checksums=false",
            "dataset.verify_checksums=False is not accepted: expected one of the keys",
        ),
        ("model=mlp model.hidden=[1,x]", "model.hidden[1]='x' is not accepted: expected an integer"),
        ("+model.widht=3", "model.widht=3 is not accepted: did you mean width? expected one of the keys width"),
        (
            "method.controls=[bogus]",
            "method.controls[0]='bogus' is not accepted: expected one of: random_prune, reinit",
        ),
        ("model.arch=foo", "model.arch='foo' is not accepted: expected one of: conv2,"),
        ("method.name=foo", "method.name='foo' is not accepted: expected one of: "),
        ("trainer.max_grad_norm=abc", "trainer.max_grad_norm='abc' is not accepted: expected a number or null"),
        ("+foo=1", "foo=1 is not accepted: expected a known top-level key"),
        ("optim.name=sgdd", "optim.name='sgdd' is not accepted: did you mean sgd? expected one of: adam, adamw, sgd"),
        ("regularizer.name=explow", "regularizer.name='explow' is not accepted: did you mean explaw?"),
        ("optim.scheduler.name=cosin", "optim.scheduler.name='cosin' is not accepted: did you mean cosine?"),
        ("method.criterion=magnitud", "method.criterion='magnitud' is not accepted: did you mean magnitude?"),
        ("dataset=mnist1d", "model='resnet20' is not accepted: expected a model for flat inputs with dataset=mnist1d"),
        ("plugins=[no_such_module_xyz]", "plugins='no_such_module_xyz' is not accepted: expected an importable module"),
        ("dataset.label_noise=1.5", "dataset.label_noise=1.5 is not accepted: expected a number >= 0.0 and <= 1.0"),
        ("dataset.label_noise_mode=sym", "dataset.label_noise_mode='sym' is not accepted: expected one of: other, any"),
        ("method.criterion=small", "method.criterion='small' is not accepted: did you mean small_final?"),
        (
            "method=lth method.mask=m.pt method.record_train_drops=true",
            "method.record_train_drops=True is not accepted: expected false with method.mask and method.rewind_to=0",
        ),
    ],
)
def test_bad_values_fail_with_one_line_naming_key_value_and_accepted(override, expected):
    with pytest.raises(ConfigError) as err:
        build(*override.split())
    message = str(err.value)
    assert message.startswith(expected) and "\n" not in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["sparsity.target=1.5"], "sparsity.target=1.5 is not accepted: expected a number >= 0.0 and < 1.0"),
        (["trainer.epochs=abc"], "trainer.epochs='abc' is not accepted: expected an integer"),
        (["trainer.epoch=3"], "trainer.epoch=3 is not accepted: did you mean epochs? expected one of the keys of"),
        (["model=resnet5"], "model='resnet5' is not accepted: did you mean resnet56 or resnet50? expected one of:"),
        (["modle=resnet20"], "modle='resnet20' is not accepted: did you mean model? expected a config group"),
        (["method=unidlth", "method.patiense=3"], "method.patiense=3 is not accepted: did you mean patience?"),
        (["dataset=mnist1d"], "model='resnet20' is not accepted: expected a model for flat inputs"),
        (["-m", "seed=0,1", "method=lth,unilth", "method.patience=3"], "method.patience=3 is not accepted"),
        (["-m", "sparsity.target=0.5,1.5"], "sparsity.target=1.5 is not accepted"),
        (["method=lth,unilth"], "method=lth,unilth lists several values: add -m to sweep over them"),
        (["-m", "optim.lr=interval(0.1,0.2)"], "optim.lr=interval(0.1,0.2): interval(...) is sampled by"),
        (["-m", "method=glob(zz*)"], "method=glob(zz*) matches none of: cs, dlth, dlth_iter"),
        (["-m", "seed=0,1", "--cfg", "job"], "-m and --cfg cannot be combined"),
        (["method=unilth", "sparsity.target=0"], "sparsity.target=0 is not accepted: expected > 0: method=unilth"),
        (["method=unilth", "method.rewind=0"], "method.stage2_epochs=None is not accepted: expected an explicit"),
        (["method.prune_from=best_val", "dataset.val_size=0"], "method.prune_from='best_val' is not accepted"),
    ],
)
def test_cli_reports_bad_input_in_one_line_and_leaves_nothing_behind(tmp_path, overrides, expected):
    """Checked before Hydra starts: one line, exit code 2, no run folder (nor sweep folder), no traceback."""
    result = run_cli(*overrides, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"lth-run: error: {expected}"), lines
    assert "Traceback" not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_command_is_checked_without_importing_torch_timm_or_wandb():
    from lth_runner import cli

    probe = (
        "import sys; from lth_runner import cli\n"
        "print(cli.preflight(['method=unidlth', 'model=resnet50', 'sparsity=90'], multirun=False))\n"
        "print(cli.preflight(['method=lth,unilth,dlth', 'sparsity=50,90', 'seed=0,1,2'], multirun=True))\n"
        "print(sorted(m for m in ('torch', 'timm', 'wandb', 'torchvision') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "18", "[]"]  # every job of the sweep was checked
    assert cli.split_command(["-m", "--cfg", "job", "seed=1"]).overrides == ["seed=1"]
    assert cli.preflight(["method=glob(lth*)", "seed=0,1"], multirun=True) == 4  # lth, lth_iter x 2 seeds


def test_a_run_that_fails_on_its_data_leaves_no_folder(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("dataset.download=false", f"hydra.run.dir={run_dir}", data_root=tmp_path / "empty")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lth-run: error: dataset cifar10 not found"), lines
    assert "scripts/prepare_cifar10.py" in lines[0]
    assert not run_dir.exists()


def test_help_is_the_tools_own_page():
    result = run_cli("method=unidlth", "--help")
    assert result.returncode == 0, result.stderr
    page = result.stdout
    assert "usage: lth-run" in page and "groups (the chosen option in brackets):" in page
    assert "[unidlth]" in page and "[resnet20]" in page and "[cifar10]" in page
    assert "schema" not in page.split("examples:")[0] and " base " not in page  # internal nodes hidden
    assert "trainer.epochs=10" in page and "epochs per training stage" in page  # a key, its value, its description
    assert "method.patience=2" in page and "stage 1 stops when val loss has not improved" in page
    assert "method.last_event=at_end" in page and "method.finetune_epochs=null" in page
    assert "lth-run -m method=lth,unilth sparsity=50,70,90 seed=0,1,2" in page


def test_cfg_job_works_from_any_directory_without_importing_torch(tmp_path):
    probe = (
        "import sys; from lth_runner.train import main; sys.argv = ['lth-run', '--cfg', 'job', 'sparsity=90'];\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('torch imported:', 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "target: 0.9" in result.stdout and "torch imported: False" in result.stdout


def test_conf_directory_is_found_in_the_checkout():
    assert config_dir() == REPO / "conf"


def test_one_list_of_result_neutral_keys_serves_resume_report_and_sweep_folder_names():
    from hydra import compose, initialize_config_dir

    from lth_runner.config.compose import neutral_override_keys
    from lth_runner.config.schema import RESULT_NEUTRAL_KEYS
    from lth_runner.report.collect import NEUTRAL_KEYS
    from lth_runner.session import resume_fingerprint

    keys = neutral_override_keys()
    assert {"logger", "logger.wandb.mode", "dataset.root", "trainer.device", "paths.data_root"} <= set(keys)
    assert not {"trainer.epochs", "sparsity.target", "dataset.val_size", "seed"} & set(keys)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        hydra_cfg = compose(config_name="config", return_hydra_config=True)
        assert list(hydra_cfg.hydra.job.config.override_dirname.exclude_keys) == keys  # sweep folder names
    fingerprint = resume_fingerprint(build("dataset.root=/elsewhere", "trainer.device=cpu"))  # resume
    assert not any(k.startswith(("logger", "paths", "dataset.root", "trainer.device")) for k in fingerprint)
    assert "trainer.epochs" in fingerprint and "dataset.val_size" in fingerprint
    assert set(RESULT_NEUTRAL_KEYS) <= set(NEUTRAL_KEYS)  # the report's: the same list plus the table's indices
