"""Tiny random stand-ins for the paper's released files, in their real formats.

The converters (``convert.convert_official``, ``convert_enhancer.convert_msvid2vid``) are
tested on these, and ``scripts/tiny_checkpoints.py`` writes them so that both conversions
can be tried end to end without the real files (25.6, 5.65, 5.21 and 3.94 GB):

    streaming_t2v.ckpt            StreamingT2V: a Lightning checkpoint with the official keys
    non_ema_0035000.pth           MS-Vid2Vid-XL's UNet: a bare state_dict in LDM naming
    v2-1_512-ema-pruned.ckpt      an SD checkpoint: {"state_dict": {"first_stage_model.*", ...}}
    open_clip_pytorch_model.bin   an OpenCLIP state_dict (text tower, image tower, scales)

Only the key names come from the real files (the official names as the authors' classes
save them; MS-Vid2Vid-XL's lists: ``msvid2vid_unet_keys.json``,
``msvid2vid_vae_keys.json``); widths are tiny. The LDM names of a diffusers model are found
with the conversions themselves (the UNet's key map; diffusers' own LDM-VAE conversion run
on a probe), so these files are the real format as far as the converters can tell apart.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet3DConditionModel

from .config import ApmConfig, CamConfig
from .convert_enhancer import SD_VAE_CONFIG, msvid2vid_unet_key
from .models.apm import AppearancePreservationModule, spatial_cross_attention_names
from .models.cam import ConditionalAttentionModule
from .random_models import SCALES, make_clip_tokenizer, make_image_encoder, perturb_


def official_modules(base_unet: UNet3DConditionModel) -> dict[str, torch.nn.Module]:
    """What the authors' training would have made from a tiny ModelScope base: a fine-tuned
    copy of its UNet (perturbed), a trained CAM and APM (perturbed, so they act) and an image
    encoder. The APM has 16 image tokens beside 77 text tokens: the real mixer conv's
    [77, 93, 3]."""
    stream_unet = copy.deepcopy(base_unet)
    perturb_(stream_unet, seed=11)
    cam = ConditionalAttentionModule.from_unet(
        stream_unet, CamConfig(cond_embedding_channels=SCALES["tiny"].cond_embedding)
    )
    apm_config = ApmConfig(
        image_embed_dim=SCALES["tiny"].image_embed_dim,
        resampler_hidden_dim=40,
        image_tokens=16,
        text_tokens=77,
        cross_attention_dim=stream_unet.config.cross_attention_dim,
    )
    apm = AppearancePreservationModule.for_unet(stream_unet, apm_config)
    perturb_(cam, seed=12, std=0.05)
    perturb_(apm, seed=13, std=0.05)
    image_encoder = make_image_encoder(SCALES["tiny"])
    return {"stream_unet": stream_unet, "cam": cam, "apm": apm, "image_encoder": image_encoder}


def official_state(
    stream_unet: UNet3DConditionModel,
    cam: ConditionalAttentionModule,
    apm: AppearancePreservationModule,
) -> dict[str, torch.Tensor]:
    """The modules under the key names of the authors' ``streaming_t2v.ckpt``: the streaming
    UNet as ``base_model.*``, the CAM's trunk as ``unet.*`` and its mergers as
    ``base_model.cross_attention_merger_*``, the APM's mixers inside the UNet's
    cross-attentions (``base_model.<layer>.attn2.{conv, conv_ln, alpha}``) and its resampler
    as ``resampler.*``; plus frozen parts a real file carries (the converter skips them). The
    CAM trunk has no APM layers (the real file has no ``unet.*attn2.conv`` keys)."""
    state = {f"base_model.{key}": value for key, value in stream_unet.state_dict().items()}
    for key, value in cam.state_dict().items():
        head, _, rest = key.partition(".")
        if head == "down_mergers":
            index, _, rest = rest.partition(".")
            name = f"base_model.cross_attention_merger_down_blocks.{index}.temporal_transformer"
            state[f"{name}.{rest}"] = value
        elif head == "mid_merger":
            name = "base_model.cross_attention_merger_mid_block.temporal_transformer"
            state[f"{name}.{rest}"] = value
        else:
            state[f"unet.{key}"] = value
    layers = spatial_cross_attention_names(stream_unet)
    for key, value in apm.state_dict().items():
        if key.startswith("mixers."):
            _, index, rest = key.split(".", 2)
            state[f"base_model.{layers[int(index)]}.{rest}"] = value
        else:
            state[key] = value  # resampler.context_embedding.{0,2}.*
    state["vae.encoder.conv_in.weight"] = torch.zeros(8, 3, 3, 3)
    state["image_encoder.model.visual.proj"] = torch.zeros(4, 4)
    return state


def write_official_files(folder: Path, seed: int = 3) -> dict[str, Path]:
    """A tiny ModelScope base folder (``text-to-video-ms/``), an image encoder folder
    (``clip/``) and ``streaming_t2v.ckpt`` (a Lightning file: state_dict, epoch, step) made
    from them, in ``folder``: the inputs of ``streamingt2v convert-official``."""
    from .pipeline import StreamingT2VPipeline
    from .random_models import write_modelscope_folder

    folder = Path(folder)
    base = write_modelscope_folder(folder / "text-to-video-ms", "tiny", seed=seed)
    modules = official_modules(StreamingT2VPipeline.from_pretrained(base).unet)
    modules["image_encoder"].save_pretrained(folder / "clip")
    state = official_state(modules["stream_unet"], modules["cam"], modules["apm"])
    checkpoint = folder / "streaming_t2v.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 1200}, checkpoint)
    return {"checkpoint": checkpoint, "base": base, "image_encoder": folder / "clip"}


def tiny_msvid2vid_unet(cross_attention_dim: int = 32) -> UNet3DConditionModel:
    """ModelScope's UNet layout (4 levels, 2 resnets each, the widths changing where its
    do) at widths 32-64-128-128: every key of MS-Vid2Vid-XL's file, tiny. Random weights
    (seed them first)."""
    return UNet3DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=2,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def ldm_unet_state(
    unet: UNet3DConditionModel, real_keys: dict[str, list[int]]
) -> dict[str, torch.Tensor]:
    """``unet`` (ModelScope's layout at any width) under MS-Vid2Vid-XL's key names
    (``real_keys``: the real file's names and shapes); the temporal projections become
    Conv1d(k=1) weights again (a trailing 1)."""
    real_name = {msvid2vid_unet_key(k): k for k in real_keys}
    state = {}
    for name, tensor in unet.state_dict().items():
        key = real_name[name]
        conv1d = len(real_keys[key]) == tensor.dim() + 1
        state[key] = tensor.reshape(*tensor.shape, 1) if conv1d else tensor.clone()
    return state


def ldm_vae_state(vae: AutoencoderKL, real_keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """``vae`` (SD's layout at any width) under the LDM names of ``real_keys``, prefixed
    ``first_stage_model.`` as in an SD checkpoint. Which LDM name becomes which diffusers
    name is read off diffusers' conversion of a probe: real shapes, each tensor marked by
    its index in its first element."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    names = list(real_keys)
    probe = {}
    for index, name in enumerate(names):
        marked = torch.zeros(real_keys[name], dtype=torch.int16)
        marked.view(-1)[0] = index + 1
        probe[f"first_stage_model.{name}"] = marked
    converted = convert_ldm_vae_checkpoint(probe, SD_VAE_CONFIG)
    ldm_name = {d: names[int(t.reshape(-1)[0]) - 1] for d, t in converted.items()}
    state = {}
    for name, tensor in vae.state_dict().items():
        key = ldm_name[name]
        if len(real_keys[key]) == 4 and tensor.dim() == 2:  # attention: 1x1 conv in LDM
            tensor = tensor[:, :, None, None]
        state[f"first_stage_model.{key}"] = tensor.clone()
    return state


def open_clip_state(
    width: int = 64, layers: int = 3, vocab: int = 49408, context: int = 77, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A random OpenCLIP text tower in OpenCLIP's own naming (``transformer.resblocks.N``,
    fused ``attn.in_proj_*``, ``mlp.c_fc`` / ``c_proj``, ``ln_final``), with the parts
    of the file a text encoder does not use (an image tower key, the projection, the
    temperature)."""
    g = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float = 0.05) -> torch.Tensor:
        return torch.randn(shape, generator=g) * std

    state = {"token_embedding.weight": normal(vocab, width, std=0.5)}
    state["positional_embedding"] = normal(context, width, std=0.1)
    for i in range(layers):
        block = f"transformer.resblocks.{i}."
        for norm in ("ln_1", "ln_2"):
            state[f"{block}{norm}.weight"] = 1 + normal(width)
            state[f"{block}{norm}.bias"] = normal(width)
        state[f"{block}attn.in_proj_weight"] = normal(3 * width, width, std=0.2)
        state[f"{block}attn.in_proj_bias"] = normal(3 * width)
        state[f"{block}attn.out_proj.weight"] = normal(width, width, std=0.2)
        state[f"{block}attn.out_proj.bias"] = normal(width)
        state[f"{block}mlp.c_fc.weight"] = normal(4 * width, width, std=0.2)
        state[f"{block}mlp.c_fc.bias"] = normal(4 * width)
        state[f"{block}mlp.c_proj.weight"] = normal(width, 4 * width, std=0.2)
        state[f"{block}mlp.c_proj.bias"] = normal(width)
    state["ln_final.weight"] = 1 + normal(width)
    state["ln_final.bias"] = normal(width)
    state["text_projection"] = normal(width, width)
    state["logit_scale"] = torch.tensor(4.6052)
    state["visual.conv1.weight"] = normal(width, 3, 14, 14)
    return state


def write_msvid2vid_files(folder: Path, key_lists: Path, seed: int = 0) -> dict[str, Path]:
    """Write the three tiny files into ``folder`` (names as released) and a CLIP tokenizer
    folder (``tokenizer/``, byte-level, token 0 "!" as OpenCLIP's); ``key_lists`` holds
    ``msvid2vid_unet_keys.json`` and ``msvid2vid_vae_keys.json``. The UNet is ModelScope's
    layout at widths 32-64-128-128 reading 64-wide text, the VAE SD's at widths 32-64-96-96."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet_keys = json.loads((Path(key_lists) / "msvid2vid_unet_keys.json").read_text())
    vae_keys = json.loads((Path(key_lists) / "msvid2vid_vae_keys.json").read_text())
    torch.manual_seed(seed)
    unet = tiny_msvid2vid_unet(cross_attention_dim=64)
    vae = AutoencoderKL(
        **dict(SD_VAE_CONFIG, block_out_channels=[32, 64, 96, 96], norm_num_groups=32)
    )
    tokenizer = make_clip_tokenizer(folder / "tokenizer")
    tokenizer.save_pretrained(folder / "tokenizer")
    paths = {
        "unet": folder / "non_ema_0035000.pth",
        "vae": folder / "v2-1_512-ema-pruned.ckpt",
        "text": folder / "open_clip_pytorch_model.bin",
        "tokenizer": folder / "tokenizer",
    }
    torch.save(ldm_unet_state(unet, unet_keys), paths["unet"])
    sd = ldm_vae_state(vae, vae_keys)
    sd["model.diffusion_model.out.2.bias"] = torch.zeros(4)  # the SD UNet: not read
    torch.save({"state_dict": sd, "global_step": 110000}, paths["vae"])
    torch.save(open_clip_state(width=64, vocab=len(tokenizer), seed=seed), paths["text"])
    return paths
