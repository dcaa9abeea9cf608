"""``stream``: CAM + APM on the frozen base's temporal layers (the official recipe)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet3DConditionModel
from torch import nn

from ..config import ApmConfig, CamConfig, StreamConfig, UsageError
from ..layout import fold, unfold
from ..models.apm import AppearancePreservationModule
from ..models.cam import ConditionalAttentionModule
from ..models.encoders import ImageEncoder
from ..models.weights import load_diffusers
from ..pipeline import StreamingT2VPipeline
from ..sampling import stream_model
from .common import TEXT_TOKENS, _sample_videos, generator_for
from .config import TrainConfig
from .latent_video import LatentVideoOptions, LatentVideoStage


def is_temporal(name: str) -> bool:
    """The base UNet's temporal layers (frozen during stream training, official recipe)."""
    return any(part in name for part in ("temp_attentions", "temp_convs", "transformer_in"))


@dataclass
class StreamOptions(LatentVideoOptions):
    turn: float = 0.0  # share of straight-motion clips whose conditioning moves another way
    max_start: int = 600  # latest start frame of a clip in its long video
    drop_image: float = 0.1  # share of anchors replaced by the unconditional image
    sample_frames: int = 80  # frames of the export's sample videos


class StreamStage(LatentVideoStage):
    Options = StreamOptions

    def __init__(self, cfg: TrainConfig, device: torch.device):
        opts = self.Options.parse(cfg)
        # options.turn: the share of straight-motion clips whose conditioning frames move
        # another way than the caption (WorldClips' turn, which checks it; our deviation, v10).
        super().__init__(cfg, device, 16, opts.max_start, turn=opts.turn)
        self.base = load_diffusers(UNet3DConditionModel, Path(cfg.inputs["base"])).to(device)
        self.base.eval().requires_grad_(False)
        self.images = ImageEncoder.from_folder(Path(cfg.inputs["image_encoder"])).to(device)
        unet = copy.deepcopy(self.base).train()
        for name, p in unet.named_parameters():
            p.requires_grad_(not is_temporal(name))
        cam = ConditionalAttentionModule.from_unet(unet, CamConfig(**cfg.model.get("cam", {})))
        apm_config = ApmConfig(
            **{
                "image_embed_dim": self.images.dim,
                "text_tokens": TEXT_TOKENS,
                "cross_attention_dim": unet.config.cross_attention_dim,
                **cfg.model.get("apm", {}),
            }
        )
        apm = AppearancePreservationModule.for_unet(unet, apm_config)
        init = cfg.inputs.get("init")  # continue from an earlier stream pipeline folder
        if init:
            self._load_init(Path(init), unet, cam, apm)
        apm.attach(unet)
        self.module = nn.ModuleDict({"unet": unet, "cam": cam, "apm": apm})
        self.stream = StreamConfig(text_tokens=TEXT_TOKENS)
        self.drop_image = opts.drop_image
        self.sample_frames = opts.sample_frames  # the export's sample videos
        if not isinstance(self.sample_frames, int) or self.sample_frames < 1:
            raise UsageError(
                f"options.sample_frames must be an integer >= 1, got {self.sample_frames!r}"
            )
        with torch.no_grad():
            self.zeros_embed = self.images.unconditional(1)  # (1, E)

    def _load_init(self, folder: Path, unet, cam, apm) -> None:
        """CAM, APM and the spatial layers from ``folder``; the temporal layers stay this
        base's (they are frozen and shared with the base model)."""
        earlier = StreamingT2VPipeline.from_pretrained(folder, self.device, text_encoder=self.text)
        if earlier.cam.config.merge != cam.config.merge:
            raise UsageError(
                f"{folder} conditions by {earlier.cam.config.merge!r}, "
                f"this run by {cam.config.merge!r}: it cannot continue it"
            )
        spatial = {k: v for k, v in earlier.stream_unet.state_dict().items() if not is_temporal(k)}
        missing, unexpected = unet.load_state_dict(spatial, strict=False)
        if unexpected or any(not is_temporal(k) for k in missing):
            raise UsageError(f"{folder} does not match the base: {unexpected or missing}")
        cam.load_state_dict(earlier.cam.state_dict())
        apm.load_state_dict(earlier.apm.state_dict())

    @torch.no_grad()
    def through_vae(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels -> latents -> pixels: conditioning frames look like generated ones."""
        z = self.encode_video(video) / self.vae.config.scaling_factor  # (B, C, F, h, w)
        pixels = self.vae.decode(fold(z)).sample.clamp(-1, 1)
        return unfold(pixels, video.shape[0])

    def batch_loss(self, index: int, batch: dict) -> torch.Tensor:
        g = generator_for(self.cfg, index)
        video = batch["video"].to(self.device)  # (B, 3, 16, H, W)
        fc = self.stream.cond_frames
        with torch.no_grad():
            cond = self.through_vae(video[:, :, :fc])  # (B, 3, F_cond, H, W)
            anchor = self.through_vae(batch["anchor"][:, :, None].to(self.device))[:, :, 0]
            embeds = self.images(anchor)  # (B, E)
            drop = (torch.rand(len(embeds), generator=g) < self.drop_image).to(self.device)
            embeds = torch.where(drop[:, None], self.zeros_embed, embeds)
            z0 = self.encode_video(video)
        x, target, t = self.noised(z0, g)
        m = self.module
        features = m["cam"].embed_frames(cond)  # (B*F_cond, C0, h, w)
        model = stream_model(
            m["unet"],
            m["cam"],
            m["apm"],
            self.context(batch["caption"], g),
            embeds.to(self.base.dtype),
            features,
        )
        return self.weighted_mse(model(x, t), target, video)

    @torch.no_grad()
    def export(self, folder: Path) -> dict[str, Any]:
        m = self.module.eval()
        pipe = self.pipeline(
            self.base, stream_unet=m["unet"], cam=m["cam"], apm=m["apm"], image_encoder=self.images
        )
        pipe.save_pretrained(folder)
        _sample_videos(pipe, folder.parent / "samples", frames=self.sample_frames)
        return {}
