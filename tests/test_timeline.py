"""Prompt timelines: the prompt changes at the documented chunk boundary, the APM anchor is
kept or re-anchored, and timeline runs resume exactly."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from streamingt2v.cli import main
from streamingt2v.config import UsageError
from streamingt2v.streaming import StreamState, stream, stream_timeline
from streamingt2v.timeline import Segment, Timeline
from streamingt2v.video_io import read_video

FAST = dict(steps=2, scheduler="ddim")
A, B = "a red circle moving right", "a blue square moving up"


def _recording(models):
    """``models`` whose sampler records (chunk index, prompt) of every chunk it makes."""
    made = []

    def sampler(request, index, *args):
        made.append((index, request.prompt))
        return models.sampler(request, index, *args)

    return dataclasses.replace(models, sampler=sampler), made


def _frames(chunks) -> np.ndarray:
    return np.concatenate([c.frames for c in chunks])


def test_a_prompt_takes_over_at_the_first_chunk_boundary_of_its_segment(tiny_pipe):
    """20 + 20 frames: chunk 1 (frames 16-23) runs past frame 20 and keeps the first prompt;
    the second takes over at chunk 2 (frame 24). The first 24 frames are the first prompt's
    run's; the rest continue its state with the second prompt."""
    models, made = _recording(tiny_pipe.chunk_models())
    timeline = Timeline((Segment(A, 20), Segment(B, 20)))
    request = tiny_pipe.request(A, 40, seed=2, **FAST)
    video = _frames(stream_timeline(models, request, timeline))
    assert len(video) == 40
    assert made == [(0, A), (1, A), (2, B), (3, B)]
    first = list(stream(models, tiny_pipe.request(A, 20, seed=2, **FAST)))
    assert np.array_equal(video[:20], _frames(first))
    then = stream(models, tiny_pipe.request(B, 40, seed=2, **FAST), resume=first[-1].state)
    assert np.array_equal(video[20:], _frames(then))
    assert not np.array_equal(
        video, _frames(stream(models, tiny_pipe.request(A, 40, seed=2, **FAST)))
    )


def test_reanchor_makes_the_last_frame_before_a_switch_the_anchor(tiny_pipe):
    models = tiny_pipe.chunk_models()
    anchors = []
    real = models.encode_anchor
    recording = dataclasses.replace(models, encode_anchor=lambda f: anchors.append(f) or real(f))
    request = tiny_pipe.request(A, 40, seed=1, **FAST)
    keep = _frames(stream_timeline(recording, request, Timeline((Segment(A, 24), Segment(B, 16)))))
    anchors_kept, anchors[:] = list(anchors), []
    timeline = Timeline((Segment(A, 24), Segment(B, 16)), anchor="reanchor")
    again = _frames(stream_timeline(recording, request, timeline))
    assert np.array_equal(again[:24], keep[:24])  # (the tiny model's APM starts at zero)
    frame = tiny_pipe.chunk_models().to_model_frames(keep[23:24], None)[:, :, 0]
    assert torch_equal(anchors[-1], frame) and not torch_equal(anchors_kept[-1], frame)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_segment_settings_apply_to_their_chunks(tiny_pipe):
    models = tiny_pipe.chunk_models()
    seen = []
    sampler = models.sampler
    models = dataclasses.replace(
        models,
        sampler=lambda r, i, *a: seen.append((r.seed, r.sample.guidance)) or sampler(r, i, *a),
    )
    timeline = Timeline((Segment(A, 16), Segment(B, 8, seed=9, guidance=3.0)))
    list(stream_timeline(models, tiny_pipe.request(A, 24, seed=1, guidance=7.5, **FAST), timeline))
    assert seen == [(1, 7.5), (9, 3.0)]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"segments": []}, "at least one segment"),
        ({"segments": [{"prompt": " ", "frames": 8}]}, "prompt is empty"),
        ({"segments": [{"prompt": "x", "frames": 0}]}, "frames must be >= 1"),
        ({"segments": [{"prompt": "x"}]}, "has no 'frames'"),
        ({"segments": [{"prompt": "x", "frames": 8, "speed": 2}]}, "unknown key 'speed'"),
        ({"segments": [{"prompt": "x", "frames": 8}], "loop": True}, "unknown key 'loop'"),
        (
            {"segments": [{"prompt": "x", "frames": 8}], "anchor": "first"},
            "unknown timeline anchor",
        ),
        ([{"prompt": "x", "frames": 8}], "expected an object"),
    ],
)
def test_bad_timelines_are_refused_by_name(data, message):
    with pytest.raises(UsageError, match=message):
        Timeline.from_dict(data)


def test_generate_timeline_cli_refuses_bad_files_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"segments": [{"prompt": "", "frames": 8}]}))
    out = tmp_path / "v.mp4"
    assert main(["generate", "--timeline", str(bad), "--out", str(out), "--quiet"]) == 2
    assert "segment 1: a timeline segment's prompt is empty" in capsys.readouterr().err
    bad.write_text("{not json")
    assert main(["generate", "--timeline", str(bad), "--out", str(out)]) == 2
    assert "not a readable timeline" in capsys.readouterr().err
    assert main(["generate", "a", "--timeline", str(bad), "--out", str(out)]) == 2
    assert "not prompt and timeline" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_a_timeline_run_resumes_exactly(tiny_model_dir, tmp_path, monkeypatch):
    import streamingt2v.generate

    timeline = tmp_path / "t.json"
    segments = [{"prompt": A, "frames": 20}, {"prompt": B, "frames": 20, "seed": 5}]
    timeline.write_text(json.dumps({"segments": segments}))
    common = ["generate", "--timeline", str(timeline), "--model", str(tiny_model_dir), "--steps",
              "2", "--scheduler", "ddim", "--quiet"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    manifest = json.loads((tmp_path / "whole.json").read_text())
    assert manifest["timeline"]["segments"][1] == {"prompt": B, "frames": 20, "seed": 5}
    real = streamingt2v.generate.stream_timeline

    def stopping(*args, **kwargs):
        for i, chunk in enumerate(real(*args, **kwargs)):
            if i == 4:  # chunks 0, 1 (4 frames of it), its other 4 frames, 2: 32 frames
                raise KeyboardInterrupt
            yield chunk

    monkeypatch.setattr(streamingt2v.generate, "stream_timeline", stopping)
    assert main([*common, "--out", str(tmp_path / "run")]) == 130
    monkeypatch.undo()
    assert len(read_video(tmp_path / "run")) == 32
    assert main([*common, "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert np.array_equal(read_video(tmp_path / "run"), read_video(tmp_path / "whole"))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"segments": [{"prompt": A, "frames": 20},
                                              {"prompt": B, "frames": 28}]}))  # fmt: skip
    common[2] = str(other)
    assert main([*common, "--out", str(tmp_path / "run"), "--resume"]) == 2


def test_state_of_a_timeline_keeps_its_anchor_across_a_resume(tiny_pipe, tmp_path):
    """A re-anchored timeline resumed inside its second segment keeps the new anchor."""
    models = tiny_pipe.chunk_models()
    timeline = Timeline((Segment(A, 24), Segment(B, 24)), anchor="reanchor")
    request = tiny_pipe.request(A, 48, seed=3, **FAST)
    whole = list(stream_timeline(models, request, timeline))
    whole[2].state.save(tmp_path / "s.safetensors")
    state, _ = StreamState.load(tmp_path / "s.safetensors")
    rest = list(stream_timeline(models, request, timeline, resume=state))
    assert np.array_equal(_frames(whole[:3] + rest), _frames(whole))
