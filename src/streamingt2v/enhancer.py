"""The video enhancer as a model: a text-to-video UNet at ``scale`` times the resolution,
applied to a low-resolution video by SDEdit in overlapping chunks (``sdedit.py``).

Folder (``enhancer/`` inside a pipeline folder, or a folder of its own)::

    enhancer_config.json   scale and the default EnhanceConfig (chunk, overlap, strength, ...)
    unet/                  diffusers UNet3DConditionModel; with twice the VAE's latent
                           channels as inputs, a conditioned enhancer (below)
    scheduler/             its noise schedule
    vae/ text_encoder/ tokenizer/   its own; absent inside a pipeline folder, whose are shared

Frames go in and come out one by one: the input is read as the chunks need it, and every
output frame is decoded as soon as its last denoising step is done, so memory does not grow
with the video's length.

A conditioned enhancer (our addition, not in the paper or the official code) also reads the
upsampled input's clean latents, concatenated to the noisy latents as extra UNet input
channels (as in cascaded super-resolution diffusion): the structure of the input is handed
to the model at every step instead of only through the SDEdit starting point. The folder's
UNet says which it is (``in_channels``); everything else is the same.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet3DConditionModel
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .config import EnhanceConfig, ModelLoadError, UsageError, read_json
from .layout import fchw_from_fhwc, fhwc_from_cfhw, hwc_from_chw
from .models.encoders import TextEncoder
from .models.unet import check_msvid2vid_size, use_msvid2vid_padding
from .models.vae import decode_frames, encode_frames, vae_factor
from .models.weights import load_diffusers
from .offload import READ_AHEAD, Offloader, OnDevice, place, read_until
from .sampling import Denoiser, text_denoiser
from .sdedit import denoise_chunks, denoise_streaming, make_schedule

CONFIG_FILE = "enhancer_config.json"
FITS = ("stretch", "pad")
RESAMPLES = ("bilinear", "bicubic")


@dataclass
class EnhancerConfig:
    """The enhancer's upscaling factor and its default refinement settings."""

    scale: int = 2
    # A fixed output (height, width) instead of ``scale``: the resolution a full-size enhancer
    # was trained at (MS-Vid2Vid-XL: 720x1280 with 720x720 frames padded; a Zeroscope-XL
    # style model: 576x1024).
    size: tuple[int, int] | None = None
    text_tokens: int = 77
    text_attention_mask: bool = False
    defaults: EnhanceConfig = field(default_factory=EnhanceConfig)
    # How the input fills ``size`` (FITS): "stretch" resizes it to ``size``; "pad" resizes it
    # to fit inside, keeping its aspect, and pads with black (MS-Vid2Vid-XL: 720x720 frames
    # in 720x1280, the only size family its UNet runs at besides the quirks below).
    fit: str = "stretch"
    # With fit "pad": hand out the whole padded frame (the authors' randomized path keeps the
    # black bars) instead of the picture alone.
    keep_padding: bool = False
    # RESAMPLES: "bilinear" (torch, antialiased where it shrinks) or "bicubic" (Pillow's, on
    # uint8 frames: what the authors' code resizes with).
    resample: str = "bilinear"
    # Appended to the prompt before the text encoder (MS-Vid2Vid-XL's caption: prompt + ", ").
    prompt_suffix: str = ""
    # MS-Vid2Vid-XL's UNet padding (``models.unet.use_msvid2vid_padding``).
    msvid2vid_padding: bool = False

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise ModelLoadError(f"unknown fit {self.fit!r} in {CONFIG_FILE}; choose one of {FITS}")
        if self.resample not in RESAMPLES:
            raise ModelLoadError(
                f"unknown resample {self.resample!r} in {CONFIG_FILE}; choose one of {RESAMPLES}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EnhancerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelLoadError(f"unknown keys in {CONFIG_FILE}: {unknown}")
        data = dict(data)
        try:
            data["defaults"] = EnhanceConfig(**data.get("defaults", {}))
            if data.get("size") is not None:
                data["size"] = parse_size(data["size"])
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ModelLoadError(f"bad {CONFIG_FILE}: {err}") from err


def parse_size(value) -> tuple[int, int]:
    """(height, width) from "576x1024" or a pair of integers; UsageError otherwise."""
    parts = value.lower().split("x") if isinstance(value, str) else value
    try:
        height, width = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise UsageError(f"size must be HEIGHTxWIDTH, e.g. 576x1024, got {value!r}") from None
    if height < 1 or width < 1:
        raise UsageError(f"size must be positive, got {value!r}")
    return height, width


class _FrameWindow:
    """Latents of the upscaled input frames on demand, reading the input only as far as
    asked, rounded up to a whole block of ``read_ahead`` frames (and at most ``num_frames``).
    Requests start at ascending frames, so the frames before a request's start are never
    asked for again and are dropped."""

    def __init__(self, frames: Iterable[np.ndarray], encode, num_frames: int, read_ahead: int):
        self.frames = iter(frames)
        self.encode = encode
        self.num_frames = num_frames
        self.read_ahead = read_ahead
        self.cache: dict[int, np.ndarray] = {}
        self.read = 0

    def __call__(self, wanted: range) -> torch.Tensor:
        if self.read < wanted.stop:
            until = read_until(wanted.stop, self.num_frames, self.read_ahead)
            while self.read < until:
                try:
                    self.cache[self.read] = next(self.frames)
                except StopIteration:
                    raise UsageError(f"the video ended after {self.read} frames") from None
                self.read += 1
        for f in [f for f in self.cache if f < wanted.start]:
            del self.cache[f]
        return self.encode(np.stack([self.cache[f] for f in wanted]))


def resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(F, 3, H, W) in [-1, 1] -> (F, 3, *size): bilinear, antialiased where it shrinks."""
    shrink = size[0] < frames.shape[2] or size[1] < frames.shape[3]
    return nn.functional.interpolate(
        frames, size=size, mode="bilinear", align_corners=False, antialias=shrink
    ).clamp(-1, 1)


def resize_bicubic_fhwc(frames_fhwc: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, *size, 3) uint8 by Pillow's bicubic resize (its default,
    which the authors' enhancer input goes through)."""
    height, width = size
    return np.stack(
        [np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in frames_fhwc]
    )


def fit_box(height: int, width: int, canvas: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a height x width picture resized to fit inside
    ``canvas`` keeping its aspect, centred (the authors' ``resize_to_fit`` and
    ``pad_to_fit``: sides truncated to integers, the margins halved downwards)."""
    H, W = canvas
    if H / height > W / width:
        h, w = int(height * W / width), W
    else:
        h, w = H, int(width * H / height)
    return (H - h) // 2, (W - w) // 2, h, w


def conditioned(unet: UNet3DConditionModel, vae: AutoencoderKL) -> bool:
    """True when ``unet`` reads the input's clean latents beside the noisy ones (twice the
    VAE's latent channels); ModelLoadError when its inputs fit neither."""
    latent, given = vae.config.latent_channels, unet.config.in_channels
    if given not in (latent, 2 * latent) or unet.config.out_channels != latent:
        raise ModelLoadError(
            f"the enhancer's UNet takes {given} channels and gives "
            f"{unet.config.out_channels}; its VAE has {latent} latent channels (the UNet "
            f"must give {latent} and take {latent}, or {2 * latent} when conditioned)"
        )
    return given == 2 * latent


class Enhancer(OnDevice):
    def __init__(
        self,
        unet: UNet3DConditionModel,
        vae: AutoencoderKL,
        text_encoder: nn.Module,
        scheduler_config: dict,
        config: EnhancerConfig | None = None,
    ):
        self.unet = unet.eval()
        self.vae = vae.eval()
        self.text_encoder = text_encoder.eval()
        self.scheduler_config = dict(scheduler_config)
        self.config = config or EnhancerConfig()
        conditioned(unet, vae)  # a UNet that does not fit the VAE fails here, not mid-video
        if self.config.msvid2vid_padding and not getattr(unet, "msvid2vid_padding", False):
            use_msvid2vid_padding(unet)
        self.offloader: Offloader | None = None  # shared with the pipeline (``--offload``)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        vae: AutoencoderKL | None = None,
        text_encoder: nn.Module | None = None,
        size: str | tuple[int, int] | None = None,
    ) -> Enhancer:
        """Load an enhancer folder, or any diffusers text-to-video folder (unet/, vae/,
        text_encoder/, tokenizer/, scheduler/: e.g. a Zeroscope-XL style upscaler) used at
        ``size``, the resolution it was trained at. ``vae`` / ``text_encoder`` are used where
        the folder has none; ``size`` overrides the folder's output size."""
        root = Path(path)
        if (root / CONFIG_FILE).is_file():
            config = EnhancerConfig.from_dict(read_json(root / CONFIG_FILE))
        elif (root / "unet").is_dir() and (root / "model_index.json").is_file():
            if size is None:
                raise UsageError(
                    f"{root} is a diffusers video model without {CONFIG_FILE}: give the "
                    "resolution it was trained at (--enhance-size HEIGHTxWIDTH, e.g. 576x1024)"
                )
            config = EnhancerConfig()
        else:
            raise ModelLoadError(
                f"not an enhancer folder (no {CONFIG_FILE}) nor a diffusers video model: {root}"
            )
        if size is not None:
            config.size = parse_size(size)
        unet = load_diffusers(UNet3DConditionModel, root / "unet")
        if (root / "vae").is_dir():
            vae = load_diffusers(AutoencoderKL, root / "vae")
        if (root / "text_encoder").is_dir():
            text_encoder = TextEncoder.from_folders(
                root / "text_encoder",
                root / "tokenizer",
                config.text_tokens,
                config.text_attention_mask,
            )
        if vae is None or text_encoder is None:
            raise ModelLoadError(f"{root} has no vae/ or text_encoder/ and none was given")
        scheduler_config = read_json(root / "scheduler" / "scheduler_config.json")
        return cls(unet, vae, text_encoder, scheduler_config, config).to(device, dtype)

    def save_pretrained(self, path: str | Path, shared: bool = True, own_vae: bool = False) -> None:
        """Write the folder; ``shared``: leave out the VAE and text encoder (the pipeline's),
        but with ``own_vae`` write the VAE (one in the pipeline's latent space with a decoder
        of its own, e.g. trained at the enhancer's resolution)."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        (root / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        self.unet.save_pretrained(root / "unet")
        (root / "scheduler").mkdir(exist_ok=True)
        (root / "scheduler" / "scheduler_config.json").write_text(
            json.dumps(self.scheduler_config, indent=2) + "\n"
        )
        if own_vae or not shared:
            self.vae.save_pretrained(root / "vae")
        if not shared:
            self.text_encoder.model.save_pretrained(root / "text_encoder")
            self.text_encoder.tokenizer.save_pretrained(root / "tokenizer")

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Enhancer:
        for module in (self.unet, self.vae):
            place(module, device, dtype)
        place(self.text_encoder, device)
        return self

    def enable_offload(self, offloader: Offloader) -> Enhancer:
        """Share ``offloader`` (the pipeline's, or a new one): the UNet waits in CPU memory
        until the enhancer runs; the VAE and text encoder move to its device now."""
        self.offloader = offloader
        self.vae.to(offloader.device)
        self.text_encoder.to(offloader.device)
        offloader.park(self.unet)
        return self

    def use_unet(self) -> None:
        """Before a denoising step: the UNet on the device (with offload; else a no-op)."""
        if self.offloader:
            self.offloader.use("enhancer", self.unet)

    @property
    def vae_scale_factor(self) -> int:
        return vae_factor(self.vae)

    def canvas_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of the frames the enhancer's UNet runs on (the fixed ``size``, else ``scale``
        times the input); its sides must be multiples of the enhancer's VAE factor, and fit
        MS-Vid2Vid-XL's UNet where its padding is on."""
        size = self.config.size
        out = tuple(size) if size else (height * self.config.scale, width * self.config.scale)
        step = self.vae_scale_factor
        if any(s % step for s in out):
            raise UsageError(
                f"frames of {height}x{width} enhance to {out[0]}x{out[1]}, not a multiple of "
                f"{step} (the enhancer's VAE factor)"
            )
        if self.config.msvid2vid_padding:
            check_msvid2vid_size(out[0] // step, out[1] // step)
        return out

    def picture_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the input's picture within the canvas."""
        canvas = self.canvas_size(height, width)
        if self.config.fit == "pad":
            return fit_box(height, width, canvas)
        return 0, 0, *canvas

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of the enhanced frames handed out: the canvas, or with fit "pad" the picture
        alone unless ``keep_padding``."""
        if self.config.fit == "pad" and not self.config.keep_padding:
            return self.picture_box(height, width)[2:]
        return self.canvas_size(height, width)

    @property
    def conditioned(self) -> bool:
        """Whether the UNet also reads the input's clean latents (module docstring)."""
        return conditioned(self.unet, self.vae)

    @torch.no_grad()
    def upscale(self, frames_fhwc: np.ndarray) -> torch.Tensor:
        """(F, H, W, 3) uint8 low-res -> (F, 3, *output_size) in [-1, 1]: the frames that
        SDEdit starts from (bilinear, antialiased where it shrinks)."""
        height, width = frames_fhwc.shape[1:3]
        top, left, h, w = self.picture_box(height, width)
        if self.config.resample == "bicubic":
            picture = fchw_from_fhwc(resize_bicubic_fhwc(frames_fhwc, (h, w)), self.device)
        else:
            picture = resize(fchw_from_fhwc(frames_fhwc, self.device), (h, w))
        canvas = self.canvas_size(height, width)
        if (h, w) == canvas:
            return picture
        out = picture.new_full((len(picture), 3, *canvas), -1.0)  # black
        out[:, :, top : top + h, left : left + w] = picture
        return out

    def _output_window(self, height: int, width: int) -> tuple[slice, slice]:
        """The canvas rows and columns handed out (``output_size``) for an input frame of
        height x width."""
        if self.config.fit == "pad" and not self.config.keep_padding:
            top, left, h, w = self.picture_box(height, width)
            return slice(top, top + h), slice(left, left + w)
        return slice(None), slice(None)

    def upsampled(self, frames_fhwc: np.ndarray) -> np.ndarray:
        """(F, H, W, 3) uint8 -> the frames SDEdit starts from as (F, H', W', 3) uint8: the
        video upscaled to the output size without enhancement (a baseline)."""
        canvas = fhwc_from_cfhw(self.upscale(frames_fhwc).transpose(0, 1))  # (F, H', W', 3)
        rows, cols = self._output_window(*frames_fhwc.shape[1:3])
        return canvas[:, rows, cols]

    @torch.no_grad()
    def _encode(self, frames_fhwc: np.ndarray) -> torch.Tensor:
        """(F, H, W, 3) uint8 low-res -> (F, C, h, w) latents of the upscaled frames."""
        return encode_frames(self.vae, self.upscale(frames_fhwc)).float()

    @torch.no_grad()
    def _decode(self, latents_chw: torch.Tensor) -> np.ndarray:
        return hwc_from_chw(decode_frames(self.vae, latents_chw[None])[0])

    @torch.no_grad()
    def enhance(
        self,
        frames: Iterable[np.ndarray],
        num_frames: int,
        prompt: str,
        cfg: EnhanceConfig | None = None,
        negative_prompt: str = "",
        progress: bool = False,
    ) -> Iterator[np.ndarray]:
        """Enhanced frames (``output_size``, 3) uint8, one by one, in order.

        ``frames`` yields the ``num_frames`` low-resolution (H, W, 3) uint8 frames; it is
        read only as far as the chunks in flight need.
        """
        cfg = cfg or self.config.defaults
        if not prompt.strip():
            raise UsageError("the prompt is empty")
        if num_frames < 1:
            raise UsageError(f"the video has no frames (num_frames={num_frames})")
        frames = iter(frames)
        first = next(frames, None)
        if first is None:
            raise UsageError("the video has no frames")
        frames = itertools.chain([first], frames)
        context = self.text_encoder([negative_prompt, prompt + self.config.prompt_suffix])
        context = context.to(self.unet.dtype)
        guided = text_denoiser(self.unet, context, cfg.guidance, cfg.guidance_rescale)

        with_input = self.conditioned

        def denoiser_for(clean: torch.Tensor) -> Denoiser:  # (sdedit.DenoiserFor)
            def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                self.use_unet()
                if with_input:
                    x = torch.cat([x, clean], dim=1)
                return guided(x.to(self.unet.dtype), t).float()

            return denoise

        read_ahead = READ_AHEAD if self.offloader else 1
        source = _FrameWindow(frames, self._encode, num_frames, read_ahead)
        rows, cols = self._output_window(*first.shape[:2])  # (H, W, 3) frames
        run = denoise_streaming if cfg.mode == "randomized" else denoise_chunks
        schedule = make_schedule(self.scheduler_config, cfg)
        bar = tqdm(total=num_frames, desc="enhance", unit="frame", disable=not progress)
        with bar:
            for _, latents in run(denoiser_for, source, num_frames, schedule):
                bar.update(1)
                yield self._decode(latents)[rows, cols]
