"""A test plugin (``plugins=[tests.rank_dump]``) for distributed runs: after every stage, every rank writes the mask it
enforced and its final weights to ``<output dir>/ranks/rank<r>/<stage key>.pt`` (production code writes on rank 0
only), so a test can compare what each process actually trained."""

from __future__ import annotations

import torch

from lth_runner import distributed
from lth_runner.session import RunContext
from lth_runner.sparse.prunable import unwrap

_train = RunContext.train


def train(self: RunContext, stage, model, enforcer, hooks=(), **kwargs):
    result = _train(self, stage, model, enforcer, hooks, **kwargs)
    path = self.output_dir / "ranks" / f"rank{distributed.rank()}" / f"{stage.key.replace('/', '_')}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = enforcer.mask.state_dict() if enforcer is not None and enforcer.mask is not None else None
    torch.save({"mask": mask, "model": unwrap(model).state_dict()}, path)
    return result


RunContext.train = train
