"""Random-weight pipelines at several scales, for tests, benchmarks and training from scratch.

``tiny`` runs a whole long video in seconds on a laptop CPU; ``mid`` has ModelScope's full
block structure (4 levels, 2 layers, 12 skips, 16 cross-attentions) at a fifth of its width;
``modelscope`` is the 1.7B configuration itself (random weights: for GPU throughput and memory
figures only). The text tokenizer is a real CLIP byte-level BPE tokenizer with no merges,
written from scratch, so that folders are in the exact ModelScope format without downloads.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from .config import ApmConfig, CamConfig, PipelineConfig, StreamConfig
from .models.encoders import ImageEncoder, TextEncoder
from .pipeline import StreamingT2VPipeline

# ModelScope text-to-video-ms-1.7b's scheduler configuration.
MODELSCOPE_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


@dataclass(frozen=True)
class Scale:
    unet_widths: tuple[int, ...]
    layers_per_block: int
    head_dim: int
    text_dim: int  # = the UNet's cross_attention_dim
    text_layers: int
    vae_widths: tuple[int, ...]
    latent_size: int
    cond_embedding: tuple[int, ...]
    image_embed_dim: int
    image_tokens: int
    text_tokens: int
    # The APM's CLIP vision tower: hidden size, layers, heads, input size, patch size.
    vision: tuple[int, int, int, int, int] = (32, 2, 2, 32, 8)


SCALES = {
    "tiny": Scale((32, 64), 1, 8, 32, 2, (8, 16), 16, (8, 16), 24, 4, 16),
    "mid": Scale(
        (64, 128, 256, 256), 2, 32, 256, 2, (32, 64, 128, 128), 32, (16, 32, 64, 128), 256, 16, 77
    ),
    "modelscope": Scale(
        (320, 640, 1280, 1280),
        2,
        64,
        1024,
        23,
        (128, 256, 512, 512),
        32,
        (32, 96, 256, 512),
        1024,
        16,
        77,
        vision=(1280, 32, 16, 224, 14),  # OpenCLIP ViT-H/14, as the official APM
    ),
}


def _cross_down(n: int) -> tuple[str, ...]:
    return ("CrossAttnDownBlock3D",) * (n - 1) + ("DownBlock3D",)


def make_unet(scale: Scale) -> UNet3DConditionModel:
    n = len(scale.unet_widths)
    return UNet3DConditionModel(
        sample_size=scale.latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=_cross_down(n),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (n - 1),
        block_out_channels=scale.unet_widths,
        layers_per_block=scale.layers_per_block,
        cross_attention_dim=scale.text_dim,
        attention_head_dim=scale.head_dim,
        norm_num_groups=min(32, scale.unet_widths[0]),
    )


def make_vae(scale: Scale) -> AutoencoderKL:
    n = len(scale.vae_widths)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=scale.vae_widths,
        latent_channels=4,
        norm_num_groups=min(32, scale.vae_widths[0]),
        sample_size=scale.latent_size * 2 ** (n - 1),
        scaling_factor=0.18215,
    )


def make_clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (plain and word-final)."""
    bytes_ = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bytes_ += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(bytes_), 0
    for b in range(256):
        if b not in bytes_:
            chars.append(256 + extra)
            extra += 1
    symbols = [chr(c) for c in chars]
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!")


def _scratch_tokenizer() -> CLIPTokenizer:
    """``make_clip_tokenizer`` without keeping its files."""
    with tempfile.TemporaryDirectory() as tmp:
        return make_clip_tokenizer(Path(tmp))


def make_text_encoder(scale: Scale, tokenizer: CLIPTokenizer) -> TextEncoder:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=scale.text_dim,
        intermediate_size=scale.text_dim * 4,
        num_hidden_layers=scale.text_layers,
        num_attention_heads=max(1, scale.text_dim // 64),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return TextEncoder(CLIPTextModel(config).eval(), tokenizer, scale.text_tokens)


def make_image_encoder(scale: Scale) -> ImageEncoder:
    hidden, layers, heads, image_size, patch = scale.vision
    config = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch,
        projection_dim=scale.image_embed_dim,
    )
    return ImageEncoder(CLIPVisionModelWithProjection(config).eval())


def random_pipeline(
    scale: str = "tiny",
    seed: int = 0,
    streaming: bool = True,
    cam_merge: str = "attention",
    own_stream_unet: bool = False,
) -> StreamingT2VPipeline:
    """A pipeline with random weights; ``streaming`` adds an untrained CAM (merging as
    ``cam_merge``) and APM; ``own_stream_unet``: the streaming chunks get a UNet of their own
    (as the official checkpoint's fine-tuned copy) instead of sharing the base UNet."""
    s = SCALES[scale]
    torch.manual_seed(seed)
    tokenizer = _scratch_tokenizer()
    config = PipelineConfig(stream=StreamConfig(text_tokens=s.text_tokens))
    pipe = StreamingT2VPipeline(
        make_unet(s),
        make_vae(s),
        make_text_encoder(s, tokenizer),
        MODELSCOPE_SCHEDULER,
        config,
        stream_unet=make_unet(s) if streaming and own_stream_unet else None,
    )
    if not streaming:
        return pipe
    apm = ApmConfig(
        image_embed_dim=s.image_embed_dim,
        resampler_hidden_dim=s.unet_widths[-1],
        image_tokens=s.image_tokens,
        text_tokens=s.text_tokens,
        cross_attention_dim=s.text_dim,
    )
    cam = CamConfig(
        cond_embedding_channels=s.cond_embedding,
        merger_head_dim=max(16, s.head_dim),
        merge=cam_merge,
    )
    return pipe.add_streaming_modules(make_image_encoder(s), cam, apm)


def perturb_(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Add seeded noise to every parameter: makes zero-initialized parts (CAM outputs, APM
    alphas) act, so tests can see them work."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * std)


def write_modelscope_folder(path: Path, scale: str = "tiny", seed: int = 0) -> Path:
    """A random base model in ModelScope's diffusers layout, written by the libraries'
    own ``save_pretrained`` (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    s = SCALES[scale]
    torch.manual_seed(seed)
    path = Path(path)
    tokenizer = make_clip_tokenizer(path / "tokenizer")
    tokenizer.save_pretrained(path / "tokenizer")
    make_text_encoder(s, tokenizer).model.save_pretrained(path / "text_encoder")
    make_unet(s).save_pretrained(path / "unet")
    make_vae(s).save_pretrained(path / "vae")
    DDIMScheduler(**MODELSCOPE_SCHEDULER).save_pretrained(path / "scheduler")
    index = {
        "_class_name": "TextToVideoSDPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet3DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path


def random_enhancer(
    vae=None,
    text_encoder=None,
    seed: int = 0,
    scale: str = "tiny",
    size: tuple[int, int] | None = None,
):
    """A random enhancer: 2x with the given VAE and text encoder (a pipeline's, shared), or,
    where they are None, with a VAE and text encoder of its own (a full-size enhancer's
    layout) at the fixed output ``size`` when given."""
    from .enhancer import Enhancer, EnhancerConfig

    s = SCALES[scale]
    torch.manual_seed(seed)
    if vae is None:
        vae = make_vae(s)
    if text_encoder is None:
        text_encoder = make_text_encoder(s, _scratch_tokenizer())
    config = EnhancerConfig(scale=2, size=size, text_tokens=s.text_tokens)
    return Enhancer(make_unet(s), vae, text_encoder, MODELSCOPE_SCHEDULER, config)
