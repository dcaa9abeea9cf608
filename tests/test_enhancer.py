"""The enhancer as a model: folder round trip, any length, constant-memory streaming through
``generate``, and the ``enhance`` command with every bad input it must refuse."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file

from streamingt2v.cli import main
from streamingt2v.config import MODES, EnhanceConfig
from streamingt2v.enhancer import Enhancer
from streamingt2v.random_models import perturb_, random_enhancer
from streamingt2v.video_io import VideoWriter, read_video

FAST = ["--steps", "4", "--quiet"]


def run(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def enhancer(tiny_pipe):
    return random_enhancer(tiny_pipe.vae, tiny_pipe.text_encoder, seed=5)


@pytest.fixture(scope="module")
def enhanced_model_dir(tmp_path_factory, tiny_model_dir, enhancer):
    """The tiny pipeline folder with an enhancer/ beside its models."""
    path = tmp_path_factory.mktemp("enhanced") / "model"
    shutil.copytree(tiny_model_dir, path)
    # cheap defaults for the generate tests: 4 sampler steps for the streaming stage, and
    # for the enhancer (2 of them run at strength 0.6) without guidance (one UNet branch)
    config = json.loads((path / "pipeline_config.json").read_text())
    config["sample"]["steps"] = 4
    (path / "pipeline_config.json").write_text(json.dumps(config))
    enhancer.config.defaults = EnhanceConfig(steps=4, guidance=1.0)
    enhancer.save_pretrained(path / "enhancer")
    return path


def _low_res_video(frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, 32, 32, 3), dtype=np.uint8)


def _enhance(enh: Enhancer, video: np.ndarray, **settings) -> np.ndarray:
    cfg = EnhanceConfig(**{"chunk": 8, "overlap": 3, "steps": 4, **settings})
    return np.stack(list(enh.enhance(iter(video), len(video), "a red circle", cfg)))


def test_standalone_folder_round_trip_gives_the_same_video(enhancer, tmp_path):
    enhancer.save_pretrained(tmp_path / "enh", shared=False)
    loaded = Enhancer.from_pretrained(tmp_path / "enh")
    video = _low_res_video(10)
    assert np.array_equal(_enhance(enhancer, video), _enhance(loaded, video))


def test_an_enhancer_with_its_own_vae_keeps_it_inside_a_pipeline_folder(enhancer, tmp_path):
    # A decoder trained at the enhancer's resolution (e.g. 64x64) ships in enhancer/vae/ and
    # wins over the pipeline's VAE that generate passes in; the text encoder stays shared.
    own = random_enhancer(copy.deepcopy(enhancer.vae), enhancer.text_encoder, seed=5)
    perturb_(own.vae.decoder, seed=2, std=0.05)
    own.save_pretrained(tmp_path / "enhancer", own_vae=True)
    assert not (tmp_path / "enhancer" / "text_encoder").exists()
    loaded = Enhancer.from_pretrained(
        tmp_path / "enhancer", vae=enhancer.vae, text_encoder=enhancer.text_encoder
    )
    video = _low_res_video(6)
    assert np.array_equal(_enhance(loaded, video), _enhance(own, video))
    assert not np.array_equal(_enhance(loaded, video), _enhance(enhancer, video))


@pytest.mark.parametrize("mode", ["independent", "shared-noise", "randomized"])
@pytest.mark.parametrize("frames", [1, 5, 8, 13, 17])
def test_any_length_doubles_the_size_and_keeps_every_frame(enhancer, mode, frames):
    out = _enhance(enhancer, _low_res_video(frames), mode=mode)
    assert out.shape == (frames, 64, 64, 3) and out.dtype == np.uint8


def test_modes_agree_before_the_first_boundary_and_differ_after(enhancer):
    # Chunk 0 reads the shared per-frame noise in every mode, so until chunk 1 starts the
    # modes compute the same frames; afterwards they must differ.
    video = _low_res_video(13)
    outs = {m: _enhance(enhancer, video, mode=m) for m in ("independent", "shared-noise")}
    assert np.array_equal(outs["independent"][:5], outs["shared-noise"][:5])
    assert not np.array_equal(outs["independent"][5:], outs["shared-noise"][5:])


def test_the_input_is_read_only_as_far_as_needed(enhancer):
    # Constant memory: the enhancer must not drain its input before making the first frame.
    read = []

    def frames():
        for i, frame in enumerate(_low_res_video(40)):
            read.append(i)
            yield frame

    out = enhancer.enhance(frames(), 40, "a red circle", EnhanceConfig(chunk=8, overlap=3, steps=3))
    next(out)
    assert len(read) < 40


def test_generate_enhances_when_the_folder_has_an_enhancer(enhanced_model_dir, tmp_path):
    out = tmp_path / "v.mp4"
    assert run("generate", "a red circle", "--frames", 20, "--out", out,
               "--model", enhanced_model_dir, *FAST) == 0  # fmt: skip
    assert read_video(out).shape == (20, 64, 64, 3)
    manifest = json.loads((tmp_path / "v.mp4.json").read_text())
    assert manifest["enhance"]["size"] == [64, 64] and manifest["enhance"]["mode"] == "randomized"
    plain = tmp_path / "plain.mp4"
    assert run("generate", "a red circle", "--frames", 20, "--out", plain,
               "--model", enhanced_model_dir, "--no-enhance", *FAST) == 0  # fmt: skip
    assert read_video(plain).shape == (20, 32, 32, 3)
    assert json.loads((tmp_path / "plain.mp4.json").read_text())["enhance"] is None


def test_enhance_command_writes_the_video_and_its_manifest(enhanced_model_dir, tmp_path):
    src = tmp_path / "in"
    writer = VideoWriter(src, 8)
    writer.write(_low_res_video(11))
    writer.finish()
    out = tmp_path / "out"
    args = ["enhance", src, "--prompt", "a red circle", "--out", out, "--model",
            enhanced_model_dir, "--chunk", 8, "--overlap", 3, "--seed", 2, *FAST]  # fmt: skip
    assert run(*args) == 0
    assert read_video(out).shape == (11, 64, 64, 3)
    manifest = json.loads((tmp_path / "out.json").read_text())
    assert manifest["enhance"]["chunk"] == 8 and manifest["enhance"]["seed"] == 2
    # The same as the Python API on the same frames.
    enh = Enhancer.from_pretrained(
        enhanced_model_dir / "enhancer",
        vae=_pipe_part(enhanced_model_dir, "vae"),
        text_encoder=_pipe_part(enhanced_model_dir, "text_encoder"),
    )
    expected = _enhance(enh, read_video(src), seed=2, guidance=enh.config.defaults.guidance)
    assert np.array_equal(read_video(out), expected)


def _pipe_part(model_dir, name):
    from streamingt2v import StreamingT2VPipeline

    return getattr(StreamingT2VPipeline.from_pretrained(model_dir), name)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", ""], "prompt"),
        (["--chunk", "8", "--overlap", "8"], "overlap"),
        (["--overlap", "0"], "overlap"),
        (["--strength", "0"], "strength"),
        (["--strength", "1.5"], "strength"),
        (["--mode", "blend"], "--mode"),
        (["--steps", "0"], "steps"),
    ],
)
def test_enhance_bad_settings_exit_2(enhanced_model_dir, tmp_path, capsys, args, message):
    src = tmp_path / "in.gif"
    writer = VideoWriter(src, 8)
    writer.write(_low_res_video(3))
    writer.finish()
    base = ["enhance", src, "--out", tmp_path / "out.mp4", "--model", enhanced_model_dir]
    if "--prompt" not in args:
        base += ["--prompt", "a red circle"]
    assert run(*base, *args, "--quiet") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gif"]


def test_enhance_bad_videos_exit_2_and_keep_existing_output(enhanced_model_dir, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    empty = tmp_path / "empty"
    empty.mkdir()
    common = ["--prompt", "p", "--model", enhanced_model_dir, "--quiet"]
    for video, message in [
        (not_video, "not a readable video"),
        (empty, "no frames"),
        (tmp_path / "missing.mp4", "not found"),
    ]:
        assert run("enhance", video, "--out", out, "--overwrite", *common) == 2
        assert message in capsys.readouterr().err
    assert run("enhance", not_video, *common) == 2  # --out missing: argparse, same exit code
    assert out.read_bytes() == b"precious"


def test_model_without_enhancer_is_explained(tiny_model_dir, tmp_path, capsys):
    src = tmp_path / "in.gif"
    writer = VideoWriter(src, 8)
    writer.write(_low_res_video(2))
    writer.finish()
    args = ["enhance", src, "--prompt", "p", "--out", tmp_path / "o.mp4", "--model"]
    assert run(*args, tiny_model_dir, "--quiet") == 2
    assert "no enhancer" in capsys.readouterr().err


def test_perturbed_enhancer_changes_the_video(enhancer):
    # Guard against a pass-through: the UNet's output must reach the frames.
    other = random_enhancer(enhancer.vae, enhancer.text_encoder, seed=5)
    perturb_(other.unet, seed=1, std=0.05)
    video = _low_res_video(6)
    assert not np.array_equal(_enhance(enhancer, video), _enhance(other, video))


def test_a_conditioned_enhancer_reads_the_input_latents_at_every_step(enhancer):
    from streamingt2v.config import ModelLoadError
    from streamingt2v.models.unet import with_input_channels

    unet = with_input_channels(copy.deepcopy(enhancer.unet), 8)
    perturb_(unet, seed=2, std=0.05)  # the new channels' weights are no longer zero
    wide = Enhancer(unet, enhancer.vae, enhancer.text_encoder, enhancer.scheduler_config)
    assert wide.conditioned and not enhancer.conditioned
    seen = []  # conv_in reads (F, 8, h, w): the noisy latents, then the extra channels
    hook = unet.conv_in.register_forward_pre_hook(lambda _, a: seen.append(a[0][:, 4:].clone()))
    video = _low_res_video(10)
    out = _enhance(wide, video, guidance=1.0)  # steps 4, strength 0.6: 2 steps run
    hook.remove()
    # each call's extra channels are its chunk's clean input latents (chunks at 0 and 2)
    clean = wide._encode(video)  # (F, C, h, w)
    starts = [
        next(s for s in (0, 2) if torch.allclose(got, clean[s : s + 8], atol=1e-5)) for got in seen
    ]
    assert sorted(starts) == [0, 0, 2, 2]
    assert not np.array_equal(out, _enhance(enhancer, video, guidance=1.0))
    odd = with_input_channels(copy.deepcopy(enhancer.unet), 6)
    with pytest.raises(ModelLoadError, match="latent channels"):
        Enhancer(odd, enhancer.vae, enhancer.text_encoder, enhancer.scheduler_config)


def test_generate_any_aspect_ratio_through_the_enhancer(enhanced_model_dir, tmp_path, capsys):
    out = tmp_path / "wide.mp4"
    """Any multiple of the VAE's factor, also one whose latent side the UNet cannot halve
    evenly (18 -> 9 latents), as 720x720 (90 latents) for the official enhancer."""
    assert run("generate", "a red circle", "--frames", 20, "--out", out, "--height", 18,
               "--width", 48, "--model", enhanced_model_dir, *FAST) == 0  # fmt: skip
    assert read_video(out).shape == (20, 36, 96, 3)
    manifest = json.loads((tmp_path / "wide.mp4.json").read_text())
    assert manifest["size"] == [18, 48] and manifest["enhance"]["size"] == [36, 96]
    assert run("generate", "a red circle", "--out", tmp_path / "bad.mp4", "--width", 41,
               "--model", enhanced_model_dir) == 2  # fmt: skip
    assert "width 41 is not a multiple of 2" in capsys.readouterr().err


def test_a_diffusers_video_model_enhances_at_its_trained_size(modelscope_dir, tmp_path, capsys):
    """Any diffusers UNet3D text-to-video folder (its own VAE and text encoder) is an
    enhancer at the fixed size it was trained for, also for non-square output."""
    enh = Enhancer.from_pretrained(modelscope_dir, size="24x40")
    assert enh.output_size(32, 32) == (24, 40)
    own_vae = load_file(modelscope_dir / "vae" / "diffusion_pytorch_model.safetensors")
    for key, value in enh.vae.state_dict().items():
        assert torch.equal(value, own_vae[key])
    video = _low_res_video(10)
    assert _enhance(enh, video).shape == (10, 24, 40, 3)
    src = tmp_path / "in.gif"
    writer = VideoWriter(src, 8)
    writer.write(video)
    writer.finish()
    args = ["enhance", src, "--prompt", "p", "--model", modelscope_dir, *FAST]
    assert run(*args, "--out", tmp_path / "o.mp4", "--size", "24x40") == 0
    assert read_video(tmp_path / "o.mp4").shape == (10, 24, 40, 3)
    assert run(*args, "--out", tmp_path / "p.mp4") == 2
    assert "resolution it was trained at" in capsys.readouterr().err
    assert run(*args, "--out", tmp_path / "q.mp4", "--size", "25x40") == 2
    assert "25x40, not a multiple of 2" in capsys.readouterr().err
    assert _enhance(Enhancer.from_pretrained(modelscope_dir, size="26x42"), video).shape == (
        10, 26, 42, 3)  # fmt: skip


def test_plan_counts_the_evaluations_a_run_makes(
    enhanced_model_dir, tmp_path, capsys, monkeypatch, plans_time_once
):
    """--plan measures one evaluation of each kind; its counts must be the run's own."""
    from streamingt2v.generate import GenerateConfig, generate, plan_run
    from streamingt2v.models import unet

    config = GenerateConfig("a red circle", 40, tmp_path / "v.mp4", steps=3, progress=False,
                            model=enhanced_model_dir)  # fmt: skip
    plan = plan_run(config)
    counts = {s.name: s.count for s in plan.stages}
    calls = []  # one UNet decoder half per evaluation (the CAM trunk has none)
    decode = unet.decode
    monkeypatch.setattr(unet, "decode", lambda *a, **k: calls.append(1) or decode(*a, **k))
    generate(config)
    unet_steps = [name for name in counts if "UNet" in name]
    assert len(unet_steps) == 3
    assert sum(counts[name] for name in unet_steps) == len(calls)
    assert counts["decode a frame (VAE)"] == 16 + 8 * (plan.chunks - 1)
    assert plan.peak_ram_bytes > plan.weights_bytes > 0 and plan.seconds > 0
    assert run("generate", "a red circle", "--frames", 40, "--out", tmp_path / "p.mp4",
               "--model", enhanced_model_dir, "--plan", *FAST) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "predicted time" in printed and "peak RAM" in printed
    assert not (tmp_path / "p.mp4").exists()
    # with --offload each UNet group is moved in before it is measured, as in a run
    from streamingt2v import pipeline
    from streamingt2v.offload import Offloader

    made = []
    monkeypatch.setattr(
        pipeline, "Offloader", lambda device: made.append(Offloader(device)) or made[-1]
    )
    plan = plan_run(replace(config, offload=True))
    assert made[0].history[:3] == ["base", "streaming", "enhancer"]
    assert plan.stages[-1].name.startswith("offload") and plan.stages[-1].count > 2


