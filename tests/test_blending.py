"""Chunking and randomized blending: coverage, ranges, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamingt2v.blending import chunk_starts, cut_offset, frame_noise, owners


@pytest.mark.parametrize("n", [1, 5, 23, 24, 25, 40, 41, 56, 100, 1200])
def test_chunks_cover_every_frame_of_any_length(n):
    starts = chunk_starts(n, 24, 8)
    covered = np.zeros(n, dtype=int)
    for s in starts:
        covered[s : min(s + 24, n)] += 1
    assert (covered >= 1).all()
    assert starts[0] == 0 and min(starts[-1] + 24, n) == n
    assert all(b - a <= 16 for a, b in zip(starts, starts[1:], strict=False))  # overlap >= 8


def test_bad_chunking_is_refused():
    with pytest.raises(ValueError):
        chunk_starts(100, 8, 8)
    with pytest.raises(ValueError):
        chunk_starts(100, 24, 0)


@pytest.mark.parametrize("n", [24, 40, 57, 240])
def test_blending_gives_every_frame_exactly_one_covering_chunk_at_every_step(n):
    starts = chunk_starts(n, 24, 8)
    for step in range(30):
        owner = owners(starts, n, 24, seed=3, step=step)
        assert owner.shape == (n,)
        for f, k in enumerate(owner):
            assert starts[k] <= f < starts[k] + 24  # the owner covers the frame


def test_offsets_stay_in_range_and_change_across_steps():
    offs = [cut_offset(0, boundary=1, step=s, overlap=8) for s in range(60)]
    assert min(offs) >= 0 and max(offs) <= 7
    assert len(set(offs)) > 4  # they do change from step to step
    assert cut_offset(0, 1, 5, 8) == cut_offset(0, 1, 5, 8)  # and are reproducible


def test_fixed_cut_when_not_randomized():
    starts = chunk_starts(40, 24, 8)
    a = owners(starts, 40, 24, seed=0, step=0, randomized=False)
    assert list(a[:16]) == [0] * 16 and list(a[16:]) == [1] * 24


def test_shared_noise_is_per_frame_and_independent_noise_per_chunk():
    a = frame_noise(1, 10, (4, 2, 2))
    assert torch.equal(a, frame_noise(1, 10, (4, 2, 2)))
    assert not torch.equal(a, frame_noise(1, 11, (4, 2, 2)))
    assert not torch.equal(
        frame_noise(1, 10, (4, 2, 2), chunk=0), frame_noise(1, 10, (4, 2, 2), chunk=1)
    )
