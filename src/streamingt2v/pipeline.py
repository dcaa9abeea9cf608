"""``StreamingT2VPipeline``: the models of all stages, loaded from and saved to one folder.

Folder layout (a ModelScope diffusers folder is a valid base-only pipeline folder):

    unet/ vae/ text_encoder/ tokenizer/ scheduler/    ModelScope layout: the base T2V model
    stream_unet/        the base UNet fine-tuned for streaming chunks (optional; else unet/)
    cam/ apm/           our modules: config.json + model.safetensors
    image_encoder/      CLIP-like vision tower for the APM (transformers folder)
    pipeline_config.json, model_index.json

The pipeline only holds models and the small conversions between pixels, latents and tokens;
the chunk loop lives in ``streaming``, the sampler in ``sampling``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from torch import nn

from . import __version__
from .config import (
    ApmConfig,
    CamConfig,
    ModelLoadError,
    PipelineConfig,
    StreamConfig,
    UsageError,
    config_from_dict,
    config_to_dict,
    read_json,
)
from .drift import DriftGuard
from .layout import bcfhw_from_fhwc, fold, unfold
from .models.apm import AppearancePreservationModule
from .models.cam import ConditionalAttentionModule, check_frame_encoder_matches
from .models.encoders import ImageEncoder, TextEncoder
from .models.vae import decode_frames, vae_factor
from .models.weights import (
    WEIGHTS_NAME,
    load_diffusers,
    load_state_strict,
    read_module_config,
    save_module,
)
from .offload import Offloader, OnDevice, place
from .sampling import chunk_sampler, max_steps
from .streaming import (
    ChunkModels,
    Request,
    StreamState,
    VideoChunk,
    chunk_count,
    stream,
    stream_timeline,
)
from .timeline import Timeline

STREAMING_PARTS = ("cam", "apm", "image_encoder")


@dataclass
class VideoOutput:
    """A whole generated video, for short videos (long ones: iterate ``pipe.stream``)."""

    frames: np.ndarray  # (N, H, W, 3) uint8
    chunks: list[VideoChunk]  # per-chunk metadata; their ``frames`` are views into ``frames``
    fps: int


def read_pipeline_config(root: Path) -> PipelineConfig:
    """``root/pipeline_config.json``, or the defaults for a ModelScope folder without one."""
    config_file = root / "pipeline_config.json"
    if not config_file.is_file():
        return PipelineConfig()
    return PipelineConfig.from_dict(read_json(config_file))


def load_text_encoder(root: Path, config: PipelineConfig) -> TextEncoder:
    """The folder's text encoder: the package its config names, or ``text_encoder/`` +
    ``tokenizer/``."""
    tokens, mask = config.stream.text_tokens, config.text_attention_mask
    if config.text_encoder_package:
        return TextEncoder.from_package(config.text_encoder_package, tokens, mask)
    return TextEncoder.from_folders(root / "text_encoder", root / "tokenizer", tokens, mask)


class StreamingT2VPipeline(OnDevice):
    def __init__(
        self,
        unet: UNet3DConditionModel,
        vae: AutoencoderKL,
        text_encoder: TextEncoder,
        scheduler_config: dict,
        config: PipelineConfig | None = None,
        stream_unet: UNet3DConditionModel | None = None,
        cam: ConditionalAttentionModule | None = None,
        apm: AppearancePreservationModule | None = None,
        image_encoder: ImageEncoder | None = None,
    ):
        self.unet = unet.eval()
        self.vae = vae.eval()
        self.text_encoder = text_encoder.eval()
        self.scheduler_config = dict(scheduler_config)
        self.config = config or PipelineConfig()
        self.stream_unet = (stream_unet or unet).eval()
        self.cam = cam.eval() if cam is not None else None
        self.apm = apm.eval() if apm is not None else None
        self.image_encoder = image_encoder.eval() if image_encoder is not None else None
        parts = [p is None for p in (cam, apm, image_encoder)]
        if any(parts) and not all(parts):
            raise ModelLoadError(f"streaming needs all of {STREAMING_PARTS}, got only some")
        if self.cam is not None:
            check_frame_encoder_matches(self.cam.config, self.vae_scale_factor)
        if self.apm is not None:  # last: it changes the (possibly shared) UNet's processors
            self.apm.attach(self.stream_unet)
        self.offloader: Offloader | None = None

    def enable_offload(self, device: str | torch.device) -> StreamingT2VPipeline:
        """Run on ``device`` with the UNet groups in CPU memory until their stage runs
        (``offload.py``); the VAE and the encoders move to ``device`` now."""
        self.offloader = Offloader(device)
        for module in (self.vae, self.text_encoder, self.image_encoder):
            if module is not None:
                module.to(self.offloader.device)
        self.offloader.park(*[m for m in (self.unet, self.stream_unet, self.cam, self.apm) if m])
        return self

    def use_base(self) -> None:
        """Before the first chunk's denoising: the base UNet on the device."""
        if self.offloader:
            self.offloader.use("base", self.unet)

    def use_streaming(self) -> None:
        """Before a streaming chunk: the streaming UNet, CAM and APM on the device."""
        if self.offloader:
            group = [m for m in (self.stream_unet, self.cam, self.apm) if m is not None]
            self.offloader.use("streaming", *group)

    # ----------------------------------------------------------------- construction
    def add_streaming_modules(
        self,
        image_encoder: ImageEncoder,
        cam_config: CamConfig | None = None,
        apm_config: ApmConfig | None = None,
    ) -> StreamingT2VPipeline:
        """Fresh (untrained) CAM and APM for this base model: the start of streaming training.

        Untrained, they leave the base model's output unchanged (zero-initialized outputs).
        The new pipeline shares this one's models; the APM's processors are installed in the
        shared streaming UNet (they pass plain text contexts through unchanged).
        """
        apm_config = apm_config or ApmConfig(
            image_embed_dim=image_encoder.dim,
            text_tokens=self.config.stream.text_tokens,
            cross_attention_dim=self.stream_unet.config.cross_attention_dim,
        )
        return StreamingT2VPipeline(
            self.unet,
            self.vae,
            self.text_encoder,
            self.scheduler_config,
            self.config,
            stream_unet=self.stream_unet,
            cam=ConditionalAttentionModule.from_unet(
                self.stream_unet, cam_config or CamConfig.for_vae(self.vae_scale_factor)
            ),
            apm=AppearancePreservationModule.for_unet(self.stream_unet, apm_config),
            image_encoder=image_encoder,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        text_encoder: nn.Module | None = None,
        stream_dtype: torch.dtype | None = None,
    ) -> StreamingT2VPipeline:
        """Load a pipeline folder (or a ModelScope diffusers folder, as a base-only pipeline).

        Every component is loaded strictly: missing or unexpected weights raise a
        ModelLoadError that names them. ``text_encoder`` replaces the folder's (e.g. a
        ``PromptTable`` where the encoder's package is not installed). ``stream_dtype``: the
        streaming stage's precision when it differs from ``dtype`` (``to``).
        """
        root = Path(path)
        if not root.is_dir():
            raise ModelLoadError(f"model folder not found: {root}")
        config = read_pipeline_config(root)
        unet = load_diffusers(UNet3DConditionModel, root / "unet")
        vae = load_diffusers(AutoencoderKL, root / "vae")
        text_encoder = text_encoder or load_text_encoder(root, config)
        scheduler_config = read_json(root / "scheduler" / "scheduler_config.json")
        stream_unet = (
            load_diffusers(UNet3DConditionModel, root / "stream_unet")
            if (root / "stream_unet").is_dir()
            else None
        )
        present = [(root / part).is_dir() for part in STREAMING_PARTS]
        if any(present) and not all(present):
            missing = [p for p, ok in zip(STREAMING_PARTS, present, strict=True) if not ok]
            raise ModelLoadError(f"{root} has streaming modules but lacks {missing}")
        cam = apm = image_encoder = None
        if all(present):
            cam = _load_cam(root / "cam")
            apm = _load_apm(root / "apm")
            image_encoder = ImageEncoder.from_folder(root / "image_encoder")
        pipe = cls(
            unet, vae, text_encoder, scheduler_config, config, stream_unet, cam, apm, image_encoder
        )
        return pipe.to(device, dtype, stream_dtype)

    def save_pretrained(self, path: str | Path) -> None:
        """Write the pipeline folder (safetensors weights, JSON configs)."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(root / "unet")
        if self.stream_unet is not self.unet:
            self.stream_unet.save_pretrained(root / "stream_unet")
        self.vae.save_pretrained(root / "vae")
        if not self.config.text_encoder_package:
            self.text_encoder.model.save_pretrained(root / "text_encoder")
            self.text_encoder.tokenizer.save_pretrained(root / "tokenizer")
        DDIMScheduler.from_config(self.scheduler_config).save_pretrained(root / "scheduler")
        (root / "pipeline_config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        if self.cam is not None:
            save_module(self.cam, root / "cam", _cam_config_dict(self.cam))
            save_module(
                self.apm,
                root / "apm",
                config_to_dict(self.apm.config) | {"num_layers": len(self.apm.mixers)},
            )
            self.image_encoder.save_pretrained(root / "image_encoder")
        index = {"_class_name": "StreamingT2VPipeline", "_streamingt2v_version": __version__}
        (root / "model_index.json").write_text(json.dumps(index, indent=2))

    def to(
        self,
        device: str | torch.device,
        dtype: torch.dtype | None = None,
        stream_dtype: torch.dtype | None = None,
    ):
        """Move every model to ``device`` and cast it to ``dtype``; with ``stream_dtype``, the
        streaming stage (its own UNet, CAM, APM, image encoder) gets that precision instead
        (``PipelineConfig.stream_dtype``)."""
        streaming = self._streaming_modules()
        if stream_dtype is not None and streaming and self.stream_unet is self.unet:
            raise ModelLoadError(
                "a separate streaming precision needs the folder's own stream_unet/ (the "
                "streaming chunks here use the base UNet)"
            )
        for module in self._modules():
            cast = stream_dtype if stream_dtype is not None and module in streaming else dtype
            place(module, device, cast)
        return self

    def _streaming_modules(self) -> list[nn.Module]:
        if self.cam is None:
            return []
        return [self.stream_unet, self.cam, self.apm, self.image_encoder]

    def _modules(self):
        modules = [self.unet, self.stream_unet, self.vae, self.text_encoder]
        return modules + [m for m in (self.cam, self.apm, self.image_encoder) if m is not None]

    # ----------------------------------------------------------------- conversions
    @property
    def dtype(self) -> torch.dtype:
        """The first chunk's precision (the base UNet's)."""
        return self.unet.dtype

    @property
    def stream_dtype(self) -> torch.dtype:
        """The streaming chunks' precision (their UNet's)."""
        return self.stream_unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        return vae_factor(self.vae)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) in pixels of the frames the model makes."""
        size = self.unet.config.sample_size * self.vae_scale_factor
        return size, size

    def check_size(self, size: tuple[int, int]) -> None:
        """A UsageError naming the bad side unless the models can make (height, width): any
        multiple of the VAE's factor (the UNets fit their upsampling to odd latent sides)."""
        m = self.vae_scale_factor
        for name, value in zip(("height", "width"), size, strict=True):
            if value % m:
                below, above = max(m, value // m * m), (value // m + 1) * m
                raise UsageError(
                    f"{name} {value} is not a multiple of {m} (the VAE's factor); "
                    f"try {below} or {above}"
                )

    def latent_shape(self, frames: int, size: tuple[int, int] | None = None) -> tuple[int, ...]:
        height, width = size or self.frame_size
        f = self.vae_scale_factor
        return (1, self.unet.config.in_channels, frames, height // f, width // f)

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> torch.Tensor:
        """(2, T, D) text tokens as [negative, prompt] for classifier-free guidance."""
        return self.text_encoder([negative_prompt, prompt]).to(self.dtype)

    def encode_anchor(self, frame: torch.Tensor) -> torch.Tensor:
        """(2, E) APM embeddings as [all-zeros image, anchor]; frame: (1, 3, H, W) in [-1, 1]."""
        self._require_streaming()
        anchor = self.image_encoder(frame)
        return torch.cat([self.image_encoder.unconditional(1), anchor]).to(self.stream_dtype)

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) frames in [-1, 1] -> (N, E) image embeddings (the APM's encoder)."""
        self._require_streaming()
        return self.image_encoder(frames)

    def decode_latents(self, latents: torch.Tensor, frames_per_batch: int = 8) -> torch.Tensor:
        """(1, C, F, h, w) latents -> (1, 3, F, H, W) pixels in [-1, 1], a few frames at a time."""
        frames = fold(latents)  # (F, C, h, w)
        pixels = [decode_frames(self.vae, part) for part in frames.split(frames_per_batch)]
        return unfold(torch.cat(pixels), 1)  # (1, 3, F, H, W)

    def to_model_frames(
        self, frames_fhwc: np.ndarray, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """(F, H, W, 3) uint8 -> (1, 3, F, H, W) in [-1, 1] on the model's device; frames
        must have ``size`` (default: the model's own)."""
        expected = tuple(size or self.frame_size)
        if tuple(frames_fhwc.shape[1:3]) != expected:
            raise UsageError(f"frames are {frames_fhwc.shape[1:3]}, the model makes {expected}")
        return bcfhw_from_fhwc(frames_fhwc, self.device).to(self.dtype)

    def _require_streaming(self) -> None:
        if self.cam is None:
            raise UsageError(
                "this model has no streaming modules (cam/, apm/, image_encoder/): it can make "
                f"only the first {self.config.stream.chunk_frames} frames"
            )

    # ----------------------------------------------------------------- generation
    def request(
        self,
        prompt: str,
        num_frames: int,
        *,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        scheduler: str | None = None,
        negative_prompt: str | None = None,
        stream_guidance: float | None = None,
        replace_overlap: bool | None = None,
        height: int | None = None,
        width: int | None = None,
        method: str = "streamingt2v",
    ) -> Request:
        """The one place where a run's settings are made: the folder's defaults
        (``pipeline_config.json``), each setting the caller gave (not None) replacing its
        default, validated. Any height and width that are multiples of the VAE's factor."""
        overrides = dict(
            steps=steps,
            guidance=guidance,
            scheduler=scheduler,
            negative_prompt=negative_prompt,
            stream_guidance=stream_guidance,
            replace_overlap=replace_overlap,
        )
        sample_config = dataclasses.replace(
            self.config.sample, **{k: v for k, v in overrides.items() if v is not None}
        )
        native = self.frame_size
        size = (native[0] if height is None else height, native[1] if width is None else width)
        request = Request(prompt, num_frames, seed, sample_config, size, method)
        sample_config.check_steps(max_steps(self.scheduler_config))
        self.check_size(size)
        if chunk_count(num_frames, self.config.stream) > 1:
            self._require_streaming()
        return request

    def prompt_warnings(self, prompt: str) -> list[str]:
        """What a user should know before this model reads ``prompt``: words it was never
        trained on (when its folder names a vocabulary) and text past its text encoder's
        tokens. Warnings, not errors: a paraphrase may still work."""
        warnings = []
        vocabulary = self.config.vocabulary
        if vocabulary is not None:
            words = dict.fromkeys(re.findall(r"[a-z]+", prompt.lower()))  # in order, once
            unknown = [w for w in words if w not in set(vocabulary)]
            if unknown:
                warnings.append(
                    f"this model has never seen the words {', '.join(map(repr, unknown))}: it "
                    f"was trained on a small vocabulary ({' '.join(vocabulary)}) and will not "
                    "draw what it has not seen; for open prompts use a full-size model "
                    "(docs/full-size.md)"
                )
        # A PromptTable (training's closed caption set) cuts nothing: it has no tokenizer.
        ignored_text = getattr(self.text_encoder, "ignored_text", lambda _: "")
        cut = ignored_text(prompt)
        if cut:
            warnings.append(
                f"the prompt is longer than the text encoder's {self.text_encoder.max_tokens} "
                f"tokens; the end is ignored: {cut!r}"
            )
        return warnings

    def chunk_models(self) -> ChunkModels:
        """What the chunk loop (``streaming``) needs of this pipeline."""
        return ChunkModels(
            stream=self.config.stream,
            encode_prompt=self.encode_prompt,
            encode_anchor=self.encode_anchor,
            to_model_frames=self.to_model_frames,
            latent_shape=self.latent_shape,
            decode=self.decode_latents,
            sampler=partial(chunk_sampler, self),
            embed_frames=self.embed_frames if self.image_encoder is not None else None,
        )

    def stream(
        self,
        prompt: str,
        num_frames: int,
        *,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        scheduler: str | None = None,
        negative_prompt: str | None = None,
        stream_guidance: float | None = None,
        replace_overlap: bool | None = None,
        height: int | None = None,
        width: int | None = None,
        method: str = "streamingt2v",
        progress: bool = False,
        resume: StreamState | None = None,
        guard: DriftGuard | None = None,
    ) -> Iterator[VideoChunk]:
        """Yield chunks of new frames as they are made (constant memory in the video length).

        Args:
            prompt: the text prompt.
            num_frames: frames in all, any integer >= 1.
            seed: chunk k's noise derives from (seed, k).
            steps: denoising steps per chunk (None: the model's).
            guidance: the first chunk's classifier-free guidance (None: the model's).
            scheduler: "ddim" (eta 1) or "dpm" (DPM-Solver++) (None: the model's).
            negative_prompt: the guidance's negative prompt (None: the model's, empty).
            stream_guidance: the streaming chunks' guidance (None: the model's, else
                ``guidance``).
            replace_overlap: ``SampleConfig.replace_overlap`` (None: the model's).
            height, width: frame size in pixels (None: the model's own).
            method: the method or a baseline/ablation (``methods.METHODS``).
            progress: progress bars on stderr.
            resume: continue from a ``StreamState`` (``chunk.state`` of an earlier stream,
                ``StreamState.load``, or ``streaming.state_at`` to branch from chunk k):
                the frames from ``resume.made`` on, exactly as an uninterrupted stream
                with these settings makes them.
            guard: re-sample streaming chunks that drift or cut (``drift.DriftGuard``);
                each chunk's tries are in ``chunk.tries``.
        """
        request = self.request(
            prompt,
            num_frames,
            seed=seed,
            steps=steps,
            guidance=guidance,
            scheduler=scheduler,
            negative_prompt=negative_prompt,
            stream_guidance=stream_guidance,
            replace_overlap=replace_overlap,
            height=height,
            width=width,
            method=method,
        )
        return stream(self.chunk_models(), request, progress, resume, guard)

    def stream_timeline(
        self,
        timeline: Timeline,
        *,
        progress: bool = False,
        resume: StreamState | None = None,
        guard: DriftGuard | None = None,
        **settings: Any,
    ) -> Iterator[VideoChunk]:
        """Yield a prompt timeline's video chunk by chunk (``timeline.Timeline``: segments of
        a prompt and a number of frames, each with its own seed, guidance and negative
        prompt if given). ``settings``: ``request``'s keyword arguments (seed, steps, ...),
        the defaults of every segment. ``resume``: as in ``stream``."""
        request = self.request(timeline.segments[0].prompt, timeline.num_frames, **settings)
        return stream_timeline(self.chunk_models(), request, timeline, progress, resume, guard)

    def __call__(
        self,
        prompt: str,
        num_frames: int,
        *,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        scheduler: str | None = None,
        negative_prompt: str | None = None,
        stream_guidance: float | None = None,
        replace_overlap: bool | None = None,
        height: int | None = None,
        width: int | None = None,
        method: str = "streamingt2v",
        progress: bool = False,
    ) -> VideoOutput:
        """Generate a whole video in memory (for short videos); the arguments of ``stream``."""
        chunks = list(
            self.stream(
                prompt,
                num_frames,
                seed=seed,
                steps=steps,
                guidance=guidance,
                scheduler=scheduler,
                negative_prompt=negative_prompt,
                stream_guidance=stream_guidance,
                replace_overlap=replace_overlap,
                height=height,
                width=width,
                method=method,
                progress=progress,
            )
        )
        frames = np.concatenate([c.frames for c in chunks])
        return VideoOutput(frames=frames, chunks=chunks, fps=self.config.fps)


def _cam_config_dict(cam: ConditionalAttentionModule) -> dict:
    return {"cam": config_to_dict(cam.config), "unet_config": _plain(cam.unet_config)}


def _plain(unet_config: dict) -> dict:
    """A diffusers config as plain JSON (drops private keys such as ``_class_name``)."""
    return {
        k: v
        for k, v in json.loads(json.dumps(unet_config, default=str)).items()
        if not k.startswith("_")
    }


def _load_cam(folder: Path) -> ConditionalAttentionModule:
    data = read_module_config(folder)
    try:
        cam = ConditionalAttentionModule(
            data["unet_config"], config_from_dict(CamConfig, data["cam"])
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ModelLoadError(f"bad CAM config in {folder}: {err}") from err
    load_state_strict(cam, folder / WEIGHTS_NAME)
    return cam


def _load_apm(folder: Path) -> AppearancePreservationModule:
    data = dict(read_module_config(folder))
    layers = data.pop("num_layers", None)
    if not isinstance(layers, int):
        raise ModelLoadError(f"APM config in {folder} lacks an integer num_layers")
    apm = AppearancePreservationModule(config_from_dict(ApmConfig, data), layers)
    load_state_strict(apm, folder / WEIGHTS_NAME)
    return apm


__all__ = ["StreamingT2VPipeline", "VideoOutput", "StreamConfig"]
