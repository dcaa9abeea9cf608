"""Conditional Attention Module: the short-term memory (paper Sec. 4.2.1).

Three parts, as in the official code:
1. ``FrameEncoder`` (E_cond): a per-frame 2D conv encoder of the conditioning frames' pixels,
   zero-initialized at its output.
2. The trunk: a trainable copy of the base UNet's encoder half (conv_in, time embedding,
   temporal input transformer, down blocks, mid block), initialized from the base weights. It
   runs on the noisy latents of the conditioning positions (the first F_cond frames of the
   chunk) with text tokens only; E_cond's output is added after conv_in + transformer_in.
3. ``SkipMerger``: for every skip connection and the mid-block output of the base UNet,
   ``out = skip + proj_out(Attn(q=proj_in(GroupNorm(skip)), kv=cam))``, attention over time
   at each spatial location, the F chunk frames attending to the F_cond CAM frames; the
   GroupNorm's statistics are taken over the whole chunk (channels of a group x F x H x W).
   ``proj_out`` is zero-initialized, so an untrained CAM leaves the base output unchanged to
   the bit (tested).

The paper's ablation baselines (Sec. 5.3) are the same module with another ``merge``; all
three share E_cond, so they differ only in how its features reach the UNet:
- ``add`` (Add-Cond, ControlNet with masking): the trunk runs on all F positions of the chunk,
  E_cond's features at the conditioning positions and zeros elsewhere; every skip and the
  mid-block output get the trunk's feature of the same frame through a zero-initialized 1x1
  convolution, added.
- ``concat`` (Conc-Cond): no trunk and no mergers; E_cond's features (zeros at the positions
  to generate) are added to the UNet's ``conv_in`` output, which is a concatenation to the
  input channels, ``conv_in`` being linear. E_cond's zero-initialized output keeps the base
  unchanged at the start, as for the other two.
"""

from __future__ import annotations

import copy
import math
from functools import partial
from typing import Any

import torch
from diffusers import UNet3DConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn

from ..config import CamConfig, ModelLoadError
from ..layout import fold
from .unet import UNetFeatures, encode, skip_channels, unet_forward, with_skips

# The modules of the base UNet that form the CAM trunk, named as in diffusers so that the same
# ``encode`` runs on both, and so that the official ``unet.*`` keys map one to one.
TRUNK_MODULES = ("conv_in", "time_proj", "time_embedding", "transformer_in", "down_blocks")


