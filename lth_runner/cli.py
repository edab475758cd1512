"""The command line's own layer in front of Hydra: checking a whole command before anything runs, and the help page.

:func:`preflight` composes the configuration of every job a command would run (each combination of a sweep) and
validates it as the run would, before Hydra creates a run folder and before torch, timm or wandb are imported: a
bad value, an unknown key, a misspelt group option or a model that does not fit the data is reported as one
``lth-run: error:`` line naming the key, the value and what is accepted, with "did you mean" for near misses.

:func:`help_text` is ``lth-run --help``: the groups and their options, the most used keys with their
descriptions (from the schema's ``help`` metadata), the keys of the chosen method, and examples.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import typing
from collections.abc import Sequence
from typing import Any

from lth_runner.config.compose import config_dir, quote_numeric_choices
from lth_runner.errors import ConfigError, UserError
from lth_runner.registry import did_you_mean

# Hydra's own flags: those that take a value, and those that make the command print instead of run.
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
_FLAGS_WITH_VALUE |= {"--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc"}
_PRINTING_FLAGS = {"--cfg", "-c", "--info", "-i", "--hydra-help", "--version", "--shell-completion", "-sc"}
_CUSTOM_CONFIG_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}
_HIDDEN_OPTIONS = {"base"}  # files other options of a group build on, not choices
_MODE_FLAGS = (("-m", "--multirun"), ("--cfg", "-c"), ("--info", "-i"), ("--run", "-r"), ("--shell-completion", "-sc"))
_INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


@dataclasses.dataclass
class Command:
    """A command line split into Hydra's flags and the overrides."""

    flags: list[str]
    overrides: list[str]

    @property
    def multirun(self) -> bool:
        return any(f in ("-m", "--multirun") for f in self.flags)

    @property
    def wants_help(self) -> bool:
        return any(f in ("-h", "--help") for f in self.flags)

    def check_modes(self) -> None:
        """Hydra runs one mode per command; two (e.g. ``-m`` with ``--cfg``) is one line here, not a traceback."""
        modes = [m for m in _MODE_FLAGS if any(f in m for f in self.flags)]
        if len(modes) > 1:
            shown = " and ".join(m[0] for m in modes)
            raise UserError(f"{shown} cannot be combined: choose one of {', '.join(m[0] for m in _MODE_FLAGS)}")

    @property
    def runs(self) -> bool:
        """Whether the command would run jobs (rather than print something), with this project's configs."""
        names = {f for f in self.flags if f.startswith("-")}
        return not (names & (_PRINTING_FLAGS | _CUSTOM_CONFIG_FLAGS)) and not self.wants_help


def split_command(args: Sequence[str]) -> Command:
    flags, overrides, waiting = [], [], False
    for arg in args:
        if waiting:
            flags.append(arg)
            waiting = False
        elif arg in ("--info", "-i"):
            flags.append(arg)
        elif arg in _INFO_VALUES and flags and flags[-1] in ("--info", "-i"):
            flags.append(arg)
        elif arg.startswith("-"):
            flags.append(arg)
            waiting = arg in _FLAGS_WITH_VALUE
        else:
            overrides.append(arg)
    return Command(flags, overrides)


