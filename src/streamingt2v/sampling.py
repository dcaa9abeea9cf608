"""Denoisers, the sampling loop, and the one factory of chunk samplers.

A *denoiser* is a closure ``(x, t) -> eps`` over latents ``(B, C, F, H, W)``; classifier-free
guidance, the CAM's conditioning features and the APM's image tokens are bound into it here,
so the UNet knows nothing of guidance (STYLE 2). The loop ``sample`` steps any diffusers
scheduler (DDIM, DPM-Solver++) with one calling convention; the streaming loop calls it and
never re-implements a step. ``chunk_sampler`` builds what samples one chunk of a run for
every method (``methods.METHODS``); the chunk loop, ``--plan`` and the benchmarks all call
it, so what the plan measures is what the run computes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from .config import SampleConfig
from .freenoise import windowed_temporal_attention
from .methods import FREENOISE_STRIDE, METHODS
from .models.apm import AppearancePreservationModule
from .models.cam import ConditionalAttentionModule
from .models.unet import unet_forward
from .models.vae import video_latents

if TYPE_CHECKING:
    from .pipeline import StreamingT2VPipeline
    from .streaming import Request

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Called after every step with {"i": step index, "t": timestep, "x": the latents after it}
# (k-diffusion's convention): progress displays, ``--plan``'s timing and diagnostics observe
# the real loop through it. It may raise to stop the loop.
StepCallback = Callable[[dict[str, Any]], None]


def max_steps(scheduler_config: dict[str, Any]) -> int:
    """The most sampling steps a schedule supports: one per training timestep."""
    return int(scheduler_config.get("num_train_timesteps", 1000))


def make_scheduler(
    config: SampleConfig, scheduler_config: dict[str, Any], chunk: int = 0
) -> SchedulerMixin:
    """A fresh scheduler (they hold per-run state) for chunk ``chunk`` (its sampler:
    ``config.scheduler_of``) with ``config.steps`` timesteps set. DPM-Solver++ is diffusers'
    multistep solver of order 2 with midpoint updates, as the official first chunk."""
    if config.scheduler_of(chunk) == "ddim":
        scheduler = DDIMScheduler.from_config(scheduler_config)
    else:
        scheduler = DPMSolverMultistepScheduler.from_config(
            scheduler_config, algorithm_type="dpmsolver++", solver_order=2
        )
    scheduler.set_timesteps(config.steps)
    return scheduler


def guided(model: Denoiser, guidance: float, rescale: float = 0.0) -> Denoiser:
    """Classifier-free guidance over a model that takes the doubled batch [uncond, cond].

    ``rescale`` > 0 (CFG rescale, Lin et al. 2023, as MS-Vid2Vid-XL samples with 0.2) scales
    each sample's guided output by ``rescale * std(cond) / std(guided) + (1 - rescale)``, the
    std over all of the sample's values."""

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        uncond, cond = model(torch.cat([x, x]), t).chunk(2)
        out = uncond + guidance * (cond - uncond)
        if rescale:
            ratio = cond.flatten(1).std(dim=1) / (out.flatten(1).std(dim=1) + 1e-12)
            out = out * (rescale * ratio + 1 - rescale).view(-1, *[1] * (out.dim() - 1))
        return out

    return denoise


def text_denoiser(unet, context: torch.Tensor, guidance: float, rescale: float = 0.0) -> Denoiser:
    """The base model alone (the first chunk). context: (2B, T, D) as [negative, prompt].

    At guidance 1 the guided prediction is the prompt's alone, so the negative half never runs
    (half the UNet work; equal to the doubled batch up to float rounding)."""
    if guidance == 1:
        prompt = context.chunk(2)[1]  # (B, T, D)
        return lambda x, t: unet_forward(unet, x, t, prompt)
    return guided(lambda x, t: unet_forward(unet, x, t, context), guidance, rescale)


def stream_model(
    unet,
    cam: ConditionalAttentionModule | None,
    apm: AppearancePreservationModule | None,
    context: torch.Tensor,
    image_embeds: torch.Tensor | None,
    frame_features: torch.Tensor | None,
) -> Denoiser:
    """Base UNet + CAM + APM as one noise predictor (no guidance): training and sampling
    share it. ``cam=None`` or ``apm=None`` leaves that module out (the ablations).

    context: (B, T, D) text tokens; image_embeds: (B, E) anchor embeddings; frame_features:
    (B*F_cond, C0, h, w), E_cond's output for the conditioning frames.
    """
    # Without the APM the context keeps its T text tokens, which its mixers pass through.
    full_context = context if apm is None else apm.extend_context(context, image_embeds)
    if cam is None:
        return lambda x, t: unet_forward(unet, x, t, full_context)
    # The CAM trunk sees text tokens only (official).
    return lambda x, t: cam.predict(unet, x, t, context, full_context, frame_features)


def stream_denoiser(
    unet,
    cam: ConditionalAttentionModule | None,
    apm: AppearancePreservationModule | None,
    context: torch.Tensor,
    image_embeds: torch.Tensor,
    cond_frames: torch.Tensor,
    guidance: float,
) -> Denoiser:
    """Base UNet + CAM + APM for one streaming chunk, with classifier-free guidance.

    context: (2B, T, D) text tokens as [negative, prompt]; image_embeds: (2B, E) as
    [zeros image, anchor frame]; cond_frames: (B, 3, F_cond, H, W) pixels in [-1, 1], the last
    frames of the output so far. Both guidance branches see the same conditioning frames.
    ``cam=None`` / ``apm=None``: the ablations without that module. At guidance 1 only the
    prompt's branch runs (as in ``text_denoiser``).
    """
    alone = guidance == 1
    if alone:
        context, image_embeds = context.chunk(2)[1], image_embeds.chunk(2)[1]  # (B, ...)
    frame_features = None
    if cam is not None:
        frame_features = cam.embed_frames(cond_frames)  # (B*F_cond, C0, h, w), once per chunk
        if not alone:  # both guidance branches see the same frames
            frame_features = torch.cat([frame_features, frame_features])
    model = stream_model(unet, cam, apm, context, image_embeds, frame_features)
    return model if alone else guided(model, guidance)


