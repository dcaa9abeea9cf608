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

The loop sees the models only through ``ChunkModels`` (``pipe.chunk_models()``): encoding
the prompt and the anchor, the latent shape, decoding, and the factory of chunk samplers
(``methods.chunk_sampler``).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import SampleConfig, StreamConfig, UsageError, check_request
from .freenoise import rescheduled_noise
from .layout import fhwc_from_cfhw
from .methods import FREENOISE_STRIDE, METHODS
from .sampling import ChunkSampler


@dataclass
class Request:
    """What to generate. ``num_frames`` may be any integer >= 1 (see ``chunk_count``).
    ``pipe.request`` makes one from the model's defaults and the caller's settings."""

    prompt: str
    num_frames: int
    seed: int = 0
    sample: SampleConfig = field(default_factory=SampleConfig)
    size: tuple[int, int] | None = None  # (height, width) in pixels; None: the model's own
    method: str = "streamingt2v"  # or a baseline / ablation of methods.METHODS

    def __post_init__(self) -> None:
        check_request(self.prompt, self.num_frames, self.seed, self.size, self.method)


@dataclass
class VideoChunk:
    """One chunk's new frames, as handed out by ``stream``."""

    index: int
    start: int  # index in the output video of this chunk's first frame
    frames: np.ndarray  # (F_new, H, W, 3) uint8
    seed: int  # the seed of this chunk's generator
    seconds: float  # wall time to make it, decoding included


@dataclass(frozen=True)
class ChunkModels:
    """What the chunk loop needs of the models, and nothing more (``pipe.chunk_models()``).

    Tensors: pixels in [-1, 1], (B, C, F, H, W) (``layout``); sizes are (height, width).
    """

    stream: StreamConfig
    # (prompt, negative prompt) -> (2, T, D) text tokens as [negative, prompt]
    encode_prompt: Callable[[str, str], torch.Tensor]
    # (1, 3, H, W) anchor frame -> (2, E) APM embeddings as [unconditional image, anchor]
    encode_anchor: Callable[[torch.Tensor], torch.Tensor]
    # ((F, H, W, 3) uint8, size) -> (1, 3, F, H, W) on the models' device
    to_model_frames: Callable[[np.ndarray, tuple[int, int] | None], torch.Tensor]
    # (frames, size) -> the latent shape (1, C, F, h, w) of one chunk
    latent_shape: Callable[[int, tuple[int, int] | None], tuple[int, ...]]
    # (1, C, F, h, w) latents -> (1, 3, F, H, W) pixels
    decode: Callable[[torch.Tensor], torch.Tensor]
    # (request, chunk index, context, cond_frames, image_embeds) -> the chunk's sampler
    sampler: Callable[..., ChunkSampler]


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
    models: ChunkModels,
    request: Request,
    index: int,
    context: torch.Tensor,
    cond_frames: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Make chunk ``index`` and return its new frames decoded, (1, 3, F_new, H, W) in [-1, 1].

    Chunk 0 needs only the text context (2, T, D). A later chunk needs the conditioning frames
    (1, 3, F_cond, H, W) and the APM image embeddings (2, E) as [unconditional image, anchor].
    """
    stream = models.stream
    generator = torch.Generator("cpu").manual_seed(chunk_seed(request.seed, index))
    noise = torch.randn(models.latent_shape(stream.chunk_frames, request.size), generator=generator)
    sampler = models.sampler(request, index, context, cond_frames, image_embeds)
    latents = sampler(noise, generator, progress=progress, desc=f"chunk {index}")
    keep_from = 0 if index == 0 else stream.cond_frames
    return models.decode(latents[:, :, keep_from:])


def regenerate_chunk(
    models: ChunkModels,
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
        context = chunk_contexts(models, request)[min(index, 1)]
        cond = embeds = None
        if index > 0:
            if cond_frames is None or anchor is None:
                raise UsageError(f"chunk {index} needs its conditioning frames and the anchor")
            cond = models.to_model_frames(cond_frames, request.size)
            embeds = models.encode_anchor(
                models.to_model_frames(anchor[None], request.size)[:, :, 0]
            )
        frames = generate_chunk(models, request, index, context, cond, embeds)
    return fhwc_from_cfhw(frames[0])


def chunk_contexts(models: ChunkModels, request: Request) -> list[torch.Tensor]:
    """[the first chunk's, the streaming chunks'] text contexts (2, T, D) as [negative,
    prompt]: they differ where the first chunk's guidance has no negative prompt
    (``SampleConfig.first_chunk_negative_prompt``, the official setting)."""
    sample = request.sample
    streaming = models.encode_prompt(request.prompt, sample.negative_prompt_of(1))
    if sample.negative_prompt_of(0) == sample.negative_prompt_of(1):
        return [streaming, streaming]
    return [models.encode_prompt(request.prompt, sample.negative_prompt_of(0)), streaming]


def stream(models: ChunkModels, request: Request, progress: bool = False) -> Iterator[VideoChunk]:
    """Yield the video chunk by chunk; exactly ``request.num_frames`` frames in all.

    The conditioning frames and the anchor are taken from the uint8 frames handed out, so a
    chunk depends only on what the video holds (and can be regenerated from a saved video).
    """
    if METHODS[request.method].whole_video:
        yield _whole_video(models, request, progress)
        return
    stream_cfg = models.stream
    total = chunk_count(request.num_frames, stream_cfg)
    with torch.inference_mode():
        contexts = chunk_contexts(models, request)
    made = 0
    cond = embeds = None
    for index in tqdm(range(total), desc="chunks", disable=not progress):
        started = time.perf_counter()
        with torch.inference_mode():
            context = contexts[min(index, 1)]
            decoded = generate_chunk(models, request, index, context, cond, embeds, progress)
            frames = fhwc_from_cfhw(decoded[0])  # (F_new, H, W, 3)
            if index == 0 and total > 1:
                anchor = models.to_model_frames(frames[:1], request.size)[:, :, 0]
                embeds = models.encode_anchor(anchor)
            cond = models.to_model_frames(frames[-stream_cfg.cond_frames :], request.size)
        keep = min(len(frames), request.num_frames - made)
        yield VideoChunk(
            index=index,
            start=made,
            frames=frames[:keep],
            seed=chunk_seed(request.seed, index),
            seconds=time.perf_counter() - started,
        )
        made += keep


def _whole_video(models: ChunkModels, request: Request, progress: bool) -> VideoChunk:
    """The FreeNoise baseline's whole video as one chunk (``freenoise.py``): rescheduled
    noise over all frames, sampled at once."""
    started = time.perf_counter()
    window = models.stream.chunk_frames
    seed = chunk_seed(request.seed, 0)
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = models.latent_shape(max(request.num_frames, window), request.size)
    noise = rescheduled_noise(shape, window, FREENOISE_STRIDE, generator)
    with torch.inference_mode():
        context = models.encode_prompt(request.prompt, request.sample.negative_prompt)
        sampler = models.sampler(request, 0, context)
        latents = sampler(noise, generator, progress=progress, desc="freenoise")
        frames = fhwc_from_cfhw(models.decode(latents)[0])[: request.num_frames]
    return VideoChunk(0, 0, frames, seed, time.perf_counter() - started)
