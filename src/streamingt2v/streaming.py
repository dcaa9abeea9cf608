"""The autoregressive chunk loop (paper Sec. 4, "Streaming T2V").

Chunk 0 comes from the base text-to-video model alone. Every later chunk has F frames whose
first F_cond positions stand for the last F_cond frames of the output so far: those frames
condition the chunk through the CAM, and the chunk's own frames at those positions are
dropped. So each later chunk adds F - F_cond frames: 16 + 8 (n - 1) frames for n chunks.
The APM anchor is frame 0 of chunk 0, for every chunk.

Memory stays constant in the video's length: a chunk is decoded and handed out as soon as it
is made, and the loop keeps only the conditioning frames and the anchor embedding.

Each chunk's noise (initial latents and the stochastic sampler steps) comes from one
generator seeded by (seed, chunk index), so any chunk can be regenerated alone from its
conditioning frames and the anchor, bit for bit (tested).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import METHODS, SampleConfig, StreamConfig, UsageError, check_seed
from .freenoise import rescheduled_noise, windowed_temporal_attention
from .models.unet import video_latents
from .sampling import make_scheduler, sample, stream_denoiser, text_denoiser

if TYPE_CHECKING:
    from .pipeline import StreamingT2VPipeline


FREENOISE_STRIDE = 4  # frames between FreeNoise's attention windows (its paper's default)


@dataclass
class Request:
    """What to generate. ``num_frames`` may be any integer >= 1 (see ``chunk_count``)."""

    prompt: str
    num_frames: int
    seed: int = 0
    sample: SampleConfig = field(default_factory=SampleConfig)
    size: tuple[int, int] | None = None  # (height, width) in pixels; None: the model's own
    method: str = "streamingt2v"  # or a baseline / ablation of METHODS

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise UsageError(f"prompt must be a non-empty string, got {self.prompt!r}")
        n = self.num_frames
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UsageError(f"number of frames must be an integer >= 1, got {n!r}")
        check_seed(self.seed)
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}; choose one of {list(METHODS)}")
        if self.size is None:
            return
        if not isinstance(self.size, (tuple, list)) or len(self.size) != 2:
            raise UsageError(f"size must be (height, width), got {self.size!r}")
        for name, value in zip(("height", "width"), self.size, strict=True):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass
class VideoChunk:
    """One chunk's new frames, as handed out by ``stream``."""

    index: int
    start: int  # index in the output video of this chunk's first frame
    frames: np.ndarray  # (F_new, H, W, 3) uint8
    seed: int  # the seed of this chunk's generator
    seconds: float  # wall time to make it, decoding included


def chunk_count(num_frames: int, stream: StreamConfig) -> int:
    """Chunks needed for ``num_frames``: enough to cover them; the last one is trimmed.

    A request shorter than one chunk still generates the whole first chunk (F frames) and
    keeps its first ``num_frames``.
    """
    extra = max(0, num_frames - stream.chunk_frames)
    return 1 + math.ceil(extra / stream.new_frames)


