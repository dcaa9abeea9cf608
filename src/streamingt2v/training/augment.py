"""Augmentations and masks of the training clips: faded objects, the object's mask and
latent cells (object weighting), degraded low-resolution frames (conditioning augmentation).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..layout import fold, unfold


def faded(frames: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) -> the same frames, a ``share`` of them with the object blended into the
    background at an opacity drawn from [0.2, 1)."""
    n = frames.shape[0]
    opacity = 0.2 + 0.8 * torch.rand(n, generator=generator)
    opacity = torch.where(torch.rand(n, generator=generator) < share, opacity, 1.0)
    background = background_of(frames)
    return background + opacity.to(frames)[:, None, None, None] * (frames - background)


def background_of(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, 1, 1): each frame's background, the median colour of its border."""
    border = torch.cat(
        [frames[:, :, 0], frames[:, :, -1], frames[:, :, :, 0], frames[:, :, :, -1]], dim=-1
    )  # (B, 3, 2H + 2W)
    return border.median(dim=-1).values[:, :, None, None]


def object_mask(frames: torch.Tensor, margin: int = 0) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 1, H, W): 1 where a pixel differs from the frame's
    background (the median colour of its border), or lies within ``margin`` pixels of one."""
    mask = ((frames - background_of(frames)).abs().sum(1, keepdim=True) > 0.15).float()
    if margin:
        mask = nn.functional.max_pool2d(mask, 2 * margin + 1, stride=1, padding=margin)
    return mask


def object_cells(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 3, F, H, W) pixels -> (B, 1, F, h, w): 1 on each latent cell of side ``size`` that
    the object touches in that frame."""
    touched = nn.functional.adaptive_max_pool2d(object_mask(fold(video)), size)  # (B*F, 1, h, w)
    return unfold(touched, len(video))


def degraded(
    video: torch.Tensor, blur: float, noise: float, generator: torch.Generator
) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> the same clips, each blurred by a Gaussian of sigma drawn
    from [0, ``blur``] pixels and given noise of std drawn from [0, ``noise``], every frame
    of a clip alike (``EnhancerStage``'s conditioning augmentation)."""
    b = len(video)
    sigmas = blur * torch.rand(b, generator=generator)
    stds = noise * torch.rand(b, generator=generator)
    radius = max(1, int(np.ceil(3 * blur)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    out = []
    for clip, sigma in zip(video, sigmas, strict=True):  # clip (3, F, H, W)
        kernel = torch.exp(-0.5 * (offsets / sigma.clamp(min=1e-3)) ** 2)
        kernel = (kernel / kernel.sum()).to(video)
        frames = clip.transpose(0, 1)  # (F, 3, H, W)
        # Separable blur; the world's backgrounds are uniform, so edges are replicated.
        rows = kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1)
        cols = kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1)
        frames = nn.functional.pad(frames, (radius, radius, radius, radius), mode="replicate")
        frames = nn.functional.conv2d(nn.functional.conv2d(frames, rows, groups=3), cols, groups=3)
        out.append(frames.transpose(0, 1))  # (3, F, H, W)
    blurred = torch.stack(out)
    grain = torch.randn(video.shape, generator=generator).to(video)
    return (blurred + stds.to(video).view(b, 1, 1, 1, 1) * grain).clamp(-1, 1)
