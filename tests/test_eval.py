"""Every metric of ``streamingt2v eval`` on constructed videos with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from streamingt2v.cli import main
from streamingt2v.config import ModelLoadError
from streamingt2v.evaluate import ClipPair, evaluate_video
from streamingt2v.metrics.mawe import forward_warp, mawe
from streamingt2v.metrics.scuts import count_cuts
from streamingt2v.metrics.smoothness import boundary_flow_std
from streamingt2v.models.encoders import ImageEncoder
from streamingt2v.random_models import random_pipeline
from streamingt2v.video_io import VideoWriter
from streamingt2v.world.render import render, sample_params


def run(*args):
    return main([str(a) for a in args])


def _params(colour, shape, motion, background, seed=0):
    words = dict(colour=colour, shape=shape, motion=motion, background=background)
    return sample_params(np.random.default_rng(seed), **words)


def _texture(size: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture that wraps around (built from low frequencies)."""
    rng = np.random.default_rng(seed)
    spectrum = np.zeros((size, size, 3), dtype=complex)
    k = 6
    spectrum[:k, :k] = rng.normal(size=(k, k, 3)) + 1j * rng.normal(size=(k, k, 3))
    image = np.fft.ifft2(spectrum, axes=(0, 1)).real
    image = (image - image.min()) / (image.max() - image.min())
    return (image * 255).round().astype(np.uint8)


def test_static_video_has_no_cut_and_an_explicitly_infinite_mawe():
    video = np.repeat(_texture(32)[None], 24, axis=0)
    report = mawe(video, size=32)
    assert report.static and report.mawe == float("inf") and report.pairs == 0
    assert count_cuts(video) == 0


def test_translating_pattern_has_near_zero_warp_error_and_its_known_speed():
    # A pattern moving 2 pixels right per frame, evaluated at its own size (no resize).
    base = _texture(96, seed=1)
    video = np.stack([np.roll(base, 2 * t, axis=1) for t in range(12)])
    report = mawe(video, size=96)
    assert report.pairs == 11
    assert np.mean(report.motions) == pytest.approx(2.0, rel=0.1)
    # Squared error per value (0..255 scale) well under 1% of a grey level's square range.
    assert report.mawe < 5.0, report.mawe
    # A video whose pairs do not match their motion (shuffled frames) scores far worse.
    shuffled = video[[0, 7, 2, 9, 4, 11, 6, 1, 8, 3, 10, 5]]
    assert mawe(shuffled, size=96).mawe > 10 * report.mawe


def test_forward_warp_moves_pixels_and_masks_what_nothing_reaches():
    frame = np.arange(16, dtype=np.float64).reshape(4, 4, 1).repeat(3, axis=2)
    flow = np.zeros((4, 4, 2), dtype=np.float32)
    flow[..., 0] = 1.0  # everything one pixel right
    warped, known = forward_warp(frame, flow)
    assert not known[:, 0].any() and known[:, 1:].all()
    assert np.array_equal(warped[:, 1:], frame[:, :-1])


def test_planted_cut_at_frame_24_is_one_cut():
    a = render(_params("red", "circle", "moving right", "black"), 48)
    b = render(_params("yellow", "square", "moving up", "navy", seed=1), 48)
    video = np.concatenate([a[:24], b[24:]])
    assert count_cuts(video) == 1
    assert count_cuts(a) == 0


def test_cut_at_every_chunk_boundary_is_found():
    # Six 8-frame pieces of six different videos: five cuts, one per boundary.
    words = [
        ("red", "circle", "black"),
        ("cyan", "square", "white"),
        ("yellow", "triangle", "navy"),
        ("green", "circle", "gray"),
        ("magenta", "square", "black"),
        ("orange", "triangle", "white"),
    ]
    pieces = [
        render(_params(c, s, "moving left", b, seed=i), np.arange(8 * i, 8 * i + 8))
        for i, (c, s, b) in enumerate(words)
    ]
    assert count_cuts(np.concatenate(pieces)) == 5


