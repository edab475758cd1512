"""Pre-trained weights for the methods that start from a trained network (L1, SR-popup, ...), offline.

``method.pretrained`` names the source:

- a path: a state-dict file, a dict with a ``model`` key (such as ``checkpoints/last.pt``), or a run directory of
  this tool (its dense weights: :data:`RUN_DIR_WEIGHTS`); keys and shapes are checked against the model;
- ``auto``: the dense model trained once with the run's own recipe (model, data, optimizer, trainer, seed) and
  cached under ``<paths.data_root>/pretrained/<recipe hash>.pt`` beside a JSON record of the recipe and the
  accuracy it reached. Later runs with the same recipe load it; concurrent sweep jobs that need the same one wait
  for the first (a file lock), so it is trained once. Writes are atomic;
- ``timm:NAME``: timm's pre-trained weights for ImageNet-shaped timm models (needs the network or a Hugging Face
  cache); offline it fails in one line naming the alternatives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lth_runner import distributed
from lth_runner.errors import UserError
from lth_runner.sparse.prunable import unwrap
from lth_runner.utils.io import save_torch_atomic, write_json_atomic

if TYPE_CHECKING:
    from lth_runner.session import RunContext
    from lth_runner.training.trainer import StageResult

PRETRAIN_KEY = "pretrain/dense"
RECIPE_VERSION = 1  # bump when what the cached training does changes
# Where a run directory keeps dense weights: a pre-training stage, LTH's round 0 (kept with
# trainer.keep_round_weights=true), and a search stage's dense weights.
RUN_DIR_WEIGHTS = (
    "checkpoints/pretrain_dense.final.pt",
    "checkpoints/round00_dense.final.pt",
    "checkpoints/search_dense.final.pt",
)
# trainer keys that change only what is logged, not the weights trained
_RECIPE_NEUTRAL = ("trainer.eval_test",)


@dataclasses.dataclass
class Pretrained:
    """Where the weights came from: ``kind`` is ``file``, ``run_dir``, ``cache`` (loaded), ``trained`` (trained in
    this run, then cached) or ``timm``; ``accuracy`` holds what the cache recorded (val/test) when known."""

    source: str
    kind: str
    accuracy: dict[str, float | None] = dataclasses.field(default_factory=dict)
    stage: StageResult | None = None  # the pre-training stage, when this run trained it


# ----------------------------------------------------------------------------------------------- from a path
def resolve(spec: str, key: str = "method.pretrained") -> tuple[Path, str]:
    """The weights file that ``spec`` names and its kind (``file`` or ``run_dir``)."""
    path = Path(spec).expanduser().resolve()
    if path.is_dir():
        for candidate in RUN_DIR_WEIGHTS:
            if (path / candidate).is_file():
                return path / candidate, "run_dir"
        raise UserError(
            f"{key}={spec!r}: the run directory {path} holds none of {', '.join(RUN_DIR_WEIGHTS)} "
            f"(an LTH run keeps its dense weights only with trainer.keep_round_weights=true: re-run it so, "
            f"or point {key} at a state-dict file)"
        )
    if path.is_file():
        return path, "file"
    raise UserError(f"{key}={spec!r}: no such file or directory ({path}); give a state-dict file or a run directory")


def read_state_dict(path: Path, key: str = "method.pretrained") -> dict[str, torch.Tensor]:
    """A state dict from ``path``: saved as is, or under a ``model`` key (like ``checkpoints/last.pt``)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{key}: {path} is not a readable PyTorch weights file ({reason})") from None
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise UserError(f"{key}: {path} holds no state dict (expected {{name: tensor}} or a dict with a 'model' key)")
    return payload


def check_compatible(
    state: Mapping[str, torch.Tensor], model: nn.Module, path: Path | str, key: str = "method.pretrained"
) -> None:
    """Refuse, in one line naming the first offending tensor, weights that do not fit ``model``."""
    expected = unwrap(model).state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise UserError(f"{key}: {path} has no tensor {name!r}, which the model needs")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UserError(
                f"{key}: {path} does not fit the model: {name} has shape {tuple(state[name].shape)} "
                f"there and {tuple(tensor.shape)} in the model"
            )
    extra = [name for name in state if name not in expected]
    if extra:
        raise UserError(f"{key}: {path} has tensor {extra[0]!r}, which the model does not")


