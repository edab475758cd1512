"""GPU check (``make gpu-check``; run through ``scripts/gpu_check.sh``, which prepares the device machine first).

On one device, for ResNet-20 on CIFAR-10 at batch 128:
- dense training epoch time and images/s, fp32 and bf16 autocast + channels_last;
- masked / dense step time at 10% density (the project's ``MaskEnforcer`` around every optimizer step);
- ``torch.compile`` on / off: compile time and steady-state step time;
- a 3-round LTH-Iter run through the command line, with every round's density and test accuracy.

It prints a markdown table and, when ``$OUT`` (or ``--out``) names a folder, writes it there as ``gpu_check.md``,
the figures as ``gpu_check.json`` and the LTH run's console log as ``gpu_check_lth.log``. A part that fails is
reported in the table and the others still run (device time is scarce); the exit status is then 1.

Timings follow scripts/bench_core.py: warm-up first, variants interleaved block by block, medians. On CUDA the
timed work is bracketed by CUDA events; steps are timed in blocks so that the CPU can run ahead as in training.

    python scripts/gpu_check.py --data data/cifar10   # full: CUDA, within 8 minutes on an H200
    python scripts/gpu_check.py --tiny                # seconds on a CPU: synthetic data, ResNet-20 at width 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import lth_runner
from lth_runner.config.schema import CifarConfig, DatasetConfig, ModelConfig, SyntheticConfig
from lth_runner.data import DataBundle, build_data
from lth_runner.models import build_model
from lth_runner.sparse import CRITERIA, MaskEnforcer, prunable_parameters, prune_to_density

REPO = Path(__file__).resolve().parents[1]
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much of everything one mode measures."""

    mode: str
    width: int  # ResNet-20's first-stage channels (16: He et al.'s network)
    batch: int
    epoch_repeats: int  # timed epochs per precision, after one warm-up epoch each
    blocks: int  # interleaved blocks per step-time comparison
    block_steps: int  # steps timed together in one block
    warmup_steps: int
    mask_density: float
    train_subset: int | None  # training images for the epoch timings (None: all 50,000)
    lth_epochs: int  # per round
    lth_train_subset: int | None
    lth_val_size: int
    lth_timeout_s: float
    lth_rounds: int = 3
    lth_target: float = 0.488  # sparsity after 3 geometric rounds: densities 0.8, 0.64, 0.512


FULL = Plan(
    mode="full",
    width=16,
    batch=128,
    epoch_repeats=3,
    blocks=10,
    block_steps=20,
    warmup_steps=20,
    mask_density=0.1,
    train_subset=None,
    lth_epochs=4,
    lth_train_subset=None,
    lth_val_size=5000,
    lth_timeout_s=300,
)
TINY = dataclasses.replace(  # the same path on a CPU in seconds, so CI keeps the script working
    FULL,
    mode="tiny",
    width=4,
    batch=32,
    epoch_repeats=2,
    blocks=4,
    block_steps=2,
    warmup_steps=1,
    train_subset=128,
    lth_epochs=1,
    lth_train_subset=128,
    lth_val_size=32,
    lth_timeout_s=120,
)