def zero_(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place (the ControlNet "zero convolution")."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class FrameEncoder(nn.Module):
    """E_cond: conditioning frames' pixels -> features at the latent resolution.

    conv 3->c0 + SiLU; per stage conv c->c + SiLU, conv c->c' stride 2 + SiLU; a zero-initialized
    conv to the UNet's first width. No normalization (official structure).
    """

    def __init__(self, channels: tuple[int, ...], out_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels[0], 3, padding=1)
        blocks = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = zero_(nn.Conv2d(channels[-1], out_channels, 3, padding=1))

    def forward(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        """frames: (B*F, 3, H, W) in [-1, 1] -> (B*F, C_out, H / 2^stages, W / 2^stages)."""
        h = nn.functional.silu(self.conv_in(frames_bfchw))
        for block in self.blocks:
            h = nn.functional.silu(block(h))
        return self.conv_out(h)


class SkipMerger(nn.Module):
    """Temporal cross-attention that fuses one skip connection with the CAM feature."""

    def __init__(self, channels: int, config: CamConfig):
        super().__init__()
        heads = max(1, channels // config.merger_head_dim)
        if channels % heads:
            raise ValueError(f"merger width {channels} is not divisible into {heads} heads")
        # Widths below 32 (tiny test models) get the largest group count that divides them;
        # every real configuration has widths that are multiples of 32.
        groups = math.gcd(config.merger_norm_groups, channels)
        self.norm = nn.GroupNorm(groups, channels, eps=config.merger_norm_eps)
        self.proj_in = nn.Linear(channels, channels)
        self.attention = Attention(
            query_dim=channels,
            cross_attention_dim=channels,
            heads=heads,
            dim_head=channels // heads,
            bias=False,
            out_bias=True,
        )
        self.proj_out = zero_(nn.Linear(channels, channels))

    def forward(self, skip: torch.Tensor, cam: torch.Tensor, batch: int) -> torch.Tensor:
        """skip: (B*F, C, H, W) base feature; cam: (B*F_cond, C, H, W) CAM feature."""
        _, channels, height, width = skip.shape
        # GroupNorm statistics span the whole chunk (all F frames), as in the official code.
        q = self.norm(skip.unflatten(0, (batch, -1)).transpose(1, 2))  # (B, C, F, H, W)
        q = q.transpose(1, 2)  # (B, F, C, H, W)
        frames = q.shape[1]
        q = q.permute(0, 3, 4, 1, 2).reshape(-1, frames, channels)  # (B*H*W, F, C)
        kv = cam.unflatten(0, (batch, -1))  # (B, F_cond, C, H, W)
        kv = kv.permute(0, 3, 4, 1, 2).reshape(-1, kv.shape[1], channels)  # (B*H*W, F_cond, C)
        out = self.proj_out(self.attention(self.proj_in(q), encoder_hidden_states=kv))
        out = out.reshape(batch, height, width, frames, channels)  # (B, H, W, F, C)
        out = out.permute(0, 3, 4, 1, 2).flatten(0, 1)  # (B*F, C, H, W)
        return skip + out


class AddMerger(nn.Module):
    """Add-Cond's merge: the CAM feature of the same frame through a zero 1x1 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, skip: torch.Tensor, cam: torch.Tensor, batch: int) -> torch.Tensor:
        """skip, cam: (B*F, C, H, W)."""
        return skip + self.conv(cam)


def pad_frames(features: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """(B*F_cond, C, h, w) conditioning features -> (B*F, C, h, w), zeros after F_cond."""
    per_clip = features.unflatten(0, (batch, -1))  # (B, F_cond, C, h, w)
    missing = frames - per_clip.shape[1]
    zeros = per_clip.new_zeros(batch, missing, *per_clip.shape[2:])
    return torch.cat([per_clip, zeros], dim=1).flatten(0, 1)


class ConditionalAttentionModule(nn.Module):
    """E_cond + the trainable encoder copy + one merger per skip connection and the mid block."""

    def __init__(
        self,
        unet_config: dict[str, Any],
        config: CamConfig | None = None,
        trunk: nn.Module | None = None,
    ):
        """Build the CAM for a base UNet of ``unet_config``.

        trunk: a module with the trunk's submodules to take as they are (``from_unet`` passes a
        copy of the base UNet); by default a freshly initialized UNet provides them.
        """
        super().__init__()
        self.config = config or CamConfig()
        self.unet_config = dict(unet_config)
        widths = list(self.unet_config["block_out_channels"])
        self.controlnet_cond_embedding = FrameEncoder(
            self.config.cond_embedding_channels, widths[0]
        )
        if self.config.merge == "concat":
            return
        trunk = trunk if trunk is not None else UNet3DConditionModel.from_config(self.unet_config)
        for name in (*TRUNK_MODULES, "mid_block"):
            setattr(self, name, getattr(trunk, name))
        attention = partial(SkipMerger, config=self.config)
        merger = AddMerger if self.config.merge == "add" else attention
        self.down_mergers = nn.ModuleList(merger(c) for c in skip_channels(self.unet_config))
        self.mid_merger = merger(widths[-1])

    @classmethod
    def from_unet(
        cls, unet: UNet3DConditionModel, config: CamConfig | None = None
    ) -> ConditionalAttentionModule:
        """A CAM whose trunk starts as a copy of ``unet``'s encoder half (ControlNet init)."""
        config = config or CamConfig()
        trunk = nn.Module()
        if config.merge != "concat":  # Conc-Cond has no encoder copy
            for name in (*TRUNK_MODULES, "mid_block"):
                setattr(trunk, name, copy.deepcopy(getattr(unet, name)))
        cam = cls(dict(unet.config), config, trunk=trunk)
        return cam.to(device=unet.conv_in.weight.device, dtype=unet.conv_in.weight.dtype)

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """E_cond on conditioning frames (B, 3, F_cond, H, W) in [-1, 1] -> (B*F_cond, C0, h, w).

        Independent of the diffusion step: compute it once per chunk.
        """
        dtype = self.controlnet_cond_embedding.conv_in.weight.dtype
        return self.controlnet_cond_embedding(fold(frames).to(dtype))

    def features(
        self,
        cond_latents: torch.Tensor,
        timestep: torch.Tensor | float | int,
        context: torch.Tensor,
        frame_features: torch.Tensor,
    ) -> UNetFeatures:
        """The trunk on the conditioning positions' noisy latents (B, C, F_cond, h, w)
        (``add``: on the whole chunk's, E_cond's features padded with zeros)."""
        batch, _, frames = cond_latents.shape[:3]
        if self.config.merge == "add":
            frame_features = pad_frames(frame_features, batch, frames)
        if frame_features.shape[0] != batch * frames:
            raise ValueError(
                f"E_cond features cover {frame_features.shape[0]} frames, latents {batch * frames}"
            )
        return encode(self, cond_latents, timestep, context, input_residual=frame_features)

    def predict(
        self,
        unet: UNet3DConditionModel,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        context: torch.Tensor,
        full_context: torch.Tensor,
        frame_features: torch.Tensor,
    ) -> torch.Tensor:
        """The streaming UNet's prediction for the chunk ``sample`` (B, C, F, h, w) with this
        module's conditioning; ``context``: text tokens (the trunk's), ``full_context``: the
        UNet's (text + APM tokens)."""
        batch, _, frames = sample.shape[:3]
        if self.config.merge == "concat":
            features = pad_frames(frame_features, batch, frames)
            return unet_forward(unet, sample, timestep, full_context, conv_in_residual=features)
        cond_count = frame_features.shape[0] // batch
        trunk_input = sample if self.config.merge == "add" else sample[:, :, :cond_count]
        cam_feats = self.features(trunk_input, timestep, context, frame_features)
        return unet_forward(
            unet, sample, timestep, full_context, merge=lambda f: self.merge(f, cam_feats)
        )

    def merge(self, base: UNetFeatures, cam: UNetFeatures) -> UNetFeatures:
        """Fuse every base skip and the mid-block output with the CAM feature of the same index."""
        if len(base.skips) != len(self.down_mergers):
            raise ValueError(
                f"base UNet has {len(base.skips)} skips, CAM has {len(self.down_mergers)} mergers"
            )
        skips = [
            merger(skip, feat, base.batch)
            for merger, skip, feat in zip(self.down_mergers, base.skips, cam.skips, strict=True)
        ]
        return with_skips(base, skips, self.mid_merger(base.mid, cam.mid, base.batch))


def check_frame_encoder_matches(config: CamConfig, vae_scale_factor: int) -> None:
    """E_cond must land exactly on the latent grid: one stride-2 stage per VAE halving."""
    stages = len(config.cond_embedding_channels) - 1
    if 2**stages != vae_scale_factor:
        raise ModelLoadError(
            f"CAM frame encoder downsamples {2**stages}x "
            f"(cond_embedding_channels={config.cond_embedding_channels}) "
            f"but the VAE downsamples {vae_scale_factor}x"
        )