def test_world_checks_of_rendered_ground_truth_are_all_right():
    prompt = "a blue square moving down on a white background"
    video = render(_params("blue", "square", "moving down", "white"), 40)
    report = evaluate_video(video, prompt, mawe_size=64)
    world = report["world"]
    assert world["colour_right"] == 1.0 and world["background_right"] == 1.0
    assert world["shape_right"] == 1.0 and world["direction_right"] == 1.0
    assert report["curves"]["speed"] and max(report["curves"]["colour_drift"]) < 5.0
    assert evaluate_video(video, "a dog running", mawe_size=64)["world"] is None


def _clip_pair(text_encoder) -> ClipPair:
    """A random image tower projecting to the text encoder's width: a CLIP-like pair."""
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=text_encoder.dim,
    )  # fmt: skip
    return ClipPair(text_encoder, ImageEncoder(CLIPVisionModelWithProjection(config).eval()))


def test_clip_score_scores_every_frame(tiny_pipe):
    clip = _clip_pair(tiny_pipe.text_encoder)
    video = render(_params("red", "circle", "moving right", "black"), 10)
    report = evaluate_video(video, "a red circle", clip, mawe_size=32)
    images = clip.image_embeddings(video)
    expected = (images @ clip.text_embedding("a red circle")).mean().item() * 100
    assert report["clip_score"] == pytest.approx(expected, abs=1e-4)
    assert -100 <= report["clip_score"] <= 100
    assert len(report["curves"]["clip_score"]) == 2
    assert report["curves"]["embedding_drift"][0] < 0.05


def test_a_pipeline_whose_encoders_do_not_share_a_space_is_refused(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="not a CLIP-like pair"):
        ClipPair.from_pipeline(tiny_model_dir)


def _write(path, video):
    writer = VideoWriter(path, 8)
    writer.write(video)
    writer.finish()


def test_eval_command_prints_json(tmp_path, capsys):
    # A pipeline of its own: adding streaming modules changes the (shared) UNet's processors.
    model = tmp_path / "model"
    base = random_pipeline("tiny", seed=7, streaming=False)
    clip = _clip_pair(base.text_encoder)
    base.add_streaming_modules(clip.image).save_pretrained(model)
    video = render(_params("green", "circle", "moving left", "gray"), 16)
    _write(tmp_path / "v", video)
    prompt = "a green circle moving left on a gray background"
    args = ["eval", tmp_path / "v", "--prompt", prompt, "--json", "--mawe-size", 64]
    assert run(*args, "--clip", model) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 16 and report["mawe"]["flow"] == "dis"
    assert report["world"]["colour_right"] == 1.0 and "clip_score" in report
    assert run("eval", tmp_path / "v", "--prompt", prompt, "--mawe-size", 64) == 0
    assert "MAWE" in capsys.readouterr().out


def test_eval_bad_input_exits_2(tmp_path, capsys):
    not_video = tmp_path / "x.mp4"
    not_video.write_text("text")
    one = tmp_path / "one"
    _write(one, render(_params("red", "circle", "circling", "black"), 1))
    not_clip = tmp_path / "not_clip"
    not_clip.mkdir()
    two = tmp_path / "two"
    _write(two, render(_params("red", "circle", "circling", "black"), 2))
    for args, message in [
        ([tmp_path / "missing.mp4"], "not found"),
        ([not_video], "not a readable video"),
        ([one], "at least 2"),
        ([two, "--clip", not_clip], "image_encoder"),
        ([two, "--flow", "raft"], "unknown flow"),
    ]:
        assert run("eval", *args) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_boundary_flow_std_sees_a_seam_in_the_overlap():
    # 40 frames, chunks of 24 overlapping by 8: one boundary, overlap [16, 24).
    base = _texture(96, seed=2)
    shift = [2 * t for t in range(40)]
    smooth = np.stack([np.roll(base, s, axis=1) for s in shift])
    seam = np.stack([np.roll(base, s + (8 if t >= 20 else 0), axis=1) for t, s in enumerate(shift)])
    calm = boundary_flow_std(smooth, size=96)
    assert calm < 0.3, calm
    assert boundary_flow_std(seam, size=96) > 5 * max(calm, 0.05)
    assert boundary_flow_std(smooth[:20], size=96) is None  # one chunk: no boundary
