"""Every registered model builds for the shapes it accepts, runs, initialises reproducibly, has the published size."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from lth_runner.config.schema import ModelConfig
from lth_runner.errors import ConfigError
from lth_runner.models import MODELS, build_model

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
SHAPES = [(40,), (1, 28, 28), (3, 32, 32)]
# Smaller stand-ins for two slow defaults (timm resnet18, WRN-28-10); test_parameter_counts still builds WRN-28-10.
SMALL = {"timm": {"name": "resnet10t"}, "wide_resnet": {"depth": 16, "width": 2}}


def build(arch: str, shape: tuple[int, ...] = (3, 32, 32), seed: int = 0, **kwargs: object) -> nn.Module:
    return build_model(
        ModelConfig(arch=arch, name=arch, kwargs={**SMALL.get(arch, {}), **kwargs}), shape, 10, seed=seed
    )


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def supported(arch: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 or MODELS.entry(arch).meta.get("inputs", "any") == "any"


CASES = [(arch, shape) for arch in MODELS.names() for shape in SHAPES if supported(arch, shape)]


@pytest.mark.parametrize(("arch", "shape"), CASES, ids=[f"{a}-{'x'.join(map(str, s))}" for a, s in CASES])
def test_forward_shape_and_classifier_last(arch: str, shape: tuple[int, ...]) -> None:
    model = build(arch, shape)
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    assert isinstance(layers[-1], nn.Linear) and layers[-1].out_features == 10
    if isinstance(layers[0], nn.Linear):  # flattening models
        assert layers[0].in_features == torch.Size(shape).numel()
    else:
        assert layers[0].in_channels == shape[0]
    # The last prunable module must be what produces the logits, not just sit last in the listing.
    seen: list[torch.Tensor] = []
    layers[-1].register_forward_hook(lambda _m, _i, out: seen.append(out))
    x = torch.randn(2, *shape)
    with torch.no_grad():
        for train in (False, True):
            out = model.train(train)(x)
            assert out.shape == (2, 10) and torch.isfinite(out).all()
            assert seen[-1] is out


def test_image_models_reject_flat_inputs() -> None:
    with pytest.raises(ConfigError, match="model.arch"):
        build("resnet20", (40,))


@pytest.mark.parametrize("arch", MODELS.names())
def test_same_seed_same_init_different_seed_differs(arch: str) -> None:
    a, b, c = build(arch, seed=0).state_dict(), build(arch, seed=0).state_dict(), build(arch, seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    ("arch", "kwargs", "expected", "rel"),
    [
        ("resnet20", {}, 0.27e6, 0.02),
        ("resnet50", {"stem": "cifar"}, 23.5e6, 0.02),
        ("vgg19", {}, 20.0e6, 0.03),
        ("mobilenet_v1", {}, 3.2e6, 0.02),
        ("wide_resnet", {"depth": 28, "width": 10}, 36.5e6, 0.01),
        ("conv2", {}, 4.3e6, 0.01),
    ],
)
def test_parameter_counts(arch: str, kwargs: dict, expected: float, rel: float) -> None:
    assert n_params(build(arch, **kwargs)) == pytest.approx(expected, rel=rel)


def test_lenet_300_100_exact_size() -> None:
    model = build("lenet_300_100", (1, 28, 28))
    assert n_params(model) == 266_610
    assert [name for name, m in model.named_modules() if isinstance(m, nn.Linear)] == ["fc1", "fc2", "fc3"]


def test_mlp_options() -> None:
    model = build("mlp", (40,), hidden=[32, 16, 8], batch_norm=True, dropout=0.1)
    assert [name for name, m in model.named_modules() if isinstance(m, nn.Linear)] == ["fc1", "fc2", "fc3", "fc4"]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 3


def test_glorot_init_option() -> None:
    model = build("conv2", init="glorot_normal")
    assert all(not m.bias.any() for m in model.modules() if isinstance(m, PRUNABLE))
    with pytest.raises(ConfigError, match="model.init"):
        build("lenet_300_100", (40,), init="orthogonal")


def test_resnet_stem() -> None:
    assert build("resnet18", (3, 96, 96)).conv1.kernel_size == (7, 7)  # auto: ImageNet stem above 64 pixels
    assert build("resnet18", (3, 64, 64)).conv1.kernel_size == (3, 3)
    with pytest.raises(ConfigError, match="model.stem"):
        build("resnet18", stem="tiny")


def test_wide_resnet_rejects_bad_depth() -> None:
    with pytest.raises(ConfigError, match="model.depth"):
        build("wide_resnet", depth=27)


def test_timm_rejects_pretrained_and_unknown_names() -> None:
    with pytest.raises(ConfigError, match="model.pretrained"):
        build("timm", pretrained=True)
    with pytest.raises(ConfigError, match="model.name"):
        build("timm", name="no_such_model_xyz")


def test_timm_checkpoint_skips_mismatched_classifier(tmp_path) -> None:
    source = build_model(ModelConfig(arch="timm", name="timm", kwargs={"name": "resnet10t"}), (3, 32, 32), 5, seed=1)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    with pytest.warns(UserWarning, match="fc.weight"):
        model = build("timm", checkpoint_path=str(path))
    assert torch.equal(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert model.fc.out_features == 10


def test_importing_models_does_not_import_timm() -> None:
    code = "import sys, lth_runner.models; assert 'timm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
