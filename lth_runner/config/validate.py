"""Turn a composed (Hydra/OmegaConf) configuration into typed dataclasses, or fail with one line.

Each group is merged into its schema; OmegaConf catches wrong types and unknown keys, and the ``option`` metadata
of the schema catches out-of-range values and unknown choices. Every failure becomes a :class:`ConfigError` that
names the full key, the value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from lth_runner.config.schema import GROUP_SCHEMAS, ModelConfig, RunConfig
from lth_runner.errors import ConfigError
from lth_runner.registry import did_you_mean

# Arguments the model builders receive from the dataset rather than from the config.
_MODEL_INJECTED = ("input_shape", "num_classes")
_TOP_LEVEL = {f.name for f in dataclasses.fields(RunConfig)}


def build_run_config(cfg: DictConfig | Mapping[str, Any]) -> RunConfig:
    """Validate the whole composed config and return it as a :class:`RunConfig`.

    Every registry-backed name (model, dataset, method, criterion, optimizer, schedule, law, control) is resolved
    here, and the model is checked against the data's shape, so a run that starts has a configuration that can run.
    Nothing here imports torch (the built-in entries are declared in :mod:`lth_runner.catalog`)."""
    from lth_runner.catalog import DATASETS, METHODS, MODELS

    data = _plain(cfg)
    data.pop("hydra", None)
    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(unknown[0], data[unknown[0]], f"a known top-level key: {', '.join(sorted(_TOP_LEVEL))}",
                          hint=did_you_mean(unknown[0], _TOP_LEVEL))  # fmt: skip
    top = {k: data[k] for k in ("seed", "name", "plugins") if k in data}
    top_cfg = typed_config("", _TopLevel, top)
    import_plugins(top_cfg.plugins)

    groups: dict[str, Any] = {}
    for group, schema in GROUP_SCHEMAS.items():
        groups[group] = typed_config(group, schema, data.get(group, {}))
    groups["model"] = model_config(data.get("model", {}), MODELS)
    groups["dataset"] = typed_config(
        "dataset", _entry_schema("dataset", data.get("dataset", {}), DATASETS), data.get("dataset", {})
    )
    groups["method"] = typed_config(
        "method", _entry_schema("method", data.get("method", {}), METHODS), data.get("method", {})
    )
    check_regularizer_kind(groups["regularizer"].name, groups["method"].name, METHODS)
    check_model_fits_data(groups["model"], groups["dataset"], MODELS, DATASETS)
    run = RunConfig(**groups, seed=top_cfg.seed, name=top_cfg.name, plugins=list(top_cfg.plugins))
    run.method.check(run)
    return run


def check_regularizer_kind(regularizer: str, method: str, methods: Any) -> None:
    """A growing L2 law goes with the UniLTH/DLTH family, a mask penalty with the relaxed-mask methods."""
    if regularizer == "none":
        return
    from lth_runner.catalog import MASK_PENALTIES

    kind = "mask" if regularizer in MASK_PENALTIES else "law"
    if methods.entry(method).meta.get("regularizer") == kind:
        return
    users = ", ".join(n for n in methods.names() if methods.entry(n).meta.get("regularizer") == kind)
    what = "a penalty on a relaxed mask" if kind == "mask" else "a growing L2 penalty law"
    own = methods.entry(method).meta.get("regularizer")
    fits = {"mask": "mask_l1, mask_log or none", "law": "linear, loglaw, explaw, tanlaw or none"}.get(own, "none")
    raise ConfigError(
        "regularizer", regularizer, f"{fits} with method={method} ({regularizer} is {what}, used by: {users})"
    )


def check_model_fits_data(model: ModelConfig, dataset: Any, models: Any, datasets: Any) -> None:
    """A model that needs images (C x H x W) cannot train on flat data: say so now, not after loading the data."""
    if models.entry(model.arch).meta.get("inputs", "any") != "image":
        return
    shape_of = datasets.entry(dataset.name).meta.get("input_shape")
    shape = shape_of(dataset) if shape_of is not None else None
    if shape is None or len(shape) == 3:
        return
    image_sets = [n for n in datasets.names() if _shape_rank(datasets, n) == 3]
    flat_models = [n for n in models.names() if models.entry(n).meta.get("inputs", "any") != "image"]
    raise ConfigError(
        "model",
        model.name,
        f"a model for flat inputs with dataset={dataset.name}, whose examples have shape {tuple(shape)}: "
        f"{model.name} needs images (C, H, W); use an image dataset ({', '.join(image_sets)}) or a model that "
        f"flattens its input ({', '.join(flat_models)})",
    )


def _shape_rank(datasets: Any, name: str) -> int | None:
    """How many dimensions one example of dataset ``name`` has, judged from its default configuration."""
    entry = datasets.entry(name)
    shape_of, schema = entry.meta.get("input_shape"), entry.meta.get("config")
    if shape_of is None or schema is None:
        return None
    try:
        return len(shape_of(schema(name=name)))
    except Exception:
        return None


@dataclasses.dataclass
class _TopLevel:
    seed: int = dataclasses.field(default=0, metadata=dict(ge=0))
    name: str = "run"
    plugins: list[str] = dataclasses.field(default_factory=list)


def import_plugins(modules: list[str]) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError("plugins", module, f"an importable module ({err})") from None


def typed_config(path: str, schema: type, values: Any) -> Any:
    """Merge ``values`` into the dataclass ``schema`` and check every field's metadata; return the instance."""
    if not isinstance(values, Mapping):
        raise ConfigError(path or "config", values, f"a mapping of {schema.__name__} fields")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        obj = OmegaConf.to_object(merged)
    except MissingMandatoryValue as err:
        raise ConfigError(_join(path, err.full_key), "???", "a value (this key is required)") from None
    except ConfigKeyError as err:
        key = str(err.key) if err.key is not None else "?"
        owner = _owner_schema(schema, err.full_key)
        names = [f.name for f in dataclasses.fields(owner)] if owner else []
        accepted = ", ".join(names) if owner else "a known key"
        parent = _join(path, err.full_key.rpartition(".")[0]) if "." in (err.full_key or "") else path
        raise ConfigError(_join(parent, key), _lookup(values, err.full_key), f"one of the keys {accepted}",
                          hint=did_you_mean(key, names)) from None  # fmt: skip
    except OmegaConfBaseException as err:
        key = _join(path, err.full_key)
        raise ConfigError(key, _lookup(values, err.full_key), _type_name(schema, err.full_key)) from None
    check_ranges(path, obj)
    return obj


