"""The chunk loop: frame counts, reproducibility, regenerating one chunk alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from streamingt2v.config import SampleConfig, StreamConfig, UsageError
from streamingt2v.random_models import perturb_, random_pipeline
from streamingt2v.sampling import make_scheduler, sample
from streamingt2v.streaming import Request, chunk_count, chunk_seed, regenerate_chunk

FAST = dict(steps=2, guidance=7.5)


@pytest.fixture(scope="module")
def trained_like_pipe():
    """Tiny pipeline whose CAM and APM act (perturbed away from their zero init)."""
    pipe = random_pipeline("tiny", seed=11)
    perturb_(pipe.cam, seed=12)
    perturb_(pipe.apm, seed=13, std=0.2)
    return pipe


@pytest.mark.parametrize("frames", [1, 7, 16, 17, 24, 25, 33])
def test_stream_yields_exactly_the_requested_frames(tiny_pipe, frames):
    chunks = list(tiny_pipe.stream("a red circle", frames, **FAST))
    assert sum(len(c.frames) for c in chunks) == frames
    assert len(chunks) == chunk_count(frames, tiny_pipe.config.stream)
    assert [c.start for c in chunks] == list(np.cumsum([0] + [len(c.frames) for c in chunks])[:-1])
    assert chunks[0].frames.dtype == np.uint8
    assert chunks[0].frames.shape[1:] == (*tiny_pipe.frame_size, 3)


def test_chunk_count_matches_official_length_formula():
    cfg = StreamConfig()
    for n in range(1, 8):
        assert chunk_count(16 + 8 * (n - 1), cfg) == n  # output length = 16 + 8 (n - 1)
    assert chunk_count(1, cfg) == 1
    assert chunk_count(1200, cfg) == 149


def test_same_seed_same_video_and_different_seed_differs(trained_like_pipe):
    a = trained_like_pipe("a blue square", 24, seed=5, **FAST).frames
    b = trained_like_pipe("a blue square", 24, seed=5, **FAST).frames
    c = trained_like_pipe("a blue square", 24, seed=6, **FAST).frames
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_regenerating_a_chunk_alone_matches_the_full_run(trained_like_pipe):
    pipe = trained_like_pipe
    video = pipe("a green triangle bouncing", 40, seed=9, **FAST).frames
    request = pipe.request("a green triangle bouncing", 40, seed=9, **FAST)
    first = regenerate_chunk(pipe.chunk_models(), request, 0)
    assert np.array_equal(first, video[:16])
    for k in (1, 3):
        start = 16 + 8 * (k - 1)
        alone = regenerate_chunk(
            pipe.chunk_models(), request, k, video[start - 8 : start], video[0]
        )
        assert np.array_equal(alone, video[start : start + 8]), f"chunk {k}"


def test_conditioning_frames_steer_the_next_chunk(trained_like_pipe):
    pipe = trained_like_pipe
    request = pipe.request("a green triangle", 24, seed=9, **FAST)
    video = pipe("a green triangle", 24, seed=9, **FAST).frames
    other = 255 - video[8:16]
    assert not np.array_equal(
        regenerate_chunk(pipe.chunk_models(), request, 1, video[8:16], video[0]),
        regenerate_chunk(pipe.chunk_models(), request, 1, other, video[0]),
    )


def test_stream_guidance_changes_only_the_streaming_chunks(trained_like_pipe):
    run = dict(seed=3, steps=2, guidance=7.5)
    same = trained_like_pipe("a red circle", 32, **run).frames
    unset = trained_like_pipe("a red circle", 32, stream_guidance=7.5, **run).frames
    lower = trained_like_pipe("a red circle", 32, stream_guidance=1.0, **run).frames
    assert np.array_equal(same, unset)  # None means the first chunk's guidance
    assert np.array_equal(lower[:16], same[:16])  # the first chunk keeps --guidance
    assert not np.array_equal(lower[16:24], same[16:24])
    assert trained_like_pipe.request("a red circle", 32, guidance=5.0).sample.chunk_guidance == 5.0


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_sample_with_known_frames_feeds_them_noised_and_returns_them(scheduler):
    config = SampleConfig(steps=4, scheduler=scheduler)
    sched = make_scheduler(config, DDIMScheduler().config)
    assert isinstance(sched, DDIMScheduler | DPMSolverMultistepScheduler)
    gen = torch.Generator().manual_seed(0)
    noise, known = torch.randn(1, 4, 6, 3, 3, generator=gen), torch.randn(1, 4, 2, 3, 3)
    seen = []

    def denoise(x, t):
        seen.append((int(t), x.clone()))
        return torch.full_like(x, 0.3)

    out = sample(denoise, noise, sched, gen, known=known)
    assert torch.allclose(out[:, :, :2], known, atol=1e-6)
    assert not torch.allclose(out[:, :, 2:], torch.zeros_like(out[:, :, 2:]))
    assert len(seen) == 4
    for t, x in seen:
        a = sched.alphas_cumprod[t]
        noised = a.sqrt() * known + (1 - a).sqrt() * noise[:, :, :2]
        assert torch.allclose(x[:, :, :2], noised, atol=1e-5)


def test_replace_overlap_changes_only_the_streaming_chunks(trained_like_pipe):
    run = dict(seed=3, steps=2, guidance=7.5)
    plain = trained_like_pipe("a red circle", 32, **run).frames
    replaced = trained_like_pipe("a red circle", 32, replace_overlap=True, **run).frames
    assert np.array_equal(replaced[:16], plain[:16])
    assert not np.array_equal(replaced[16:], plain[16:])
    assert not trained_like_pipe.request("a red circle", 32).sample.replace_overlap


def test_chunk_seeds_are_distinct_and_stable():
    seeds = {chunk_seed(0, k) for k in range(200)} | {chunk_seed(1, k) for k in range(200)}
    assert len(seeds) == 400
    assert chunk_seed(7, 3) == chunk_seed(7, 3) < 2**63


def test_dpm_solver_runs_and_differs_from_ddim(tiny_pipe):
    ddim = tiny_pipe("a red circle", 16, seed=1, steps=3).frames
    dpm = tiny_pipe("a red circle", 16, seed=1, steps=3, scheduler="dpm").frames
    assert ddim.shape == dpm.shape and not np.array_equal(ddim, dpm)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="  "), "prompt"),
        (dict(num_frames=0), "frames"),
        (dict(num_frames=2.5), "frames"),
        (dict(steps=0), "steps"),
        (dict(guidance=-1.0), "guidance"),
        (dict(stream_guidance=-0.5), "stream guidance"),
        (dict(scheduler="euler"), "scheduler"),
        (dict(seed=-3), "seed"),
    ],
)
def test_bad_requests_are_rejected_by_name(tiny_pipe, kwargs, message):
    args = dict(prompt="a red circle", num_frames=16) | kwargs
    with pytest.raises(UsageError, match=message):
        tiny_pipe.request(**args)


def test_base_only_model_refuses_long_videos_clearly():
    base = random_pipeline("tiny", seed=0, streaming=False)
    assert len(base("a red circle", 16, steps=1).frames) == 16
    with pytest.raises(UsageError, match="no streaming modules"):
        base.request("a red circle", 17)


def test_non_square_video_streams_and_chunks_regenerate(trained_like_pipe):
    """Any height and width that are multiples of the size step, through every chunk."""
    pipe = trained_like_pipe
    settings = dict(seed=3, height=24, width=40, **FAST)
    video = pipe("a red circle moving right", 32, **settings).frames
    assert video.shape == (32, 24, 40, 3)
    request = pipe.request("a red circle moving right", 32, **settings)
    alone = regenerate_chunk(pipe.chunk_models(), request, 2, video[16:24], video[0])
    assert np.array_equal(alone, video[24:32])


@pytest.mark.parametrize(
    ("size", "message"),
    [((31, 32), "height 31 is not a multiple of 2"), ((32, 0), "width must be an integer >= 1")],
)
def test_bad_sizes_are_named(tiny_pipe, size, message):
    with pytest.raises(UsageError, match=message):
        tiny_pipe.request("a red circle", 16, height=size[0], width=size[1])


def test_request_without_a_size_takes_the_model_size_and_a_bad_size_is_named(tiny_pipe):
    request = Request("a red circle", 24, seed=1, sample=SampleConfig(steps=1))
    new = regenerate_chunk(tiny_pipe.chunk_models(), request, 0)
    assert new.shape[1:3] == tiny_pipe.frame_size
    with pytest.raises(UsageError, match="size must be"):
        Request("a red circle", 24, size=(32,))


def test_baselines_and_ablations_change_what_they_should(trained_like_pipe):
    """independent: later chunks ignore the video so far; no-cam: they ignore the previous
    chunk's frames; no-apm: they ignore the anchor frame. Chunk 0 is the same for all."""
    pipe = trained_like_pipe
    prompt, common = "a blue square moving up", dict(seed=4, **FAST)
    ours = pipe.request(prompt, 32, **common)
    video = pipe(prompt, 32, **common).frames
    cond, anchor = video[16:24], video[0]
    for method in ("independent", "no-cam", "no-apm"):
        variant = pipe(prompt, 32, method=method, **common).frames
        assert np.array_equal(variant[:16], video[:16]), method
        assert not np.array_equal(variant[16:], video[16:]), method
    other = np.roll(cond, 1, axis=2)
    request = pipe.request(prompt, 32, method="no-cam", **common)
    no_cam = regenerate_chunk(pipe.chunk_models(), request, 2, cond, anchor)
    assert np.array_equal(no_cam, regenerate_chunk(pipe.chunk_models(), request, 2, other, anchor))
    request = pipe.request(prompt, 32, method="no-apm", **common)
    no_apm = regenerate_chunk(pipe.chunk_models(), request, 2, cond, anchor)
    assert np.array_equal(
        no_apm, regenerate_chunk(pipe.chunk_models(), request, 2, cond, 255 - anchor)
    )
    assert not np.array_equal(
        regenerate_chunk(pipe.chunk_models(), ours, 2, cond, anchor),
        regenerate_chunk(pipe.chunk_models(), ours, 2, other, anchor),
    )
    with pytest.raises(UsageError, match="unknown method 'conc-cond'"):
        pipe.request(prompt, 32, method="conc-cond")  # a trained baseline, not built yet