def test_offload_moves_one_unet_group_at_a_time_and_changes_nothing(
    enhanced_model_dir, tmp_path, monkeypatch
):
    """On this CPU the moves are to the same device, so this checks the bookkeeping: the
    stages take turns (base, then streaming and enhancer alternating once per block of frames
    read ahead), as many times as the plan counts, and the video is the same as without
    offload (reading ahead changes when frames are made, not what they are)."""
    from streamingt2v import enhancer, pipeline, plan
    from streamingt2v.generate import GenerateConfig, generate
    from streamingt2v.offload import Offloader

    made = []
    monkeypatch.setattr(
        pipeline, "Offloader", lambda device: made.append(Offloader(device)) or made[-1]
    )
    monkeypatch.setattr(enhancer, "READ_AHEAD", 24)  # blocks of 24 frames: two in 40
    common = dict(steps=3, progress=False, model=enhanced_model_dir)
    generate(GenerateConfig("a red circle", 40, tmp_path / "a", offload=True, **common))
    generate(GenerateConfig("a red circle", 40, tmp_path / "b", **common))
    assert np.array_equal(read_video(tmp_path / "a"), read_video(tmp_path / "b"))
    history = made[0].history
    assert history == ["base", "streaming", "enhancer", "streaming", "enhancer"]
    folder = pipeline.StreamingT2VPipeline.from_pretrained(enhanced_model_dir)
    stream, enhance = folder.config.stream, EnhanceConfig(steps=4)
    assert plan.offload_moves(40, stream, enhance, read_ahead=24) == len(history)
    assert plan.offload_moves(80, stream, enhance, read_ahead=48) == len(history)
    # frame by frame, the groups would take turns before each of the 5 enhancer chunks
    assert plan.offload_moves(80, stream, enhance, read_ahead=1) == 1 + 2 * 5
    assert plan.offload_moves(40, stream, None, read_ahead=48) == 2
    assert plan.offload_moves(10, stream, None, read_ahead=48) == 1