def chunk_seed(seed: int, index: int) -> int:
    """A 63-bit seed for chunk ``index`` of a run with ``seed``, independent across chunks."""
    digest = hashlib.sha256(f"streamingt2v:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generate_chunk(
    pipe: StreamingT2VPipeline,
    request: Request,
    index: int,
    context: torch.Tensor,
    cond_frames: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Make chunk ``index`` and return its new frames decoded, (1, 3, F_new, H, W) in [-1, 1].

    Chunk 0 needs only the text context (2, T, D). A later chunk needs the conditioning frames
    (1, 3, F_cond, H, W) and the APM image embeddings (2, E) as [zeros image, anchor].
    """
    stream = pipe.config.stream
    generator = torch.Generator("cpu").manual_seed(chunk_seed(request.seed, index))
    shape = pipe.latent_shape(stream.chunk_frames, request.size)
    noise = torch.randn(shape, generator=generator)
    streaming = index > 0 and request.method != "independent"
    dtype = pipe.stream_dtype if streaming else pipe.dtype
    noise = noise.to(device=pipe.device, dtype=dtype)  # (1, C, F, h, w)
    context = context.to(dtype)
    scheduler = make_scheduler(request.sample, pipe.scheduler_config, index)
    known = None
    if index == 0 or request.method == "independent":
        pipe.use_base()
        denoise = text_denoiser(pipe.unet, context, request.sample.guidance)
    else:
        if cond_frames is None or image_embeds is None:
            raise ValueError(f"chunk {index} needs conditioning frames and the anchor embedding")
        pipe.use_streaming()
        denoise = stream_denoiser(
            pipe.stream_unet,
            None if request.method == "no-cam" else pipe.cam,
            None if request.method == "no-apm" else pipe.apm,
            context,
            image_embeds,
            cond_frames,
            request.sample.chunk_guidance,
        )
        if request.sample.replace_overlap:
            known = video_latents(pipe.vae, cond_frames)  # (1, C, F_cond, h, w)
    latents = sample(
        denoise,
        noise,
        scheduler,
        generator,
        eta=request.sample.eta,
        progress=progress,
        desc=f"chunk {index}",
        known=known,
    )
    keep_from = 0 if index == 0 else stream.cond_frames
    return pipe.decode_latents(latents[:, :, keep_from:])


def regenerate_chunk(
    pipe: StreamingT2VPipeline,
    request: Request,
    index: int,
    cond_frames: np.ndarray | None = None,
    anchor: np.ndarray | None = None,
) -> np.ndarray:
    """Chunk ``index`` of ``request`` alone, from the frames a full run had produced before it.

    cond_frames: (F_cond, H, W, 3) uint8, the F_cond frames preceding the chunk in the video;
    anchor: (H, W, 3) uint8, the video's frame 0. Returns the chunk's new frames, untrimmed,
    (F_new, H, W, 3) uint8: equal to that chunk inside the full run.
    """
    with torch.inference_mode():
        context = chunk_contexts(pipe, request)[min(index, 1)]
        cond = embeds = None
        if index > 0:
            if cond_frames is None or anchor is None:
                raise UsageError(f"chunk {index} needs its conditioning frames and the anchor")
            cond = pipe.to_model_frames(cond_frames, request.size)
            embeds = pipe.encode_anchor(pipe.to_model_frames(anchor[None], request.size)[:, :, 0])
        frames = generate_chunk(pipe, request, index, context, cond, embeds)
    return to_uint8_fhwc(frames[0])


def chunk_contexts(pipe: StreamingT2VPipeline, request: Request) -> list[torch.Tensor]:
    """[the first chunk's, the streaming chunks'] text contexts (2, T, D) as [negative,
    prompt]: they differ where the first chunk's guidance has no negative prompt
    (``SampleConfig.first_chunk_negative_prompt``, the official setting)."""
    sample = request.sample
    streaming = pipe.encode_prompt(request.prompt, sample.negative_prompt_of(1))
    if sample.negative_prompt_of(0) == sample.negative_prompt_of(1):
        return [streaming, streaming]
    return [pipe.encode_prompt(request.prompt, sample.negative_prompt_of(0)), streaming]


def stream(
    pipe: StreamingT2VPipeline, request: Request, progress: bool = False
) -> Iterator[VideoChunk]:
    """Yield the video chunk by chunk; exactly ``request.num_frames`` frames in all.

    The conditioning frames and the anchor are taken from the uint8 frames handed out, so a
    chunk depends only on what the video holds (and can be regenerated from a saved video).
    """
    if request.method == "freenoise":
        yield _freenoise(pipe, request, progress)
        return
    stream_cfg = pipe.config.stream
    total = chunk_count(request.num_frames, stream_cfg)
    with torch.inference_mode():
        contexts = chunk_contexts(pipe, request)
    made = 0
    cond = embeds = None
    for index in tqdm(range(total), desc="chunks", disable=not progress):
        started = time.perf_counter()
        with torch.inference_mode():
            context = contexts[min(index, 1)]
            decoded = generate_chunk(pipe, request, index, context, cond, embeds, progress)
            frames = to_uint8_fhwc(decoded[0])  # (F_new, H, W, 3)
            if index == 0 and total > 1:
                anchor = pipe.to_model_frames(frames[:1], request.size)[:, :, 0]
                embeds = pipe.encode_anchor(anchor)
            cond = pipe.to_model_frames(frames[-stream_cfg.cond_frames :], request.size)
        keep = min(len(frames), request.num_frames - made)
        yield VideoChunk(
            index=index,
            start=made,
            frames=frames[:keep],
            seed=chunk_seed(request.seed, index),
            seconds=time.perf_counter() - started,
        )
        made += keep


def _freenoise(pipe: StreamingT2VPipeline, request: Request, progress: bool) -> VideoChunk:
    """The FreeNoise baseline's whole video as one chunk (``freenoise.py``)."""
    started = time.perf_counter()
    window = pipe.config.stream.chunk_frames
    seed = chunk_seed(request.seed, 0)
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = pipe.latent_shape(max(request.num_frames, window), request.size)
    noise = rescheduled_noise(shape, window, FREENOISE_STRIDE, generator)
    with torch.inference_mode():
        context = pipe.encode_prompt(request.prompt, request.sample.negative_prompt)
        pipe.use_base()
        denoise = text_denoiser(pipe.unet, context, request.sample.guidance)
        scheduler = make_scheduler(request.sample, pipe.scheduler_config)
        with windowed_temporal_attention(pipe.unet, window, FREENOISE_STRIDE):
            latents = sample(
                denoise,
                noise.to(device=pipe.device, dtype=pipe.dtype),
                scheduler,
                generator,
                eta=request.sample.eta,
                progress=progress,
                desc="freenoise",
            )
        frames = to_uint8_fhwc(pipe.decode_latents(latents)[0])[: request.num_frames]
    return VideoChunk(0, 0, frames, seed, time.perf_counter() - started)


def to_uint8_fhwc(video_cfhw: torch.Tensor) -> np.ndarray:
    """(3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8, rounding to nearest."""
    x = ((video_cfhw.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()  # (F, H, W, 3)