def test_stage_settings_choose_each_chunks_sampler_and_negative_prompt(trained_like_pipe):
    """The official split: the first chunk by DPM-Solver++ without the negative prompt, the
    streaming chunks by DDIM with it. Chunk 0 of such a run equals a DPM run without a
    negative prompt; chunk 1 equals a DDIM run's chunk 1 made from the same first chunk."""
    import dataclasses

    from streamingt2v.streaming import stream

    pipe = trained_like_pipe
    split = dataclasses.replace(
        pipe.config.sample,
        steps=3,
        scheduler="dpm",
        stream_scheduler="ddim",
        negative_prompt="blurry",
        first_chunk_negative_prompt=False,
    )
    video = list(
        stream(pipe.chunk_models(), Request("a red circle", 24, 5, split, pipe.frame_size))
    )
    dpm_plain = dataclasses.replace(split, stream_scheduler=None, negative_prompt="")
    first = list(
        stream(pipe.chunk_models(), Request("a red circle", 16, 5, dpm_plain, pipe.frame_size))
    )
    assert np.array_equal(video[0].frames, first[0].frames)
    ddim = dataclasses.replace(split, scheduler="ddim", stream_scheduler=None)
    ddim = dataclasses.replace(ddim, first_chunk_negative_prompt=True)
    frames = video[0].frames
    again = regenerate_chunk(
        pipe.chunk_models(),
        Request("a red circle", 24, 5, ddim, pipe.frame_size),
        1,
        frames[-8:],
        frames[0],
    )
    assert np.array_equal(video[1].frames, again)
    assert split.scheduler_of(0) == "dpm" and split.scheduler_of(3) == "ddim"


