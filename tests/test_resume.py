"""Resuming, extending and branching a stream: exact, from a saved ``StreamState``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamingt2v.config import UsageError
from streamingt2v.streaming import StreamState, state_at, stream

FAST = dict(steps=2, scheduler="ddim")


def _frames(chunks) -> np.ndarray:
    return np.concatenate([c.frames for c in chunks])


def test_a_stream_resumed_from_any_chunk_equals_the_uninterrupted_one(tiny_pipe, tmp_path):
    request = tiny_pipe.request("a red circle moving right", 44, seed=3, **FAST)
    models = tiny_pipe.chunk_models()
    whole = list(stream(models, request))
    for stopped_after in (0, 2):  # the first chunk, a streaming chunk
        path = tmp_path / f"after_{stopped_after}.state.safetensors"
        whole[stopped_after].state.save(path, {"request": "recorded as given"})
        state, meta = StreamState.load(path)
        assert meta == {"request": "recorded as given"}
        rest = list(stream(models, request, resume=state))
        assert [c.index for c in rest] == [c.index for c in whole[stopped_after + 1 :]]
        assert np.array_equal(_frames(whole[: stopped_after + 1] + rest), _frames(whole))


def test_extending_a_finished_video_equals_the_longer_run(tiny_pipe):
    """44 frames end inside chunk 4 (16 + 8 * 4 = 48 made): the state keeps the 4 frames
    made but not handed out, so extending to 60 gives the 60-frame run's frames exactly."""
    models = tiny_pipe.chunk_models()
    short = list(stream(models, tiny_pipe.request("a blue square", 44, seed=5, **FAST)))
    assert len(short[-1].state.pending) == 4
    longer_request = tiny_pipe.request("a blue square", 60, seed=5, **FAST)
    extension = list(stream(models, longer_request, resume=short[-1].state))
    longer = _frames(stream(models, longer_request))
    assert np.array_equal(np.concatenate([_frames(short), _frames(extension)]), longer)


def test_branching_from_chunk_k_keeps_the_frames_before_it(tiny_pipe):
    """Chunk 2 on with another seed: frames before chunk 2 (0-23) are the original's; the
    branch equals a run that made chunks 0-1 with the first seed, then switched."""
    models = tiny_pipe.chunk_models()
    original = _frames(stream(models, tiny_pipe.request("a green circle", 40, seed=1, **FAST)))
    other_seed = tiny_pipe.request("a green circle", 40, seed=2, **FAST)
    start = state_at(original, 2, models.stream)
    assert start.made == 24 and start.next_index == 2
    branch = _frames(stream(models, other_seed, resume=start))
    video = np.concatenate([original[:24], branch])
    assert len(video) == 40 and not np.array_equal(video, original)
    # the same as resuming the original's own state after chunk 1 with the new seed
    saved = list(stream(models, tiny_pipe.request("a green circle", 40, seed=1, **FAST)))[1]
    assert np.array_equal(branch, _frames(stream(models, other_seed, resume=saved.state)))


def test_bad_branch_points_are_refused(tiny_pipe):
    stream_cfg = tiny_pipe.config.stream
    video = np.zeros((40, 32, 32, 3), np.uint8)
    with pytest.raises(UsageError, match="chunk 0"):
        state_at(video, 0, stream_cfg)
    with pytest.raises(UsageError, match="chunk 5 starts at frame 48"):
        state_at(video, 5, stream_cfg)


def _stop_after(monkeypatch, chunks: int) -> None:
    """The next generate run is stopped (Ctrl-C) when chunk ``chunks`` is asked for."""
    import streamingt2v.generate

    real = streamingt2v.generate.stream

    def stopping(*args, **kwargs):
        for i, chunk in enumerate(real(*args, **kwargs)):
            if i == chunks:
                raise KeyboardInterrupt
            yield chunk

    monkeypatch.setattr(streamingt2v.generate, "stream", stopping)


def test_generate_resume_continues_a_stopped_run_exactly(tiny_model_dir, tmp_path, monkeypatch):
    """A run stopped after 2 chunks, resumed with --resume, then extended to 56 frames with
    --resume --frames 56: PNG frames equal to one uninterrupted 56-frame run's."""
    from streamingt2v.cli import main
    from streamingt2v.video_io import read_video

    common = ["generate", "a red circle moving right", "--model", str(tiny_model_dir),
              "--steps", "2", "--scheduler", "ddim", "--seed", "4", "--quiet"]  # fmt: skip
    whole = tmp_path / "whole"
    assert main([*common, "--frames", "56", "--out", str(whole)]) == 0
    out = tmp_path / "run"
    _stop_after(monkeypatch, 2)
    assert main([*common, "--frames", "40", "--out", str(out)]) == 130
    assert len(read_video(out)) == 24 and (tmp_path / "run.state.safetensors").is_file()
    monkeypatch.undo()
    assert main([*common, "--frames", "40", "--out", str(out), "--resume"]) == 0
    assert np.array_equal(read_video(out), read_video(whole)[:40])
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["resumed_from_frame"] == 24 and manifest["frames"] == 40
    assert main([*common, "--frames", "56", "--out", str(out), "--resume"]) == 0
    assert np.array_equal(read_video(out), read_video(whole))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run", "run.json", "run.state.safetensors", "whole", "whole.json",
        "whole.state.safetensors",
    ]  # fmt: skip


