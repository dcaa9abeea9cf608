"""``generate --plan``: what a run will cost, before running it.

The plan counts the model evaluations the run will make (denoising steps of the first chunk,
of every streaming chunk, of every enhancer chunk) and measures each kind once at the run's
own settings (frame size, dtype, device): seconds per evaluation and the peak memory reached
(CUDA: the allocator's peak; always: the process's peak resident memory). The streaming loop
and the enhancer repeat these same evaluations and keep nothing that grows with the video's
length, so the run's peak is the probe's peak, and its time is the measured seconds times
the counts (model loading and video writing not included).
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .blending import chunk_starts
from .config import EnhanceConfig, StreamConfig, UsageError
from .offload import READ_AHEAD, read_until
from .sampling import ChunkSampler, text_denoiser
from .sdedit import make_schedule
from .streaming import Request, chunk_contexts, chunk_count


@dataclass
class Stage:
    """One kind of model evaluation: how many the run makes, and what one costs."""

    name: str
    count: int
    seconds: float = 0.0  # measured, per evaluation

    @property
    def total(self) -> float:
        return self.count * self.seconds


@dataclass
class Plan:
    frames: int
    chunks: int
    size: tuple[int, int]
    device: str
    dtype: str
    stages: list[Stage] = field(default_factory=list)
    weights_bytes: int = 0
    peak_device_bytes: int | None = None  # CUDA only
    peak_ram_bytes: int = 0

    @property
    def seconds(self) -> float:
        return sum(s.total for s in self.stages)


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _timed(run: Callable[[], object], device: torch.device, repeats: int = 3) -> float:
    """Median seconds of ``repeats`` calls, after one warm-up call (lazy initialization,
    kernel choice)."""
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def _weights(*modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


class _Measured(Exception):
    """Raised from the step callback once enough steps were timed."""


def _timed_steps(
    sampler: ChunkSampler, noise: torch.Tensor, device: torch.device, repeats: int = 3
) -> float:
    """Median seconds of a sampling step of the real loop (``sampling.sample``), over
    ``repeats`` steps after one warm-up step; the loop is stopped once they are timed."""
    times: list[float] = []

    def tick(_: dict) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter())
        if len(times) > repeats + 1:
            raise _Measured

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    with contextlib.suppress(_Measured):
        sampler(noise, torch.Generator("cpu").manual_seed(0), callback=tick)
    steps = [b - a for a, b in zip([started, *times], times, strict=False)]
    return statistics.median(steps[1:] or steps)


@torch.inference_mode()
def make_plan(pipe, request: Request, enhancer=None, enhance: EnhanceConfig | None = None) -> Plan:
    """Count and measure the evaluations of ``request`` (and of the enhancer, if given).

    The UNet steps are timed on the run's own sampler (``methods.chunk_sampler``, the loop of
    ``sampling.sample``) for the first chunk and for a streaming chunk: the same batch,
    guidance and precision as the run."""
    if request.method != "streamingt2v":
        raise UsageError(f"--plan covers the method itself, not --method {request.method}")
    device, stream_cfg = pipe.device, pipe.config.stream
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    chunks = chunk_count(request.num_frames, stream_cfg)
    plan = Plan(
        frames=request.num_frames,
        chunks=chunks,
        size=tuple(request.size),
        device=str(device),
        dtype=_dtype_names(pipe),
    )
    modules = [m for m in pipe._modules()] + ([enhancer.unet, enhancer.vae] if enhancer else [])
    plan.weights_bytes = _weights(*{id(m): m for m in modules}.values())

    models = pipe.chunk_models()
    contexts = chunk_contexts(models, request)
    noise = torch.randn(pipe.latent_shape(stream_cfg.chunk_frames, request.size))
    # With --offload, each UNet group is measured on the device, as it runs.
    first = models.sampler(request, 0, contexts[0])
    steps = len(first.scheduler.timesteps)
    plan.stages.append(Stage("first chunk: UNet step", steps, _timed_steps(first, noise, device)))
    latents = noise.to(device=device, dtype=pipe.dtype)
    per_frame = _timed(lambda: pipe.decode_latents(latents), device) / latents.shape[2]
    made = stream_cfg.chunk_frames + (chunks - 1) * stream_cfg.new_frames
    plan.stages.append(Stage("decode a frame (VAE)", made, per_frame))
    if chunks > 1:
        height, width = request.size
        frames = torch.zeros(1, 3, stream_cfg.cond_frames, height, width, device=device)
        embeds = pipe.encode_anchor(frames[:, :, 0])
        streaming = models.sampler(request, 1, contexts[1], frames.to(pipe.dtype), embeds)
        plan.stages.append(
            Stage(
                "streaming chunks: UNet + CAM + APM step",
                len(streaming.scheduler.timesteps) * (chunks - 1),
                _timed_steps(streaming, noise, device),
            )
        )
    if enhancer is not None:
        plan.stages += _enhancer_stages(enhancer, enhance, request, device)
    if pipe.offloader is not None:
        plan.stages.append(_offload_stage(pipe, enhancer, enhance, request, device))
    if device.type == "cuda":
        plan.peak_device_bytes = torch.cuda.max_memory_allocated(device)
    plan.peak_ram_bytes = _peak_rss_bytes()
    return plan


def _enhancer_stages(enhancer, cfg: EnhanceConfig, request: Request, device) -> list[Stage]:
    n = request.num_frames
    starts = chunk_starts(n, cfg.chunk, cfg.overlap)
    evaluations = len(starts) * len(make_schedule(enhancer.scheduler_config, cfg).timesteps)
    height, width = enhancer.canvas_size(*request.size)
    f = enhancer.vae_scale_factor
    channels = enhancer.unet.config.in_channels
    x = torch.randn(1, channels, min(cfg.chunk, n), height // f, width // f)
    x = x.to(device=device, dtype=enhancer.unet.dtype)
    context = enhancer.text_encoder([request.sample.negative_prompt, request.prompt])
    denoise = text_denoiser(
        enhancer.unet, context.to(enhancer.unet.dtype), cfg.guidance, cfg.guidance_rescale
    )
    t = torch.tensor(500, device=device)
    enhancer.use_unet()
    step = _timed(lambda: denoise(x, t), device)
    frame = x[0, :, 0]
    decode = _timed(lambda: enhancer._decode(frame), device)
    encode_input = torch.zeros(1, *request.size, 3, dtype=torch.uint8).numpy()
    encode = _timed(lambda: enhancer._encode(encode_input), device)
    return [
        Stage("enhancer: UNet step on a chunk", evaluations, step),
        Stage("enhancer: encode an input frame", n, encode),
        Stage("enhancer: decode an output frame", n, decode),
    ]


def offload_moves(
    num_frames: int, stream: StreamConfig, enhance: EnhanceConfig | None, read_ahead: int
) -> int:
    """How many times a run with ``--offload`` moves a UNet group to the device: the base
    for the first chunk, then the streaming group; with the enhancer, the streaming group
    and the enhancer take turns whenever the enhancer reads a block of ``read_ahead`` frames
    that is not yet made (it reads before each chunk's first step, in the chunks' order)."""
    if enhance is None:
        return 1 + min(chunk_count(num_frames, stream) - 1, 1)

    def chunk_of(frame: int) -> int:
        return max(0, 1 + (frame - stream.chunk_frames) // stream.new_frames)

    moves, made, active = 0, -1, None
    for start in chunk_starts(num_frames, enhance.chunk, enhance.overlap):
        end = min(start + enhance.chunk, num_frames)
        needed = chunk_of(read_until(end, num_frames, read_ahead) - 1)
        for chunk in range(made + 1, needed + 1):
            group = "base" if chunk == 0 else "streaming"
            moves, active = moves + (group != active), group
        made = max(made, needed)
        moves, active = moves + (active != "enhancer"), "enhancer"
    return moves


def _offload_stage(pipe, enhancer, enhance: EnhanceConfig | None, request, device) -> Stage:
    """The moves of ``--offload``, timed as the run makes them: one group in, the other out
    (the mean over the groups that take turns)."""
    if enhancer is not None:
        pair = (pipe.use_streaming, enhancer.use_unet)
    else:
        pair = (pipe.use_base, pipe.use_streaming)
    seconds = _timed(lambda: [move() for move in pair], device) / 2
    moves = offload_moves(request.num_frames, pipe.config.stream, enhance, READ_AHEAD)
    return Stage("offload: move a UNet group to the device", moves, seconds)


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def format_plan(plan: Plan) -> str:
    lines = [
        f"plan: {plan.frames} frames at {plan.size[0]}x{plan.size[1]}, {plan.chunks} chunks, "
        f"on {plan.device} ({plan.dtype})",
        "",
        f"{'stage':<42}{'count':>8}{'s each':>10}{'s total':>10}",
    ]
    for s in plan.stages:
        lines.append(f"{s.name:<42}{s.count:>8}{s.seconds:>10.3f}{s.total:>10.1f}")
    minutes = plan.seconds / 60
    lines += [
        "",
        f"predicted time      {plan.seconds:.0f} s ({minutes:.1f} min; loading, writing excluded)",
        f"weights             {_gib(plan.weights_bytes)}",
        f"peak GPU memory     {_gib(plan.peak_device_bytes)} (does not grow with the length)"
        if plan.peak_device_bytes is not None
        else "peak GPU memory     - (not a CUDA run)",
        f"peak RAM            {_gib(plan.peak_ram_bytes)} (this process, models loaded)",
        "Measured on one evaluation of each kind at these settings; nothing was generated.",
    ]
    return "\n".join(lines)


def _dtype_names(pipe) -> str:
    """ "float16", or "float16 (streaming: float32)" where the stages differ."""
    base, stream = (str(d).removeprefix("torch.") for d in (pipe.dtype, pipe.stream_dtype))
    return base if base == stream else f"{base} (streaming: {stream})"
