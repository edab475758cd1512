"""Per-batch augmentation and normalisation with tensor ops, for datasets kept in memory as uint8 tensors.

Random crop with zero padding and horizontal flip are fused into one ``gather`` over the padded batch, so a
CIFAR-sized batch costs one pad, one gather and one fused multiply-add on whatever device holds the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class BatchTransform:
    """uint8 (or float) batch -> normalised float batch, cropped and flipped where augmentation params are given."""

    def __init__(
        self,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        *,
        crop_padding: int = 0,
        flip: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.channels_last = channels_last
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def sample(self, count: int, generator: torch.Generator | None, device: torch.device) -> AugmentParams | None:
        """Draw crop offsets and flips for ``count`` examples (None when this transform does not augment)."""
        if not self.augments:
            return None
        span = 2 * self.crop_padding + 1
        on = generator.device if generator is not None else torch.device("cpu")
        offsets = torch.randint(0, span, (2, count), generator=generator, device=on).to(device, non_blocking=True)
        flips = (torch.rand(count, generator=generator, device=on) < 0.5).to(device, non_blocking=True)
        if not self.flip:
            flips.zero_()
        return AugmentParams(offsets[0], offsets[1], flips)

    def __call__(self, x: torch.Tensor, params: AugmentParams | None = None) -> torch.Tensor:
        """Normalise ``x``; with ``params`` (from :meth:`sample`), crop and flip each image first."""
        if params is not None and x.dim() == 4:
            x = self._crop_flip(x, params)
        return self._normalise(x)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self._affine(x)
        out = x.to(torch.float32)
        if scale is not None:
            out = torch.addcmul(shift, out, scale)
        if self.channels_last and out.dim() == 4:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _affine(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Scale and shift with ``x * scale + shift == (x / unit - mean) / std``, per channel (dim 1).

        ``unit`` is 255 for uint8 input and 1 for float input; without mean/std uint8 input is only scaled to
        [0, 1] and float input passes through unchanged.
        """
        key = (x.dtype, x.device, x.dim())
        if key not in self._cache:
            unit = 255.0 if x.dtype == torch.uint8 else 1.0
            if self.mean is None:
                pair = (torch.tensor(1 / unit), torch.tensor(0.0)) if unit != 1.0 else (None, None)
            else:
                pair = (1.0 / (unit * self.std), -self.mean / self.std)
            if pair[0] is not None:
                shape = (1, -1) + (1,) * (x.dim() - 2) if pair[0].numel() > 1 else ()
                pair = tuple(t.view(shape).to(x.device) for t in pair)
            self._cache[key] = pair
        return self._cache[key]

    def _crop_flip(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Zero-pad, crop at the sampled offsets and mirror the sampled images, as one gather."""
        batch, channels, height, width = x.shape
        pad = self.crop_padding
        device = x.device
        rows = torch.arange(height, device=device).view(1, height, 1)
        cols = torch.arange(width, device=device).view(1, 1, width)
        cols = torch.where(params.flip.view(batch, 1, 1), width - 1 - cols, cols)
        if pad:
            x = F.pad(x, (pad, pad, pad, pad))
        padded_width = width + 2 * pad
        offset_y = params.offset_y.view(batch, 1, 1)
        offset_x = params.offset_x.view(batch, 1, 1)
        index = ((offset_y + rows) * padded_width + offset_x + cols).view(batch, 1, height * width)
        flat = x.reshape(batch, channels, -1)
        out = torch.gather(flat, 2, index.expand(batch, channels, height * width))
        return out.view(batch, channels, height, width)


@dataclass
class AugmentParams:
    """Per-example crop offsets (in the padded image) and horizontal flips."""

    offset_y: torch.Tensor
    offset_x: torch.Tensor
    flip: torch.Tensor

    def __getitem__(self, index: torch.Tensor) -> AugmentParams:
        return AugmentParams(self.offset_y[index], self.offset_x[index], self.flip[index])
