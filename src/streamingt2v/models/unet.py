"""Our forward pass over diffusers' ``UNet3DConditionModel`` (ModelScope's architecture).

The UNet is split into an encoder half and a decoder half so that the CAM can rewrite every
skip connection and the mid-block output in between (paper Sec. 4.2.1). We reuse the UNet's
own submodules and never fork diffusers' files: a ModelScope checkpoint loads unchanged, and
``unet_forward(unet, ...)`` without a merge equals ``unet(...)`` to the bit (tested).

``encode`` also runs on the CAM trunk, which owns modules of the same names (``conv_in``,
``time_proj``, ``time_embedding``, ``transformer_in``, ``down_blocks``, ``mid_block``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from diffusers import UNet3DConditionModel
from torch import nn

from ..config import UsageError
from ..layout import fold, unfold


@dataclass
class UNetFeatures:
    """The encoder half's output: everything the decoder half needs."""

    skips: list[torch.Tensor]  # each (B*F, C_i, H_i, W_i), in the order the encoder made them
    mid: torch.Tensor  # (B*F, C_mid, H_mid, W_mid)
    emb: torch.Tensor  # (B*F, C_temb) time embedding, repeated per frame
    context: torch.Tensor  # (B*F, T, D) cross-attention tokens, repeated per frame
    num_frames: int
    batch: int


Merge = Callable[[UNetFeatures], UNetFeatures]


def _time_embedding(unet: nn.Module, timestep: torch.Tensor | float | int, batch: int, dtype):
    if not torch.is_tensor(timestep):
        timestep = torch.tensor([timestep], dtype=torch.int64)
    timesteps = timestep.reshape(-1).to(unet.conv_in.weight.device).expand(batch)  # (B,)
    # time_proj always returns fp32; the embedding MLP may run in half precision.
    return unet.time_embedding(unet.time_proj(timesteps).to(dtype))  # (B, C_temb)


def encode(
    unet: nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor | float | int,
    context: torch.Tensor,
    input_residual: torch.Tensor | None = None,
    conv_in_residual: torch.Tensor | None = None,
) -> UNetFeatures:
    """Run conv_in, the temporal input transformer, the down blocks and the mid block.

    sample: (B, C, F, H, W) noisy latents; context: (B, T, D) tokens.
    input_residual: (B*F, C_0, H, W), added after conv_in + transformer_in (the CAM's E_cond
    output enters the CAM trunk here, as in ControlNet).
    conv_in_residual: (B*F, C_0, H, W), added right after conv_in (Conc-Cond's input channels).
    """
    batch, _, num_frames = sample.shape[:3]
    dtype = unet.conv_in.weight.dtype
    emb = _time_embedding(unet, timestep, batch, dtype)
    emb = emb.repeat_interleave(num_frames, dim=0)  # (B*F, C_temb)
    context = context.repeat_interleave(num_frames, dim=0)  # (B*F, T, D)

    h = fold(sample)  # (B*F, C, H, W)
    h = unet.conv_in(h)
    if conv_in_residual is not None:
        h = h + conv_in_residual
    h = unet.transformer_in(h, num_frames=num_frames, return_dict=False)[0]
    if input_residual is not None:
        h = h + input_residual
    skips = [h]
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(
                hidden_states=h, temb=emb, encoder_hidden_states=context, num_frames=num_frames
            )
        else:
            h, res = block(hidden_states=h, temb=emb, num_frames=num_frames)
        skips.extend(res)
    h = unet.mid_block(h, emb, encoder_hidden_states=context, num_frames=num_frames)
    return UNetFeatures(skips, h, emb, context, num_frames, batch)


def decode(unet: UNet3DConditionModel, feats: UNetFeatures) -> torch.Tensor:
    """Run the up blocks and the output head on (possibly fused) features -> (B, C, F, H, W)."""
    skips = list(feats.skips)
    h = feats.mid
    # Latent sizes that the down path floor-divided need the up path told their exact size.
    up_factor = 2**unet.num_upsamplers
    force_size = any(s % up_factor for s in skips[0].shape[-2:])
    force_size = force_size and not getattr(unet, "msvid2vid_padding", False)
    for i, block in enumerate(unet.up_blocks):
        res = tuple(skips[-len(block.resnets) :])
        skips = skips[: -len(block.resnets)]
        size = skips[-1].shape[2:] if force_size and i < len(unet.up_blocks) - 1 else None
        kwargs: dict[str, Any] = dict(
            hidden_states=h,
            temb=feats.emb,
            res_hidden_states_tuple=res,
            upsample_size=size,
            num_frames=feats.num_frames,
        )
        if getattr(block, "has_cross_attention", False):
            kwargs["encoder_hidden_states"] = feats.context
        h = block(**kwargs)
    if unet.conv_norm_out is not None:
        h = unet.conv_act(unet.conv_norm_out(h))
    h = unet.conv_out(h)  # (B*F, C_out, H, W)
    return unfold(h, feats.batch)  # (B, C, F, H, W)


