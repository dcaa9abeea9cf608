"""A run killed outright (SIGKILL) at any moment: the existing output survives, the frames of
its finished chunks are playable beside it, and ``--resume`` continues it exactly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streamingt2v.cli import main
from streamingt2v.video_io import read_video

# Runs the CLI in a process that stops for good at a chosen point (after chunk N is written,
# or inside the writer after N frames) and says so by creating MARKER: the test kills it there.
DRIVER = """
import sys, time
from pathlib import Path
import streamingt2v.generate as generate
from streamingt2v import video_io
from streamingt2v.cli import main

where, n, marker, args = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]

def wait_for_the_kill():
    marker.touch()
    time.sleep(600)

if where == "after-chunk":
    real = generate.stream
    def stream(*a, **k):
        for i, chunk in enumerate(real(*a, **k)):
            if i == n + 1:  # chunk n is written and its state saved
                wait_for_the_kill()
            yield chunk
    generate.stream = stream
else:
    real_write = video_io.VideoWriter.write
    def write(self, frames):
        if self.frames_written == n:
            wait_for_the_kill()
        real_write(self, frames)
    video_io.VideoWriter.write = write
sys.exit(main(args))
"""


def _common(model: Path, out: Path, frames: int = 40) -> list[str]:
    return ["generate", "a red circle moving right", "--model", str(model), "--steps", "2",
            "--scheduler", "ddim", "--seed", "4", "--frames", str(frames), "--quiet",
            "--out", str(out)]  # fmt: skip


def _kill_at(where: str, n: int, args: list[str], tmp_path: Path) -> None:
    """Run ``streamingt2v ARGS`` in a real process and SIGKILL it at ``where``, ``n``."""
    marker = tmp_path / f"killed-{where}-{n}"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    code = [sys.executable, "-c", DRIVER, where, str(n), str(marker), *args]
    proc = subprocess.Popen(code, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the run never reached the point to kill it at"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def whole(tiny_model_dir, tmp_path_factory) -> np.ndarray:
    """The uninterrupted 40-frame run's PNG frames."""
    out = tmp_path_factory.mktemp("whole") / "whole"
    assert main(_common(tiny_model_dir, out)) == 0
    return read_video(out)


@pytest.mark.parametrize("after_chunk", [0, 2])
def test_a_run_killed_after_chunk_k_resumes_to_the_uninterrupted_frames(
    tiny_model_dir, tmp_path, whole, after_chunk
):
    out = tmp_path / "run"
    _kill_at("after-chunk", after_chunk, _common(tiny_model_dir, out), tmp_path)
    assert not out.exists()
    finished = 16 + 8 * after_chunk  # frames of chunks 0..k
    growing = [p for p in tmp_path.iterdir() if p.name.startswith("run.") and p.is_dir()]
    assert len(growing) == 1 and len(list(growing[0].glob("*.png"))) == finished
    assert np.array_equal(read_video(growing[0]), whole[:finished])  # playable meanwhile
    assert main([*_common(tiny_model_dir, out), "--resume"]) == 0
    assert np.array_equal(read_video(out), whole)
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["resumed_from_frame"] == finished and manifest["resumed_from_killed_run"]
    # nothing of the killed run is left
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("killed")) == [
        "run", "run.json", "run.state.safetensors"
    ]  # fmt: skip


def test_an_mp4_killed_mid_chunk_keeps_the_old_video_and_plays_its_finished_chunks(
    tiny_model_dir, tmp_path
):
    """Killed while writing chunk 2's frames (3 of them written): the video it was to
    replace is untouched; the growing MPEG-TS stream plays the 27 frames written (the very
    frames of an uninterrupted mp4: the encoder holds none back); --resume continues from
    the state after chunk 1 (24 frames) and drops the 3 of the cut chunk."""
    whole = tmp_path / "whole.mp4"
    assert main(_common(tiny_model_dir, whole)) == 0
    whole = read_video(whole)
    out = tmp_path / "run.mp4"
    assert main(_common(tiny_model_dir, out, frames=16)) == 0
    before = out.read_bytes()
    args = [*_common(tiny_model_dir, out), "--overwrite"]
    _kill_at("after-frames", 27, args, tmp_path)
    assert out.read_bytes() == before
    (stream,) = tmp_path.glob("run.mp4.*.partial.ts")
    played = read_video(stream)
    assert np.array_equal(played, whole[:27])
    assert main([*_common(tiny_model_dir, out), "--resume"]) == 0
    video = read_video(out)
    # its first 24 frames are encoded once more (3.6 measured on this noise-like video)
    assert len(video) == 40 and np.abs(video.astype(int) - whole).mean() < 8
    assert json.loads((tmp_path / "run.mp4.json").read_text())["resumed_from_frame"] == 24
    assert not list(tmp_path.glob("*.partial*")) and not list(tmp_path.glob("*.lock"))


def test_a_clean_rerun_removes_a_killed_runs_files(tiny_model_dir, tmp_path):
    out = tmp_path / "run.mp4"
    _kill_at("after-chunk", 0, _common(tiny_model_dir, out), tmp_path)
    assert list(tmp_path.glob("run.mp4.*.partial*"))
    assert main([*_common(tiny_model_dir, out, frames=16)]) == 0
    assert not list(tmp_path.glob("*.partial*"))


def test_resume_of_a_finished_run_is_refused(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_common(tiny_model_dir, out, frames=16)) == 0
    assert main([*_common(tiny_model_dir, out, frames=16), "--resume"]) == 2
    assert "already has 16 frames" in capsys.readouterr().err
    assert len(read_video(out)) == 16


def test_bad_states_and_videos_to_continue_are_refused_by_name(tiny_model_dir, tmp_path, capsys):
    """A truncated state file, a state of another model, a file to extend that is no video:
    each one message, exit 2, the existing files unchanged."""
    out = tmp_path / "run"
    assert main(_common(tiny_model_dir, out, frames=16)) == 0
    state = tmp_path / "run.state.safetensors"
    whole_state = state.read_bytes()
    state.write_bytes(whole_state[: len(whole_state) // 2])
    assert main([*_common(tiny_model_dir, out), "--resume"]) == 2
    assert "not a stream state file" in capsys.readouterr().err
    state.write_bytes(whole_state)
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model_dir, other)
    (other / "pipeline_config.json").write_text(
        (other / "pipeline_config.json").read_text().replace('"fps": 8', '"fps": 9')
    )
    args = _common(other, out)
    assert main([*args, "--resume"]) == 2
    assert "the model's files: ['pipeline_config.json']" in capsys.readouterr().err
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    assert main([*_common(tiny_model_dir, tmp_path / "x"), "--extend", str(not_video)]) == 2
    assert "not a readable video" in capsys.readouterr().err
    assert len(read_video(out)) == 16 and state.read_bytes() == whole_state
    assert not (tmp_path / "x").exists()
