"""The paper's enhancer, MS-Vid2Vid-XL: its UNet's key names -> diffusers' UNet3DConditionModel.

MS-Vid2Vid-XL (``non_ema_0035000.pth``) is ModelScope's text-to-video UNet architecture in
LDM naming (``input_blocks`` / ``middle_block`` / ``output_blocks``, ``time_embed``, ``out``;
inside a ResBlock ``in_layers`` / ``emb_layers`` / ``out_layers`` / ``skip_connection``, and
``temopral_conv`` (sic) for the temporal convolutions). With ModelScope's ``unet/config.json``
(4 levels of widths 320-640-1280-1280, 2 layers per block, the last level without attention)
every tensor has a place in diffusers' ``UNet3DConditionModel``:

    time_embed.{0,2}           time_embedding.linear_{1,2}
    input_blocks.0.0           conv_in
    input_blocks.0.1           transformer_in (temporal)
    input_blocks.{3L+1+j}.0    down_blocks.L.resnets.j (+ .temopral_conv -> temp_convs.j)
    input_blocks.{3L+1+j}.1    down_blocks.L.attentions.j (spatial)
    input_blocks.{3L+1+j}.2    down_blocks.L.temp_attentions.j
    input_blocks.{3L+3}.op     down_blocks.L.downsamplers.0.conv
    middle_block.{0,1,2,3}     mid_block.resnets.0, attentions.0, temp_attentions.0, resnets.1
    output_blocks.{3L+j}.*     up_blocks.L.resnets.j / attentions.j / temp_attentions.j,
                               the last ``.conv`` of each level its upsamplers.0.conv
    out.{0,2}                  conv_norm_out, conv_out

The temporal transformers' ``proj_in`` / ``proj_out`` are Conv1d with kernel 1 there and
Linear in diffusers: those 34 tensors lose their trailing 1. Nothing else changes shape.
(Facts read from the authors' code; the function also needs the UNet's two padding quirks:
``models.unet.use_msvid2vid_padding``.)

Its VAE is Stable Diffusion 2.1's (``v2-1_512-ema-pruned.ckpt``, ``first_stage_model.*`` in
LDM naming), converted by diffusers' own LDM-VAE conversion (``convert_sd_vae``).
"""

from __future__ import annotations

import math
import re

import torch

RESNET_PARTS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
LAYERS = 2  # ModelScope's resnets per down level (the up levels have one more)


def _resnet(prefix: str, rest: str) -> str:
    """A ResBlock's inner name, with its temporal convolution split off."""
    if rest.startswith("temopral_conv."):
        index = prefix.rsplit(".", 1)[1]
        return (
            f"{prefix.rsplit('.resnets.', 1)[0]}.temp_convs.{index}.{rest[len('temopral_conv.') :]}"
        )
    for old, new in RESNET_PARTS.items():
        if rest.startswith(old + "."):
            return f"{prefix}.{new}{rest[len(old) :]}"
    raise KeyError(rest)


def _block(prefix: str, part: int, rest: str) -> str:
    """Part ``part`` of one LDM block (0 ResBlock, 1 spatial, 2 temporal transformer)."""
    level, index = prefix.rsplit(".", 1)
    if part not in (0, 1, 2):
        raise KeyError(f"{prefix} part {part}")
    if part == 0:
        return _resnet(f"{level}.resnets.{index}", rest)
    kind = "attentions" if part == 1 else "temp_attentions"
    return f"{level}.{kind}.{index}.{rest}"


def msvid2vid_unet_key(key: str) -> str:
    """The diffusers name of an MS-Vid2Vid-XL UNet key (KeyError for an unknown one)."""
    if m := re.fullmatch(r"time_embed\.(0|2)\.(.+)", key):
        return f"time_embedding.linear_{1 if m[1] == '0' else 2}.{m[2]}"
    if m := re.fullmatch(r"out\.(0|2)\.(.+)", key):
        return f"{'conv_norm_out' if m[1] == '0' else 'conv_out'}.{m[2]}"
    if m := re.fullmatch(r"input_blocks\.0\.0\.(.+)", key):
        return f"conv_in.{m[1]}"
    if m := re.fullmatch(r"input_blocks\.0\.1\.(.+)", key):
        return f"transformer_in.{m[1]}"
    if m := re.fullmatch(r"input_blocks\.(\d+)\.op\.(.+)", key):
        level = int(m[1]) // 3 - 1
        return f"down_blocks.{level}.downsamplers.0.conv.{m[2]}"
    if (m := re.fullmatch(r"input_blocks\.(\d+)\.(\d)\.(.+)", key)) and int(m[1]) > 0:
        level, j = divmod(int(m[1]) - 1, LAYERS + 1)
        return _block(f"down_blocks.{level}.{j}", int(m[2]), m[3])
    if m := re.fullmatch(r"middle_block\.(\d)\.(.+)", key):
        part = int(m[1])
        if part in (0, 3):
            return _resnet(f"mid_block.resnets.{part // 3}", m[2])
        return _block("mid_block.0", part, m[2])
    if m := re.fullmatch(r"output_blocks\.(\d+)\.(\d)\.(.+)", key):
        level, j = divmod(int(m[1]), LAYERS + 1)
        part, rest = int(m[2]), m[3]
        if rest.startswith("conv.") and (part == 1 if level == 0 else part == 3):
            return f"up_blocks.{level}.upsamplers.0.{rest}"
        return _block(f"up_blocks.{level}.{j}", part, rest)
    raise KeyError(key)


