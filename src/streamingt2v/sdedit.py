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

import math
from collections.abc import Callable, Iterator

import torch
from diffusers import DDIMScheduler

from .blending import chunk_starts, frame_noise, owners, step_noise
from .config import EnhanceConfig, UsageError
from .sampling import Denoiser

# A chunk's clean input latents (1, C, F, h, w; what a conditioned enhancer also reads) ->
# the chunk's denoiser (``sampling.Denoiser``: (x, t) -> guided eps or v), the input bound in.
DenoiserFor = Callable[[torch.Tensor], Denoiser]
# frame indices -> their clean latents (F, C, h, w), read on demand.
LatentSource = Callable[[range], torch.Tensor]


class DdimSchedule:
    """The DDIM timesteps an SDEdit run visits, and the per-frame operations on them
    (``steps`` count the whole [0, 1000) range; ``strength`` of them run)."""

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

    def model_input(self, x: torch.Tensor, step: int) -> torch.Tensor:
        return x  # the state is the model's (VP) input

    def x0_from_output(self, x: torch.Tensor, output: torch.Tensor, step: int) -> torch.Tensor:
        """The clean latents implied by the model's output (eps or v) at ``step``."""
        a = self.scheduler.alphas_cumprod[self.timesteps[step]].to(x)
        return x0_from_prediction(x, output, a.sqrt(), (1 - a).sqrt(), self.prediction)

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


def x0_from_prediction(x, output, alpha, sigma, prediction: str) -> torch.Tensor:
    """x0 from a VP model's input ``x`` and its output (eps or v) at noise level (alpha, sigma)."""
    if prediction == "v_prediction":
        return alpha * x - sigma * output
    if prediction != "epsilon":
        raise ValueError(f"unsupported prediction_type {prediction!r}")
    return (x - sigma * output) / alpha


def dpmpp_2m_sde_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    x0_before: torch.Tensor | None,
    sigmas: tuple[float, float],
    h_before: float | None,
    noise: torch.Tensor,
    eta: float = 1.0,
) -> torch.Tensor:
    """One DPM-Solver++(2M) SDE step (Lu et al. 2022; k-diffusion's ``sample_dpmpp_2m_sde``,
    midpoint) of the VE state ``x`` (x0 + sigma * eps) from sigma to sigma_next (> 0), given
    this step's x0 and the previous step's (None at the first step), and standard normal
    ``noise``."""
    sigma, sigma_next = sigmas
    h = math.log(sigma) - math.log(sigma_next)
    eta_h = eta * h
    x = sigma_next / sigma * math.exp(-eta_h) * x - math.expm1(-h - eta_h) * x0
    if x0_before is not None:
        x = x - 0.5 * math.expm1(-h - eta_h) * (h / h_before) * (x0 - x0_before)
    return x + noise * sigma_next * math.sqrt(-math.expm1(-2 * eta_h))