# ------------------------------------------------------------------------------------------------------ timing
class Clock:
    """Seconds that work takes on ``device``: CUDA events around it on a GPU, the wall clock on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def seconds(self, work: Callable[[], Any]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            work()
            return time.perf_counter() - start
        start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start_event.record()
        work()
        end_event.record()
        end_event.synchronize()
        return start_event.elapsed_time(end_event) / 1000


def repeat(step: Callable[[], Any], count: int) -> Callable[[], None]:
    def work() -> None:
        for _ in range(count):
            step()

    return work


def interleaved_step_ms(variants: dict[str, Callable[[], Any]], clock: Clock, plan: Plan) -> dict[str, float]:
    """Median milliseconds per step of each variant; blocks alternate their order, so a drift in clocks or load
    between blocks falls on every variant alike."""
    names = list(variants)
    for name in names:  # warm-up: cuDNN's algorithm search, allocator growth, lazy initialisation
        repeat(variants[name], plan.warmup_steps)()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for block in range(plan.blocks):
        for name in names if block % 2 == 0 else reversed(names):
            samples[name].append(clock.seconds(repeat(variants[name], plan.block_steps)) / plan.block_steps)
    return {name: 1000 * statistics.median(times) for name, times in samples.items()}


# ------------------------------------------------------------------------------------------------- training
def new_model(plan: Plan, device: torch.device, *, channels_last: bool = False) -> nn.Module:
    config = ModelConfig(arch="resnet20", name="resnet20", kwargs={"width": plan.width})
    model = build_model(config, (3, 32, 32), 10, seed=0).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def make_step(
    model: nn.Module,
    device: torch.device,
    *,
    bf16: bool = False,
    enforcer: MaskEnforcer | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step as the trainer takes it: forward and cross-entropy (in bf16 autocast if asked), backward,
    SGD with momentum and weight decay; with ``enforcer``, gradients are masked before the update and weights
    after it. Written out here rather than borrowed from the trainer, whose internals are being refactored."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4, foreach=True)
    forward = model if forward is None else forward  # not `or`: a compiled module refuses bool()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if enforcer is not None:
            enforcer.apply_to_gradients()
        optimizer.step()
        if enforcer is not None:
            enforcer.apply_to_weights()

    model.train()
    return step


def first_batch(data: DataBundle, *, channels_last: bool = False) -> Batch:
    x, y = next(iter(data.train_batches(0)))
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()), y


# ------------------------------------------------------------------------------------------------- sections
def dataset_config(plan: Plan, data_root: Path | None) -> DatasetConfig:
    """Real CIFAR-10 when built (no validation split: every image trains), else CIFAR-shaped random images."""
    if data_root is not None:
        return CifarConfig(
            name="cifar10", root=str(data_root), verify_checksums=False, val_size=0, train_subset=plan.train_subset
        )
    return SyntheticConfig(name="synthetic", train_size=plan.train_subset or 50_000, test_size=64, val_size=0)


def load_data(plan: Plan, device: torch.device, data_cfg: DatasetConfig) -> dict[bool, DataBundle]:
    """The training data on ``device``, read once, batched contiguous (False) and channels-last (True)."""
    return {
        channels_last: build_data(data_cfg, batch_size=plan.batch, device=device, channels_last=channels_last)
        for channels_last in (False, True)
    }


def measure_epochs(plan: Plan, device: torch.device, data: dict[bool, DataBundle]) -> dict[str, Any]:
    """Dense training epochs (augmentation on the device included) in fp32 and in bf16 autocast + channels_last."""
    clock = Clock(device)
    variants = {}
    for name, fast in (("fp32", False), ("bf16_channels_last", True)):
        variants[name] = (data[fast], make_step(new_model(plan, device, channels_last=fast), device, bf16=fast))

    def epoch(name: str, seed: int) -> float:
        bundle, step = variants[name]

        def work() -> None:
            for x, y in bundle.train_batches(seed):
                step(x, y)

        return clock.seconds(work)

    for name in variants:  # warm-up: a whole epoch, so the short last batch's cuDNN search is not timed either
        epoch(name, 0)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for repeat_index in range(plan.epoch_repeats):
        for name in variants if repeat_index % 2 == 0 else reversed(list(variants)):
            times[name].append(epoch(name, 1 + repeat_index))
    images = variants["fp32"][0].size("train")
    result: dict[str, Any] = {"images": images, "steps": variants["fp32"][0].num_train_batches()}
    for name, seconds in times.items():
        median = statistics.median(seconds)
        result[name] = {"seconds": median, "images_per_second": images / median, "seconds_each": seconds}
    result["bf16_speedup"] = result["fp32"]["seconds"] / result["bf16_channels_last"]["seconds"]
    return result


def measure_masked(plan: Plan, device: torch.device, data: dict[bool, DataBundle]) -> dict[str, Any]:
    """Step time with the mask enforced at ``plan.mask_density`` (magnitude-pruned) over the dense step, fp32."""
    x, y = first_batch(data[False])
    dense_model, masked_model = new_model(plan, device), new_model(plan, device)
    params = prunable_parameters(masked_model)
    mask = prune_to_density(CRITERIA.get("magnitude")(params), plan.mask_density)
    enforcer = MaskEnforcer(params, mask)
    dense, masked = make_step(dense_model, device), make_step(masked_model, device, enforcer=enforcer)
    ms = interleaved_step_ms({"dense": lambda: dense(x, y), "masked": lambda: masked(x, y)}, Clock(device), plan)
    return {
        "density": mask.density(),
        "dense_ms": ms["dense"],
        "masked_ms": ms["masked"],
        "ratio": ms["masked"] / ms["dense"],
    }


def measure_compile(plan: Plan, device: torch.device, data: dict[bool, DataBundle]) -> dict[str, Any]:
    """``torch.compile`` of the forward (as ``trainer.compile=true`` does) in bf16 + channels_last: the first
    compiled step's time (compilation included) and steady-state steps with and without compilation."""
    if device.type != "cuda":
        return {"skipped": "not on CUDA (inductor took 2.5 minutes to compile this for a 2-core CPU)"}
    clock = Clock(device)
    x, y = first_batch(data[True], channels_last=True)
    eager = make_step(new_model(plan, device, channels_last=True), device, bf16=True)
    model = new_model(plan, device, channels_last=True)
    compiled = make_step(model, device, bf16=True, forward=torch.compile(model))
    clock.sync()
    start = time.perf_counter()
    compiled(x, y)
    clock.sync()
    compile_s = time.perf_counter() - start
    ms = interleaved_step_ms({"eager": lambda: eager(x, y), "compiled": lambda: compiled(x, y)}, clock, plan)
    return {
        "first_step_seconds": compile_s,
        "eager_ms": ms["eager"],
        "compiled_ms": ms["compiled"],
        "speedup": ms["eager"] / ms["compiled"],
    }


