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

import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .config import EnhanceConfig, ModelLoadError, UsageError
from .models.weights import libraries_quiet

# MS-Vid2Vid-XL's inference settings in the authors' code (``video_to_video_model.py``).
MSVID2VID_SETTINGS = EnhanceConfig(
    chunk=24,
    overlap=8,
    strength=0.6,  # total_noise_levels 600: SDEdit from t = 599
    steps=30,  # solver_mode "fast"
    guidance=7.5,
    guidance_rescale=0.2,
    sampler="dpmpp-2m-sde",
    mode="randomized",
)

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


# OpenCLIP's text transformer -> transformers' CLIPTextModel (per residual block).
OPEN_CLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "attn.out_proj": "self_attn.out_proj",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
OPEN_CLIP_PREFIXES = ("cond_stage_model.model.", "model.")  # an SD checkpoint's, a wrapper's
# Parts of an OpenCLIP file the text encoder does not use, with the reason.
OPEN_CLIP_UNUSED = {
    "visual.": "the image tower",
    "text_projection": "the text projection (the UNet reads the token states)",
    "logit_scale": "the contrastive temperature",
    "attn_mask": "the causal mask (CLIPTextModel builds its own)",
}


def _open_clip_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text tower's keys without the prefix an SD checkpoint or a wrapper puts on them."""
    for prefix in OPEN_CLIP_PREFIXES:
        if f"{prefix}token_embedding.weight" in state:
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def open_clip_text_config(state: dict[str, torch.Tensor], head_dim: int = 64) -> dict:
    """A ``CLIPTextConfig`` (as a dict) for an OpenCLIP text tower read with the penultimate
    layer's output (as ModelScope and MS-Vid2Vid-XL read ViT-H-14's: its 24 blocks but the
    last, then ``ln_final``): one layer fewer than the file has."""
    state = _open_clip_keys(state)
    vocab, width = state["token_embedding.weight"].shape
    blocks = {int(m[1]) for k in state if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
    return {
        "vocab_size": int(vocab),
        "hidden_size": int(width),
        "intermediate_size": int(state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        "num_hidden_layers": len(blocks) - 1,
        "num_attention_heads": int(width) // head_dim,
        "max_position_embeddings": int(state["positional_embedding"].shape[0]),
        "hidden_act": "gelu",  # OpenCLIP's exact GELU (not CLIP's quick_gelu)
        "layer_norm_eps": 1e-5,
        "projection_dim": int(width),
    }


def convert_open_clip_text(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Size]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An OpenCLIP text tower (``open_clip_pytorch_model.bin``, or an SD checkpoint's
    ``cond_stage_model.model.*``) in ``CLIPTextModel`` naming, the last block left out (the
    penultimate layer's output goes through ``ln_final``), and the problems found against
    ``expected``: unknown, missing and mis-shaped keys, named. Each fused attention input
    projection (``in_proj``, q-k-v stacked) is split into three."""
    state = _open_clip_keys(state)
    last = max(int(m[1]) for k in state if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k)))
    # transformers names the model's tensors with or without ``text_model.`` (by version)
    top = "text_model." if any(k.startswith("text_model.") for k in expected) else ""
    converted, problems = {}, []
    for key, tensor in state.items():
        if key.startswith(tuple(OPEN_CLIP_UNUSED)):
            continue
        if key == "token_embedding.weight":
            converted[f"{top}embeddings.token_embedding.weight"] = tensor
        elif key == "positional_embedding":
            converted[f"{top}embeddings.position_embedding.weight"] = tensor
        elif m := re.fullmatch(r"ln_final\.(weight|bias)", key):
            converted[f"{top}final_layer_norm.{m[1]}"] = tensor
        elif m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", key):
            block, part, kind = int(m[1]), m[2], m[3]
            if block == last:
                continue  # the last block: its output is never read
            layer = f"{top}encoder.layers.{block}."
            if part in OPEN_CLIP_BLOCK:
                converted[f"{layer}{OPEN_CLIP_BLOCK[part]}.{kind}"] = tensor
            else:
                problems.append(f"unknown key {key}")
        elif m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key):
            if int(m[1]) == last:
                continue
            layer = f"{top}encoder.layers.{m[1]}.self_attn."
            for name, part in zip("qkv", tensor.chunk(3), strict=True):
                converted[f"{layer}{name}_proj.{m[2]}"] = part
        else:
            problems.append(f"unknown key {key}")
    missing = sorted(set(expected) - set(converted))
    if missing:
        problems.append(f"missing {len(missing)} keys, e.g. {missing[:5]}")
    wrong = [k for k in set(converted) & set(expected) if converted[k].shape != expected[k]]
    if wrong:
        problems.append(f"wrong shapes: {len(wrong)} keys, e.g. {sorted(wrong)[:5]}")
    return converted, problems


def msvid2vid_unet_config(state: dict[str, torch.Tensor]) -> dict:
    """diffusers ``UNet3DConditionModel`` config of an MS-Vid2Vid-XL UNet file: ModelScope's
    architecture (2 resnets per level, cross-attention on every level but the last), its
    widths, channels, text width and head width read from the tensors (320-640-1280-1280,
    4, 1024 and 64 in the real file; the head width from the input temporal transformer,
    which has 8 heads in diffusers' UNet3D)."""
    levels = 1 + sum(1 for k in state if re.fullmatch(r"input_blocks\.\d+\.op\.weight", k))
    widths = [
        int(state[f"input_blocks.{3 * level + 1}.0.out_layers.3.weight"].shape[0])
        for level in range(levels)
    ]
    return {
        "sample_size": 32,
        "in_channels": int(state["input_blocks.0.0.weight"].shape[1]),
        "out_channels": int(state["out.2.weight"].shape[0]),
        "down_block_types": ["CrossAttnDownBlock3D"] * (levels - 1) + ["DownBlock3D"],
        "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * (levels - 1),
        "block_out_channels": widths,
        "layers_per_block": LAYERS,
        "cross_attention_dim": int(
            state["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
        ),
        "attention_head_dim": int(state["input_blocks.0.1.proj_in.weight"].shape[0]) // 8,
        "norm_num_groups": 32,
    }


def sd_vae_config(state: dict[str, torch.Tensor]) -> dict:
    """``SD_VAE_CONFIG`` with the widths and depth read from an LDM VAE's tensors (a smaller
    VAE in the same format converts too)."""
    vae = {k.removeprefix("first_stage_model."): v for k, v in state.items()}
    levels = 1 + max(int(m[1]) for k in vae if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    blocks = {int(m[1]) for k in vae if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    widths = [int(vae[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(levels)]
    return dict(
        SD_VAE_CONFIG,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=widths,
        layers_per_block=len(blocks),
        latent_channels=int(vae["quant_conv.weight"].shape[0]) // 2,
    )


def _check(what: str, problems: list[str]) -> None:
    if problems:
        raise ModelLoadError(
            f"{what} does not match its expected layout:\n  " + "\n  ".join(problems)
        )


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype):
    """``module`` holding ``state`` (its keys checked already), strictly, in ``dtype``."""
    module.load_state_dict(state, strict=True)
    return module.to(dtype)


def convert_msvid2vid(
    unet_file: Path,
    vae_file: Path,
    text_file: Path,
    tokenizer: Path,
    out: Path,
    dtype: torch.dtype = torch.float16,
    size: tuple[int, int] = (720, 1280),
    max_shard_bytes: int = 2 * 1024**3,
) -> dict[str, int]:
    """Write the enhancer folder ``out`` (``enhancer.Enhancer.from_pretrained`` loads it) of
    the paper's enhancer as the authors run it: MS-Vid2Vid-XL's UNet (``non_ema_0035000.pth``)
    with its padding, Stable Diffusion 2.1's VAE (``v2-1_512-ema-pruned.ckpt``), OpenCLIP
    ViT-H-14's text tower (``open_clip_pytorch_model.bin``) with ``tokenizer`` (a CLIP
    tokenizer folder, e.g. ModelScope T2V's ``tokenizer/``; it pads with "!" as OpenCLIP),
    its noise schedule, and their inference settings as the folder's defaults: frames fit
    into ``size`` and padded with black, bicubic resizing, SDEdit from t = 599, DPM-Solver++
    (2M) SDE 30 steps, guidance 7.5 with rescale 0.2, chunks of 24 overlapping by 8,
    randomized blending, the caption ``prompt + ", "``. Every file is read with
    ``weights_only=True`` and every key is routed or the conversion stops naming it.
    Returns the tensors written per part."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    from .convert import _meta, _write_unet, open_checkpoint
    from .enhancer import CONFIG_FILE, EnhancerConfig

    out = Path(out)
    if out.exists():
        raise UsageError(f"{out} exists; choose a new folder (nothing was written)")
    for path in (unet_file, vae_file, text_file):
        if not Path(path).is_file():
            raise UsageError(f"file not found: {path}")
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except Exception as err:
        raise UsageError(f"cannot load the tokenizer {tokenizer}: {err}") from err
    if tok.convert_ids_to_tokens(0) != "!":
        raise UsageError(
            f"{tokenizer} is not OpenCLIP's vocabulary (its token 0 is "
            f"{tok.convert_ids_to_tokens(0)!r}, OpenCLIP's is '!')"
        )
    tok.pad_token = "!"  # OpenCLIP pads with token 0

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    counts = {}
    try:
        state = open_checkpoint(Path(unet_file))
        config = msvid2vid_unet_config(state)
        unet = _meta(lambda: UNet3DConditionModel(**config))
        expected = {k: v.shape for k, v in unet.state_dict().items()}
        converted, problems = convert_msvid2vid_unet(state, expected)
        _check(f"{unet_file} (MS-Vid2Vid-XL UNet)", problems)
        _write_unet(tmp / "unet", unet, list(converted.items()), dtype, max_shard_bytes)
        counts["unet"] = len(converted)
        del state, converted

        state = open_checkpoint(Path(vae_file))
        vae_config = sd_vae_config(state)
        vae = AutoencoderKL(**vae_config)
        converted, problems = convert_sd_vae(
            state, {k: v.shape for k, v in vae.state_dict().items()}
        )
        _check(f"{vae_file} (Stable Diffusion VAE)", problems)
        with libraries_quiet():
            _load_into(vae, converted, dtype).save_pretrained(tmp / "vae")
        counts["vae"] = len(converted)
        del state, converted

        state = open_checkpoint(Path(text_file))
        text_config = CLIPTextConfig(
            **open_clip_text_config(state),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=0,
        )
        text = CLIPTextModel(text_config)
        expected = {k: v.shape for k, v in text.state_dict().items()}
        converted, problems = convert_open_clip_text(state, expected)
        _check(f"{text_file} (OpenCLIP text tower)", problems)
        with libraries_quiet():
            _load_into(text, converted, dtype).save_pretrained(tmp / "text_encoder")
        tok.save_pretrained(tmp / "tokenizer")
        counts["text_encoder"] = len(converted)
        del state, converted

        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(
            json.dumps(msvid2vid_scheduler_config(), indent=2) + "\n"
        )
        settings = EnhancerConfig(
            size=tuple(size),
            defaults=MSVID2VID_SETTINGS,
            fit="pad",
            resample="bicubic",
            prompt_suffix=", ",
            msvid2vid_padding=True,
        )
        (tmp / CONFIG_FILE).write_text(json.dumps(settings.to_dict(), indent=2) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts
