"""Temporal smoothness around chunk boundaries (the paper's enhancer ablation, Sec. 5.3).

The paper reports the standard deviation of the optical-flow magnitude across frames around
the enhancer's chunk boundaries (8.72 independent, 6.01 shared noise, 3.32 randomized
blending): a seam shows as a jump in the motion between two frames. Here: the mean flow
magnitude m_t of every pair (t, t+1) (``metrics/mawe.py``'s flows, at ``size`` pixels); for
every boundary, the standard deviation of m_t over the frames from ``margin`` before the
overlap's first frame to ``margin`` after its last; the mean over boundaries.
"""

from __future__ import annotations

import numpy as np

from ..blending import chunk_starts
from .mawe import FLOWS, resized


def flow_magnitudes(video: np.ndarray, flow: str = "dis", size: int = 256) -> np.ndarray:
    """(F - 1,) mean optical-flow magnitude of every pair of consecutive frames."""
    _, grays = resized(video, size)
    pairs = zip(grays[:-1], grays[1:], strict=True)
    return np.array([np.linalg.norm(FLOWS[flow](a, b), axis=-1).mean() for a, b in pairs])


def boundary_flow_std(
    video: np.ndarray,
    chunk: int = 24,
    overlap: int = 8,
    margin: int = 2,
    flow: str = "dis",
    size: int = 256,
) -> float | None:
    """Mean over the chunk boundaries of the std of the flow magnitude around each; None when
    the video is a single chunk."""
    starts = chunk_starts(len(video), chunk, overlap)
    if len(starts) < 2:
        return None
    magnitudes = flow_magnitudes(video, flow, size)
    stds = []
    for k in range(1, len(starts)):
        first = starts[k]  # the overlap is [starts[k], starts[k - 1] + chunk)
        last = min(starts[k - 1] + chunk, len(video)) - 1
        lo, hi = max(0, first - margin), min(len(magnitudes), last + margin)
        stds.append(float(magnitudes[lo:hi].std()))
    return float(np.mean(stds))