def test_offloaded_weights_come_back_unchanged_and_leave_nothing_behind():
    from streamingt2v.offload import Offloader

    a = torch.nn.Linear(3, 4)
    b = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2))
    before = {n: t.clone() for m in (a, b) for n, t in m.state_dict().items()}
    offloader = Offloader("cpu")
    offloader.park(a, b)
    for group in ("a", "b", "a", "a", "b"):
        offloader.use(group, a if group == "a" else b)
    assert offloader.history == ["a", "b", "a", "b"]
    after = {n: t for m in (a, b) for n, t in m.state_dict().items()}
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert list(offloader.active) == [id(b)]


def test_enhancer_benchmarks_run_on_a_tiny_model(enhanced_model_dir, tmp_path, monkeypatch):
    # benchmarks/paper/enhancer_eval.py and enhance_ablation.py, end to end on the tiny folder
    enhancer_eval = load_script("benchmarks/paper/enhancer_eval.py")
    ablation = load_script("benchmarks/paper/enhance_ablation.py")
    common = ["--model", str(enhanced_model_dir), "--frames", "40", "--steps", "4"]
    out = tmp_path / "eval"
    enhancer_eval.main([*common, "--videos", "1", "--generated", "1", "--out", str(out)])
    summary = json.loads((out / "enhancer_eval.json").read_text())["summary"]
    # bilinear upsampling of a 32x32 render is close to the 64x64 render, whatever the model
    assert summary["rendered/upsampled/psnr"] > 25, summary
    assert "generated/enhanced/colour_right" in summary and (out / "frames.png").is_file()
    out = tmp_path / "ablation"
    ablation.main([*common, "--videos", "1", "--out", str(out)])
    result = json.loads((out / "ablation.json").read_text())
    assert set(result["summary"]) == {"input", *MODES, "ordering_holds"}
    assert all(result["videos"][0][m] is not None for m in ("input", *MODES))
    assert (out / "xt_modes.png").is_file()


