"""Configuration: composition by group, numeric presets, typed validation with one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lth_runner.config.compose import compose_config, config_dir, quote_numeric_choices
from lth_runner.config.schema import LTHConfig, Mnist1dConfig, RunConfig
from lth_runner.config.validate import build_run_config
from lth_runner.errors import ConfigError
from tests.conftest import REPO, run_cli


def build(*overrides: str) -> RunConfig:
    return build_run_config(compose_config(list(overrides)))


def test_default_composition_is_typed():
    cfg = build()
    assert isinstance(cfg.method, LTHConfig) and isinstance(cfg.dataset, Mnist1dConfig)
    assert cfg.model.arch == "mlp" and cfg.model.kwargs["hidden"] == [100, 100]
    assert cfg.name == "lth_iter-mlp-mnist1d"


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
        ("+trainer.epoch=3", "trainer.epoch=3 is not accepted: expected one of the keys epochs, batch_size"),
        ("+dataset.verify_checksums=false", "dataset.verify_checksums=False is not accepted: expected one of the keys"),
        ("model.hidden=[1,x]", "model.hidden[1]='x' is not accepted: expected an integer"),
        ("+model.widht=3", "model.widht=3 is not accepted: expected one of the keys hidden, batch_norm, dropout"),
        (
            "method.controls=[bogus]",
            "method.controls[0]='bogus' is not accepted: expected one of: reinit, random_prune",
        ),
        ("model.arch=foo", "model.arch='foo' is not accepted: expected one of: conv2,"),
        ("method.name=foo", "method.name='foo' is not accepted: expected one of: "),
        ("trainer.max_grad_norm=abc", "trainer.max_grad_norm='abc' is not accepted: expected a number or null"),
        ("+foo=1", "foo=1 is not accepted: expected a known top-level key"),
        ("plugins=[no_such_module_xyz]", "plugins='no_such_module_xyz' is not accepted: expected an importable module"),
    ],
)
def test_bad_values_fail_with_one_line_naming_key_value_and_accepted(override, expected):
    with pytest.raises(ConfigError) as err:
        build(override)
    message = str(err.value)
    assert message.startswith(expected) and "\n" not in message


def test_cli_reports_bad_input_in_one_line_without_traceback(tmp_path):
    result = run_cli("sparsity.target=1.5", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["lth-run: error: sparsity.target=1.5 is not accepted: expected a number >= 0.0 and < 1.0"]
    assert "Traceback" not in result.stdout + result.stderr


def test_cli_unknown_group_option_lists_the_alternatives(tmp_path):
    result = run_cli("model=resnet99", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert "Could not find 'model/resnet99'" in result.stderr and "resnet20" in result.stderr
    assert "Traceback" not in result.stderr


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