def lth_overrides(plan: Plan, device: torch.device, data_root: Path | None, run_dir: Path) -> list[str]:
    """Every key the run depends on, spelled out: the project's defaults are not to decide what the check runs."""
    if data_root is not None:
        dataset = ["dataset=cifar10", f"dataset.root={data_root}", "dataset.verify_checksums=true"]
        dataset += ["dataset.download=false", f"dataset.train_subset={plan.lth_train_subset or 'null'}"]
    else:
        dataset = ["dataset=synthetic", f"dataset.train_size={plan.lth_train_subset}", "dataset.test_size=64"]
        dataset += ["dataset.shape=[3,32,32]", "dataset.num_classes=10", "dataset.dtype=uint8", "dataset.seed=0"]
    dataset += [f"dataset.val_size={plan.lth_val_size}", "dataset.split_seed=0", "dataset.augment=true"]
    dataset += ["dataset.crop_padding=4", "dataset.placement=auto"]
    # One intra-op thread on a CPU: small CI machines run other jobs, and oversubscribed threads cost several times.
    threads = "1" if device.type == "cpu" else "null"
    return [
        "method=lth_iter",
        "method.criterion=magnitude",
        "method.rewind_to=0",
        "method.prune_from=final",
        "method.controls=[]",
        "model=resnet20",
        f"model.width={plan.width}",
        *dataset,
        "regularizer=none",
        f"sparsity.target={plan.lth_target}",
        f"sparsity.rounds={plan.lth_rounds}",
        "sparsity.schedule=geometric",
        "sparsity.scope=global",
        "sparsity.exclude=[]",
        "sparsity.exclude_first=false",
        "sparsity.exclude_last=false",
        "optim=sgd",
        "optim.lr=0.1",
        "optim.momentum=0.9",
        "optim.nesterov=false",
        "optim.weight_decay=1e-4",
        "optim.scheduler.name=cosine",
        "optim.scheduler.warmup_epochs=0",
        "optim.scheduler.min_lr=0",
        "optim.scheduler.granularity=iteration",
        f"trainer.device={device}",
        "trainer.devices=1",
        f"trainer.epochs={plan.lth_epochs}",
        f"trainer.batch_size={plan.batch}",
        "trainer.eval_batch_size=1000",
        "trainer.precision=bf16",
        "trainer.channels_last=true",
        "trainer.compile=false",
        "trainer.deterministic=false",
        "trainer.label_smoothing=0",
        "trainer.max_grad_norm=null",
        "trainer.eval_test=true",
        "trainer.checkpoint_every=1",
        "trainer.keep_round_weights=false",
        f"trainer.num_threads={threads}",
        "seed=0",
        "name=gpu_check",
        "logger.wandb.mode=disabled",
        "logger.console=plain",
        "logger.plots=false",
        f"paths.output_root={run_dir}",
        f"hydra.run.dir={run_dir}",
    ]