def test_full_size_benchmark_runs_every_phase_at_the_tiny_scale(
    tmp_path, monkeypatch, plans_time_once
):
    # benchmarks/full_size.py (the GPU figures of docs/performance.md), on the CPU
    full_size = load_script("benchmarks/full_size.py")
    common = ["--scale", "tiny", "--device", "cpu", "--dtype", "float32", "--size", "32",
              "--steps", "1", "--enhance-steps", "2", "--long-steps", "1",
              "--long-enhance-steps", "2"]  # fmt: skip
    full_size.main([*common, "--out", str(tmp_path / "all"), "--enhance-size", "66x66",
                    "--wide-size", "18x48", "--wide-enhance-size", "36x96", "--frames", "24",
                    "--long-frames", "24", "32"])  # fmt: skip
    phases = json.loads((tmp_path / "all" / "full_size.json").read_text())["phases"]
    assert list(phases) == list(full_size.PHASES)
    assert phases["stream"]["frames"] == phases["enhance"]["frames"] == 24
    assert phases["enhance"]["size"] == [66, 66]  # 33 latents: not halvable, still enhanced
    assert {k: r["frames"] for k, r in phases["length"]["runs"].items()} == {"24": 24, "32": 32}
    assert phases["wide"]["frames"] == 24
    assert all(r["moves"] == r["planned_moves"] >= 3 for r in phases["offload"]["runs"].values())
    # a failing phase is recorded, not raised
    full_size.main([*common, "--out", str(tmp_path / "one"), "--phases", "enhance"])
    phases = json.loads((tmp_path / "one" / "full_size.json").read_text())["phases"]
    assert "needs the stream phase" in phases["enhance"]["error"]
