"""Derived seeds: every random stream (initialisation, data order, masks, controls) gets its own seed computed
from the run seed and a label, so resuming mid-run reproduces exactly what an uninterrupted run draws."""

from __future__ import annotations

import hashlib
import random


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed determined by ``seed`` and the labels (stable across processes and Python versions)."""
    text = "/".join([str(int(seed)), *map(str, labels)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (when present) and torch global generators."""
    import torch

    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (1 << 32))
    except ImportError:  # numpy is optional for the core
        pass
    torch.manual_seed(seed)
