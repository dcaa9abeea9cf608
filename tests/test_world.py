"""The shapes world: rendering matches its ground truth; the checks read it back."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import load_script

from streamingt2v.config import UsageError
from streamingt2v.metrics.world_checks import check_video, read_frame
from streamingt2v.world.dataset import WorldClips, turned_from
from streamingt2v.world.render import (
    BACKGROUNDS,
    COLOURS,
    STRAIGHT,
    WorldParams,
    parse_caption,
    render,
    rng_for,
    sample_params,
    track,
)


def _params(**kw):
    base = dict(
        colour="red",
        shape="square",
        motion="moving right",
        background="black",
        size=0.2,
        speed=0.04,
        x0=0.5,
        y0=0.5,
        angle=0.0,
        clockwise=False,
        radius=0.25,
    )
    return WorldParams(**(base | kw))


def test_render_is_deterministic_and_any_length():
    p = sample_params(rng_for("x", 1))
    assert np.array_equal(render(p, 30), render(p, 30))
    assert render(p, 1200).shape == (1200, 32, 32, 3)
    assert np.array_equal(render(p, np.arange(100, 110)), render(p, 110)[100:])


def test_square_pixels_match_ground_truth_position_and_colour():
    p = _params(x0=0.5, y0=0.5, size=0.25)  # a 8x8-pixel square centred on a pixel corner
    frame = render(p, 1)[0]
    assert (frame[12:20, 12:20] == COLOURS["red"]).all()
    assert (frame[:11] == BACKGROUNDS["black"]).all()
    assert (frame[21:] == BACKGROUNDS["black"]).all()


def test_centroid_follows_track_including_wraparound():
    p = _params(motion="moving left", x0=0.1, speed=0.05)
    video = render(p, 40)
    pos, vel = track(p, np.arange(40))
    read = np.array([read_frame(f).centroid for f in video])
    error = (read - pos + 0.5) % 1.0 - 0.5  # modulo the frame: the object wraps around
    assert np.abs(error).max() < 0.02
    assert np.allclose(vel, [-0.05, 0.0])


def test_bouncing_stays_inside_and_reflects():
    p = _params(motion="bouncing", angle=np.pi / 4, speed=0.05)
    pos, vel = track(p, np.arange(400))
    half = p.size / 2
    assert (pos >= half - 1e-9).all() and (pos <= 1 - half + 1e-9).all()
    assert (np.sign(vel[:, 0]) > 0).any() and (np.sign(vel[:, 0]) < 0).any()
    assert np.allclose(np.linalg.norm(vel, axis=1), 0.05)


def test_circling_keeps_radius_and_speed():
    p = _params(motion="circling", radius=0.25, speed=0.03)
    pos, vel = track(p, np.arange(300))
    assert np.allclose(np.linalg.norm(pos - 0.5, axis=1), 0.25)
    assert np.allclose(np.linalg.norm(vel, axis=1), 0.03)


@pytest.mark.parametrize("seed", range(12))
def test_checks_read_rendered_videos_right(seed):
    p = sample_params(rng_for("check", seed))
    report = check_video(render(p, 96), parse_caption(p.caption))
    assert report.colour_right == 1.0 and report.background_right == 1.0
    assert report.shape_right >= 0.9
    if report.direction_right is not None:
        assert report.direction_right == 1.0
        assert report.directions == [p.motion] * 12  # 96 frames: 12 windows
    assert abs(report.speed_first / p.speed - 1) < 0.05


def test_caption_round_trip_and_no_same_colour_background():
    for i in range(200):
        p = sample_params(rng_for("cap", i))
        assert p.colour != p.background
        assert parse_caption(p.caption) == dict(
            colour=p.colour, shape=p.shape, motion=p.motion, background=p.background
        )
    with pytest.raises(ValueError):
        _params(colour="white", background="white")
    with pytest.raises(ValueError):
        parse_caption("a purple blob dancing on a beach")


def test_dataset_clip_and_anchor():
    data = WorldClips(frames=16, max_start=300, seed=1)
    clip = data.clip(7)
    assert clip.frames.shape == (16, 32, 32, 3)
    assert np.array_equal(clip.anchor, render(clip.params, 1)[0])
    item = data[7]
    assert item["video"].shape == (3, 16, 32, 32) and item["video"].min() >= -1
    assert item["caption"] == clip.params.caption
    assert np.array_equal(data.clip(7).frames, clip.frames)  # deterministic per index


def test_turned_clips_change_only_straight_clips_before_the_turn():
    plain = WorldClips(frames=16, max_start=300, seed=2)
    turned = WorldClips(frames=16, max_start=300, seed=2, turn=1.0, turn_at=8)
    kinds = set()
    for index in range(24):
        a, b = plain.clip(index), turned.clip(index)
        assert a.params == b.params and a.start == b.start  # same caption, same long video
        assert np.array_equal(a.anchor, b.anchor)
        assert np.array_equal(a.frames[8:], b.frames[8:])  # the turn at frame 8
        straight = a.params.motion in STRAIGHT
        assert np.array_equal(a.frames[:8], b.frames[:8]) != straight
        kinds.add(straight)
    assert kinds == {True, False}
    at_start = WorldClips(frames=16, max_start=0, seed=2, turn=1.0)  # anchor = frame 0
    for index in range(6):
        clip = at_start.clip(index)
        assert np.array_equal(clip.anchor, render(clip.params, 1)[0])  # the untouched frame 0


def test_turned_from_moves_another_way_and_meets_the_track():
    params = _params(motion="moving right", speed=0.03, x0=0.3, y0=0.6)
    before = turned_from(params, "moving up", at=20)
    (x, y), (vx, vy) = (a[0] for a in track(before, np.array([19])))
    assert (vx, vy) == (0.0, -0.03)
    assert np.allclose(track(params, np.array([20]))[0][0], [x, (y - 0.03) % 1.0])
    with pytest.raises(UsageError, match="turn must be in"):  # the CLI: exit 2
        WorldClips(turn=1.5)


def test_swapped_caption_changes_one_word_and_keeps_object_off_background(monkeypatch):
    # benchmarks/research/diagnostics.py words: captions with one word changed
    swapped = load_script("benchmarks/research/diagnostics.py").swapped

    for caption in (
        "a white square moving up on a black background",
        "a red circle circling on a white background",
    ):
        true = parse_caption(caption)
        for word in ("colour", "shape", "motion", "background"):
            new = parse_caption(swapped(caption, word))
            assert [k for k in true if new[k] != true[k]] == [word]
            assert new["colour"] != new["background"]
    assert (
        parse_caption(swapped("a red circle moving left on a black background", "motion"))["motion"]
        == "moving right"
    )


def test_diagnostics_reads_background_colour_and_shape_per_frame(monkeypatch):
    # benchmarks/research/diagnostics.py chunks: a rendered video is right in every frame; a caption
    # with another shape is wrong in shape only
    right_per_frame = load_script("benchmarks/research/diagnostics.py").right_per_frame

    params = _params(shape="triangle", motion="moving right")
    video = render(params, 12, size=32)
    words = parse_caption(params.caption)
    assert right_per_frame(video, words).all()
    wrong = right_per_frame(video, words | {"shape": "circle"})
    assert wrong[:, :2].all() and not wrong[:, 2].any()


def test_object_size_scales_the_object_and_keeps_every_other_draw():
    """A larger world object (none wider than a third of the frame) changes the size alone: the same
    seed draws the same colour, shape, motion and track, and the default is a fifth."""
    from streamingt2v.world.render import SIZE, rng_for, sample_params

    default = sample_params(rng_for("size", 3))
    assert sample_params(rng_for("size", 3), SIZE) == default
    large = sample_params(rng_for("size", 3), 0.3)
    assert large.size == pytest.approx(default.size / SIZE * 0.3) and large.size <= 1 / 3
    assert dataclasses.replace(large, size=default.size) == default
    with pytest.raises(ValueError, match="object_size"):
        sample_params(rng_for("size", 3), 0.5)
