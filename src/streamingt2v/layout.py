"""Pixel conversions and layout folds, each named by what it takes and gives.

Video tensors use one layout throughout the package: ``(B, C, F, H, W)`` = batch, channels,
frames, height, width ("bcfhw"). Image models (the VAE, the image encoder, E_cond) take
frames one by one, ``(B*F, C, H, W)`` ("bfchw", the video *folded*); files and numpy arrays
hold frames as ``(F, H, W, 3)`` uint8 ("fhwc"). Pixels in a model are in [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch


def unit_from_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1], any layout."""
    return x.float() / 127.5 - 1


def uint8_from_unit(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] (clamped) -> uint8, rounding to nearest, any layout."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def bcfhw_from_fhwc(frames_fhwc: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (1, 3, F, H, W) float32 in [-1, 1] on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(frames_fhwc)).to(device)
    return unit_from_uint8(x.permute(3, 0, 1, 2)[None])


def fhwc_from_cfhw(video_cfhw: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8 on the CPU."""
    return uint8_from_unit(video_cfhw).permute(1, 2, 3, 0).cpu().numpy()


def fchw_from_fhwc(frames_fhwc: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, H, W) float32 in [-1, 1] on ``device``: frames one by
    one, for image models."""
    x = torch.from_numpy(np.ascontiguousarray(frames_fhwc)).to(device)
    return unit_from_uint8(x.permute(0, 3, 1, 2))


def hwc_from_chw(image_chw: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8 on the CPU."""
    return uint8_from_unit(image_chw).permute(1, 2, 0).cpu().numpy()


def fold(video_bcfhw: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W): the frames of every video, for image models."""
    return video_bcfhw.permute(0, 2, 1, 3, 4).flatten(0, 1)


def unfold(frames_bfchw: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W), the inverse of ``fold`` for ``batch`` videos."""
    return frames_bfchw.unflatten(0, (batch, -1)).permute(0, 2, 1, 3, 4)
