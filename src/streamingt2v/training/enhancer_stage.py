"""``enhancer``: a text-to-video UNet at twice the resolution on 24-frame clips, for t below
the SDEdit start; optionally conditioned on the clip brought down and back up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import UsageError
from ..enhancer import Enhancer, EnhancerConfig, resize
from ..layout import fold, unfold
from ..models.unet import with_input_channels
from .augment import degraded
from .base_stage import BaseOptions, BaseStage
from .common import TEXT_TOKENS, _sample_enhanced
from .config import TrainConfig


@dataclass
class EnhancerOptions(BaseOptions):
    frames: int = 24  # the enhancer's chunk
    scale: int = 2  # output size over the streaming resolution
    condition: bool = False  # the UNet also reads the input's clean latents
    degrade_blur: float = 0.0  # conditioning augmentation: blur sigma drawn from [0, it]
    degrade_noise: float = 0.0  # conditioning augmentation: noise std drawn from [0, it]


class EnhancerStage(BaseStage):
    """A text-to-video UNet at ``scale`` x the streaming resolution (``size``), on clips of
    ``options.frames`` (the enhancer's chunk, 24), trained for t < ``options.max_timestep``
    (SDEdit starts at 600 of 1000). Exported as an enhancer folder sharing the pipeline's
    VAE and text encoder."""

    Options = EnhancerOptions

    def __init__(self, cfg: TrainConfig, device: torch.device):
        opts = self.Options.parse(cfg)
        super().__init__(cfg, device)
        self.scale = opts.scale
        # Our addition: a conditioned enhancer (enhancer.py). An unconditioned init (the base,
        # an SDEdit enhancer) gains the input channels with zero weights.
        self.condition = opts.condition
        latent = self.vae.config.latent_channels
        if self.condition and self.module.config.in_channels == latent:
            self.module = with_input_channels(self.module, 2 * latent)
        # Not in the paper: conditioning augmentation (Ho et al. 2022, "Cascaded Diffusion
        # Models", Sec. 4.3). A conditioned enhancer trained on clean renders brought down and
        # back up learns to sharpen what it is given; the streaming stage's frames are
        # blurred, with soft edges that a sharpened copy reads as the wrong shape (runs ec,
        # e4). Each clip's low-resolution frames are blurred by a Gaussian of sigma drawn
        # from [0, degrade_blur] low-resolution pixels and given Gaussian noise of std drawn
        # from [0, degrade_noise] (in [-1, 1] units), so the caption must decide the shape.
        self.degrade_blur = opts.degrade_blur
        self.degrade_noise = opts.degrade_noise
        for name in ("degrade_blur", "degrade_noise"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise UsageError(f"options.{name} must be a number >= 0, got {value!r}")
            if value and not self.condition:
                raise UsageError(f"options.{name} needs options.condition")

    def model_input(
        self, x: torch.Tensor, video: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        if not self.condition:
            return x
        size = video.shape[-2:]
        low = resize(fold(video), (size[0] // self.scale, size[1] // self.scale))
        low = unfold(low, len(video))  # (B, 3, F, h, w)
        if self.degrade_blur or self.degrade_noise:  # no draws otherwise: runs replay
            low = degraded(low, self.degrade_blur, self.degrade_noise, generator)
        up = unfold(resize(fold(low), tuple(size)), len(video))  # (B, 3, F, H, W)
        return torch.cat([x, self.encode_video(up)], dim=1)

    @torch.no_grad()
    def export(self, folder: Path) -> dict[str, Any]:
        config = EnhancerConfig(
            scale=self.scale,
            text_tokens=TEXT_TOKENS,
            text_attention_mask=True,
        )
        enhancer = Enhancer(self.module.eval(), self.vae, self.text, self.schedule, config)
        enhancer.save_pretrained(folder)
        _sample_enhanced(enhancer, folder.parent / "samples", self.cfg.size // self.scale)
        return {}