class DpmSdeSchedule:
    """MS-Vid2Vid-XL's sampler (the paper's enhancer, as the authors run it): DPM-Solver++(2M)
    SDE, eta 1, midpoint, in the VE parameterization (state x0 + sigma * eps, sigma =
    sigma_vp / alpha_vp), on their grid.

    - ``steps`` + 1 points on a trailing grid from t_start = round(strength * 1000) - 1 down
      to 0, the penultimate point dropped: ``steps`` model evaluations (30 from t = 599: UNet
      timesteps 599, 580, 560, ..., 57, 38), the last one straight to its x0.
    - Noise levels at fractional t are interpolated in log sigma; the UNet sees the nearest
      integer t, and x0 is read from its output with that t's (alpha, sigma).
    - The start as the authors' code makes it (a quirk, kept): the VP-noised latents are
      multiplied by sigma_ve(t_start) instead of divided by alpha(t_start), so the first model
      input is sigma_vp(t_start) (0.972 at t = 599) times the usual one.
    - The step noise is standard normal per (seed, frame, step) (``blending.step_noise``), as
      every frame's in this module; theirs comes from one Brownian tree over the whole video
      (the same distribution, not the same numbers).
    """

    def __init__(self, scheduler_config: dict, cfg: EnhanceConfig):
        self.prediction = scheduler_config.get("prediction_type", "epsilon")
        alphas_cumprod = DDIMScheduler.from_config(scheduler_config).alphas_cumprod.double()
        self.alpha, self.sigma = alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()  # VP
        self.log_sigmas = (self.sigma / self.alpha).log()  # VE, increasing in t
        self.t_start = max(1, round(cfg.strength * len(alphas_cumprod))) - 1
        # float32, as theirs: the grid's last point may fall just past -1 and be clamped to 0
        grid = torch.arange(self.t_start, -1, -(self.t_start + 1) / (cfg.steps + 1))
        sigmas = [self._sigma_at(t) for t in grid.clamp(0, self.t_start).tolist()] + [0.0]
        self.sigmas = sigmas[:-2] + sigmas[-1:]  # the penultimate point dropped
        if not math.isfinite(self.sigmas[0]):
            raise UsageError(
                f"the dpmpp-2m-sde sampler starts at a finite noise level: strength "
                f"{cfg.strength} reaches the schedule's last timestep, where the signal is "
                "gone (zero terminal SNR); use a strength below 1, or the ddim sampler"
            )
        self.timesteps = torch.tensor([round(self._t_at(s)) for s in self.sigmas[:-1]])
        self.cfg = cfg
        self._x0_before: dict[int, torch.Tensor] = {}  # frame -> its previous step's x0

    def _sigma_at(self, t: float) -> float:
        low, high, w = math.floor(t), math.ceil(t), t - math.floor(t)
        return math.exp((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high])

    def _t_at(self, sigma: float) -> float:
        log_sigma = math.log(sigma)
        low = int(torch.searchsorted(self.log_sigmas, torch.tensor(log_sigma).double())) - 1
        low = min(max(low, 0), len(self.log_sigmas) - 2)
        a, b = float(self.log_sigmas[low]), float(self.log_sigmas[low + 1])
        return low + min(max((a - log_sigma) / (a - b), 0.0), 1.0)

    def noised(self, z0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        t = self.t_start
        vp = self.alpha[t].to(z0) * z0 + self.sigma[t].to(z0) * noise.to(z0)
        return vp * self.sigmas[0]  # the authors' start (class docstring)

    def model_input(self, x: torch.Tensor, step: int) -> torch.Tensor:
        return x / math.sqrt(self.sigmas[step] ** 2 + 1)  # VE -> VP

    def x0_from_output(self, x: torch.Tensor, output: torch.Tensor, step: int) -> torch.Tensor:
        """x0 from the model's (VP) input and output at ``step``."""
        t = self.timesteps[step]
        alpha, sigma = self.alpha[t].to(x), self.sigma[t].to(x)
        return x0_from_prediction(x, output, alpha, sigma, self.prediction)

    def step(self, x: torch.Tensor, x0: torch.Tensor, step: int, frames: range) -> torch.Tensor:
        """One step of frames (F, C, h, w); the last one returns x0 itself."""
        before = [self._x0_before.pop(f, None) for f in frames]
        if step == len(self.timesteps) - 1:
            return x0
        for i, f in enumerate(frames):
            self._x0_before[f] = x0[i]
        previous = None if before[0] is None else torch.stack(before)
        h_before = None
        if step > 0:
            h_before = math.log(self.sigmas[step - 1]) - math.log(self.sigmas[step])
        noise = torch.stack([step_noise(self.cfg.seed, f, step, x.shape[1:]) for f in frames])
        sigmas = (self.sigmas[step], self.sigmas[step + 1])
        return dpmpp_2m_sde_step(x, x0, previous, sigmas, h_before, noise.to(x))


Schedule = DdimSchedule | DpmSdeSchedule
SCHEDULES = {"ddim": DdimSchedule, "dpmpp-2m-sde": DpmSdeSchedule}


def make_schedule(scheduler_config: dict, cfg: EnhanceConfig) -> Schedule:
    """The schedule of ``cfg.sampler`` over the model's noise schedule."""
    return SCHEDULES[cfg.sampler](scheduler_config, cfg)


def _x0(
    schedule: Schedule, denoise: DenoiserFor, x: torch.Tensor, step: int, clean: torch.Tensor
) -> torch.Tensor:
    """The chunk's x0 prediction (F, C, h, w) at ``step`` from its state x (F, C, h, w)."""
    x_in = schedule.model_input(x, step)
    output = _predict(denoise, x_in, schedule.timesteps[step], clean)
    return schedule.x0_from_output(x_in, output, step)


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
    for step in range(len(schedule.timesteps)):
        owner = torch.from_numpy(owners(starts, num_frames, cfg.chunk, cfg.seed, step))
        x0 = torch.empty_like(x)
        for k, start in enumerate(starts):
            chunk = slice(start, min(start + cfg.chunk, num_frames))
            pred = _x0(schedule, denoise, x[chunk], step, z0[chunk])
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
            pred = _x0(schedule, denoise, xs, step, torch.stack([clean[f] for f in frames]))
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
        for step in range(len(schedule.timesteps)):
            x = schedule.step(x, _x0(schedule, denoise, x, step, z0), step, frames)
        keep_until = starts[k + 1] if k + 1 < len(starts) else frames.stop
        for f in range(next_out, keep_until):
            yield f, x[f - start]
        next_out = keep_until
