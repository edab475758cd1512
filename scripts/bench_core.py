"""Core performance figures (``make bench``): masked vs dense training step, score-masked (mask search) vs dense
step, RigL's non-update step vs the masked step and its update, global pruning, data pipeline.

Timings on shared machines are noisy, so every comparison runs in one process, interleaves the variants in blocks,
and reports medians and ratios. Results go to stdout and, with ``--json PATH``, to a JSON file.

    python scripts/bench_core.py            # everything (about two minutes on a 2-core CPU)
    python scripts/bench_core.py --quick    # fewer repetitions
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from lth_runner.analysis import hessian
from lth_runner.config.schema import ModelConfig
from lth_runner.data.base import DataSpec, InMemoryData
from lth_runner.data.transforms import BatchTransform
from lth_runner.models import build_model
from lth_runner.sparse import CRITERIA, Mask, MaskEnforcer, kept_count, prunable_parameters, prune_to_density
from lth_runner.sparse.mask_penalties import penalty_of
from lth_runner.sparse.relaxed_mask import MaskPenalty, ProjectToUnitBox, RelaxedMaskedModel
from lth_runner.sparse.score_mask import ReselectTopK, ScoreMaskedModel
from lth_runner.training import EnforceMask
from lth_runner.training.drop_and_grow import DropAndGrow
from lth_runner.training.optim import build_optimizer


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_prune(repeats: int) -> dict[str, Any]:
    """Magnitude scores + exact global selection for ResNet-50's prunable weights (runs first: peak RSS is
    monotonic, so the pruning's extra memory is the growth of the peak over the model's own footprint)."""
    model = build_model(
        ModelConfig(arch="resnet50", name="resnet50", kwargs={"stem": "cifar"}), (3, 32, 32), 10, seed=0
    )
    params = prunable_parameters(model)
    total = sum(p.numel() for p in params.values())
    baseline = peak_rss_mb()
    times, alive = [], None
    for density in [0.8, 0.64, 0.512, 0.41, 0.328][:repeats]:
        start = time.perf_counter()
        mask = prune_to_density(CRITERIA.get("magnitude")(params), density, alive=alive)
        times.append(time.perf_counter() - start)
        assert mask.num_kept() == kept_count(total, density), "selection missed the exact count"
        alive = mask
    return {
        "weights": total,
        "seconds_median": statistics.median(times),
        "seconds_max": max(times),
        "seconds_each": [round(t, 4) for t in times],
        "extra_peak_memory_mb": round(peak_rss_mb() - baseline, 1),
        "weights_mb": round(total * 4 / 2**20, 1),
    }


def _masked_training(arch: str, shape: tuple[int, ...], batch: int) -> tuple[Any, Callable[..., None]]:
    """A model with its prunable weights, a random 20% mask, an SGD optimizer (momentum, weight decay) and one batch;
    ``step(hook, trainer)`` runs forward, backward, the hook around the optimizer step (None: a plain step)."""
    model = build_model(ModelConfig(arch=arch, name=arch, kwargs={}), shape, 10, seed=0)
    params = prunable_parameters(model)
    mask = Mask.random({n: p.shape for n, p in params.items()}, 0.2, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))

    def step(hook: Any, trainer: Any = None) -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if hook is not None:
            hook.before_step(trainer)
        optimizer.step()
        if hook is not None:
            hook.after_step(trainer)

    model.train()
    setup = SimpleNamespace(model=model, params=params, mask=mask, optimizer=optimizer, x=x, y=y)
    return setup, step


def bench_step(arch: str, shape: tuple[int, ...], batch: int, blocks: int, steps: int) -> dict[str, Any]:
    """Median time of one SGD step (forward, backward, momentum + weight decay update) without and with mask
    enforcement at 20% density, interleaved block by block."""
    setup, step = _masked_training(arch, shape, batch)
    hook = EnforceMask(MaskEnforcer(setup.params, setup.mask))  # what the trainer calls around every step
    return compared(arch, batch, "masked", lambda: step(None), lambda: step(hook), blocks, steps)


def bench_rigl_step(arch: str, shape: tuple[int, ...], batch: int, blocks: int, steps: int) -> dict[str, Any]:
    """RigL's hook on a step that is not an update step against the plain masked step (both at 20% density, the
    same model and optimizer, interleaved), and the median time of one drop-and-grow update (every 100 steps)."""
    setup, step = _masked_training(arch, shape, batch)
    masked = EnforceMask(MaskEnforcer(setup.params, setup.mask))
    rigl = DropAndGrow(
        MaskEnforcer(setup.params, setup.mask), grow="gradient", delta_t=100, alpha=0.3, t_end=0.75, decay="cosine"
    )
    # step 1 of a 10^6-step stage: never an update step
    trainer = SimpleNamespace(step=1, stage=SimpleNamespace(epochs=1), steps_per_epoch=10**6,
                              optimizer=setup.optimizer, skip_step=False)  # fmt: skip
    row = compared(arch, batch, "rigl", lambda: step(masked, trainer), lambda: step(rigl, trainer), blocks, steps)
    row["masked_ms"] = row.pop("dense_ms")
    updates = []
    for _ in range(max(3, blocks)):
        F.cross_entropy(setup.model(setup.x), setup.y).backward()
        trainer.step = 100
        start = time.perf_counter()
        rigl.before_step(trainer)  # the drop-and-grow update of every layer (the step itself is skipped)
        updates.append(time.perf_counter() - start)
        trainer.step = 1
        setup.optimizer.zero_grad(set_to_none=True)
    row["update_ms"] = round(1000 * statistics.median(updates), 3)
    return row


def compared(
    arch: str, batch: int, variant: str, dense: Callable[[], None], other: Callable[[], None], blocks: int, steps: int
) -> dict[str, Any]:
    """Median milliseconds of a dense step and of the ``variant`` step, timed in alternating blocks (the order
    flips every block) after a warm-up of both, and their ratio."""
    for _ in range(5):
        dense()
        other()
    samples: tuple[list[float], list[float]] = ([], [])
    for block in range(blocks):
        for which in (0, 1) if block % 2 == 0 else (1, 0):
            run = (dense, other)[which]
            for _ in range(steps):
                start = time.perf_counter()
                run()
                samples[which].append(time.perf_counter() - start)
    dense_s, other_s = statistics.median(samples[0]), statistics.median(samples[1])
    return {
        "model": arch,
        "batch": batch,
        "dense_ms": round(1000 * dense_s, 3),
        f"{variant}_ms": round(1000 * other_s, 3),
        "ratio": round(other_s / dense_s, 4),
        "steps_each": len(samples[0]),
    }


def against_dense(
    arch: str,
    shape: tuple[int, ...],
    batch: int,
    variant: str,
    build: Callable[..., Callable[[Any, Any], None]],
    blocks: int,
    steps: int,
) -> dict[str, Any]:
    """``compared`` for a dense SGD step and the step ``build(model)`` returns for a second copy of the model."""
    dense_model = build_model(ModelConfig(arch=arch, name=arch, kwargs={}), shape, 10, seed=0)
    variant_step = build(build_model(ModelConfig(arch=arch, name=arch, kwargs={}), shape, 10, seed=0))
    dense_optimizer = torch.optim.SGD(dense_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))

    def dense_step() -> None:
        loss = F.cross_entropy(dense_model(x), y)
        dense_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dense_optimizer.step()

    dense_model.train()
    return compared(arch, batch, variant, dense_step, lambda: variant_step(x, y), blocks, steps)


def bench_score_step(arch: str, shape: tuple[int, ...], batch: int, blocks: int, steps: int) -> dict[str, Any]:
    """Median time of one dense SGD step against one score-masked step (mask search on frozen weights: forward
    with ``w * b``, straight-through backward to the scores, SGD on the scores, exact per-layer top-k re-selection
    at 10% density), interleaved block by block."""

    def build(searched: torch.nn.Module) -> Callable[[Any, Any], None]:
        weights = prunable_parameters(searched)
        generator = torch.Generator().manual_seed(0)
        scores = {n: torch.rand(w.shape, generator=generator) for n, w in weights.items()}
        wrapper = ScoreMaskedModel(searched, scores, {n: kept_count(w.numel(), 0.1) for n, w in weights.items()})
        reselect = ReselectTopK(wrapper)
        optimizer = torch.optim.SGD(
            [p for p in wrapper.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True
        )
        wrapper.train()

        def score_step(x: torch.Tensor, y: torch.Tensor) -> None:
            loss = F.cross_entropy(wrapper(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            reselect.after_step(None)

        return score_step

    return against_dense(arch, shape, batch, "score_masked", build, blocks, steps)


def bench_relaxed_step(arch: str, shape: tuple[int, ...], batch: int, blocks: int, steps: int) -> dict[str, Any]:
    """Median time of one dense SGD step against one relaxed-mask step (paper 001: forward with ``w * b * m``,
    backward to the weights and the masks, the log penalty's gradient, SGD with the mask group, the projection
    onto [0, 1]), interleaved block by block."""

    def build(relaxed: torch.nn.Module) -> Callable[[Any, Any], None]:
        wrapper = RelaxedMaskedModel(relaxed, list(prunable_parameters(relaxed)), mask_group={"weight_decay": 0.0})
        cost, slope = penalty_of("mask_log", SimpleNamespace(eps=0.01, normalize=True))
        penalty, project = MaskPenalty(wrapper, cost, 1e-4, slope=slope), ProjectToUnitBox(wrapper)
        sgd = SimpleNamespace(name="sgd", lr=0.01, momentum=0.9, nesterov=False, weight_decay=5e-4)
        optimizer = build_optimizer(wrapper.optimizer_groups(), sgd)
        wrapper.train()

        def relaxed_step(x: torch.Tensor, y: torch.Tensor) -> None:
            loss = F.cross_entropy(wrapper(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            penalty.before_step(None)
            optimizer.step()
            project.after_step(None)

        return relaxed_step

    return against_dense(arch, shape, batch, "relaxed", build, blocks, steps)


def bench_hessian_trace(examples: int, repeats: int) -> dict[str, Any]:
    """Seconds of ``lth-run-analyze``'s Hessian trace for a LeNet-300-100 ticket (10% of the weights kept at random)
    on ``examples`` MNIST-shaped inputs: Hutchinson with PyHessian's defaults (at most 100 probes, tol 1e-3), and
    the cost of one Hessian-vector product; medians over ``repeats``."""
    model = build_model(ModelConfig(arch="lenet_300_100", name="lenet_300_100", kwargs={}), (1, 28, 28), 10, seed=0)
    generator = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=generator) < 0.1 for n, p in prunable_parameters(model).items()}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in masks:
                param.mul_(masks[name])
    batches = [
        (torch.randn(examples, 1, 28, 28, generator=generator), torch.randint(0, 10, (examples,), generator=generator))
    ]
    operator = hessian.HessianOperator(model, batches, *hessian.subnetwork(model, masks, "unpruned"))
    seconds, products, probes = [], [], []
    for repeat in range(repeats + 1):
        start = time.perf_counter()
        estimate = hessian.hutchinson_trace(operator, generator=torch.Generator().manual_seed(repeat))
        if repeat:  # the first warms up
            seconds.append(time.perf_counter() - start)
            probes.append(estimate.iterations)
    for _ in range(10):
        start = time.perf_counter()
        operator([torch.ones_like(p) for p in operator.params])
        products.append(time.perf_counter() - start)
    return {
        "examples": examples,
        "trace_seconds_median": round(statistics.median(seconds), 3),
        "probes_median": statistics.median(probes),
        "hvp_ms_median": round(1000 * statistics.median(products), 2),
    }


def bench_data(batch: int, epochs: int) -> dict[str, Any]:
    """Images per second of the in-memory CIFAR-shaped path: gather, random crop (pad 4), flip, normalise."""
    count = 50_000
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (count,))
    transform = BatchTransform((0.49, 0.48, 0.45), (0.25, 0.24, 0.26), crop_padding=4, flip=True)
    data = InMemoryData(
        DataSpec("cifar-shaped", (3, 32, 32), 10),
        {"train": (images, labels)},
        transform,
        batch_size=batch,
        eval_batch_size=1000,
    )
    rates = []
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        seen = sum(y.numel() for _, y in data.train_batches(epoch))
        if epoch:  # the first epoch warms up the allocator
            rates.append(seen / (time.perf_counter() - start))
    return {"batch": batch, "images_per_second_median": round(statistics.median(rates)), "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    quick = args.quick
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
        },
    }
    results["prune_resnet50"] = bench_prune(repeats=3 if quick else 5)
    prune = results["prune_resnet50"]
    print(
        f"global magnitude prune, {prune['weights']:,} weights (ResNet-50): median {prune['seconds_median']:.3f} s, "
        f"max {prune['seconds_max']:.3f} s, extra peak memory {prune['extra_peak_memory_mb']} MB "
        f"(weights themselves {prune['weights_mb']} MB)",
        flush=True,
    )
    for key, bench, title, variant in (
        ("step", bench_step, "train step", "masked"),
        ("score_step", bench_score_step, "mask-search step", "score_masked"),
        ("relaxed_step", bench_relaxed_step, "relaxed-mask step", "relaxed"),
    ):
        results[key] = [
            bench("lenet_300_100", (1, 28, 28), 128, blocks=6 if quick else 20, steps=20 if quick else 50),
            bench("resnet20", (3, 32, 32), 128, blocks=4 if quick else 8, steps=3 if quick else 5),
        ]
        for row in results[key]:
            print(
                f"{title} {row['model']} (batch {row['batch']}): dense {row['dense_ms']} ms, "
                f"{variant.replace('_', '-')} {row[variant + '_ms']} ms, ratio {row['ratio']:.3f} "
                f"(median of {row['steps_each']} steps each)",
                flush=True,
            )
    results["rigl_step"] = [
        bench_rigl_step("lenet_300_100", (1, 28, 28), 128, blocks=6 if quick else 20, steps=20 if quick else 50),
        bench_rigl_step("resnet20", (3, 32, 32), 128, blocks=4 if quick else 8, steps=3 if quick else 5),
    ]
    for row in results["rigl_step"]:
        print(
            f"RigL step {row['model']} (batch {row['batch']}): masked {row['masked_ms']} ms, RigL non-update "
            f"{row['rigl_ms']} ms, ratio {row['ratio']:.3f} (median of {row['steps_each']} steps each); one "
            f"drop-and-grow update {row['update_ms']} ms",
            flush=True,
        )
    results["hessian_trace"] = bench_hessian_trace(1000, 2 if quick else 5)
    trace = results["hessian_trace"]
    print(
        f"Hessian trace (Hutchinson, LeNet-300-100 ticket at 10%, {trace['examples']} examples): median "
        f"{trace['trace_seconds_median']} s for {trace['probes_median']} probes, {trace['hvp_ms_median']} ms per "
        f"Hessian-vector product",
        flush=True,
    )
    results["data"] = [bench_data(128, 2 if quick else 5), bench_data(512, 2 if quick else 5)]
    for row in results["data"]:
        print(
            f"in-memory CIFAR-shaped pipeline, batch {row['batch']}: {row['images_per_second_median']:,} images/s",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