def test_streaming_stage_in_its_own_precision(tmp_path):
    """stream_dtype: the first chunk in the pipeline's half precision, the streaming UNet,
    CAM and APM in float32 (their inputs cast to it). Chunk 0 equals an all-half run's."""
    import copy
    import dataclasses

    from streamingt2v import StreamingT2VPipeline

    folder = tmp_path / "model"
    pipe = random_pipeline("tiny", seed=0)
    pipe.stream_unet = copy.deepcopy(pipe.unet)  # a folder with its own stream_unet/
    pipe.apm.attach(pipe.stream_unet)
    pipe.config = dataclasses.replace(pipe.config, stream_dtype="float32")
    pipe.save_pretrained(folder)
    half, full = torch.bfloat16, torch.float32
    mixed = StreamingT2VPipeline.from_pretrained(folder, dtype=half, stream_dtype=full)
    assert (mixed.dtype, mixed.stream_dtype) == (half, full)
    assert mixed.cam.controlnet_cond_embedding.conv_in.weight.dtype == full
    assert mixed.apm.mixers[0].conv.weight.dtype == full
    seen = {"base": set(), "stream": set()}
    for name, unet in (("base", mixed.unet), ("stream", mixed.stream_unet)):
        unet.conv_in.register_forward_hook(
            lambda module, args, out, name=name: seen[name].add(args[0].dtype)
        )
    video = mixed("a red circle", 24, seed=3, steps=2)
    assert seen == {"base": {half}, "stream": {full}}
    all_half = StreamingT2VPipeline.from_pretrained(folder, dtype=half)
    assert np.array_equal(video.frames[:16], all_half("a red circle", 16, seed=3, steps=2).frames)
    with pytest.raises(Exception, match="own stream_unet"):
        random_pipeline("tiny", seed=0).to("cpu", half, full)
