"""``image-encoder``: a CLIP-like vision tower, contrastive against the frozen text encoder's
sentence embeddings of all world captions (soft targets over the motions, which a single
frame cannot show).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from ..config import UsageError
from ..models.encoders import ImageEncoder
from ..world.dataset import WorldClips, clip_batch
from ..world.render import (
    parse_caption,
)
from .common import Stage, all_captions, text_encoder
from .config import TrainConfig


def _static_key(caption: str) -> tuple[str, str, str]:
    words = parse_caption(caption)
    return words["colour"], words["shape"], words["background"]


class ImageEncoderStage(Stage):
    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.Options.parse(cfg)  # it takes none: any key is refused by name
        self.cfg, self.device = cfg, device
        text = text_encoder(cfg)
        if cfg.model.get("projection_dim") != text.dim:
            raise UsageError(
                f"image encoder projection_dim must equal the text encoder's "
                f"width {text.dim}, got {cfg.model.get('projection_dim')}"
            )
        tower = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg.model))
        self.encoder = ImageEncoder(tower).to(device)
        self.module = nn.Module()
        self.module.tower = tower
        self.module.logit_scale = nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))
        self.captions = all_captions()
        with torch.no_grad():
            self.text = text.sentence(self.captions).to(device)  # (K, D) unit length
        # Soft-target row of every caption: uniform over the captions a single frame cannot
        # tell apart (same colour, shape and background; any motion).
        keys = [_static_key(c) for c in self.captions]
        same = torch.tensor([[float(a == b) for b in keys] for a in keys])
        self.soft = dict(zip(self.captions, same / same.sum(1, keepdim=True), strict=True))
        self.data = WorldClips(frames=1, size=cfg.size, max_start=600, seed=cfg.seed)

    def targets(self, captions: list[str]) -> torch.Tensor:
        """(B, K) soft targets of a batch's captions."""
        return torch.stack([self.soft[c] for c in captions]).to(self.device)

    def batch_loss(self, index: int, batch: dict) -> torch.Tensor:
        image = nn.functional.normalize(
            self.encoder.embed(batch["video"][:, :, 0].to(self.device)), dim=-1
        )
        logits = image @ self.text.T * self.module.logit_scale.exp().clamp(max=100)
        return -(self.targets(batch["caption"]) * logits.log_softmax(-1)).sum(-1).mean()

    @torch.no_grad()
    def export(self, folder: Path) -> dict[str, Any]:
        self.encoder.eval()
        self.encoder.save_pretrained(folder)
        batch = clip_batch(self.data, 10**8, 256)
        image = nn.functional.normalize(
            self.encoder(batch["video"][:, :, 0].to(self.device)), dim=-1
        )
        best = (image @ self.text.T).argmax(-1)
        key = self.targets(batch["caption"])
        accuracy = float(key[torch.arange(len(best)), best].gt(0).float().mean())
        return {"heldout_static_top1": round(accuracy, 4)}
