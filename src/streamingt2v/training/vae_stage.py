"""``vae``: AutoencoderKL on single frames, L1 reconstruction + a small KL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from ..config import UsageError
from ..models.weights import load_diffusers
from ..world.dataset import WorldClips, clip_batch
from ..world.render import (
    SIZE,
)
from .augment import faded, object_mask
from .common import Stage, StageOptions, _save_strip, generator_for
from .config import TrainConfig


@dataclass
class VaeOptions(StageOptions):
    decoder_only: bool = False  # train the decoder alone (needs inputs.init)
    object_size: float = SIZE  # the object's mean width in frame widths
    kl_weight: float = 1e-6
    object_weight: float = 0.0  # extra loss weight on the object's pixels
    object_margin: int = 0  # pixels around the object weighed as the object
    faint: float = 0.0  # share of frames with the object faded into the background


class VaeStage(Stage):
    Options = VaeOptions

    def __init__(self, cfg: TrainConfig, device: torch.device):
        opts = self.Options.parse(cfg)
        self.cfg, self.device = cfg, device
        init = cfg.inputs.get("init")  # continue from an earlier VAE's weights
        # Only the decoder learns: the latent space (and every diffusion model trained in it)
        # stays valid, and the exported scaling factor stays the init's.
        self.decoder_only = opts.decoder_only
        if self.decoder_only and not init:
            raise UsageError("options.decoder_only needs inputs.init (the VAE to keep)")
        self.module = (
            load_diffusers(AutoencoderKL, Path(init)) if init else AutoencoderKL(**cfg.model)
        ).to(device)
        # The object's mean width in frame widths (the world's default, a fifth, when unset).
        object_size = opts.object_size
        self.data = WorldClips(
            frames=1, size=cfg.size, max_start=600, seed=cfg.seed, object_size=object_size
        )
        self.kl_weight = opts.kl_weight
        # The object covers ~4% of a frame: without extra weight the VAE learns the
        # background and blurs the object's colour away.
        self.object_weight = opts.object_weight
        # Pixels around the object weighed as the object: a blurred edge or a faint halo
        # rounds a 6-pixel square or triangle into a circle (the shape check reads the soft
        # bounding box), and plain background weight lets the decoder make one.
        self.object_margin = opts.object_margin
        # Not in the paper: this share of frames has its object faded into the background
        # (opacity drawn from [0.2, 1)). The diffusion models draw faint objects early in a
        # chunk, and a decoder trained on full-strength objects alone decodes a faint red one
        # green (docs/training.md, run d1).
        self.faint = opts.faint
        if not 0 <= self.faint <= 1:
            raise UsageError(f"options.faint must be in [0, 1], got {self.faint!r}")
        if self.decoder_only:
            self.module.requires_grad_(False)
            self.module.decoder.requires_grad_(True)
            self.module.post_quant_conv.requires_grad_(True)

    def frames(self, index: int, batch: int) -> torch.Tensor:
        return clip_batch(self.data, index, batch)["video"][:, :, 0].to(self.device)  # (B,3,H,W)

    def batch_loss(self, index: int, batch: dict) -> torch.Tensor:
        x = batch["video"][:, :, 0].to(self.device)  # (B, 3, H, W)
        generator = generator_for(self.cfg, index)
        if self.faint:  # no extra draws otherwise: earlier runs replay unchanged
            x = faded(x, self.faint, generator)
        posterior = self.module.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=generator
        ).to(self.device)
        recon = self.module.decode(z).sample
        weight = 1 + self.object_weight * object_mask(x, self.object_margin)  # (B, 1, H, W)
        l1 = ((recon - x).abs() * weight).sum() / (weight.sum() * x.shape[1])
        return l1 + self.kl_weight * posterior.kl().mean()

    @torch.no_grad()
    def export(self, folder: Path) -> dict[str, Any]:
        vae = self.module.eval()
        x = self.frames(10**8, 256)  # held-out frames (indices training never reaches)
        z = vae.encode(x).latent_dist.mean
        if not self.decoder_only:
            # Latents scaled to unit variance for the diffusion models (as SD's 0.18215).
            vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        recon = vae.decode(z).sample.clamp(-1, 1)
        psnr = float(10 * torch.log10(4 / ((recon - x) ** 2).mean()))
        vae.save_pretrained(folder)
        _save_strip(torch.stack([x[:16], recon[:16]], 1).flatten(0, 1), folder / "sample.png", 16)
        return {"heldout_psnr_db": round(psnr, 2), "scaling_factor": vae.config.scaling_factor}
