"""Chunking, shared noise and randomized blending for the enhancer (paper Sec. 4.2.3).

Pure functions of (seed, indices), so results do not depend on how the work is scheduled:

- ``chunk_starts``: chunks of C frames overlapping by O, covering any length exactly; when
  the stride does not land on the end, one last chunk is aligned to the video's end (it then
  overlaps its neighbour by more than O). The official code trims the video instead.
- ``frame_noise``: the noise of frame f, drawn on demand. Neighbouring chunks read the same
  frame's noise, so their overlap shares noise (``shared-noise`` and ``randomized`` modes);
  ``independent`` mode draws per (chunk, frame) instead.
- ``cut_offset`` / ``owners``: at every model evaluation, chunk k (k > 0) overwrites the
  predicted x0 from ``start_k + off`` onward, ``off`` uniform in {0, ..., overlap_k - 1},
  drawn afresh for every boundary at every step (official randomized blending).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def chunk_starts(num_frames: int, chunk: int, overlap: int) -> list[int]:
    """First frame of every chunk; chunk k covers [start_k, min(start_k + chunk, N))."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 1 <= overlap < chunk:
        raise ValueError(f"need 1 <= overlap < chunk, got chunk={chunk}, overlap={overlap}")
    if num_frames <= chunk:
        return [0]
    starts = list(range(0, num_frames - chunk + 1, chunk - overlap))
    if starts[-1] + chunk < num_frames:
        starts.append(num_frames - chunk)  # the tail chunk, aligned to the end
    return starts


def _seed(*keys: object) -> int:
    digest = hashlib.sha256(repr(("streamingt2v-enhance", *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def frame_noise(
    seed: int, frame: int, shape: tuple[int, ...], chunk: int | None = None
) -> torch.Tensor:
    """Gaussian noise of one frame's latents (C, h, w); ``chunk`` set: independent noise."""
    key = ("frame", seed, frame) if chunk is None else ("chunk-frame", seed, chunk, frame)
    return torch.randn(shape, generator=torch.Generator().manual_seed(_seed(*key)))


def step_noise(seed: int, frame: int, step: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The stochastic sampler's fresh noise for frame f at step s (DDIM with eta > 0)."""
    return torch.randn(
        shape, generator=torch.Generator().manual_seed(_seed("step", seed, frame, step))
    )


def cut_offset(seed: int, boundary: int, step: int, overlap: int) -> int:
    """Offset into the overlap where chunk ``boundary`` takes over, uniform in [0, overlap)."""
    return int(np.random.default_rng(_seed("cut", seed, boundary, step)).integers(overlap))


def owners(
    starts: list[int], num_frames: int, chunk: int, seed: int, step: int, randomized: bool = True
) -> np.ndarray:
    """For every frame, the chunk whose x0 prediction it takes at ``step``.

    Chunks are written in order; chunk k overwrites from ``start_k + off_k`` on, where off_k
    is random (randomized blending) or 0 (later chunks win the whole overlap).
    """
    owner = np.empty(num_frames, dtype=np.int64)
    for k, start in enumerate(starts):
        end = min(start + chunk, num_frames)
        if k == 0:
            owner[start:end] = 0
            continue
        overlap = min(starts[k - 1] + chunk, num_frames) - start
        off = cut_offset(seed, k, step, overlap) if randomized else 0
        owner[start + off : end] = k
    return owner
