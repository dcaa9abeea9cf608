"""Randomized blending: the streaming wavefront equals the whole-video algorithm."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import UNet3DConditionModel

from streamingt2v.config import EnhanceConfig, UsageError
from streamingt2v.random_models import MODELSCOPE_SCHEDULER
from streamingt2v.sdedit import (
    denoise_chunks,
    denoise_streaming,
    denoise_whole,
    make_schedule,
)


@pytest.fixture(scope="module")
def denoiser():
    # A conditioned enhancer's UNet: it reads the clean input latents beside the noisy ones.
    torch.manual_seed(0)
    unet = UNet3DConditionModel(
        sample_size=4,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 32),
        layers_per_block=1,
        cross_attention_dim=8,
        attention_head_dim=4,
        norm_num_groups=32,
    ).eval()
    context = torch.randn(1, 3, 8)

    def denoiser_for(clean):
        @torch.no_grad()
        def denoise(x, t):
            return unet(torch.cat([x, clean], 1), t, context.expand(x.shape[0], -1, -1)).sample

        return denoise

    return denoiser_for


def _source(num_frames):
    latents = torch.randn(num_frames, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    return lambda frames: latents[frames.start : frames.stop]


@pytest.mark.parametrize(
    "num_frames, eta, sampler",
    [(5, 0.0, "ddim"), (20, 0.0, "ddim"), (29, 1.0, "ddim"), (29, 0.0, "dpmpp-2m-sde")],
)
def test_streaming_wavefront_equals_whole_video(denoiser, num_frames, eta, sampler):
    cfg = EnhanceConfig(
        chunk=8, overlap=3, steps=10, strength=0.6, eta=eta, seed=2, sampler=sampler
    )
    whole = denoise_whole(
        denoiser, _source(num_frames), num_frames, make_schedule(MODELSCOPE_SCHEDULER, cfg)
    )
    streamed = list(
        denoise_streaming(
            denoiser, _source(num_frames), num_frames, make_schedule(MODELSCOPE_SCHEDULER, cfg)
        )
    )
    assert [f for f, _ in streamed] == list(range(num_frames))
    diff = (torch.stack([x for _, x in streamed]) - whole).abs().max().item()
    assert diff <= 1e-5


def _run(denoiser, n, mode, **kw):
    cfg = EnhanceConfig(chunk=8, overlap=3, steps=10, mode=mode, seed=2, **kw)
    schedule = make_schedule(MODELSCOPE_SCHEDULER, cfg)
    if mode == "randomized":
        return denoise_whole(denoiser, _source(n), n, schedule)
    return torch.stack([x for _, x in denoise_chunks(denoiser, _source(n), n, schedule)])


def test_modes_differ_only_where_they_should(denoiser):
    n = 20  # chunks start at 0, 5, 10, 12
    independent = _run(denoiser, n, "independent")
    shared = _run(denoiser, n, "shared-noise")
    randomized = _run(denoiser, n, "randomized")
    # B and B+S share chunk 0 (same noise, same trajectory) up to where chunk 1 takes over,
    # and differ after it, where only B+S reuses the overlap's noise.
    assert torch.equal(independent[:5], shared[:5])
    assert not torch.allclose(independent[5:], shared[5:], atol=1e-3)
    # Randomized blending couples the chunks: it differs from B+S everywhere...
    assert not torch.allclose(randomized[:5], shared[:5], atol=1e-5)
    # ...except with a single chunk, where there is nothing to blend.
    assert torch.allclose(
        _run(denoiser, 8, "randomized"), _run(denoiser, 8, "shared-noise"), atol=1e-5
    )


def test_shorter_than_one_chunk_and_tail_lengths_work(denoiser):
    for n in (1, 8, 9, 14):
        cfg = EnhanceConfig(chunk=8, overlap=3, steps=4, seed=1)
        frames = [
            f
            for f, _ in denoise_streaming(
                denoiser, _source(n), n, make_schedule(MODELSCOPE_SCHEDULER, cfg)
            )
        ]
        assert frames == list(range(n))
        frames = [
            f
            for f, _ in denoise_chunks(
                denoiser, _source(n), n, make_schedule(MODELSCOPE_SCHEDULER, cfg)
            )
        ]
        assert frames == list(range(n))


@pytest.mark.parametrize(
    "mode, run",
    [
        ("randomized", denoise_whole),
        ("randomized", denoise_streaming),
        ("shared-noise", denoise_chunks),
    ],
)
def test_every_evaluation_reads_its_own_frames_clean_latents(mode, run):
    # Frame f's clean latents are all f: each call must see its chunk's frames, in order.
    n, cfg = 20, EnhanceConfig(chunk=8, overlap=3, steps=4, mode=mode)
    latents = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 4, 2, 2)
    seen = []

    def denoiser_for(clean):
        def denoise(x, t):
            assert clean.shape == x.shape
            seen.append(clean[0, 0, :, 0, 0].int().tolist())
            return torch.zeros_like(x)

        return denoise

    result = run(
        denoiser_for,
        lambda f: latents[f.start : f.stop],
        n,
        make_schedule(MODELSCOPE_SCHEDULER, cfg),
    )
    if not isinstance(result, torch.Tensor):
        list(result)
    chunks = [list(range(s, min(s + 8, n))) for s in (0, 5, 10, 12)]
    # 4 steps at strength 0.6: 2 of them run, every chunk once per step
    assert sorted(seen) == sorted(chunks * 2)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        EnhanceConfig(chunk=8, overlap=8)
    with pytest.raises(ValueError, match="strength"):
        EnhanceConfig(strength=0)
    with pytest.raises(ValueError, match="mode"):
        EnhanceConfig(mode="fancy")


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_schedule_reads_x0_from_either_prediction_and_steps_towards_it(prediction):
    # An oracle model (the true eps or v of a known z0) must lead every step to z0 exactly.
    config = dict(MODELSCOPE_SCHEDULER, prediction_type=prediction)
    schedule = make_schedule(config, EnhanceConfig(steps=10, strength=0.6))
    z0 = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    x = schedule.noised(z0, noise)
    for step, t in enumerate(schedule.timesteps):
        a = schedule.scheduler.alphas_cumprod[t]
        eps = (x - a.sqrt() * z0) / (1 - a).sqrt()
        output = eps if prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * z0
        x0 = schedule.x0_from_output(x, output, step)
        assert torch.allclose(x0, z0, atol=1e-4)
        x = schedule.step(x, x0, step, range(3))
    # DDIM's last step lands on alpha_bar[0] = 0.99915 (set_alpha_to_one False): z0 up to a
    # residual sqrt(0.00085) = 0.03 of the noise.
    assert torch.allclose(x, z0, atol=0.15)


def test_msvid2vid_sampler_visits_the_authors_timesteps():
    """30 steps from t = 599 on their trailing grid, the penultimate point dropped."""
    from streamingt2v.convert_enhancer import msvid2vid_scheduler_config

    cfg = EnhanceConfig(steps=30, strength=0.6, sampler="dpmpp-2m-sde")
    schedule = make_schedule(msvid2vid_scheduler_config(), cfg)
    timesteps = schedule.timesteps.tolist()
    assert len(timesteps) == 30 and schedule.sigmas[-1] == 0
    assert timesteps[:4] == [599, 580, 560, 541] and timesteps[-3:] == [76, 57, 38]
    with pytest.raises(UsageError, match="strength 1.0"):  # sigma is infinite at t = 999
        make_schedule(msvid2vid_scheduler_config(), dataclasses.replace(cfg, strength=1.0))


def test_msvid2vid_sampler_is_the_authors_loop():
    """The schedule, driven as the blending loops drive it, equals the authors' sampling
    loop written out (their ``sample_dpmpp_2m_sde`` over a model returning x0: VE state
    started at noised latents x sigma_0, input scaled by 1 / sqrt(sigma^2 + 1)), fed the same
    step noise, for a toy v-model."""
    import math

    from streamingt2v.blending import step_noise
    from streamingt2v.convert_enhancer import msvid2vid_scheduler_config

    config = msvid2vid_scheduler_config()
    cfg = EnhanceConfig(steps=6, strength=0.6, sampler="dpmpp-2m-sde", seed=3)
    schedule = make_schedule(config, cfg)
    z0 = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0)).double()
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1)).double()

    def v_model(x, t):  # any smooth function of (x, t)
        return torch.tanh(x * 0.7 + t / 1000)

    x = schedule.noised(z0, noise)
    for step in range(len(schedule.timesteps)):
        x_in = schedule.model_input(x, step)
        x0 = schedule.x0_from_output(x_in, v_model(x_in, schedule.timesteps[step]), step)
        x = schedule.step(x, x0, step, range(2))

    a, s = schedule.alpha, schedule.sigma  # the schedule's table (VP alpha, sigma)
    sigmas, ts = schedule.sigmas, schedule.timesteps
    y = (a[599] * z0 + s[599] * noise) * sigmas[0]
    old = h_last = None
    for i in range(len(sigmas) - 1):
        t = int(ts[i])
        x_in = y / math.sqrt(sigmas[i] ** 2 + 1)
        denoised = a[t] * x_in - s[t] * v_model(x_in, ts[i])
        if sigmas[i + 1] == 0:
            y = denoised
            break
        h = math.log(sigmas[i]) - math.log(sigmas[i + 1])
        y = sigmas[i + 1] / sigmas[i] * math.exp(-h) * y - math.expm1(-2 * h) * denoised
        if old is not None:
            y = y - 0.5 * math.expm1(-2 * h) * (h / h_last) * (denoised - old)
        w = torch.stack([step_noise(3, f, i, z0.shape[1:]) for f in range(2)]).double()
        y = y + w * sigmas[i + 1] * math.sqrt(-math.expm1(-2 * h))
        old, h_last = denoised, h
    torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)


def test_guidance_rescale_pulls_the_guided_std_towards_the_prompts():
    from streamingt2v.sampling import guided

    uncond = torch.zeros(2, 3, 4)
    cond = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    model = lambda x, t: torch.cat([uncond, cond])  # noqa: E731
    plain = guided(model, 7.5)(torch.zeros(2, 3, 4), 0)
    assert torch.allclose(plain, 7.5 * cond)
    full = guided(model, 7.5, rescale=1.0)(torch.zeros(2, 3, 4), 0)
    assert torch.allclose(full.flatten(1).std(1), cond.flatten(1).std(1))
    part = guided(model, 7.5, rescale=0.2)(torch.zeros(2, 3, 4), 0)
    assert torch.allclose(part, 0.2 * full + 0.8 * plain)
