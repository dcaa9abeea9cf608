"""The VAE between pixels and latents, for every stage (the pipeline, the enhancer, training).

Latents are scaled by the VAE's ``scaling_factor`` (what the UNets see); frames go through
the VAE one by one, folded (``layout.fold``). Encoding takes the posterior's mean.
"""

from __future__ import annotations

import torch

from ..layout import fold, unfold


def vae_factor(vae) -> int:
    """How many pixels one latent stands for along a side: 2 per VAE halving."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode_frames(vae, frames_bfchw: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) pixels in [-1, 1] -> (N, C, h, w) scaled latents, in the VAE's dtype."""
    return vae.encode(frames_bfchw.to(vae.dtype)).latent_dist.mean * vae.config.scaling_factor


def decode_frames(vae, latents_bfchw: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) scaled latents -> (N, 3, H, W) float32 pixels (about [-1, 1])."""
    z = latents_bfchw / vae.config.scaling_factor
    return vae.decode(z.to(vae.dtype)).sample.float()


def video_latents(vae, video: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) pixels in [-1, 1] -> (B, C, F, h, w) scaled latents (posterior means)."""
    return unfold(encode_frames(vae, fold(video)), len(video))
