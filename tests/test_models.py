"""The base forward, the CAM and the APM: exact properties on tiny seeded models."""

from __future__ import annotations

import copy

import pytest
import torch

from streamingt2v.models.apm import spatial_cross_attention_names
from streamingt2v.models.unet import encode, skip_channels, unet_forward
from streamingt2v.pipeline import StreamingT2VPipeline
from streamingt2v.random_models import SCALES, make_unet, perturb_, random_pipeline
from streamingt2v.sampling import stream_denoiser, stream_model, text_denoiser


def _inputs(pipe, frames=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(pipe.latent_shape(frames), generator=g)  # (1, C, F, h, w)
    context = torch.randn(
        1, pipe.config.stream.text_tokens, pipe.unet.config.cross_attention_dim, generator=g
    )
    height, width = pipe.frame_size
    cond = torch.rand(1, 3, pipe.config.stream.cond_frames, height, width, generator=g) * 2 - 1
    embeds = torch.randn(1, pipe.image_encoder.dim, generator=g)
    return x, context, cond, embeds


def _stream_eps(pipe, x, t, context, cond, embeds):
    """The streaming model's conditional prediction (no guidance), as sampling makes it."""
    feats = pipe.cam.embed_frames(cond)
    return stream_model(pipe.stream_unet, pipe.cam, pipe.apm, context, embeds, feats)(x, t)


@torch.no_grad()
def test_our_forward_equals_diffusers_forward(tiny_pipe):
    x, context, _, _ = _inputs(tiny_pipe)
    ours = unet_forward(tiny_pipe.unet, x, 500, context)
    theirs = tiny_pipe.unet(x, 500, context).sample
    assert torch.equal(ours, theirs)


@torch.no_grad()
def test_untrained_cam_and_apm_leave_base_output_bit_identical(tiny_pipe):
    x, context, cond, embeds = _inputs(tiny_pipe)
    base = tiny_pipe.unet(x, 321, context).sample
    assert torch.equal(_stream_eps(tiny_pipe, x, 321, context, cond, embeds), base)


@torch.no_grad()
def test_trained_cam_and_apm_change_output_and_depend_on_their_inputs():
    pipe = random_pipeline("tiny", seed=1)
    perturb_(pipe.cam, seed=2)
    perturb_(pipe.apm, seed=3)
    x, context, cond, embeds = _inputs(pipe)
    eps = _stream_eps(pipe, x, 321, context, cond, embeds)
    assert not torch.allclose(eps, pipe.unet(x, 321, context).sample)
    assert not torch.allclose(eps, _stream_eps(pipe, x, 321, context, -cond, embeds))
    assert not torch.allclose(eps, _stream_eps(pipe, x, 321, context, cond, -embeds))


def test_cam_trunk_starts_as_copy_of_base_encoder(tiny_pipe):
    unet = tiny_pipe.stream_unet
    for name in ("conv_in", "down_blocks", "mid_block", "transformer_in", "time_embedding"):
        ours = getattr(tiny_pipe.cam, name).state_dict()
        for key, value in getattr(unet, name).state_dict().items():
            assert torch.equal(ours[key], value), f"{name}.{key}"
        assert getattr(tiny_pipe.cam, name) is not getattr(unet, name)  # a copy, not shared


def test_modelscope_structure_counts():
    """ModelScope's structure: 12 skip connections, 16 spatial cross-attentions."""
    config = dict(make_unet(SCALES["mid"]).config)
    assert len(skip_channels(config)) == 12
    unet = make_unet(SCALES["mid"])
    assert len(spatial_cross_attention_names(unet)) == 16


@torch.no_grad()
def test_skip_channels_match_the_encoder(tiny_pipe):
    x, context, _, _ = _inputs(tiny_pipe)
    feats = encode(tiny_pipe.unet, x, 10, context)
    assert [s.shape[1] for s in feats.skips] == skip_channels(dict(tiny_pipe.unet.config))


@torch.no_grad()
def test_cam_features_use_only_conditioning_positions(tiny_pipe):
    """The CAM trunk sees the first F_cond noisy latents only: later ones cannot change it."""
    pipe = random_pipeline("tiny", seed=4)
    perturb_(pipe.cam, seed=5)
    x, context, cond, _ = _inputs(pipe)
    feats = pipe.cam.embed_frames(cond)
    fc = cond.shape[2]
    a = pipe.cam.features(x[:, :, :fc], 100, context, feats)
    y = x.clone()
    y[:, :, fc:] += 1
    b = pipe.cam.features(y[:, :, :fc], 100, context, feats)
    assert torch.equal(a.mid, b.mid)


@pytest.mark.parametrize("merge", ["add", "concat"])
@torch.no_grad()
def test_baseline_conditioning_starts_as_the_base_and_then_uses_its_frames(merge):
    """Add-Cond and Conc-Cond (the paper's ablation baselines): zero-initialized like the CAM,
    and once trained the conditioning frames change the prediction."""
    pipe = random_pipeline("tiny", seed=6, cam_merge=merge)
    x, context, cond, embeds = _inputs(pipe)
    base = pipe.unet(x, 321, context).sample
    assert torch.equal(_stream_eps(pipe, x, 321, context, cond, embeds), base)
    perturb_(pipe.cam, seed=7)
    eps = _stream_eps(pipe, x, 321, context, cond, embeds)
    assert not torch.allclose(eps, base)
    assert not torch.allclose(eps, _stream_eps(pipe, x, 321, context, -cond, embeds))


@torch.no_grad()
def test_add_cond_trunk_sees_the_whole_chunk():
    """Unlike the CAM, Add-Cond's ControlNet runs on all positions (zero features after the
    conditioning frames), so later noisy latents change its features."""
    pipe = random_pipeline("tiny", seed=8, cam_merge="add")
    perturb_(pipe.cam, seed=9)
    x, context, cond, _ = _inputs(pipe)
    feats = pipe.cam.embed_frames(cond)
    a = pipe.cam.features(x, 100, context, feats)
    y = x.clone()
    y[:, :, cond.shape[2] :] += 1
    assert not torch.allclose(a.mid, pipe.cam.features(y, 100, context, feats).mid)


def test_conc_cond_is_the_frame_encoder_alone():
    pipe = random_pipeline("tiny", seed=10, cam_merge="concat")
    names = {name.split(".")[0] for name, _ in pipe.cam.named_parameters()}
    assert names == {"controlnet_cond_embedding"}


@pytest.mark.parametrize("merge", ["add", "concat"])
@torch.no_grad()
def test_baseline_conditioning_survives_save_and_load(merge, tmp_path):
    pipe = random_pipeline("tiny", seed=11, cam_merge=merge)
    perturb_(pipe.cam, seed=12)
    pipe.save_pretrained(tmp_path)
    loaded = StreamingT2VPipeline.from_pretrained(tmp_path)
    assert loaded.cam.config.merge == merge
    x, context, cond, embeds = _inputs(pipe)
    expected = _stream_eps(pipe, x, 321, context, cond, embeds)
    assert torch.equal(_stream_eps(loaded, x, 321, context, cond, embeds), expected)


@torch.no_grad()
def test_guided_denoisers_match_manual_guidance(tiny_pipe):
    x, context, cond, _ = _inputs(tiny_pipe)
    neg = torch.zeros_like(context)
    ctx2 = torch.cat([neg, context])
    g = 7.5
    eps = text_denoiser(tiny_pipe.unet, ctx2, g)(x, torch.tensor(400))
    u = tiny_pipe.unet(x, 400, neg).sample
    c = tiny_pipe.unet(x, 400, context).sample
    assert torch.allclose(eps, u + g * (c - u), atol=1e-4)
    embeds = torch.randn(2, tiny_pipe.image_encoder.dim)
    eps2 = stream_denoiser(
        tiny_pipe.stream_unet, tiny_pipe.cam, tiny_pipe.apm, ctx2, embeds, cond, g
    )(x, torch.tensor(400))
    assert torch.allclose(eps2, eps, atol=1e-4)  # untrained modules: same as the base


@torch.no_grad()
def test_guidance_one_runs_only_the_prompt_branch(tiny_pipe):
    x, context, cond, _ = _inputs(tiny_pipe)
    ctx2 = torch.cat([torch.randn_like(context), context])
    embeds = torch.randn(2, tiny_pipe.image_encoder.dim)
    pipe, t = tiny_pipe, torch.tensor(400)
    rows = []  # conv_in's batch (B * F) per UNet evaluation
    hooks = [
        unet.conv_in.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
        for unet in (pipe.unet, pipe.stream_unet)
    ]
    try:
        out = {}
        for g in (1.0, 1.0 + 1e-9):  # 1 + 1e-9: the doubled batch, guided
            base = text_denoiser(pipe.unet, ctx2, g)(x, t)
            modules = (pipe.stream_unet, pipe.cam, pipe.apm)
            out[g] = base, stream_denoiser(*modules, ctx2, embeds, cond, g)(x, t)
    finally:
        for hook in hooks:
            hook.remove()
    half = len(rows) // 2  # the same evaluations (the CAM's trunk among them) at B = 1 and 2B
    assert rows == [x.shape[2]] * half + [2 * x.shape[2]] * half
    for alone, doubled in zip(out[1.0], out[1.0 + 1e-9], strict=True):
        assert torch.allclose(alone, doubled, atol=1e-5)


def test_apm_attach_is_idempotent_and_reversible():
    pipe = random_pipeline("tiny", seed=6)
    from streamingt2v.models.apm import ApmProcessor, detach_apm

    pipe.apm.attach(pipe.stream_unet)
    names = spatial_cross_attention_names(pipe.stream_unet)
    processors = [pipe.stream_unet.get_submodule(n).processor for n in names]
    assert all(isinstance(p, ApmProcessor) for p in processors)
    assert all(not isinstance(p.inner, ApmProcessor) for p in processors)
    detach_apm(pipe.stream_unet)
    assert not any(
        isinstance(pipe.stream_unet.get_submodule(n).processor, ApmProcessor) for n in names
    )
    # The APM's weights never leak into the UNet's state dict.
    assert not any("mixer" in k or "alpha" in k for k in pipe.stream_unet.state_dict())


def test_frame_encoder_must_match_vae_factor(tiny_pipe):
    from streamingt2v.config import CamConfig, ModelLoadError

    with pytest.raises(ModelLoadError, match="downsamples"):
        copy.copy(tiny_pipe).add_streaming_modules(
            tiny_pipe.image_encoder, CamConfig(cond_embedding_channels=(8, 16, 32))
        )


def test_skip_merger_normalizes_over_the_whole_chunk():
    """The official merger: GroupNorm over (B, C, F, H, W), then per-pixel attention of the F
    chunk frames to the F_cond CAM frames; written out here with plain tensor operations."""
    from streamingt2v.config import CamConfig
    from streamingt2v.models.cam import SkipMerger

    torch.manual_seed(0)
    batch, frames, cond, channels, size = 2, 6, 3, 64, 4
    merger = SkipMerger(channels, CamConfig())
    perturb_(merger, seed=1, std=0.2)
    skip = torch.randn(batch * frames, channels, size, size)
    cam = torch.randn(batch * cond, channels, size, size)

    x = skip.unflatten(0, (batch, frames)).transpose(1, 2)  # (B, C, F, H, W)
    groups = merger.norm.num_groups
    g = x.reshape(batch, groups, -1)
    var = g.var(-1, unbiased=False, keepdim=True)
    normed = (g - g.mean(-1, keepdim=True)) / torch.sqrt(var + 1e-6)
    normed = normed.reshape(x.shape) * merger.norm.weight[:, None, None, None]
    normed = normed + merger.norm.bias[:, None, None, None]
    q = merger.proj_in(normed.permute(0, 3, 4, 2, 1).reshape(-1, frames, channels))
    kv = cam.unflatten(0, (batch, cond)).permute(0, 3, 4, 1, 2).reshape(-1, cond, channels)
    attn = merger.attention
    heads = attn.heads
    split = lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
    weights = (split(attn.to_q(q)) @ split(attn.to_k(kv)).transpose(-1, -2)) * attn.scale
    mixed = (weights.softmax(-1) @ split(attn.to_v(kv))).transpose(1, 2).flatten(2)
    out = merger.proj_out(attn.to_out[0](mixed))
    out = out.reshape(batch, size, size, frames, channels).permute(0, 3, 4, 1, 2).flatten(0, 1)
    torch.testing.assert_close(merger(skip, cam, batch), skip + out, rtol=1e-4, atol=1e-5)