def round_results(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Round, density and test accuracy (the summary's headline: at the best validation epoch, else the last) of
    each IMP round in a ``summary.json``: the one place that reads its format."""
    return [
        {
            "round": entry["round"],
            "density": entry["density"],
            "test_acc": entry["ticket"]["test_acc"],
            "seconds": entry["ticket"].get("seconds"),
        }
        for entry in summary["rounds"]
    ]


def save_log(out: Path | None, log: str) -> None:
    if out is not None:
        (out / "gpu_check_lth.log").write_text(log)


def run_lth(plan: Plan, device: torch.device, data_root: Path | None, out: Path | None) -> dict[str, Any]:
    """The LTH-Iter run through ``python -m lth_runner.train``, from this checkout, with W&B off."""
    run_dir = Path(tempfile.mkdtemp(prefix="gpu_check_lth_"))
    overrides = lth_overrides(plan, device, data_root, run_dir)
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    command = [sys.executable, "-m", "lth_runner.train", *overrides]
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=plan.lth_timeout_s)
    except subprocess.TimeoutExpired as err:
        save_log(out, (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace"))
        raise RuntimeError(f"lth_runner.train ran past {plan.lth_timeout_s:.0f} s") from None
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    save_log(out, log)
    if proc.returncode != 0:
        tail = "\n".join(log.strip().splitlines()[-15:])
        raise RuntimeError(f"lth_runner.train exited {proc.returncode} (run folder {run_dir}):\n{tail}")
    summary = json.loads((run_dir / "summary.json").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints and weights; kept only when the run fails
    return {"rounds": round_results(summary), "seconds": seconds, "overrides": overrides}


# --------------------------------------------------------------------------------------------------- report
def machine(device: torch.device) -> dict[str, Any]:
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,  # "fp32" convolutions run in TF32 on a GPU when True
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "lth_runner": str(Path(lth_runner.__file__).parent),
    }
    return info


Row = tuple[str, str, str]  # measurement, setting, value


def epoch_rows(part: dict[str, Any], plan: Plan) -> list[Row]:
    setting = f"ResNet-20 (width {plan.width}), batch {plan.batch}, {part['images']:,} images"
    setting += f", median of {plan.epoch_repeats}"
    rows = []
    for name, label in (("fp32", "dense epoch, fp32"), ("bf16_channels_last", "dense epoch, bf16 + channels_last")):
        rows.append((label, setting, f"{part[name]['seconds']:.3f} s, {part[name]['images_per_second']:,.0f} images/s"))
    rows.append(("bf16 + channels_last speed-up", "epoch time fp32 / bf16", f"{part['bf16_speedup']:.2f}x"))
    return rows


def masked_rows(part: dict[str, Any], plan: Plan) -> list[Row]:
    setting = f"fp32, density {part['density']:.1%}, median of {plan.blocks} blocks of {plan.block_steps} steps"
    value = f"{part['ratio']:.3f}x ({part['masked_ms']:.2f} / {part['dense_ms']:.2f} ms)"
    return [("masked / dense step", setting, value)]


def compile_rows(part: dict[str, Any], plan: Plan) -> list[Row]:
    if "skipped" in part:
        return [("torch.compile", "bf16 + channels_last", f"skipped: {part['skipped']}")]
    first = f"{part['first_step_seconds']:.1f} s"
    steps = f"{part['compiled_ms']:.2f} / {part['eager_ms']:.2f} ms ({part['speedup']:.2f}x)"
    return [
        ("torch.compile: first step", "bf16 + channels_last, compilation included", first),
        ("torch.compile: step on / off", "bf16 + channels_last", steps),
    ]


def lth_rows(part: dict[str, Any], plan: Plan) -> list[Row]:
    rows = []
    for entry in part["rounds"]:
        label = f"LTH-Iter round {entry['round']}" + (" (dense)" if entry["round"] == 0 else "")
        rows.append((label, f"density {entry['density']:.1%}", f"test accuracy {entry['test_acc']:.4f}"))
    setting = f"epochs per round: {plan.lth_epochs}, bf16 + channels_last"
    rows.append(("LTH-Iter run", setting, f"{part['seconds']:.1f} s (through the CLI)"))
    return rows


SECTIONS = {"epochs": epoch_rows, "masked": masked_rows, "compile": compile_rows, "lth": lth_rows}


def table_rows(results: dict[str, Any], plan: Plan) -> list[Row]:
    rows = []
    for name, rows_of in SECTIONS.items():
        part = results[name]
        rows += [(name, "failed", part["error"].splitlines()[0])] if "error" in part else rows_of(part, plan)
    walls = results["wall_seconds"]
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in walls.items() if name != "total")
    rows.append(("wall time", parts, f"{walls['total']:.1f} s"))
    return rows


def markdown(results: dict[str, Any], plan: Plan) -> str:
    info = results["machine"]
    head = (
        f"GPU check ({plan.mode} mode) on {info['device']}: torch {info['torch']}, CUDA {info['cuda']}, "
        f"Python {info['python']}, data {results['data']}\n\n"
    )
    lines = ["| measurement | setting | value |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in table_rows(results, plan)]
    return head + "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------- main
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def timed(name: str, work: Callable[[], dict[str, Any]], results: dict[str, Any]) -> None:
    """Run one part; a failure becomes its entry (the other parts still run) and is printed in full."""
    print(f"gpu-check: {name} ...", flush=True)
    start = time.perf_counter()
    try:
        results[name] = work()
    except Exception as err:
        traceback.print_exc()
        results[name] = {"error": f"{type(err).__name__}: {err}"}
    results["wall_seconds"][name] = time.perf_counter() - start
    print(f"gpu-check: {name} done in {results['wall_seconds'][name]:.1f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="seconds on a CPU: synthetic data, narrow model")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cuda, cuda:N or cpu")
    parser.add_argument("--data", type=Path, help="a folder holding cifar-10-batches-py/ (needed in full mode)")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT") or None, help="folder for the results")
    args = parser.parse_args()
    plan = TINY if args.tiny else FULL
    if not args.tiny and args.data is None:
        parser.error("full mode measures real CIFAR-10: pass --data DIR (scripts/gpu_check.sh builds it)")
    device = pick_device(args.device)
    if device.type == "cpu" and args.tiny:
        torch.set_num_threads(1)  # as in lth_overrides: small shared CI machines
    torch.backends.cudnn.benchmark = True  # what the trainer sets on CUDA
    data_root = args.data.resolve() if args.data else None
    results: dict[str, Any] = {"mode": plan.mode, "plan": dataclasses.asdict(plan), "machine": machine(device)}
    results["data"] = f"CIFAR-10 from {data_root}" if data_root else "synthetic CIFAR-shaped"
    results["wall_seconds"] = {}
    # From scripts/gpu_check.sh's start when it ran this (its setup counts against the 8 minutes too), else from here.
    started = float(os.environ.get("GPU_CHECK_STARTED") or time.time())
    data = load_data(plan, device, dataset_config(plan, data_root))  # nothing is measurable without it: no guard
    results["wall_seconds"]["setup and data"] = time.time() - started
    timed("epochs", lambda: measure_epochs(plan, device, data), results)
    timed("masked", lambda: measure_masked(plan, device, data), results)
    timed("compile", lambda: measure_compile(plan, device, data), results)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    timed("lth", lambda: run_lth(plan, device, data_root, args.out), results)
    results["wall_seconds"]["total"] = time.time() - started
    table = markdown(results, plan)
    print(table, flush=True)
    if args.out is not None:
        (args.out / "gpu_check.md").write_text(table)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    return 1 if any("error" in results[name] for name in SECTIONS) else 0


if __name__ == "__main__":
    sys.exit(main())