# ----------------------------------------------------------------------------------------------------- groups
def group_options(group: str) -> list[str]:
    """The options of config group ``group`` (``unilth/table1_...`` for nested folders), sorted."""
    folder = config_dir() / group
    if not folder.is_dir():
        return []
    found = [p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml")]
    return sorted(found, key=lambda name: (name.count("/"), _natural(name)))


def config_groups() -> list[str]:
    """The config groups a user chooses from (``hydra`` is Hydra's own)."""
    return sorted(p.name for p in config_dir().iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__"))


def _natural(name: str) -> list[Any]:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _visible(options: list[str]) -> list[str]:
    return [o for o in options if o.rsplit("/", 1)[-1] not in _HIDDEN_OPTIONS]


# ----------------------------------------------------------------------------------------------------- preflight
def preflight(overrides: Sequence[str], *, multirun: bool) -> int:
    """Check every job ``lth-run [-m] OVERRIDES`` would run; raise the first problem as a one-line
    :class:`~lth_runner.errors.UserError`. Returns the number of jobs checked."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from lth_runner.config.compose import compose_config
    from lth_runner.config.validate import build_run_config

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(quote_numeric_choices(list(overrides)))
    except HydraException as err:
        raise UserError(f"cannot read the overrides: {_one_line(err)}") from None
    parsed = [o for o in parsed if not o.key_or_group.startswith("hydra")]
    groups = set(config_groups())
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        raise UserError(f"{sweeps[0].input_line} lists several values: add -m to sweep over them (lth-run -m ...)")

    choices: list[list[tuple[Any, str]]] = []  # per override, its (override, value string) alternatives
    for override in parsed:
        values = _sweep_values(override, groups) if override.is_sweep_override() else [None]
        if override.key_or_group in groups and override.type.name != "DEL":
            for value in values:
                _check_group_choice(override.key_or_group, override.value() if value is None else value)
        elif "." not in override.key_or_group and override.type.name == "CHANGE":
            _check_top_level(override.key_or_group, override.input_line.split("=", 1)[-1], groups)
        choices.append([(override, v) for v in values])

    checked, bases = 0, {}
    for combination in itertools.product(*choices):
        group_part = tuple(_line(o, v) for o, v in combination if o.key_or_group in groups)
        if group_part not in bases:
            try:
                base = compose_config(list(group_part))
            except (HydraException, OmegaConfBaseException) as err:
                raise UserError(_one_line(err)) from None
            for override, value in combination:
                if override.key_or_group not in groups and override.type.name == "CHANGE":
                    _check_key_exists(base, override.key_or_group, override.value() if value is None else value)
            bases[group_part] = base
        cfg = copy.deepcopy(bases[group_part])  # a shallow copy would share the nested groups between jobs
        for override, value in combination:
            if override.key_or_group in groups or override.type.name == "DEL":
                continue
            parsed_value = override.value() if value is None else parser.parse_override(f"x={value}").value()
            try:
                if override.type.name == "CHANGE":
                    OmegaConf.update(cfg, override.key_or_group, parsed_value, merge=True)
                else:
                    with open_dict(cfg):
                        OmegaConf.update(cfg, override.key_or_group, parsed_value, merge=True, force_add=True)
            except OmegaConfBaseException as err:
                raise UserError(f"{override.input_line}: {_one_line(err)}") from None
        build_run_config(cfg)
        checked += 1
    return checked


def _line(override: Any, value: str | None) -> str:
    if value is None:
        return override.input_line
    return f"{override.get_key_element()}={value}"


def _sweep_values(override: Any, groups: set[str]) -> list[str]:
    """The value strings a sweep override lists: choice and range as Hydra enumerates them, ``glob(...)`` over a
    group's options; a sweep the basic sweeper cannot enumerate (``interval``) is one line, not a traceback."""
    from hydra.errors import HydraException

    if override.is_interval_sweep():
        raise UserError(
            f"{override.input_line}: interval(...) is sampled by optimizing sweepers (e.g. Optuna), not listed; "
            f"use choice(...), range(...) or a,b,c"
        )
    if override.value_type.name == "GLOB_CHOICE_SWEEP":
        if override.key_or_group not in groups:
            raise UserError(f"{override.input_line}: glob(...) chooses among a config group's options")
        values = override.value().filter(group_options(override.key_or_group))
        if not values:
            raise UserError(
                f"{override.input_line} matches none of: {', '.join(_visible(group_options(override.key_or_group)))}"
            )
        return values
    try:
        return list(override.sweep_string_iterator())
    except HydraException as err:
        raise UserError(f"{override.input_line}: {_one_line(err)}") from None


def _check_group_choice(group: str, value: Any) -> None:
    name = str(value).strip("'\"")
    options = group_options(group)
    if name not in options:
        visible = _visible(options)
        raise ConfigError(group, name, f"one of: {', '.join(visible)}", hint=did_you_mean(name, visible))


def _check_top_level(key: str, value: str, groups: set[str]) -> None:
    from lth_runner.config.schema import RunConfig

    top = {f.name for f in dataclasses.fields(RunConfig)} - groups - {"model", "dataset", "method"}
    if key in top:
        return
    raise ConfigError(
        key,
        value,
        f"a config group ({', '.join(sorted(groups))}) or a top-level key ({', '.join(sorted(top))})",
        hint=did_you_mean(key, sorted(groups | top)),
    )


def _check_key_exists(cfg: Any, dotted: str, value: Any) -> None:
    """``a.b.c=...`` needs ``a.b.c`` in the composed configuration (``+a.b.c=...`` adds a key on purpose)."""
    from omegaconf import DictConfig

    node, walked = cfg, []
    for part in dotted.split("."):
        if not isinstance(node, DictConfig):
            return  # into a list or a value: typed validation reports it
        if part not in node:
            parent = ".".join(walked)
            keys = sorted(str(k) for k in node.keys())
            where = f"{parent}" if parent else "the configuration"
            raise ConfigError(
                ".".join([*walked, part]),
                value,
                f"one of the keys of {where}: {', '.join(keys)}",
                hint=did_you_mean(part, keys),
            )
        node = node[part]
        walked.append(part)


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


# ----------------------------------------------------------------------------------------------------- help
_COMMON_KEYS = (
    "trainer.epochs",
    "trainer.batch_size",
    "trainer.device",
    "trainer.precision",
    "sparsity.target",
    "sparsity.scope",
    "sparsity.rounds",
    "optim.lr",
    "optim.scheduler.name",
    "dataset.root",
    "dataset.val_size",
    "dataset.train_subset",
    "dataset.test_subset",
    "regularizer.ceiling",
    "regularizer.coefficient",
    "trainer.penalty.name",
    "trainer.sam.enabled",
    "trainer.nvrm.enabled",
    "seed",
    "logger.wandb.mode",
    "paths.output_root",
)
_EXAMPLES = (
    ("lth-run experiment=demo", "the offline demo: IMP on MNIST-1D with an MLP (about 30 s on a CPU)"),
    ("lth-run method=unidlth model=resnet50", "UniDLTH on CIFAR-10 (scripts/prepare_cifar10.py offline)"),
    ("lth-run -m method=lth,unilth sparsity=50,70,90 seed=0,1,2", "a sweep: 18 runs, each in its own folder"),
    ("lth-run experiment=mnist_lenet method=unilth dataset.root=tests/data/mnist", "a preset, any method"),
    ("lth-run method=lth_iter --help", "this page with lth_iter's own keys"),
    ("lth-run --cfg job method=dlth", "print the configuration that would run"),
    ("lth-run-report outputs/sweeps/<time>", "tables (mean ± std over seeds) and figures of finished runs"),
)


def help_text(overrides: Sequence[str] = ()) -> str:
    """``lth-run --help``: composed from the config folder and the schema, without importing torch."""
    from lth_runner.config.compose import compose_config

    try:
        cfg = compose_config(list(overrides))
    except Exception:  # a broken override still gets the page (with the defaults)
        cfg = compose_config([])
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that cannot resolve here is shown as written
        data = OmegaConf.to_container(cfg, resolve=False)
    lines = [
        "lth-run: lottery-ticket and sparse-training experiments, configured by composition (Hydra).",
        "",
        "usage: lth-run [GROUP=OPTION] [KEY=VALUE] ...        one run (its folder: outputs/runs/<name>/<time>)",
        "       lth-run -m KEY=A,B GROUP=X,Y ...              a sweep over every combination",
        "       lth-run --cfg job [OVERRIDES]                 print the configuration instead of running it",
        "       lth-run GROUP=OPTION ... --help               this page, with the chosen method's keys",
        "",
        "groups (the chosen option in brackets):",
    ]
    chosen = _chosen_options(overrides)
    for group in config_groups():
        options = _visible(group_options(group))
        current = chosen.get(group)
        shown = " ".join(f"[{o}]" if o == current else o for o in options)
        lines += _wrap(f"  {group:<12}", shown)
    lines += ["", "most used keys (current value; group.key=value changes one):"]
    for key in _COMMON_KEYS:
        lines.append(_key_line(key, _lookup(data, key), description(key, data)))
    method = (data.get("method") or {}).get("name")
    if method:
        lines += ["", f"method={chosen.get('method', method)} keys (method.KEY=VALUE):"]
        for key, value in (data.get("method") or {}).items():
            if key != "name":
                lines.append(_key_line(f"method.{key}", value, description(f"method.{key}", data)))
    lines += ["", "examples:"]
    lines += [f"  {command:<72} {what}" for command, what in _EXAMPLES]
    lines += [
        "",
        "Every key is checked before anything runs; a mistake is one line naming the key and what is accepted.",
        "Methods and their options: docs/methods.md. Hydra's own flags (--multirun, --cfg, --info, ...): "
        "lth-run --hydra-help.",
    ]
    return "\n".join(lines) + "\n"


def _chosen_options(overrides: Sequence[str]) -> dict[str, str]:
    import yaml

    chosen: dict[str, str] = {}
    for entry in yaml.safe_load((config_dir() / "config.yaml").read_text()).get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                group = key.removeprefix("optional ").strip()
                if value is not None:
                    chosen[group] = str(value)
    for override in overrides:
        key, _, value = override.partition("=")
        if key in config_groups() and value:
            chosen[key] = value.strip("'\"")
    return chosen


def _wrap(head: str, text: str, width: int = 118) -> list[str]:
    lines, current = [], head
    for word in text.split():
        if len(current) + len(word) + 1 > width and current.strip() != head.strip():
            lines.append(current)
            current = " " * len(head)
        current += ("" if current.endswith(" ") else " ") + word
    lines.append(current)
    return lines


def _key_line(key: str, value: Any, text: str) -> str:
    shown = "null" if value is None else str(value).replace("'", "")
    left = f"  {key}={shown}"
    return f"{left:<44} {text}" if text else left


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def description(dotted: str, data: dict[str, Any] | None = None) -> str:
    """The ``help`` metadata of the schema field ``dotted`` (the chosen method's/dataset's schema for their keys)."""
    from lth_runner import catalog
    from lth_runner.config.schema import RunConfig

    head, _, rest = dotted.partition(".")
    schema: Any = RunConfig
    if head in ("method", "dataset") and data is not None:
        registry = catalog.METHODS if head == "method" else catalog.DATASETS
        name = (data.get(head) or {}).get("name")
        if name in registry:
            schema = registry.entry(name).meta.get("config")
            dotted = rest
    elif head == "model" and data is not None:
        arch = (data.get("model") or {}).get("arch")
        schema = catalog.MODELS.entry(arch).meta.get("options") if arch in catalog.MODELS else None
        dotted = rest
    for part in dotted.split("."):
        if schema is None or not dataclasses.is_dataclass(schema):
            return ""
        spec = next((f for f in dataclasses.fields(schema) if f.name == part), None)
        if spec is None:
            return ""
        nested = typing.get_type_hints(schema).get(part)
        if isinstance(nested, type) and dataclasses.is_dataclass(nested):
            schema = nested
            continue
        return str(spec.metadata.get("help", ""))
    return ""
