"""Streaming refinement (paper Sec. 4.2.3): SDEdit chunk by chunk with randomized blending.

The low-resolution video is upsampled and encoded, noised to ``t_start`` and denoised by a
high-resolution text-to-video UNet in overlapping chunks. Three modes (``config.MODES``):

- ``independent``: every chunk has its own noise and trajectory; chunks are concatenated
  (later chunks win the whole overlap) - the paper's baseline B;
- ``shared-noise``: the same, but overlapping frames start from the same noise (B+S);
- ``randomized``: one trajectory for the whole video: at every model evaluation each chunk
  predicts x0 for its frames, the predictions are merged with a random cut in every overlap,
  and the sampler steps every frame from the merged x0 (official randomized blending).

Two schedules compute the randomized mode: ``denoise_whole`` holds every frame (the
official algorithm, for reference and tests), and ``denoise_streaming`` advances the chunks
as a wavefront - chunk k runs step s once chunks k-1 and k+1 have run step s-1 - and hands
out each frame as soon as its last step is done, so memory does not grow with the video's
length. Both give the same latents (tested to 1e-5).

Every model evaluation also sees its frames' clean input latents, bound into the chunk's
denoiser (``DenoiserFor``): a conditioned enhancer (``enhancer.py``) reads them as extra
input channels; the paper's SDEdit enhancer ignores them. The model that runs this
algorithm is ``enhancer.Enhancer``; the command is ``enhance_file``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from diffusers import DDIMScheduler

from .blending import chunk_starts, frame_noise, owners, step_noise
from .config import EnhanceConfig
from .sampling import Denoiser

# A chunk's clean input latents (1, C, F, h, w; what a conditioned enhancer also reads) ->
# the chunk's denoiser (``sampling.Denoiser``: (x, t) -> guided eps or v), the input bound in.
DenoiserFor = Callable[[torch.Tensor], Denoiser]
# frame indices -> their clean latents (F, C, h, w), read on demand.
LatentSource = Callable[[range], torch.Tensor]


class Schedule:
    """The DDIM timesteps an SDEdit run visits, and the per-frame operations on them."""

    def __init__(self, scheduler_config: dict, cfg: EnhanceConfig):
        # The model predicts eps or v (its schedule's prediction_type); blending works on x0,
        # and the steps are taken from x0 through eps, so the sampler itself runs on eps.
        self.prediction = scheduler_config.get("prediction_type", "epsilon")
        self.scheduler = DDIMScheduler.from_config(scheduler_config, prediction_type="epsilon")
        self.scheduler.set_timesteps(cfg.steps)
        run = max(1, round(cfg.steps * cfg.strength))
        self.timesteps = self.scheduler.timesteps[cfg.steps - run :]
        self.cfg = cfg

    def noised(self, z0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(z0, noise.to(z0), self.timesteps[:1])

    def x0_from_output(self, x: torch.Tensor, output: torch.Tensor, step: int) -> torch.Tensor:
        """The clean latents implied by the model's output (eps or v) at ``step``."""
        a = self.scheduler.alphas_cumprod[self.timesteps[step]].to(x)
        if self.prediction == "v_prediction":
            return a.sqrt() * x - (1 - a).sqrt() * output
        if self.prediction != "epsilon":
            raise ValueError(f"unsupported prediction_type {self.prediction!r}")
        return (x - (1 - a).sqrt() * output) / a.sqrt()

    def step(self, x: torch.Tensor, x0: torch.Tensor, step: int, frames: range) -> torch.Tensor:
        """One DDIM step of frames (F, C, h, w) towards the given x0 prediction."""
        t = self.timesteps[step]
        a = self.scheduler.alphas_cumprod[t].to(x)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        noise = None
        if self.cfg.eta > 0:
            noise = torch.stack([step_noise(self.cfg.seed, f, step, x.shape[1:]) for f in frames])
        out = self.scheduler.step(eps, t, x, eta=self.cfg.eta, variance_noise=noise)
        return out.prev_sample


def _predict(
    denoise: DenoiserFor, x_fchw: torch.Tensor, t: torch.Tensor, clean_fchw: torch.Tensor
) -> torch.Tensor:
    def video(frames: torch.Tensor) -> torch.Tensor:  # (F, C, h, w) -> (1, C, F, h, w)
        return frames.permute(1, 0, 2, 3)[None]

    eps = denoise(video(clean_fchw))(video(x_fchw), t)
    return eps[0].permute(1, 0, 2, 3)  # (F, C, h, w)


def denoise_whole(
    denoise: DenoiserFor, source: LatentSource, num_frames: int, schedule: Schedule
) -> torch.Tensor:
    """Randomized blending holding the whole video's latents -> (F, C, h, w)."""
    cfg = schedule.cfg
    starts = chunk_starts(num_frames, cfg.chunk, cfg.overlap)
    z0 = source(range(num_frames))
    noise = torch.stack([frame_noise(cfg.seed, f, z0.shape[1:]) for f in range(num_frames)])
    x = schedule.noised(z0, noise)
    for step, t in enumerate(schedule.timesteps):
        owner = torch.from_numpy(owners(starts, num_frames, cfg.chunk, cfg.seed, step))
        x0 = torch.empty_like(x)
        for k, start in enumerate(starts):
            chunk = slice(start, min(start + cfg.chunk, num_frames))
            pred = schedule.x0_from_output(
                x[chunk], _predict(denoise, x[chunk], t, z0[chunk]), step
            )
            mine = owner[chunk] == k
            x0[chunk][mine] = pred[mine]
        x = schedule.step(x, x0, step, range(num_frames))
    return x