def check_ranges(path: str, obj: Any) -> None:
    """Enforce ``ge``/``gt``/``le``/``lt``/``choices``/``items`` metadata on a dataclass instance, recursively."""
    for spec in dataclasses.fields(obj):
        value = getattr(obj, spec.name)
        key = _join(path, spec.name)
        if dataclasses.is_dataclass(value):
            check_ranges(key, value)
            continue
        if value is None:
            continue
        _check_value(key, value, spec.metadata)
        if "items" in spec.metadata and isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                _check_value(f"{key}[{index}]", item, spec.metadata["items"])


_BOUNDS = (
    ("ge", ">=", lambda v, b: v >= b),
    ("gt", ">", lambda v, b: v > b),
    ("le", "<=", lambda v, b: v <= b),
    ("lt", "<", lambda v, b: v < b),
)


def _check_value(key: str, value: Any, checks: Mapping[str, Any]) -> None:
    if "choices" in checks and value not in checks["choices"]:
        choices = [str(c) for c in checks["choices"]]
        raise ConfigError(key, value, f"one of: {', '.join(choices)}", hint=did_you_mean(value, choices))
    if "registry" in checks:
        from lth_runner.catalog import BY_NAME

        BY_NAME[checks["registry"]].check(value, key=key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if any(name in checks and not ok(value, checks[name]) for name, _, ok in _BOUNDS):
        bounds = " and ".join(f"{symbol} {checks[name]}" for name, symbol, _ in _BOUNDS if name in checks)
        raise ConfigError(key, value, f"a number {bounds}")


def model_config(values: Any, registry: Any) -> ModelConfig:
    """``arch`` picks the builder; the other keys must be keyword parameters of that builder."""
    if not isinstance(values, Mapping) or "arch" not in values:
        raise ConfigError(
            "model.arch",
            None if not isinstance(values, Mapping) else values.get("arch"),
            f"one of: {', '.join(registry.names())}",
        )
    values = dict(values)
    arch = values.pop("arch")
    entry = registry.entry(str(arch))
    name = values.pop("name", None)
    if "options" in entry.meta:  # declared in the catalog: checked without importing the builder (nor torch)
        schema, takes_name = entry.meta["options"], entry.meta["options"] is None
    else:
        schema, takes_name = builder_schema(entry.obj)
    if takes_name and name is not None:
        values["name"] = name
    kwargs = dataclasses.asdict(typed_config("model", schema, values)) if schema else dict(values)
    return ModelConfig(arch=str(arch), name=str(name or arch), kwargs=kwargs)


def builder_schema(builder: Callable[..., Any]) -> tuple[type | None, bool]:
    """A dataclass mirroring the builder's keyword parameters (None when it takes ``**kwargs``)."""
    signature = inspect.signature(builder, eval_str=True)
    params = [p for p in signature.parameters.values() if p.name not in _MODEL_INJECTED]
    takes_name = any(p.name == "name" for p in params)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None, takes_name
    fields = []
    for param in params:
        if param.kind in (inspect.Parameter.VAR_POSITIONAL,):
            continue
        annotation = param.annotation if param.annotation is not inspect.Parameter.empty else Any
        annotation = _omegaconf_type(annotation)
        if param.default is inspect.Parameter.empty:
            fields.append((param.name, annotation))
        else:
            default = param.default
            if isinstance(default, (list, tuple, dict)):
                fields.append((param.name, annotation, dataclasses.field(default_factory=lambda d=default: _copy(d))))
            else:
                fields.append((param.name, annotation, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{builder.__name__}_kwargs", fields), takes_name


def _omegaconf_type(annotation: Any) -> Any:
    """Map annotations OmegaConf cannot hold (tuples, sequences) to ones it can (lists)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (tuple, list) or str(origin).endswith("Sequence'>"):
        inner = [a for a in args if a is not Ellipsis]
        return list[_omegaconf_type(inner[0])] if inner else list[Any]
    if origin is typing.Union or str(type(annotation)).endswith("UnionType'>"):
        members = [_omegaconf_type(a) for a in args]
        if type(None) in members and len(members) == 2:
            other = next(m for m in members if m is not type(None))
            return typing.Optional[other]  # noqa: UP045 (OmegaConf needs typing.Optional, not X | None)
        return Any
    if annotation in (int, float, bool, str) or origin in (dict,):
        return annotation
    return Any


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else dict(value)


def _entry_schema(group: str, values: Any, registry: Any) -> type:
    name = values.get("name") if isinstance(values, Mapping) else None
    entry = registry.entry(str(name))
    schema = entry.meta.get("config")
    if schema is None:
        raise TypeError(f"{group} '{name}' was registered without a config dataclass")
    return schema


def _plain(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        try:
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
        except OmegaConfBaseException as err:
            raise ConfigError(err.full_key or "config", None, f"a resolvable value ({err.msg})") from None
    return dict(cfg)


def _join(path: str, key: Any) -> str:
    key = "" if key is None else str(key)
    return f"{path}.{key}" if path and key else path or key


def _lookup(values: Any, dotted: str | None) -> Any:
    """The user's value at ``dotted`` (``a.b[2].c``), or None where it cannot be found."""
    node = values
    for part in re.findall(r"[^.\[\]]+", dotted or ""):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _owner_schema(schema: type, dotted: str | None) -> type | None:
    """The dataclass that owns the last component of ``dotted``."""
    parts = (dotted or "").split(".")[:-1]
    owner = schema
    for part in parts:
        hints = typing.get_type_hints(owner)
        nested = hints.get(part)
        if not (isinstance(nested, type) and dataclasses.is_dataclass(nested)):
            return owner
        owner = nested
    return owner


def _type_name(schema: type, dotted: str | None) -> str:
    owner = _owner_schema(schema, dotted) or schema
    leaf = (dotted or "").split(".")[-1].split("[")[0]
    hint = typing.get_type_hints(owner).get(leaf)
    if hint is None:
        return "a value of the right type"
    return _describe(hint, item="[" in (dotted or "").split(".")[-1])


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(hint: Any, *, item: bool = False) -> str:
    """Plain words for a type annotation (``item``: describe the elements of a list)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        inner = _describe(args[0]) if args else "values"
        return inner if item else f"a list of {inner.removeprefix('an ').removeprefix('a ')}s"
    if origin is typing.Union or str(type(hint)).endswith("UnionType'>"):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def read_run_config(path: str | Path) -> RunConfig:
    """The :class:`RunConfig` of a run directory's ``config.yaml`` (the validated configuration it was run with)."""
    data = OmegaConf.to_container(OmegaConf.load(Path(path)), resolve=True)
    assert isinstance(data, dict)
    model = dict(data.get("model", {}))
    model.update(model.pop("kwargs", None) or {})  # written nested, given flat
    data["model"] = model
    return build_run_config(data)