def test_resume_with_other_settings_is_refused_naming_them(tiny_model_dir, tmp_path, capsys):
    from streamingt2v.cli import main

    common = ["generate", "a red circle", "--model", str(tiny_model_dir), "--steps", "2",
              "--frames", "24", "--quiet", "--out", str(tmp_path / "v")]  # fmt: skip
    assert main([*common, "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(common) == 0
    before = sorted(p.read_bytes() for p in (tmp_path / "v").iterdir())
    assert main([*common, "--resume", "--seed", "2", "--guidance", "3"]) == 2
    err = capsys.readouterr().err
    assert "sample.guidance: 7.5 -> 3.0" in err and "seed: 0 -> 2" in err
    assert sorted(p.read_bytes() for p in (tmp_path / "v").iterdir()) == before


def test_generate_branch_keeps_the_frames_before_the_chunk(tiny_model_dir, tmp_path):
    from streamingt2v import StreamingT2VPipeline
    from streamingt2v.cli import main
    from streamingt2v.video_io import read_video

    common = ["generate", "a red circle moving right", "--model", str(tiny_model_dir),
              "--steps", "2", "--scheduler", "ddim", "--frames", "40", "--quiet"]  # fmt: skip
    assert main([*common, "--seed", "1", "--out", str(tmp_path / "a")]) == 0
    args = [*common, "--seed", "2", "--branch", str(tmp_path / "a"), "--branch-chunk", "2"]
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    original, branched = read_video(tmp_path / "a"), read_video(tmp_path / "b")
    assert np.array_equal(branched[:24], original[:24])
    pipe = StreamingT2VPipeline.from_pretrained(tiny_model_dir)
    start = state_at(original, 2, pipe.config.stream)
    request = pipe.request("a red circle moving right", 40, seed=2, **FAST)
    assert np.array_equal(
        branched[24:], _frames(stream(pipe.chunk_models(), request, resume=start))
    )
    assert main([*args, "--out", str(tmp_path / "c"), "--frames", "20"]) == 2
    assert main([*common, "--branch-chunk", "2", "--out", str(tmp_path / "d")]) == 2


def test_generate_extend_continues_our_video_exactly_and_any_other_from_its_frames(
    tiny_model_dir, tmp_path
):
    from streamingt2v import StreamingT2VPipeline
    from streamingt2v.cli import main
    from streamingt2v.video_io import VideoWriter, read_video

    common = ["generate", "a red circle moving right", "--model", str(tiny_model_dir),
              "--steps", "2", "--scheduler", "ddim", "--seed", "4", "--quiet"]  # fmt: skip
    assert main([*common, "--frames", "56", "--out", str(tmp_path / "whole")]) == 0
    assert main([*common, "--frames", "40", "--out", str(tmp_path / "ours")]) == 0
    extend = ["--extend", str(tmp_path / "ours"), "--frames", "56"]
    assert main([*common, *extend, "--out", str(tmp_path / "longer")]) == 0
    assert np.array_equal(read_video(tmp_path / "longer"), read_video(tmp_path / "whole"))
    assert len(read_video(tmp_path / "ours")) == 40  # the video extended is not changed

    # another video, off the chunk grid (20 frames): from its last 8 frames and frame 0
    pipe = StreamingT2VPipeline.from_pretrained(tiny_model_dir)
    height, width = pipe.frame_size
    foreign = np.random.default_rng(0).integers(0, 256, (20, height, width, 3), np.uint8)
    writer = VideoWriter(tmp_path / "foreign", 8)
    writer.write(foreign)
    writer.finish()
    extend = ["--extend", str(tmp_path / "foreign"), "--frames", "36"]
    assert main([*common, *extend, "--out", str(tmp_path / "more")]) == 0
    more = read_video(tmp_path / "more")
    request = pipe.request("a red circle moving right", 36, seed=4, **FAST)
    start = StreamState.from_video(foreign, pipe.config.stream)
    new = _frames(stream(pipe.chunk_models(), request, resume=start))
    assert len(more) == 36 and np.array_equal(more[:20], foreign)
    assert np.array_equal(more[20:], new)
    manifest = json.loads((tmp_path / "more.json").read_text())
    assert manifest["extended_from"]["from_saved_state"] is False


def test_extend_command_takes_the_videos_own_settings(tiny_model_dir, tmp_path, capsys):
    """``streamingt2v extend VIDEO --frames N --out OUT``: the settings, prompt and model
    come from VIDEO's manifest; the longer video equals one run of N frames."""
    from streamingt2v.cli import main
    from streamingt2v.video_io import VideoWriter, read_video

    common = ["generate", "a red circle moving right", "--model", str(tiny_model_dir),
              "--steps", "2", "--scheduler", "ddim", "--seed", "4", "--quiet"]  # fmt: skip
    assert main([*common, "--frames", "56", "--out", str(tmp_path / "whole")]) == 0
    assert main([*common, "--frames", "40", "--out", str(tmp_path / "ours")]) == 0
    ours = str(tmp_path / "ours")
    assert main(["extend", ours, "--frames", "56", "--out", str(tmp_path / "x"), "--quiet"]) == 0
    assert np.array_equal(read_video(tmp_path / "x"), read_video(tmp_path / "whole"))
    writer = VideoWriter(tmp_path / "foreign", 8)
    writer.write(read_video(tmp_path / "whole")[:20])
    writer.finish()
    args = ["extend", str(tmp_path / "foreign"), "--frames", "36", "--out", str(tmp_path / "y")]
    assert main([*args, "--model", str(tiny_model_dir), "--quiet"]) == 2
    assert "give --prompt" in capsys.readouterr().err
