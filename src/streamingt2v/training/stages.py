"""The training stages of the embedded default: what each trains, on what, with what loss.

vae            AutoencoderKL on single frames: L1 reconstruction + small KL.
image-encoder  CLIP-like vision tower, contrastive against the frozen text encoder's sentence
               embeddings of all world captions (soft targets over the motions, which a
               single frame cannot show).
base           UNet3D text-to-video on 16-frame clips, epsilon prediction, 10% empty prompts.
enhancer       the same at twice the resolution on 24-frame clips, for t < 700 (SDEdit);
               with ``options.condition``, the UNet also reads the clean latents of the
               clip brought down to the streaming resolution and back up (a conditioned
               enhancer, ``enhancer.py``).
stream         CAM + APM on the frozen base's temporal layers (official recipe: the base's
               spatial layers, the CAM trunk, mergers, resampler and APM mixers train; the
               VAE, text and image encoders and the temporal layers stay frozen). The
               conditioning frames are the clip's first 8 frames, i.e. the 8 frames that
               precede the chunk's new frames, passed through the VAE as at inference; the
               anchor is frame 0 of the same long video. The export samples videos of
               ``options.sample_frames`` frames (80).

Each stage's ``loss(index, batch)`` draws its noise from (seed, index) alone; the batch is
``clip_batch(stage.data, index, batch_size)``, rendered ahead by the trainer's workers (or
here, when not given).
"""

from __future__ import annotations

import torch

from ..config import UsageError
from .base_stage import BaseStage
from .common import Stage
from .config import TrainConfig
from .enhancer_stage import EnhancerStage
from .image_encoder_stage import ImageEncoderStage
from .stream_stage import StreamStage
from .vae_stage import VaeStage

STAGES = {
    "vae": VaeStage,
    "image-encoder": ImageEncoderStage,
    "base": BaseStage,
    "stream": StreamStage,
    "enhancer": EnhancerStage,
}


def build_stage(cfg: TrainConfig, device: torch.device) -> Stage:
    if cfg.stage not in STAGES:
        raise UsageError(f"unknown stage {cfg.stage!r}; choose one of {list(STAGES)}")
    return STAGES[cfg.stage](cfg, device)


__all__ = ["STAGES", "build_stage"]