def denoise_streaming(
    denoise: DenoiserFor, source: LatentSource, num_frames: int, schedule: Schedule
) -> Iterator[tuple[int, torch.Tensor]]:
    """Randomized blending as a wavefront; yields (frame index, final latents (C, h, w)) in
    order, holding only the frames of the chunks in flight (about ``steps * reach`` chunks,
    whatever the video's length)."""
    cfg = schedule.cfg
    starts = chunk_starts(num_frames, cfg.chunk, cfg.overlap)
    ends = [min(s + cfg.chunk, num_frames) for s in starts]
    steps = len(schedule.timesteps)
    covering = {}  # frame -> chunks covering it
    for k, (s, e) in enumerate(zip(starts, ends, strict=True)):
        for f in range(s, e):
            covering.setdefault(f, []).append(k)
    x: dict[int, torch.Tensor] = {}  # frame -> latents at the frame's current step
    clean: dict[int, torch.Tensor] = {}  # frame -> its clean input latents
    at: dict[int, int] = {}  # frame -> its current step
    x0: dict[int, torch.Tensor] = {}  # frame -> x0 of its owner at its current step
    done = [-1] * len(starts)  # last step each chunk has predicted
    next_out = 0
    owner_cache: dict[int, object] = {}

    def owner_of(f: int, step: int) -> int:
        if step not in owner_cache:
            owner_cache[step] = owners(starts, num_frames, cfg.chunk, cfg.seed, step)
        return int(owner_cache[step][f])

    # Chunk k runs step s in slot s * reach + k (descending k within a slot), where reach is
    # the largest index distance of two chunks sharing a frame (2 when the tail chunk, aligned
    # to the end, reaches back past its neighbour). So whenever a chunk runs step s, every
    # chunk sharing its frames has run step s - 1, and no chunk runs ahead of them by more.
    reach = (
        max(
            max(j for j in range(k, len(starts)) if starts[j] < ends[k]) - k
            for k in range(len(starts))
        )
        or 1
    )
    for slot in range((steps - 1) * reach + len(starts)):
        for k in reversed(range(len(starts))):
            step, rest = divmod(slot - k, reach)
            if rest or not 0 <= step < steps:
                continue
            frames = range(starts[k], ends[k])
            for f in frames:  # first visit: noise the frame (its noise is shared)
                if f not in x:
                    z0 = clean[f] = source(range(f, f + 1))[0]
                    x[f] = schedule.noised(z0[None], frame_noise(cfg.seed, f, z0.shape)[None])[0]
                    at[f] = 0
            if any(at[f] != step for f in frames):  # an invariant of the slot order
                raise RuntimeError(
                    f"chunk {k} reached step {step} before its frames "
                    f"{[(f, at[f]) for f in frames]}"
                )
            xs = torch.stack([x[f] for f in frames])
            output = _predict(
                denoise, xs, schedule.timesteps[step], torch.stack([clean[f] for f in frames])
            )
            pred = schedule.x0_from_output(xs, output, step)
            done[k] = step
            for i, f in enumerate(frames):
                if owner_of(f, step) == k:
                    x0[f] = pred[i]
            for f in frames:  # advance frames that every covering chunk has used at this step
                if at[f] == step and all(done[c] >= step for c in covering[f]):
                    x[f] = schedule.step(x[f][None], x0.pop(f)[None], step, range(f, f + 1))[0]
                    at[f] = step + 1
        while next_out < num_frames and at.get(next_out) == steps:
            yield next_out, x.pop(next_out)
            del at[next_out], clean[next_out]
            next_out += 1
        for step in [s for s in owner_cache if s * reach < slot - len(starts)]:
            del owner_cache[step]


def denoise_chunks(
    denoise: DenoiserFor, source: LatentSource, num_frames: int, schedule: Schedule
) -> Iterator[tuple[int, torch.Tensor]]:
    """``independent`` and ``shared-noise`` modes: every chunk alone, concatenated (later
    chunks win the whole overlap). Chunk by chunk, so memory is constant too."""
    cfg = schedule.cfg
    starts = chunk_starts(num_frames, cfg.chunk, cfg.overlap)
    next_out = 0
    for k, start in enumerate(starts):
        frames = range(start, min(start + cfg.chunk, num_frames))
        z0 = source(frames)
        # Independent: fresh noise for every chunk after the first (chunk 0 reads the shared
        # per-frame noise, so the modes agree up to the first boundary).
        chunk_id = k if cfg.mode == "independent" and k > 0 else None
        noise = torch.stack(
            [frame_noise(cfg.seed, f, z0.shape[1:], chunk=chunk_id) for f in frames]
        )
        x = schedule.noised(z0, noise)
        for step, t in enumerate(schedule.timesteps):
            x = schedule.step(
                x, schedule.x0_from_output(x, _predict(denoise, x, t, z0), step), step, frames
            )
        keep_until = starts[k + 1] if k + 1 < len(starts) else frames.stop
        for f in range(next_out, keep_until):
            yield f, x[f - start]
        next_out = keep_until