def convert_msvid2vid_unet(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Size]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` renamed to diffusers' keys (the temporal Conv1d projections reshaped to
    Linear), and the problems found against ``expected`` (our UNet's shapes): unknown,
    missing and mis-shaped keys, named."""
    converted, problems = {}, []
    for key, tensor in state.items():
        try:
            name = msvid2vid_unet_key(key)
        except KeyError:
            problems.append(f"unknown key {key}")
            continue
        want = expected.get(name)
        if want is not None and tensor.shape != want and tensor.shape == (*want, 1):
            tensor = tensor.reshape(want)  # Conv1d(k=1) -> Linear
        converted[name] = tensor
    missing = sorted(set(expected) - set(converted))
    if missing:
        problems.append(f"missing {len(missing)} keys, e.g. {missing[:5]}")
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k])}"
        for k, v in converted.items()
        if k in expected and v.shape != expected[k]
    ]
    if shapes:
        problems.append(f"wrong shapes, e.g. {shapes[:5]}")
    unexpected = sorted(set(converted) - set(expected))
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys, e.g. {unexpected[:5]}")
    return converted, problems


# Stable Diffusion 2.1's KL-f8 VAE (ch 128, mult 1-2-4-4, 4 latent channels, scale 0.18215).
SD_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    sample_size=768,
    scaling_factor=0.18215,
)


def convert_sd_vae(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Size]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An SD checkpoint's VAE (``first_stage_model.*``, or bare LDM VAE keys) in diffusers'
    AutoencoderKL naming, by diffusers' own conversion, and the problems found against
    ``expected`` (missing, unexpected and mis-shaped keys, named)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    converted = convert_ldm_vae_checkpoint(state, SD_VAE_CONFIG)
    problems = []
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong = [k for k in set(converted) & set(expected) if converted[k].shape != expected[k]]
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong)):
        if keys:
            problems.append(f"{what}: {len(keys)} keys, e.g. {sorted(keys)[:5]}")
    return converted, problems


def msvid2vid_sigmas(steps: int = 1000) -> torch.Tensor:
    """MS-Vid2Vid-XL's noise levels sigma_t (VP: x_t = alpha_t x_0 + sigma_t eps), t = 0 ...
    steps - 1: the "logsnr_cosine_interp" schedule (a cosine log-SNR schedule shifted by
    scale 2 at t = 0 and 4 at the end, interpolated linearly in t; log-SNR range [-15, 15]),
    then stretched to zero terminal SNR (sigma = 1 at the last step). float64."""
    t_min, t_max = math.atan(math.exp(7.5)), math.atan(math.exp(-7.5))
    t = torch.linspace(1, 0, steps, dtype=torch.float64)
    cosine = -2 * torch.log(torch.tan(t_min + t * (t_max - t_min)))
    low, high = cosine + 2 * math.log(1 / 2), cosine + 2 * math.log(1 / 4)  # scales 2, 4
    logsnr = t * low + (1 - t) * high
    sigmas = torch.sqrt(torch.sigmoid(-logsnr))
    lo, hi = sigmas.min(), sigmas.max()
    return lo + (1 - lo) / (hi - lo) * (sigmas - lo)  # zero terminal SNR


def msvid2vid_scheduler_config() -> dict:
    """A diffusers scheduler config of that schedule: its betas (``trained_betas``, the last
    one 1: zero terminal SNR) and v-prediction."""
    alphas_cumprod = 1 - msvid2vid_sigmas() ** 2
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    betas = 1 - alphas_cumprod / previous
    return {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": len(betas),
        "trained_betas": betas.tolist(),
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": False,  # already zero terminal SNR
        "timestep_spacing": "trailing",
        "clip_sample": False,
        "set_alpha_to_one": False,
    }