def sample(
    denoise: Denoiser,
    latents: torch.Tensor,
    scheduler: SchedulerMixin,
    generator: torch.Generator,
    eta: float = 1.0,
    progress: bool = False,
    desc: str = "steps",
    known: torch.Tensor | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run ``scheduler``'s timesteps from noise ``latents`` (B, C, F, H, W) to clean latents.

    ``generator`` feeds the stochastic steps (DDIM with eta > 0), so a run depends only on it.
    ``known``: clean latents (B, C, F_known, H, W) of the first F_known frames. Before every
    step those frames are replaced by ``known`` noised to the step's timestep with the same
    frames of ``latents`` as noise, and by ``known`` itself at the end (the replacement method
    of Ho et al. 2022, "Video Diffusion Models", Sec. 3.1).
    """
    x = latents * scheduler.init_noise_sigma
    kwargs: dict[str, Any] = {"generator": generator}
    if isinstance(scheduler, DDIMScheduler):
        kwargs["eta"] = eta
    steps = tqdm(scheduler.timesteps, desc=desc, disable=not progress, leave=False)
    for i, t in enumerate(steps):
        if known is not None:
            x = _with_known(x, known, latents, float(scheduler.alphas_cumprod[t]))
        eps = denoise(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
        if callback is not None:
            callback({"i": i, "t": t, "x": x})
    if known is not None:
        x = _with_known(x, known, latents, 1.0)
    return x


def _with_known(
    x: torch.Tensor, known: torch.Tensor, noise: torch.Tensor, alpha_bar: float
) -> torch.Tensor:
    """``x`` with its first frames set to ``known`` diffused to ``alpha_bar`` with ``noise``."""
    f = known.shape[2]
    noised = alpha_bar**0.5 * known + (1 - alpha_bar) ** 0.5 * noise[:, :, :f]
    return torch.cat([noised.to(x.dtype), x[:, :, f:]], dim=2)


@dataclass
class ChunkSampler:
    """What samples one chunk (``methods.chunk_sampler`` makes it): the denoiser with its
    guidance bound in, a fresh scheduler, the precision and device of the chunk's models,
    and the options of ``sample``. ``patch``: a context manager the sampling runs inside
    (FreeNoise's windowed attention)."""

    denoise: Denoiser
    scheduler: SchedulerMixin
    device: torch.device
    dtype: torch.dtype
    eta: float = 1.0
    known: torch.Tensor | None = None
    patch: Callable[[], AbstractContextManager] = nullcontext

    def __call__(
        self,
        noise: torch.Tensor,
        generator: torch.Generator,
        progress: bool = False,
        desc: str = "steps",
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Clean latents from ``noise`` (B, C, F, h, w), which is moved to the chunk's device
        and precision; ``generator`` feeds the stochastic steps."""
        with self.patch():
            return sample(
                self.denoise,
                noise.to(device=self.device, dtype=self.dtype),
                self.scheduler,
                generator,
                eta=self.eta,
                progress=progress,
                desc=desc,
                known=self.known,
                callback=callback,
            )


def chunk_sampler(
    pipe: StreamingT2VPipeline,
    request: Request,
    index: int,
    context: torch.Tensor,
    cond_frames: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
) -> ChunkSampler:
    """What samples chunk ``index`` of ``request``: its denoiser (guidance bound in), its
    scheduler, precision and device. With offload, the chunk's UNet group is moved in.

    context: (2, T, D) text tokens as [negative, prompt]. A streaming chunk also needs the
    conditioning frames (1, 3, F_cond, H, W) in [-1, 1] and the APM embeddings (2, E) as
    [unconditional image, anchor].
    """
    method, sample = METHODS[request.method], request.sample
    scheduler = make_scheduler(sample, pipe.scheduler_config, index)
    if index == 0 or not method.streaming:
        pipe.use_base()
        denoise = text_denoiser(pipe.unet, context.to(pipe.dtype), sample.guidance)
        patch = nullcontext
        if method.whole_video:
            window = pipe.config.stream.chunk_frames
            patch = partial(windowed_temporal_attention, pipe.unet, window, FREENOISE_STRIDE)
        return ChunkSampler(denoise, scheduler, pipe.device, pipe.dtype, sample.eta, patch=patch)
    if cond_frames is None or image_embeds is None:
        raise ValueError(f"chunk {index} needs conditioning frames and the anchor embedding")
    pipe.use_streaming()
    dtype = pipe.stream_dtype
    denoise = stream_denoiser(
        pipe.stream_unet,
        pipe.cam if method.cam else None,
        pipe.apm if method.apm else None,
        context.to(dtype),
        image_embeds,
        cond_frames,
        sample.chunk_guidance,
    )
    known = video_latents(pipe.vae, cond_frames) if sample.replace_overlap else None
    return ChunkSampler(denoise, scheduler, pipe.device, dtype, sample.eta, known=known)
