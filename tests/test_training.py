"""Training: each stage's step lowers its loss on a fixed batch; resume is exact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file

from streamingt2v.config import UsageError
from streamingt2v.training.common import generator_for
from streamingt2v.training.stages import build_stage
from streamingt2v.training.trainer import TrainConfig, train, trainable
from streamingt2v.video_io import read_video
from streamingt2v.world.dataset import clip_batch

SIZE = 16  # tiny frames keep every stage to seconds
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2,
    block_out_channels=[8, 16],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=SIZE,
)
UNET = dict(
    sample_size=SIZE // 2,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
    up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"],
    block_out_channels=[32, 32],
    layers_per_block=1,
    cross_attention_dim=384,
    attention_head_dim=4,
    norm_num_groups=32,
)
TOWER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=SIZE,
    patch_size=4,
    projection_dim=384,
)


def _cfg(stage, out, **kw):
    base = dict(
        stage=stage,
        out_dir=str(out),
        steps=4,
        batch_size=2,
        lr=1e-3,
        lr_warmup=1,
        checkpoint_every=2,
        size=SIZE,
    )
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tiny earlier-stage outputs (random weights) for the base and stream stages."""
    root = tmp_path_factory.mktemp("stages")
    vae = build_stage(_cfg("vae", root / "v", model=VAE), torch.device("cpu"))
    vae.module.save_pretrained(root / "vae")
    tower = build_stage(_cfg("image-encoder", root / "i", model=TOWER), torch.device("cpu"))
    tower.export(root / "image_encoder")
    base = build_stage(
        _cfg("base", root / "b", model=UNET, inputs={"vae": str(root / "vae")}), torch.device("cpu")
    )
    base.module.save_pretrained(root / "base")
    return {
        "vae": str(root / "vae"),
        "image_encoder": str(root / "image_encoder"),
        "base": str(root / "base"),
    }


def _stream_cfg(inputs, out, merge="attention"):
    return _cfg(
        "stream",
        out,
        inputs=inputs,
        model={
            "cam": {"cond_embedding_channels": [8, 16], "merge": merge},
            "apm": {"resampler_hidden_dim": 32, "image_tokens": 4},
        },
        options={"max_start": 40},
    )


def _configs(inputs, out):
    return {
        "vae": _cfg("vae", out, model=VAE),
        "image-encoder": _cfg("image-encoder", out, model=TOWER),
        "base": _cfg("base", out, model=UNET, inputs={"vae": inputs["vae"]}),
        # single frames alone (appearance), and clips with single frames beside them
        "base frames": _cfg(
            "base", out, model=UNET, inputs={"vae": inputs["vae"]}, options={"frames": 1}
        ),
        "base joint": _cfg(
            "base", out, model=UNET, inputs={"vae": inputs["vae"]}, options={"image_batch": 2}
        ),
        "stream": _stream_cfg(inputs, out),
        # the paper's ablation baselines Add-Cond and Conc-Cond, trained by the same stage
        "stream add-cond": _stream_cfg(inputs, out, merge="add"),
        "stream conc-cond": _stream_cfg(inputs, out, merge="concat"),
        "enhancer": _enhancer_cfg(inputs, out, condition=False),
        "enhancer conditioned": _enhancer_cfg(inputs, out, condition=True),
        "enhancer degraded": _enhancer_cfg(
            inputs, out, condition=True, degrade_blur=1.0, degrade_noise=0.05
        ),
    }


def _enhancer_cfg(inputs, out, condition, **options):
    return _cfg(
        "enhancer",
        out,
        inputs={"vae": inputs["vae"], "init": inputs["base"]},
        options={"frames": 8, "scale": 2, "condition": condition, **options},
    )


