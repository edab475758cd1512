"""Every registry of the tool, and the built-in entries declared by import path.

Declaring the built-ins here (name, where the object lives, its option schema and metadata) lets the command line
check a whole configuration — every name, every option of the chosen model, method and dataset, whether the model
fits the data — without importing torch, timm or wandb: a mistake is reported in a fraction of a second, before any
run folder exists. The objects are imported the first time they are used.

Plugins register their own entries with the decorators (``@MODELS.register("mynet", inputs="image")`` etc.); a
plugin model's options are read from its builder's signature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lth_runner.config import schema as s
from lth_runner.registry import Registry, RegistryUnion

MODELS: Registry[Callable[..., Any]] = Registry("model", "model.arch")
DATASETS: Registry[Callable[..., Any]] = Registry("dataset", "dataset.name")
METHODS: Registry[Callable[..., Any]] = Registry("method", "method.name")
CRITERIA: Registry[Callable[..., Any]] = Registry("pruning criterion", "method.criterion")
OPTIMIZERS: Registry[Callable[..., Any]] = Registry("optimizer", "optim.name")
SCHEDULES: Registry[Callable[..., float]] = Registry("learning-rate schedule", "optim.scheduler.name")
LAWS: Registry[Callable[[float], float]] = Registry("penalty law", "regularizer.name")
CONTROLS: Registry[Callable[..., Any]] = Registry("control", "method.controls")
MASK_PENALTIES: Registry[Callable[..., Any]] = Registry("mask penalty", "regularizer.name")
# ``regularizer.name`` names either a growing-L2 law (UniLTH/DLTH family) or a penalty on a relaxed mask (paper 001).
REGULARIZERS = RegistryUnion("regularizer.name", LAWS, MASK_PENALTIES)

# The registries a schema field can name with ``option(registry=...)``.
BY_NAME: dict[str, Registry[Any]] = {
    "models": MODELS,
    "datasets": DATASETS,
    "methods": METHODS,
    "criteria": CRITERIA,
    "optimizers": OPTIMIZERS,
    "schedules": SCHEDULES,
    "laws": LAWS,
    "controls": CONTROLS,
    "mask_penalties": MASK_PENALTIES,
    "regularizers": REGULARIZERS,
}

# ------------------------------------------------------------------------------------------------------ models
# ``inputs``: "image" builders need C x H x W data; "any" builders flatten whatever they get.
_MODELS = {
    "mlp": ("mlp:mlp", s.MLPOptions, "any"),
    "lenet_300_100": ("mlp:lenet_300_100", s.InitOptions, "any"),
    "logistic": ("mlp:logistic", s.LogisticOptions, "any"),
    "conv2": ("frankle_carbin:conv2", s.InitOptions, "image"),
    "conv4": ("frankle_carbin:conv4", s.InitOptions, "image"),
    "conv6": ("frankle_carbin:conv6", s.InitOptions, "image"),
    **{f"resnet{d}": (f"resnet_cifar:resnet{d}", s.CifarResNetOptions, "image") for d in (20, 32, 44, 56, 110)},
    **{f"resnet{d}": (f"resnet:resnet{d}", s.ResNetOptions, "image") for d in (18, 34, 50)},
    **{f"vgg{d}": (f"vgg:vgg{d}", s.WidthMultOptions, "image") for d in (11, 13, 16, 19)},
    "mobilenet_v1": ("mobilenet:mobilenet_v1", s.WidthMultOptions, "image"),
    "wide_resnet": ("wide_resnet:wide_resnet", s.WideResNetOptions, "image"),
    "timm": ("timm_models:timm_model", None, "image"),  # options are timm's: passed through to create_model
}
for _name, (_target, _options, _inputs) in _MODELS.items():
    MODELS.declare(_name, f"lth_runner.models.{_target}", options=_options, inputs=_inputs)

# ---------------------------------------------------------------------------------------------------- datasets
# ``input_shape(cfg)``: the shape of one example, known from the configuration alone (None: only after loading).
_DATASETS = {
    "mnist1d": ("mnist1d:load_mnist1d", s.Mnist1dConfig, lambda cfg: (40,)),
    "mnist": ("mnist:load_mnist", s.MnistConfig, lambda cfg: (1, 28, 28)),
    "cifar10": ("cifar:load_cifar10", s.CifarConfig, lambda cfg: (3, 32, 32)),
    "cifar100": ("cifar:load_cifar100", s.CifarConfig, lambda cfg: (3, 32, 32)),
    "imagefolder": (
        "imagefolder:load_imagefolder",
        s.ImageFolderConfig,
        lambda cfg: (3, cfg.image_size, cfg.image_size),
    ),
    "synthetic": ("synthetic:load_synthetic", s.SyntheticConfig, lambda cfg: tuple(cfg.shape)),
}
for _name, (_target, _config, _shape) in _DATASETS.items():
    DATASETS.declare(_name, f"lth_runner.data.{_target}", config=_config, input_shape=_shape)

# ----------------------------------------------------------------------------------------------------- methods
# The third field: which kind of ``regularizer`` the method applies ("law": a growing L2 penalty from LAWS,
# "mask": a penalty on a relaxed mask from MASK_PENALTIES, None: it takes no regularizer).
_METHODS = {
    "lth": ("lth:lth", s.LTHConfig, None),
    "lth_iter": ("lth:lth_iter", s.LTHConfig, None),
    "unilth": ("unilth:unilth", s.UniLTHConfig, "law"),
    "unidlth": ("unilth:unidlth", s.UniLTHConfig, "law"),
    "dlth": ("dlth:dlth", s.DLTHConfig, "law"),
    "dlth_iter": ("dlth:dlth_iter", s.DLTHConfig, "law"),
    "eb": ("eb:early_bird", s.EarlyBirdConfig, None),
    "l1": ("l1:l1", s.L1Config, None),
    "obd": ("obd:obd", s.OBDConfig, None),
    "prune_at_init": ("prune_at_init:prune_at_init", s.PruneAtInitConfig, None),
    "set": ("dst:dynamic_sparse_training", s.DSTConfig, None),
    "rigl": ("dst:dynamic_sparse_training", s.DSTConfig, None),
    "edge_popup": ("mask_search:edge_popup", s.MaskSearchConfig, None),
    "sr_popup": ("mask_search:sr_popup", s.MaskSearchConfig, None),
    "slt_eps": ("slt_eps:slt_eps", s.SLTEpsConfig, None),
    "relaxed_mask": ("relaxed_mask:relaxed_mask", s.RelaxedMaskConfig, "mask"),
    "cs": ("relaxed_mask:continuous_sparsification", s.RelaxedMaskConfig, "mask"),
}
for _name, (_target, _config, _regularizer) in _METHODS.items():
    METHODS.declare(_name, f"lth_runner.methods.{_target}", config=_config, regularizer=_regularizer)

# ------------------------------------------------------------------------------------- criteria, optim, laws
CRITERIA.declare("magnitude", "lth_runner.sparse.criteria:magnitude")
CRITERIA.declare("large_final", "lth_runner.sparse.criteria:large_final")  # = magnitude (Zhou et al. 2019)
CRITERIA.declare("small_final", "lth_runner.sparse.criteria:small_final")
CRITERIA.declare("random", "lth_runner.sparse.criteria:random")
CRITERIA.declare("snip", "lth_runner.sparse.criteria:snip")
CRITERIA.declare("grasp", "lth_runner.sparse.criteria:grasp")
CRITERIA.declare("obd", "lth_runner.sparse.saliency:obd")  # Optimal Brain Damage (LeCun et al. 1989)

for _name in ("sgd", "adam", "adamw"):
    OPTIMIZERS.declare(_name, f"lth_runner.training.optim:{_name}")

for _name in ("constant", "cosine", "cosine_restarts", "multistep"):
    SCHEDULES.declare(_name, f"lth_runner.training.schedules:{_name}")

for _name in ("none", "linear", "loglaw", "explaw", "tanlaw"):
    LAWS.declare(_name, f"lth_runner.sparse.laws:{_name}")

for _name in ("mask_l1", "mask_log"):
    MASK_PENALTIES.declare(_name, f"lth_runner.sparse.mask_penalties:{_name}")

CONTROLS.declare("reinit", "lth_runner.methods.controls:reinit")
CONTROLS.declare("random_prune", "lth_runner.methods.controls:random_prune")

del _name, _target
