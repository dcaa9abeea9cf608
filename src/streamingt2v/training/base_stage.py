"""``base``: the UNet3D text-to-video model on clips (or single frames), v-prediction on the
world's schedule, 10% empty prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet3DConditionModel

from ..config import UsageError
from ..models.unet import unet_forward
from ..models.weights import load_diffusers
from ..world.dataset import WorldClips, clip_batch
from .common import _sample_videos, generator_for
from .config import TrainConfig
from .latent_video import LatentVideoOptions, LatentVideoStage


@dataclass
class BaseOptions(LatentVideoOptions):
    frames: int = 16  # clip length; 1: single frames (appearance alone)
    image_batch: int = 0  # single frames added to every step's clips


class BaseStage(LatentVideoStage):
    Options: type[BaseOptions] = BaseOptions

    def __init__(self, cfg: TrainConfig, device: torch.device):
        opts = self.Options.parse(cfg)
        # options.frames: clip length; 1 trains appearance from single frames (the spatial
        # layers do all the work at a sixteenth of a clip's cost), 16 (default) motion.
        super().__init__(cfg, device, frames=opts.frames, max_start=600)
        init = cfg.inputs.get("init")  # continue from an earlier base UNet
        self.module = (
            load_diffusers(UNet3DConditionModel, Path(init))
            if init
            else UNet3DConditionModel(**cfg.model)
        ).to(device)
        # options.image_batch: single frames added to every step's clips, as ModelScope and
        # Video LDM train jointly on images and videos, so that learning motion does not
        # unlearn appearance. Their own stream of world draws; 0 (default): clips alone.
        self.image_batch = opts.image_batch
        if not isinstance(self.image_batch, int) or self.image_batch < 0:
            raise UsageError(
                f"options.image_batch must be an integer >= 0, got {self.image_batch!r}"
            )
        self.images = WorldClips(
            frames=1,
            size=cfg.size,
            max_start=600,
            seed=cfg.seed + 7919,
            object_size=self.data.object_size,
        )

    def batch_loss(self, index: int, batch: dict) -> torch.Tensor:
        g = generator_for(self.cfg, index)
        loss = self._denoising_loss(batch, g)
        if self.image_batch:  # no extra draws otherwise: earlier runs replay unchanged
            loss = loss + self._denoising_loss(clip_batch(self.images, index, self.image_batch), g)
        return loss

    def _denoising_loss(self, batch: dict, g: torch.Generator) -> torch.Tensor:
        z0 = self.encode_video(batch["video"])
        x, target, t = self.noised(z0, g)
        x = self.model_input(x, batch["video"], g)
        pred = unet_forward(self.module, x, t, self.context(batch["caption"], g))
        return self.weighted_mse(pred, target, batch["video"])

    def model_input(
        self, x: torch.Tensor, video: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """What the UNet reads for the noisy latents ``x`` of (B, 3, F, H, W) ``video``."""
        return x

    @torch.no_grad()
    def export(self, folder: Path) -> dict[str, Any]:
        self.module.eval().save_pretrained(folder)
        pipe = self.pipeline(self.module)
        _sample_videos(pipe, folder / "samples", frames=16)
        return {}