def unet_forward(
    unet: UNet3DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor | float | int,
    context: torch.Tensor,
    merge: Merge | None = None,
    conv_in_residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """The base UNet's noise prediction, with an optional rewrite of its skips in between
    (and an optional addition to its ``conv_in`` output, see ``encode``)."""
    feats = encode(unet, sample, timestep, context, conv_in_residual=conv_in_residual)
    if merge is not None:
        feats = merge(feats)
    return decode(unet, feats)


def use_msvid2vid_padding(unet: UNet3DConditionModel) -> UNet3DConditionModel:
    """Make ``unet`` compute what MS-Vid2Vid-XL's UNet computes (the paper's enhancer, whose
    weights convert to ModelScope's architecture but whose code differs in two places):

    - every downsampling convolution (3x3, stride 2) pads two zero rows above and below and
      one column left and right, instead of one of each;
    - every upsampling doubles by nearest neighbour, then drops the first and the last row,
      then convolves.

    Installed on diffusers' own modules (the downsamplers' ``padding`` and a forward
    pre-hook on each upsampler's convolution), not a copy of their code. The UNet then runs
    only where the sizes meet again on the way up: latent height 2 (mod 8) and width 0
    (mod 8), e.g. 90 x 160 (720 x 1280 pixels); ``check_msvid2vid_size`` says so first.
    """
    for block in unet.down_blocks:
        for down in block.downsamplers or []:
            down.conv.padding = (2, 1)
    for block in unet.up_blocks:
        for up in block.upsamplers or []:
            up.conv.register_forward_pre_hook(_drop_edge_rows)
    unet.msvid2vid_padding = True
    return unet


def _drop_edge_rows(conv: nn.Module, args: tuple) -> tuple:
    (x, *rest) = args
    return (x[:, :, 1:-1], *rest)  # (N, C, H - 2, W)


def check_msvid2vid_size(height: int, width: int) -> None:
    """A UsageError unless MS-Vid2Vid-XL's UNet can run at this latent size."""
    if height % 8 != 2 or width % 8:
        raise UsageError(
            f"MS-Vid2Vid-XL's UNet runs at latent heights 2 (mod 8) and widths 0 (mod 8), "
            f"e.g. 90 x 160 (frames 720 x 1280); got {height} x {width}"
        )


def skip_channels(unet_config: dict[str, Any]) -> list[int]:
    """Channel width of every skip connection that ``encode`` returns, in order.

    ModelScope (4 levels, 2 layers each, 3 downsamplers) has 12: conv_in, 2 per level, and one
    per downsampler.
    """
    widths = list(unet_config["block_out_channels"])
    layers = unet_config["layers_per_block"]
    channels = [widths[0]]
    for level, width in enumerate(widths):
        channels += [width] * layers
        if level < len(widths) - 1:
            channels.append(width)  # the downsampler's output
    return channels


def with_skips(feats: UNetFeatures, skips: list[torch.Tensor], mid: torch.Tensor) -> UNetFeatures:
    """Features with replaced skips and mid-block output."""
    return replace(feats, skips=skips, mid=mid)


@torch.no_grad()
def with_input_channels(unet: UNet3DConditionModel, channels: int) -> UNet3DConditionModel:
    """``unet`` taking ``channels`` input channels (more than it has): the new channels'
    ``conv_in`` weights are zero, so it computes what it did whatever they hold, until
    training teaches it to read them (a conditioned enhancer's input latents)."""
    old = unet.conv_in
    if channels <= old.in_channels:
        raise ValueError(f"the UNet already takes {old.in_channels} channels, asked {channels}")
    new = nn.Conv2d(channels, old.out_channels, old.kernel_size, padding=old.padding)
    new.to(old.weight)
    new.weight.zero_()
    new.weight[:, : old.in_channels] = old.weight
    new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=channels)
    return unet
