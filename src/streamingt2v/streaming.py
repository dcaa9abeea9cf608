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

After every chunk the loop hands out a ``StreamState``: the conditioning frames exactly as
the next chunk consumes them, the anchor frame and the frames made but not yet handed out.
A stream started from one (``stream(..., resume=state)``) continues exactly: resuming a
stopped run, extending a finished video, or branching from chunk k (``state_at``) with
another seed or prompt.

The loop sees the models only through ``ChunkModels`` (``pipe.chunk_models()``): encoding
the prompt and the anchor, the latent shape, decoding, and the factory of chunk samplers
(``sampling.chunk_sampler``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import SampleConfig, StreamConfig, UsageError, check_request
from .drift import DriftGuard, chunk_scores
from .freenoise import rescheduled_noise
from .layout import fhwc_from_cfhw, fold
from .methods import FREENOISE_STRIDE, METHODS
from .sampling import ChunkSampler
from .timeline import Segment, Timeline
from .video_io import partial_path, remove_path


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
class StreamState:
    """Everything the chunks after ``next_index - 1`` need, as uint8 frames: a stream resumed
    from it makes what the uninterrupted stream would have made, bit for bit."""

    next_index: int  # the next chunk to make
    made: int  # frames handed out so far
    cond_frames: np.ndarray  # (F_cond, H, W, 3) uint8, as the next chunk consumes them
    anchor: np.ndarray  # (H, W, 3) uint8: the video's frame 0 (the APM's anchor)
    # (P, H, W, 3) uint8: frames of the last chunk made but not handed out (a request that
    # ends inside a chunk); an extension hands them out first.
    pending: np.ndarray

    @classmethod
    def from_video(cls, video: Iterable[np.ndarray], stream: StreamConfig) -> StreamState:
        """The state after ``video`` (its (H, W, 3) uint8 frames: an (N, H, W, 3) array or
        ``video_io.iter_video``; any video of the model's size): its last F_cond frames and
        its frame 0, the chunks numbered on as a run of N frames would be. For a video
        without its saved state (another model's, or one whose compressed pixels are all that
        is left). Holds F_cond + 1 frames in memory, whatever the video's length."""
        first, tail, count = None, deque(maxlen=stream.cond_frames), 0
        for frame in video:
            first = frame.copy() if first is None else first
            tail.append(frame)
            count += 1
        if count < stream.cond_frames:
            raise UsageError(
                f"the video has {count} frames; continuing it needs at least {stream.cond_frames}"
            )
        empty = np.zeros((0, *first.shape), np.uint8)
        return cls(chunk_count(count, stream), count, np.stack(tail), first, empty)

    def check(self, stream: StreamConfig) -> None:
        """A UsageError unless the state fits chunks of ``stream``: the frames it holds end
        within chunk ``next_index - 1`` (at its end for a video's own state)."""
        held = self.made + len(self.pending)
        low, high = frames_made(self.next_index - 1, stream), frames_made(self.next_index, stream)
        if self.next_index < 1 or not low < held <= high:
            raise UsageError(
                f"state after chunk {self.next_index - 1} holds {held} frames; chunks of "
                f"{stream.chunk_frames} with {stream.cond_frames} conditioning frames end that "
                f"chunk at frame {high}"
            )
        if len(self.cond_frames) != stream.cond_frames:
            raise UsageError(
                f"state has {len(self.cond_frames)} conditioning frames, the model takes "
                f"{stream.cond_frames}"
            )

    def save(self, path: Path, meta: dict[str, Any] | None = None) -> None:
        """One safetensors file (replaced in one rename): the frames as tensors, the indices
        and ``meta`` (settings, model hashes: JSON) in its metadata."""
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        tensors = {"cond_frames": self.cond_frames, "anchor": self.anchor}
        if len(self.pending):
            tensors["pending"] = self.pending
        info = {"next_index": self.next_index, "made": self.made, "meta": meta or {}}
        path = Path(path)
        tmp = partial_path(path)
        try:
            save_file(
                {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()},
                tmp,
                metadata={"streamingt2v_state": json.dumps(info)},
            )
            os.replace(tmp, path)
        except SafetensorError as err:  # its I/O errors (a full disk) as the OSError they are
            code = re.search(r"os error (\d+)", str(err))
            if code is None:
                raise
            number = int(code.group(1))
            raise OSError(number, os.strerror(number), str(path)) from err
        finally:
            remove_path(tmp)

    @classmethod
    def load(cls, path: Path) -> tuple[StreamState, dict[str, Any]]:
        """The state saved at ``path`` and its ``meta``."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "np") as f:
                info = json.loads((f.metadata() or {})["streamingt2v_state"])
                arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except (OSError, KeyError, ValueError, SafetensorError) as err:
            raise UsageError(f"not a stream state file: {path} ({err})") from err
        anchor = arrays["anchor"]
        pending = arrays.get("pending", np.zeros((0, *anchor.shape), np.uint8))
        state = cls(info["next_index"], info["made"], arrays["cond_frames"], anchor, pending)
        return state, info["meta"]


@dataclass
class VideoChunk:
    """One chunk's new frames, as handed out by ``stream``."""

    index: int
    start: int  # index in the output video of this chunk's first frame
    frames: np.ndarray  # (F_new, H, W, 3) uint8
    seed: int  # the seed of this chunk's generator
    seconds: float  # wall time to make it, decoding included
    state: StreamState | None = None  # where the stream stands after this chunk
    # The drift guard's samples of this chunk: each one's seed and measurements (``drift``)
    tries: list[dict[str, float]] = field(default_factory=list)


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
    # (N, 3, H, W) frames -> (N, E) image embeddings (the APM's encoder; the drift guard's)
    embed_frames: Callable[[torch.Tensor], torch.Tensor] | None = None


def chunk_count(num_frames: int, stream: StreamConfig) -> int:
    """Chunks needed for ``num_frames``: enough to cover them; the last one is trimmed.

    A request shorter than one chunk still generates the whole first chunk (F frames) and
    keeps its first ``num_frames``.
    """
    extra = max(0, num_frames - stream.chunk_frames)
    return 1 + math.ceil(extra / stream.new_frames)


def frames_made(chunks: int, stream: StreamConfig) -> int:
    """Frames that the first ``chunks`` chunks make (untrimmed)."""
    return 0 if chunks < 1 else stream.chunk_frames + (chunks - 1) * stream.new_frames


def state_at(video: Iterable[np.ndarray], index: int, stream: StreamConfig) -> StreamState:
    """The state before chunk ``index`` of ``video`` (its (H, W, 3) uint8 frames, an array
    or ``video_io.iter_video``; a video this model made): to branch from that chunk on,
    keeping the frames before it. Exact where the frames are (a PNG folder, frames in
    memory); a compressed video's frames are re-read pixels."""
    if index < 1:
        raise UsageError("branching from chunk 0 remakes the whole video: generate it anew")
    start = frames_made(index, stream)
    state = StreamState.from_video(itertools.islice(iter(video), start), stream)
    if state.made < start:
        raise UsageError(
            f"chunk {index} starts at frame {start}, past the video's {state.made} frames"
        )
    return state  # its chunks end at ``start``


def chunk_seed(seed: int, index: int, attempt: int = 0) -> int:
    """A 63-bit seed for chunk ``index`` of a run with ``seed``, independent across chunks;
    ``attempt`` > 0: the drift guard's further samples of that chunk."""
    key = f"streamingt2v:{seed}:{index}" + (f":{attempt}" if attempt else "")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generate_chunk(
    models: ChunkModels,
    request: Request,
    index: int,
    context: torch.Tensor,
    cond_frames: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
    progress: bool = False,
    attempt: int = 0,
) -> torch.Tensor:
    """Make chunk ``index`` and return its new frames decoded, (1, 3, F_new, H, W) in [-1, 1].

    Chunk 0 needs only the text context (2, T, D). A later chunk needs the conditioning frames
    (1, 3, F_cond, H, W) and the APM image embeddings (2, E) as [unconditional image, anchor].
    """
    stream = models.stream
    generator = torch.Generator("cpu").manual_seed(chunk_seed(request.seed, index, attempt))
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
            embeds = anchor_embeds(models, anchor, request.size)
        frames = generate_chunk(models, request, index, context, cond, embeds)
    return fhwc_from_cfhw(frames[0])


def anchor_embeds(
    models: ChunkModels, anchor: np.ndarray, size: tuple[int, int] | None
) -> torch.Tensor:
    """(2, E) APM embeddings of the anchor frame (H, W, 3) uint8."""
    frame = models.to_model_frames(anchor[None], size)  # (1, 3, 1, H, W)
    return models.encode_anchor(frame[:, :, 0])


def chunk_contexts(models: ChunkModels, request: Request) -> list[torch.Tensor]:
    """[the first chunk's, the streaming chunks'] text contexts (2, T, D) as [negative,
    prompt]: they differ where the first chunk's guidance has no negative prompt
    (``SampleConfig.first_chunk_negative_prompt``, the official setting)."""
    sample = request.sample
    streaming = models.encode_prompt(request.prompt, sample.negative_prompt_of(1))
    if sample.negative_prompt_of(0) == sample.negative_prompt_of(1):
        return [streaming, streaming]
    return [models.encode_prompt(request.prompt, sample.negative_prompt_of(0)), streaming]


def stream(
    models: ChunkModels,
    request: Request,
    progress: bool = False,
    resume: StreamState | None = None,
    guard: DriftGuard | None = None,
) -> Iterator[VideoChunk]:
    """Yield the video chunk by chunk; exactly ``request.num_frames`` frames in all.

    The conditioning frames and the anchor are taken from the uint8 frames handed out, so a
    chunk depends only on what the video holds (and can be regenerated from a saved video).
    ``resume``: continue from that state (its pending frames first), as if the stream had
    run to it with this request: frames ``resume.made`` on.
    """
    if METHODS[request.method].whole_video:
        if resume is not None:
            raise UsageError(f"--method {request.method} makes the whole video at once")
        yield _whole_video(models, request, progress)
        return
    stream_cfg = models.stream
    total = chunk_count(request.num_frames, stream_cfg)
    with torch.inference_mode():
        contexts = chunk_contexts(models, request)
    made, first, anchor = 0, 0, None
    cond = embeds = before = None  # before: the video's last frame so far
    if resume is not None:
        resume.check(stream_cfg)
        made, first, anchor = resume.made, resume.next_index, resume.anchor
        before = resume.cond_frames[-1]
        # The chunks still needed after the frames the state holds (a video's own state
        # ends on the chunk grid: then this is chunk_count's total).
        missing = max(0, request.num_frames - made - len(resume.pending))
        total = first + math.ceil(missing / stream_cfg.new_frames)
        if len(resume.pending) and made < request.num_frames:
            rest = _pending(resume, request)
            yield rest
            made = rest.state.made
        with torch.inference_mode():
            cond = models.to_model_frames(resume.cond_frames, request.size)
            if first < total:
                embeds = anchor_embeds(models, anchor, request.size)
    for index in tqdm(range(first, total), desc="chunks", disable=not progress):
        started = time.perf_counter()
        with torch.inference_mode():
            context = contexts[min(index, 1)]
            decoded = generate_chunk(models, request, index, context, cond, embeds, progress)
            frames = fhwc_from_cfhw(decoded[0])  # (F_new, H, W, 3)
            tries, attempt = [], 0
            if guard is not None and index > 0:
                frames, tries, attempt = _guarded(
                    models, request, index, (context, cond, embeds), frames, before, guard
                )
            if index == 0:
                anchor = frames[0].copy()
                if total > 1:
                    embeds = anchor_embeds(models, anchor, request.size)
            cond = models.to_model_frames(frames[-stream_cfg.cond_frames :], request.size)
        keep = min(len(frames), request.num_frames - made)
        after = StreamState(
            index + 1, made + keep, frames[-stream_cfg.cond_frames :], anchor, frames[keep:]
        )
        yield VideoChunk(
            index=index,
            start=made,
            frames=frames[:keep],
            seed=chunk_seed(request.seed, index, attempt),
            seconds=time.perf_counter() - started,
            state=after,
            tries=tries,
        )
        made += keep
        before = frames[-1]


def _guarded(
    models: ChunkModels,
    request: Request,
    index: int,
    inputs: tuple,
    frames: np.ndarray,
    before: np.ndarray,
    guard: DriftGuard,
) -> tuple[np.ndarray, list[dict], int]:
    """The drift guard on streaming chunk ``index`` (first sample: ``frames``): its kept
    frames, every try's seed and measurements, and the attempt kept."""
    if models.embed_frames is None:
        raise UsageError("the drift guard needs the model's image encoder")
    context, cond, embeds = inputs
    tries, best = [], None
    for attempt in range(guard.tries):
        if attempt:
            decoded = generate_chunk(models, request, index, context, cond, embeds, False, attempt)
            frames = fhwc_from_cfhw(decoded[0])
        embedded = models.embed_frames(fold(models.to_model_frames(frames, request.size)))
        scores = chunk_scores(frames, before, embedded, embeds[1])
        tries.append({"seed": chunk_seed(request.seed, index, attempt), **scores})
        excess = guard.excess(scores)
        if best is None or excess < best[0]:
            best = (excess, attempt, frames)
        if excess <= 1:
            break
    return best[2], tries, best[1]


def stream_timeline(
    models: ChunkModels,
    request: Request,
    timeline: Timeline,
    progress: bool = False,
    resume: StreamState | None = None,
    guard: DriftGuard | None = None,
) -> Iterator[VideoChunk]:
    """Yield a prompt timeline's video chunk by chunk (``timeline.py``): each segment is the
    stream of ``request`` with the segment's prompt and settings, continued from the state
    the segment before it ended in, so a prompt takes over at the next chunk boundary and
    the CAM carries the motion across. ``resume``: continue from that state, as ``stream``."""
    if METHODS[request.method].whole_video:
        raise UsageError(f"--method {request.method} makes the whole video at once: no timeline")
    state, start = resume, 0
    for segment, end in zip(timeline.segments, timeline.ends(), strict=True):
        if state is not None and state.made >= end:  # a resumed run is past this segment
            start = end
            continue
        if state is not None and timeline.anchor == "reanchor" and state.made == start:
            state = dataclasses.replace(state, anchor=state.cond_frames[-1].copy())
        part = segment_request(request, segment, end)
        for chunk in stream(models, part, progress, state, guard):
            yield chunk
            state = chunk.state
        start = end


def segment_request(request: Request, segment: Segment, end: int) -> Request:
    """``request`` with a timeline segment's prompt and settings, ending at frame ``end``."""
    sample = request.sample
    if segment.guidance is not None:
        sample = dataclasses.replace(
            sample, guidance=segment.guidance, stream_guidance=segment.guidance
        )
    if segment.negative_prompt is not None:
        sample = dataclasses.replace(sample, negative_prompt=segment.negative_prompt)
    seed = request.seed if segment.seed is None else segment.seed
    return dataclasses.replace(
        request, prompt=segment.prompt, num_frames=end, seed=seed, sample=sample
    )


def _pending(resume: StreamState, request: Request) -> VideoChunk:
    """The frames a stopped stream had made but not handed out, as the rest of their chunk."""
    keep = min(len(resume.pending), request.num_frames - resume.made)
    after = StreamState(
        resume.next_index,
        resume.made + keep,
        resume.cond_frames,
        resume.anchor,
        resume.pending[keep:],
    )
    index = resume.next_index - 1
    return VideoChunk(
        index, resume.made, resume.pending[:keep], chunk_seed(request.seed, index), 0.0, after
    )


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
