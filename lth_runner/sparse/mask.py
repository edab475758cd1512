"""A pruning mask: one boolean keep-tensor per prunable weight (True = kept)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from lth_runner.errors import UserError
from lth_runner.sparse.schedule import kept_count
from lth_runner.utils.io import save_torch_atomic

_FORMAT = "lth_runner.mask/1"


class Mask:
    """Per-tensor boolean masks with density, distance and persistence helpers.

    Masks live wherever their tensors live; :meth:`to` moves them. On disk they are stored as bool tensors.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        self._masks = {name: tensor.to(torch.bool) for name, tensor in masks.items()}

    # ------------------------------------------------------------------ construction
    @classmethod
    def ones_like(cls, tensors: Mapping[str, torch.Tensor]) -> Mask:
        return cls({name: torch.ones_like(t, dtype=torch.bool) for name, t in tensors.items()})

    @classmethod
    def random(
        cls,
        shapes: Mapping[str, torch.Size | tuple[int, ...]],
        densities: Mapping[str, float] | float,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Mask:
        """Uniformly random masks keeping exactly ``kept_count(numel, density)`` entries of each tensor."""
        masks = {}
        for name, shape in shapes.items():
            density = densities if isinstance(densities, (int, float)) else densities[name]
            numel = int(torch.Size(shape).numel())
            keep = torch.zeros(numel, dtype=torch.bool)
            keep[torch.randperm(numel, generator=generator)[: kept_count(numel, density)]] = True
            masks[name] = keep.view(shape).to(device)
        return cls(masks)

    @classmethod
    def random_like(cls, mask: Mask, *, generator: torch.Generator | None = None) -> Mask:
        """Random masks with the same number of kept entries in every tensor as ``mask``."""
        masks = {}
        for name, keep in mask.items():
            numel = keep.numel()
            new = torch.zeros(numel, dtype=torch.bool)
            new[torch.randperm(numel, generator=generator)[: int(keep.sum())]] = True
            masks[name] = new.view(keep.shape).to(keep.device)
        return cls(masks)

    # ------------------------------------------------------------------ mapping interface
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __contains__(self, name: object) -> bool:
        return name in self._masks

    def names(self) -> list[str]:
        return list(self._masks)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self._masks.items())

    def broadcast(self, src: int = 0) -> Mask:
        """Rank ``src``'s mask on every rank of a distributed run (itself in a single process): masks are decided
        once, random selections included, and every rank enforces the same one."""
        from lth_runner import distributed

        if distributed.world_size() == 1:
            return self
        names = self.names()
        return Mask(dict(zip(names, distributed.broadcast_bool_tensors([self[n] for n in names], src=src))))

    def to(self, device: torch.device | str) -> Mask:
        return Mask({name: m.to(device) for name, m in self._masks.items()})

    def clone(self) -> Mask:
        return Mask({name: m.clone() for name, m in self._masks.items()})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask) or self.names() != other.names():
            return NotImplemented if not isinstance(other, Mask) else False
        return all(torch.equal(self[n].cpu(), other[n].cpu()) for n in self)

    # ------------------------------------------------------------------ statistics
    def numel(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    def num_kept(self) -> int:
        return int(sum(int(m.sum()) for m in self._masks.values()))

    def layer_kept(self) -> dict[str, int]:
        return {name: int(m.sum()) for name, m in self._masks.items()}

    def density(self) -> float:
        """Fraction of all masked entries that are kept."""
        total = self.numel()
        return self.num_kept() / total if total else 1.0

    def sparsity(self) -> float:
        return 1.0 - self.density()

    def layer_densities(self) -> dict[str, float]:
        return {name: float(m.sum()) / m.numel() for name, m in self._masks.items()}

    # ------------------------------------------------------------------ comparisons
    def _check_compatible(self, other: Mask) -> None:
        if self.names() != other.names() or any(self[n].shape != other[n].shape for n in self):
            raise ValueError("masks cover different tensors")

    def hamming(self, other: Mask) -> int:
        """Number of entries kept by exactly one of the two masks."""
        self._check_compatible(other)
        return int(sum(int((self[n] ^ other[n].to(self[n].device)).sum()) for n in self))

    def hamming_fraction(self, other: Mask) -> float:
        """Normalised Hamming distance: :meth:`hamming` divided by the number of entries (Early-Bird's distance)."""
        return self.hamming(other) / max(1, self.numel())

    def intersection(self, other: Mask) -> int:
        self._check_compatible(other)
        return int(sum(int((self[n] & other[n].to(self[n].device)).sum()) for n in self))

    def overlap(self, other: Mask, *, denominator: str = "total") -> float:
        """Mask overlap of Lottery Jackpots (Eq. 7): ``1 - ||m1 - m2||_1 / k``.

        The paper leaves ``k`` open. ``denominator="total"`` takes the number of entries (so overlap is
        ``1 - hamming_fraction``); ``"kept"`` takes the number kept by this mask, which for two masks of equal
        count equals ``1 - hamming / k`` and can fall to -1 for disjoint masks.
        """
        if denominator == "total":
            k = self.numel()
        elif denominator == "kept":
            k = self.num_kept()
        else:
            raise ValueError("denominator must be 'total' or 'kept'")
        return 1.0 - self.hamming(other) / max(1, k)

    def kept_overlap(self, other: Mask) -> float:
        """Fraction of this mask's kept entries that ``other`` also keeps."""
        return self.intersection(other) / max(1, self.num_kept())

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: m.detach().cpu().clone() for name, m in self._masks.items()}

    def save(self, path: str | Path) -> None:
        """Write the masks atomically as bool tensors."""
        save_torch_atomic(path, {"format": _FORMAT, "masks": self.state_dict()})

    @classmethod
    def load(cls, path: str | Path, *, device: torch.device | str = "cpu") -> Mask:
        payload = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a mask file written by lth_runner")
        return cls(payload["masks"])

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, density={self.density():.4f})"


def resolve_mask(spec: str | Path, name: str | None = None) -> tuple[Path, Mask]:
    """The mask that ``spec`` names: a mask file, or a run directory (its mask ``name``; by default its final one:
    the last ``round_XX``, else the single other mask it holds). One-line errors otherwise."""
    path = Path(spec).expanduser()
    if path.is_dir():
        folder = path / "masks" if (path / "masks").is_dir() else path
        files = sorted(folder.glob("*.pt"))
        if name is not None:
            chosen = folder / f"{name}.pt"
            if not chosen.is_file():
                raise UserError(f"{path}: no mask {name!r} (it holds: {', '.join(f.stem for f in files) or 'none'})")
        else:
            rounds = [f for f in files if f.stem.startswith("round_") and f.stem[6:].isdigit()]
            others = [f for f in files if f not in rounds and "random" not in f.stem and "unimportant" not in f.stem]
            if rounds:
                chosen = rounds[-1]
            elif len(others) == 1:
                chosen = others[0]
            else:
                listed = ", ".join(f.stem for f in files) or "none"
                raise UserError(f"{path}: say which mask with --name (it holds: {listed})")
        path = chosen
    if not path.is_file():
        raise UserError(f"{spec}: no such mask file or run directory")
    try:
        return path, Mask.load(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix, in one line
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path}: not a mask file of lth_runner ({reason})") from None