@pytest.mark.parametrize(
    "stage",
    [
        "vae",
        "image-encoder",
        "base",
        "base frames",
        "base joint",
        "stream",
        "stream add-cond",
        "stream conc-cond",
        "enhancer",
        "enhancer conditioned",
        "enhancer degraded",
    ],
)
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(stage, inputs, tmp_path):
    torch.manual_seed(0)
    s = build_stage(_configs(inputs, tmp_path)[stage], torch.device("cpu"))
    params = list(trainable(s.module).values())
    assert params
    optimizer = torch.optim.Adam(params, lr=1e-3)
    with torch.no_grad():
        before = s.loss(0).item()
    for _ in range(5):
        optimizer.zero_grad()
        s.loss(0).backward()
        optimizer.step()
    with torch.no_grad():
        after = s.loss(0).item()
    assert after < before, (before, after)


def test_object_weight_weighs_the_latent_cells_the_object_touches(inputs, tmp_path):
    cfg = _cfg("base", tmp_path, model=UNET, inputs={"vae": inputs["vae"]})
    s = build_stage(cfg, torch.device("cpu"))
    video = -torch.ones(1, 3, 2, SIZE, SIZE)  # black, latent cells of 2x2 pixels
    video[0, 0, 1, 4:6, 10:12] = 1.0  # a red object in frame 1, inside latent cell (2, 5)
    pred, target = torch.zeros(1, 4, 2, SIZE // 2, SIZE // 2), torch.zeros(1, 4, 2, 8, 8)
    pred[0, :, 1, 2, 5] = 1.0  # an error only where the object is
    assert s.weighted_mse(pred, target, video) == pytest.approx(4 / (4 * 128))  # plain MSE
    s.object_weight = 9.0
    # weights: 127 cells of 1 and one of 10; the error sits in the heavy cell
    assert s.weighted_mse(pred, target, video) == pytest.approx(10 * 4 / (4 * (127 + 10)))
    pred[0, :, 1, 2, 5], pred[0, :, 0, 2, 5] = 0.0, 1.0  # same error, where there is no object
    assert s.weighted_mse(pred, target, video) == pytest.approx(4 / (4 * (127 + 10)))


def test_high_noise_draws_that_share_of_timesteps_from_the_upper_half(inputs, tmp_path):
    cfg = _cfg("base", tmp_path, model=UNET, inputs={"vae": inputs["vae"]})
    s = build_stage(cfg, torch.device("cpu"))
    z0 = torch.zeros(4000, 1, 1, 1, 1)
    uniform = s.noised(z0, torch.Generator().manual_seed(0))[2]
    s.high_noise = 0.5  # half the draws from [500, 1000): 75% land there in all
    mixed = s.noised(z0, torch.Generator().manual_seed(0))[2]
    assert (uniform >= 500).float().mean() == pytest.approx(0.5, abs=0.03)
    assert (mixed >= 500).float().mean() == pytest.approx(0.75, abs=0.03)
    assert mixed.min() >= 0 and mixed.max() < 1000
    cfg.options["high_noise"] = 1.5
    with pytest.raises(UsageError, match="high_noise"):
        build_stage(cfg, torch.device("cpu"))


def test_stream_stage_trains_the_official_parameter_set(inputs, tmp_path):
    s = build_stage(_configs(inputs, tmp_path)["stream"], torch.device("cpu"))
    names = list(trainable(s.module))
    assert any(n.startswith("cam.") for n in names) and any(n.startswith("apm.") for n in names)
    assert any(".attentions." in n for n in names if n.startswith("unet."))  # spatial: trained
    assert not any(
        "temp_attentions" in n or "temp_convs" in n or "transformer_in" in n
        for n in names
        if n.startswith("unet.")
    )  # temporal: frozen


def test_faded_frames_blend_only_the_object_into_the_background():
    from streamingt2v.training.augment import faded

    frames = torch.full((64, 3, 8, 8), -1.0)  # black
    frames[:, 0, 3:5, 3:5] = 1.0  # a red object
    kept = faded(frames, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(kept, frames)
    out = faded(frames, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, 0], frames[:, :, 0])  # the background is untouched
    red = (out[:, 0, 3, 3] + 1) / 2  # the object's opacity
    assert red.min() >= 0.2 and red.max() < 1 and red.std() > 0.1
    half = faded(frames, 0.5, torch.Generator().manual_seed(0))
    assert 10 < int((half[:, 0, 3, 3] < 1).sum()) < 54


def test_faint_share_out_of_range_is_a_usage_error(tmp_path):
    cfg = _cfg("vae", tmp_path, model=VAE, options={"faint": 1.5})
    with pytest.raises(UsageError, match="options.faint must be in"):
        build_stage(cfg, torch.device("cpu"))


@pytest.mark.parametrize("frames", [0, 24.0])
def test_sample_frames_not_a_positive_integer_is_a_usage_error(frames, inputs, tmp_path):
    cfg = _stream_cfg(inputs, tmp_path)
    cfg.options["sample_frames"] = frames
    with pytest.raises(UsageError, match="options.sample_frames must be an integer >= 1"):
        build_stage(cfg, torch.device("cpu"))


def test_object_mask_with_a_margin_covers_the_pixels_around_the_object():
    from streamingt2v.training.augment import object_mask

    frames = -torch.ones(1, 3, 8, 8)
    frames[:, :, 3:5, 3:5] = 1.0  # a 2x2 object on a black background
    assert object_mask(frames).sum() == 4
    ring = object_mask(frames, margin=1)[0, 0]
    assert ring.sum() == 16 and ring[2:6, 2:6].all()


def test_decoder_only_vae_keeps_the_latent_space(inputs, tmp_path):
    from diffusers import AutoencoderKL

    from streamingt2v.models.weights import load_diffusers

    init = {"init": inputs["vae"]}
    cfg = _cfg("vae", tmp_path, inputs=init, options={"decoder_only": True})
    train(cfg, progress=False)
    before = load_diffusers(AutoencoderKL, Path(inputs["vae"])).state_dict()
    after = load_diffusers(AutoencoderKL, tmp_path / "final")
    changed = {k for k, v in after.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    assert after.config.scaling_factor == AutoencoderKL.load_config(inputs["vae"])["scaling_factor"]
    with pytest.raises(UsageError, match="decoder_only needs inputs.init"):
        build_stage(_cfg("vae", tmp_path, options={"decoder_only": True}), torch.device("cpu"))


def test_resume_continues_exactly(tmp_path):
    straight = _cfg("vae", tmp_path / "straight", model=VAE)
    train(straight, progress=False, finish=False)
    part = _cfg("vae", tmp_path / "split", model=VAE, steps=2)
    train(part, progress=False, finish=False)
    rest = _cfg("vae", tmp_path / "split", model=VAE, steps=4)
    train(rest, resume=True, progress=False, finish=False)
    a = load_file(tmp_path / "straight" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "split" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea = load_file(tmp_path / "straight" / "checkpoint" / "ema.safetensors")
    eb = load_file(tmp_path / "split" / "checkpoint" / "ema.safetensors")
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    rows = (tmp_path / "split" / "loss.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    state = json.loads((tmp_path / "split" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4


def test_existing_checkpoint_needs_resume_and_resume_needs_one(tmp_path):
    cfg = _cfg("vae", tmp_path / "run", model=VAE, steps=2)
    with pytest.raises(UsageError, match="nothing to resume"):
        train(cfg, resume=True, progress=False, finish=False)
    train(cfg, progress=False, finish=False)
    with pytest.raises(UsageError, match="--resume"):
        train(cfg, progress=False, finish=False)


def test_train_cli_end_to_end_exports_a_loadable_pipeline(inputs, tmp_path):
    from streamingt2v import StreamingT2VPipeline
    from streamingt2v.cli import main

    cfg = _configs(inputs, tmp_path / "run")["stream"]
    cfg.options["sample_frames"] = 24  # two chunks per sample video (default 80)
    path = tmp_path / "stream.json"
    path.write_text(json.dumps(cfg.__dict__))
    assert main(["train", "stream", "--config", str(path), "--steps", "2", "--quiet"]) == 0
    final = Path(cfg.out_dir) / "final"
    pipe = StreamingT2VPipeline.from_pretrained(final)
    assert (
        pipe("a red circle moving right on a black background", 20, steps=2).frames.shape[0] == 20
    )
    assert read_video(Path(cfg.out_dir) / "samples" / "sample_0.gif").shape[0] == 24
    assert (Path(cfg.out_dir) / "summary.json").is_file()


def test_ship_lineage_lists_each_run_once_earliest_first(tmp_path, monkeypatch):
    # scripts/ship_default.py: the runs behind a pipeline, followed through the inputs of
    # each run's config, a run reached through a link (a remote run's inputs) counted once
    lineage = load_script("scripts/ship_default.py").lineage

    def run(name: str, **inputs: Path) -> Path:
        (tmp_path / name / "final").mkdir(parents=True)
        (tmp_path / name / "checkpoint").mkdir()
        config = {"inputs": {k: str(v) for k, v in inputs.items()}}
        (tmp_path / name / "checkpoint" / "state.json").write_text(json.dumps({"config": config}))
        return tmp_path / name / "final"

    vae = run("vae")
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "vae").symlink_to(tmp_path / "vae")
    base = run("base", vae=tmp_path / "remote" / "vae" / "final", text_table=tmp_path / "t")
    stream = run("stream", vae=vae, base=base)
    assert [r.name for r in lineage(stream)] == ["vae", "base", "stream"]
    assert lineage(tmp_path / "t") == []
    # an input from an earlier shipped folder (or a part of it) stands for that ship's records
    (tmp_path / "shipped" / "unet").mkdir(parents=True)
    (tmp_path / "shipped" / "training.json").write_text("{}")
    again = run("again", base=tmp_path / "shipped" / "unet", init=tmp_path / "shipped")
    assert [r.name for r in lineage(again)] == ["shipped", "again"]


def test_ship_refuses_a_part_that_takes_other_latents(monkeypatch):
    # scripts/ship_default.py --vae / --unet: a part from another folder ships only if it
    # works in the pipeline's latent space (VAE) and takes its latents and text (UNet)
    ship_default = load_script("scripts/ship_default.py")
    UNET_INPUTS, matching = ship_default.UNET_INPUTS, ship_default.matching

    class Part(torch.nn.Module):
        def __init__(self, **config):
            super().__init__()
            self.config = config

    keys = dict(in_channels=4, out_channels=4, sample_size=8, cross_attention_dim=384)
    same = Part(**keys)
    assert matching(same, Part(**keys), UNET_INPUTS, Path("base")) is same
    with pytest.raises(UsageError, match="cross_attention_dim 768"):
        matching(Part(**keys | {"cross_attention_dim": 768}), same, UNET_INPUTS, Path("base"))


def test_world_eval_summarize_keeps_one_shape(tmp_path):
    # benchmarks/paper/world_eval.py --summarize FILE --shape S: per-shape figures of a saved run
    row = dict(colour_right=1.0, background_right=1.0, direction_right=None, cuts=0,
               seconds=1.0, speed_first=1.0, speed_last=1.0)  # fmt: skip
    videos = [row | {"prompt": f"a red {s} moving left", "shape_right": v}
              for s, v in (("triangle", 0.2), ("square", 0.9), ("triangle", 0.4))]  # fmt: skip
    saved = tmp_path / "world_eval.json"
    saved.write_text(json.dumps({"videos": videos, "long": []}))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "paper" / "world_eval.py"
    out = subprocess.run(
        [sys.executable, script, "--summarize", saved, "--shape", "triangle"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(out)["measured"]["shape_right"] == 0.3


def test_conditioned_enhancer_trains_from_the_base_and_exports_a_loadable_enhancer(
    inputs, tmp_path
):
    from diffusers import UNet3DConditionModel

    from streamingt2v.enhancer import Enhancer
    from streamingt2v.models.unet import with_input_channels
    from streamingt2v.video_io import read_video

    # Widening the base's conv_in with zero weights changes nothing, whatever the new
    # channels hold; training then teaches the UNet to read them.
    base = UNet3DConditionModel.from_pretrained(inputs["base"]).eval()
    wide = with_input_channels(UNet3DConditionModel.from_pretrained(inputs["base"]), 8).eval()
    x, context = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 5, 384)
    with torch.no_grad():
        same = base(x, 500, context).sample
        for extra in (torch.zeros_like(x), torch.randn_like(x)):
            assert torch.allclose(wide(torch.cat([x, extra], 1), 500, context).sample, same)
    stage = build_stage(_enhancer_cfg(inputs, tmp_path, condition=True), torch.device("cpu"))
    assert stage.module.config.in_channels == 8
    stage.export(tmp_path / "enhancer")
    # The run's sample: rendered 8x8 videos, upsampled beside enhanced, at 16x16.
    sample = read_video(tmp_path / "samples" / "enhanced_0.gif")
    assert sample.shape == (32, 16, 32, 3)
    enhancer = Enhancer.from_pretrained(
        tmp_path / "enhancer", vae=stage.vae, text_encoder=stage.text
    )
    assert enhancer.conditioned


def test_degraded_clips_are_blurred_alike_per_clip_and_keep_their_colours():
    from streamingt2v.training.augment import degraded

    video = -torch.ones(2, 3, 4, 16, 16)  # two black clips, a white square in every frame
    video[:, :, :, 6:10, 6:10] = 1.0
    same = degraded(video, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(same, video)  # nothing drawn to degrade by: unchanged
    out = degraded(video, 1.5, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(out.mean(), video.mean(), atol=1e-5)  # a blur moves no mass
    assert (out[:, :, :, 6:10, 5] > -1).all()  # the square's edge spreads outwards
    assert torch.equal(out[:, :, 0], out[:, :, 3])  # every frame of a clip alike
    assert not torch.allclose(out[0], out[1])  # each clip its own draw
    noisy = degraded(video, 0.0, 0.1, torch.Generator().manual_seed(0))
    assert 0 < (noisy - video).std() < 0.1


def test_degrade_needs_a_conditioned_enhancer(inputs, tmp_path):
    with pytest.raises(UsageError, match="degrade_blur"):
        build_stage(
            _cfg(
                "enhancer",
                tmp_path,
                inputs={"vae": inputs["vae"], "init": inputs["base"]},
                options={"frames": 8, "degrade_blur": 1.0},
            ),
            torch.device("cpu"),
        )


def test_joint_image_batch_adds_single_frames_and_leaves_clip_runs_unchanged(inputs, tmp_path):
    torch.manual_seed(0)
    cfg = _cfg("base", tmp_path, model=UNET, inputs={"vae": inputs["vae"]})
    clips = build_stage(cfg, torch.device("cpu"))
    joint_cfg = _cfg(
        "base", tmp_path, model=UNET, inputs={"vae": inputs["vae"]}, options={"image_batch": 3}
    )
    joint = build_stage(joint_cfg, torch.device("cpu"))
    joint.module.load_state_dict(clips.module.state_dict())
    frames = clip_batch(joint.images, 0, 3)["video"]
    assert frames.shape[1:3] == (3, 1)  # (B, 3, F=1, H, W): single frames
    batch = clip_batch(clips.data, 0, 2)
    with torch.no_grad():
        alone = clips.batch_loss(0, batch)
        both = joint.batch_loss(0, batch)
        g = generator_for(joint_cfg, 0)
        expected = joint._denoising_loss(batch, g) + joint._denoising_loss(
            clip_batch(joint.images, 0, 3), g
        )
    assert torch.equal(both, expected) and not torch.equal(both, alone)
    assert torch.equal(alone, joint._denoising_loss(batch, generator_for(joint_cfg, 0)))
    with pytest.raises(UsageError, match="image_batch"):
        bad = _cfg("base", tmp_path, model=UNET, inputs={"vae": inputs["vae"]},
                   options={"image_batch": -1})  # fmt: skip
        build_stage(bad, torch.device("cpu"))


@pytest.mark.parametrize(
    "stage, option", [("base", "drop_txt"), ("vae", "kl"), ("image-encoder", "frames")]
)
def test_a_misspelt_training_option_is_refused_by_name(tmp_path, stage, option):
    """Each stage declares its options (typed); an unknown key fails before any model is
    built, naming the key and what the stage takes, instead of training without it."""
    cfg = TrainConfig(stage=stage, out_dir=str(tmp_path), options={option: 1})
    with pytest.raises(UsageError, match=f"unknown option '{option}' for stage '{stage}'"):
        build_stage(cfg, torch.device("cpu"))