def load_file(model: nn.Module, spec: str, key: str = "method.pretrained") -> Pretrained:
    """Load the weights ``spec`` names (a file or a run directory) into ``model``."""
    path, kind = resolve(spec, key)
    state = read_state_dict(path, key)
    check_compatible(state, model, path, key)
    unwrap(model).load_state_dict(state)
    return Pretrained(str(path), kind)


# ----------------------------------------------------------------------------------------------- the cache
def recipe(run: RunContext, epochs: int) -> dict[str, Any]:
    """What decides the dense weights: the run's model, data, optimizer and trainer settings, seed, and epochs."""
    from lth_runner.session import resume_fingerprint

    keys = ("model.", "dataset.", "optim.", "trainer.")
    chosen = {
        k: v
        for k, v in resume_fingerprint(run.cfg).items()
        if (k.startswith(keys) or k == "seed") and k not in _RECIPE_NEUTRAL and k != "trainer.epochs"
    }
    return {"version": RECIPE_VERSION, "epochs": epochs, **chosen}


def cache_path(data_root: str | Path, recipe_: Mapping[str, Any]) -> Path:
    digest = hashlib.sha1(json.dumps(recipe_, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return Path(data_root).expanduser().resolve() / "pretrained" / f"{recipe_.get('model.name', 'model')}-{digest}.pt"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path`` (other jobs that need the same weights wait here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def obtain(run: RunContext, model: nn.Module, *, epochs: int, key: str = "method.pretrained") -> Pretrained:
    """``method.pretrained`` resolved into ``model``: a path, ``auto`` (cached dense training) or ``timm:NAME``."""
    spec = run.cfg.method.pretrained
    if spec == "auto":
        return _cached(run, model, epochs)
    if isinstance(spec, str) and spec.startswith("timm:"):
        return _timm(model, spec[len("timm:") :], key)
    return load_file(model, spec, key)


def _cached(run: RunContext, model: nn.Module, epochs: int) -> Pretrained:
    recipe_ = recipe(run, epochs)
    path = cache_path(run.cfg.paths.data_root, recipe_)
    record_path = path.with_suffix(".json")
    lock = _locked(path) if distributed.is_main() else contextlib.nullcontext()
    with lock:
        cached = distributed.any_rank(distributed.is_main() and path.exists() and record_path.exists())
        if cached and run.completed(PRETRAIN_KEY) is None:  # a resumed run that trained it reports it as before
            distributed.barrier()
            state = read_state_dict(path, "method.pretrained=auto")
            check_compatible(state, model, path, "method.pretrained=auto")
            unwrap(model).load_state_dict(state)
            record = json.loads(record_path.read_text())
            return Pretrained(str(path), "cache", record.get("accuracy", {}))
        result = _train_dense(run, model, epochs)
        accuracy = {"val_acc": result.best_val_acc, "test_acc": result.test_acc}
        if distributed.is_main():
            save_torch_atomic(path, unwrap(model).state_dict())
            write_json_atomic(record_path, {"recipe": recipe_, "accuracy": accuracy, "trained_in": str(run.output_dir)})
        distributed.barrier()
        return Pretrained(str(path), "trained", accuracy, stage=result)


def _train_dense(run: RunContext, model: nn.Module, epochs: int) -> StageResult:
    from lth_runner.training.trainer import Stage

    run.message(f"pretrained=auto: training the dense {run.cfg.model.name} for {epochs} epochs (cached for reuse)")
    return run.train(Stage(PRETRAIN_KEY, 0, "dense", epochs), model, None, keep_weights=True)


def _timm(model: nn.Module, name: str, key: str) -> Pretrained:
    try:
        import timm

        source = timm.create_model(name, pretrained=True, num_classes=_num_classes(model))
    except Exception as err:  # noqa: BLE001 - offline, unknown name, missing cache: one line
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(
            f"{key}=timm:{name}: timm could not provide the weights ({reason}); offline, set HF_HUB_OFFLINE=1 with "
            f"the weights in the Hugging Face cache, or use {key}=auto (train and cache here) or a weights file"
        ) from None
    state = source.state_dict()
    check_compatible(state, model, f"timm:{name}", key)
    unwrap(model).load_state_dict(state)
    return Pretrained(f"timm:{name}", "timm")


def _num_classes(model: nn.Module) -> int:
    head = [m for m in unwrap(model).modules() if isinstance(m, nn.Linear)]
    return head[-1].out_features if head else 1000
