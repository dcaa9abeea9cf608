"""The drift guard: measures every streaming chunk, re-samples the ones over its limits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streamingt2v.cli import main
from streamingt2v.config import UsageError
from streamingt2v.drift import DriftGuard, chunk_scores
from streamingt2v.streaming import chunk_seed, stream

FAST = dict(steps=2, scheduler="ddim")


def _frames(chunks) -> np.ndarray:
    return np.concatenate([c.frames for c in chunks])


def test_a_chunk_within_the_limits_is_kept_as_the_unguarded_run_makes_it(tiny_pipe):
    models = tiny_pipe.chunk_models()
    request = tiny_pipe.request("a red circle", 40, seed=3, **FAST)
    lenient = DriftGuard(tries=3, max_anchor_distance=10.0, max_jump=1e6)
    chunks = list(stream(models, request, guard=lenient))
    assert np.array_equal(_frames(chunks), _frames(stream(models, request)))
    assert [len(c.tries) for c in chunks] == [0, 1, 1, 1]  # chunk 0 is not guarded


def test_a_rejected_chunk_is_sampled_again_with_the_next_seeds(tiny_pipe):
    """Limits no chunk meets: every streaming chunk is sampled 3 times and the least-over
    sample is kept; each try is recorded with its seed."""
    models = tiny_pipe.chunk_models()
    request = tiny_pipe.request("a red circle", 24, seed=3, **FAST)
    strict = DriftGuard(tries=3, max_anchor_distance=1e-9, max_jump=1e-9)
    chunks = list(stream(models, request, guard=strict))
    tries = chunks[1].tries
    assert [t["seed"] for t in tries] == [chunk_seed(3, 1, a) for a in range(3)]
    kept = min(range(3), key=lambda a: strict.excess(tries[a]))
    assert chunks[1].seed == chunk_seed(3, 1, kept)
    assert len({chunk_seed(3, 1, a) for a in range(3)} | {chunk_seed(3, 2)}) == 4


def test_the_jump_reads_a_cut_and_not_a_continuation():
    rng = np.random.default_rng(0)
    frames = np.zeros((9, 16, 16, 3), np.uint8)
    for t in range(9):  # a bright square moving right one pixel a frame
        frames[t, 4:10, t : t + 6] = 200
    embeddings = torch.ones(8, 4)
    smooth = chunk_scores(frames[1:], frames[0], embeddings, torch.ones(4))
    cut = frames[1:].copy()
    cut[:] = rng.integers(0, 255, (1, 16, 16, 3))
    broken = chunk_scores(cut, frames[0], embeddings, torch.ones(4))
    assert smooth["jump"] <= 1.5 and broken["jump"] > 10 and smooth["anchor_distance"] == 0


def test_bad_guard_settings_are_refused():
    with pytest.raises(UsageError, match="tries must be an integer >= 1"):
        DriftGuard(tries=0)
    with pytest.raises(UsageError, match="max_jump must be a number > 0"):
        DriftGuard(max_jump=-1)


def test_generate_records_every_try_in_the_manifest(tiny_model_dir, tmp_path):
    out = tmp_path / "v"
    args = ["generate", "a red circle", "--model", str(tiny_model_dir), "--steps", "2",
            "--frames", "24", "--quiet", "--out", str(out), "--drift-guard", "2",
            "--drift-max-distance", "1e-9"]  # fmt: skip
    assert main(args) == 0
    manifest = json.loads((tmp_path / "v.json").read_text())
    assert manifest["drift_guard"] == {"tries": 2, "max_anchor_distance": 1e-9, "max_jump": 5.3}
    assert "tries" not in manifest["chunks"][0] and len(manifest["chunks"][1]["tries"]) == 2
