"""What the base, enhancer and stream stages share: a frozen VAE and text encoder, the noise
schedule, clip latents, the object-weighted loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler
from torch import nn

from ..config import PipelineConfig, StreamConfig, UsageError
from ..models.vae import video_latents
from ..models.weights import load_diffusers
from ..pipeline import StreamingT2VPipeline
from ..world.dataset import WorldClips
from ..world.render import (
    SIZE,
)
from .augment import object_cells
from .common import (
    SCHEDULES,
    TEXT_PACKAGE,
    TEXT_TOKENS,
    Stage,
    StageOptions,
    text_encoder,
    world_vocabulary,
)
from .config import TrainConfig


@dataclass
class LatentVideoOptions(StageOptions):
    noise_schedule: str = "world"  # a key of SCHEDULES
    object_size: float = SIZE  # the object's mean width in frame widths
    drop_text: float = 0.1  # share of empty prompts (classifier-free guidance training)
    max_timestep: int | None = None  # train for t below it (None: the whole schedule)
    object_weight: float = 0.0  # extra loss weight on the object's latent cells
    high_noise: float = 0.0  # share of timesteps drawn from the schedule's upper half


class LatentVideoStage(Stage):
    """Shared by base and stream: frozen VAE and text encoder, DDPM noise, clip latents."""

    Options: type[LatentVideoOptions] = LatentVideoOptions

    def __init__(
        self, cfg: TrainConfig, device: torch.device, frames: int, max_start: int, turn: float = 0.0
    ):
        opts = self.Options.parse(cfg)
        self.cfg, self.device = cfg, device
        self.vae = load_diffusers(AutoencoderKL, Path(cfg.inputs["vae"])).to(device).eval()
        self.vae.requires_grad_(False)
        self.text = text_encoder(cfg).to(device)
        self.schedule = SCHEDULES[opts.noise_schedule]
        self.noise = DDPMScheduler.from_config(self.schedule)
        self.data = WorldClips(
            frames=frames,
            size=cfg.size,
            max_start=max_start,
            seed=cfg.seed,
            turn=turn,
            object_size=opts.object_size,  # mean object width
        )
        self.drop_text = opts.drop_text  # classifier-free guidance training
        # The enhancer only ever denoises from its SDEdit strength down: train where it works.
        self.max_timestep = opts.max_timestep or self.noise.config.num_train_timesteps
        # The object covers 2-4 of a frame's 64 latent cells: unweighted, the loss is almost
        # all background and the object's colour is learnt last (as in the VAE stage).
        self.object_weight = opts.object_weight
        # Where the CAM decides the continuation (the stream stage): the share of clips whose
        # timestep is drawn from the upper half of the schedule instead of all of it. Our
        # deviation for small CPU budgets (run v4); 0, the default, is the official uniform draw.
        self.high_noise = opts.high_noise
        if not 0 <= self.high_noise <= 1:
            raise UsageError(f"options.high_noise must be in [0, 1], got {self.high_noise!r}")

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) pixels -> (B, C, F, h, w) scaled latents (posterior means)."""
        return video_latents(self.vae, video.to(self.device))

    @torch.no_grad()
    def context(self, captions: list[str], generator: torch.Generator) -> torch.Tensor:
        drop = torch.rand(len(captions), generator=generator) < self.drop_text
        return self.text([("" if d else c) for c, d in zip(captions, drop, strict=True)])

    def noised(self, z0: torch.Tensor, generator: torch.Generator):
        """(noisy latents, the model's target (eps or v, as the schedule predicts), t)."""
        n = z0.shape[0]
        t = torch.randint(0, self.max_timestep, (n,), generator=generator)
        if self.high_noise:  # no extra draws otherwise: earlier runs replay unchanged
            upper = torch.randint(
                self.max_timestep // 2, self.max_timestep, (n,), generator=generator
            )
            t = torch.where(torch.rand(n, generator=generator) < self.high_noise, upper, t)
        t = t.to(self.device)
        eps = torch.randn(z0.shape, generator=generator).to(self.device)
        target = eps
        if self.noise.config.prediction_type == "v_prediction":
            target = self.noise.get_velocity(z0, eps, t)
        return self.noise.add_noise(z0, eps, t), target, t

    def weighted_mse(self, pred: torch.Tensor, target: torch.Tensor, video) -> torch.Tensor:
        """MSE over (B, C, F, h, w), each latent cell that the object touches in the (B, 3,
        F, H, W) ``video`` weighted 1 + ``options.object_weight``."""
        if not self.object_weight:
            return nn.functional.mse_loss(pred, target)
        weight = 1 + self.object_weight * object_cells(video.to(self.device), pred.shape[-2:])
        return ((pred - target) ** 2 * weight).sum() / (weight.sum() * pred.shape[1])

    def pipeline(self, unet, **streaming) -> StreamingT2VPipeline:
        config = PipelineConfig(
            stream=StreamConfig(text_tokens=TEXT_TOKENS),
            text_attention_mask=True,
            text_encoder_package=TEXT_PACKAGE,
            vocabulary=world_vocabulary(),
        )
        return StreamingT2VPipeline(unet, self.vae, self.text, self.schedule, config, **streaming)
