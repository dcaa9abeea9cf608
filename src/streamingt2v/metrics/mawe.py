"""MAWE, the paper's motion-aware warp error, as the official ``mawe.py`` computes it.

Every frame is resized to ``size`` x ``size`` (720 in the official code). For each pair of
consecutive frames (pixel values 0-255): the optical flow from frame t to t+1; frame t
forward-warped by the rounded flow (nearest; target pixels nothing lands on are masked out);
W_t = sum of squared differences to frame t+1 over the known region / number of known values;
motion_t = mean over pixels of the flow's L2 norm; MAWE = mean over pairs of
W_t / (c * motion_t), c = 9.5. Lower is better.

Deviations, named in every report: the flow is pluggable (``FLOWS``): OpenCV's DIS by default
here, because RAFT's weights cannot be downloaded on these machines; RAFT is not offered
because torchvision (which its published weights need) would pull a multi-GB CUDA build. Pairs
with no motion (motion_t < ``MIN_MOTION`` pixels) would divide by zero in the official code:
they are left out of the mean, and a video with no moving pair has MAWE = inf (``static``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

C = 9.5
SIZE = 720
MIN_MOTION = 1e-3  # pixels (at ``size``)

Flow = Callable[[np.ndarray, np.ndarray], np.ndarray]  # gray (H, W) uint8 x2 -> (H, W, 2)


def _cv2():
    try:
        import cv2
    except ImportError as err:  # a base dependency, unless removed
        raise ImportError(
            "MAWE needs opencv-python-headless: pip install opencv-python-headless"
        ) from err
    return cv2


def dis_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """OpenCV DIS optical flow (medium preset), a -> b."""
    cv2 = _cv2()
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(a, b, None)


def farneback_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """OpenCV Farneback optical flow, a -> b."""
    return _cv2().calcOpticalFlowFarneback(a, b, None, 0.5, 5, 15, 3, 5, 1.2, 0)


FLOWS: dict[str, Flow] = {"dis": dis_flow, "farneback": farneback_flow}


def resized(video: np.ndarray, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every frame resized to ``size`` x ``size`` (bilinear), in RGB and in grey."""
    cv2 = _cv2()
    frames = [cv2.resize(f, (size, size), interpolation=cv2.INTER_LINEAR) for f in video]
    return frames, [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]


@dataclass
class MaweReport:
    mawe: float  # inf when no pair of frames moves
    flow: str
    size: int
    pairs: int  # pairs that entered the mean
    static_pairs: int  # pairs left out: no motion
    warp_errors: list[float]  # W_t of every pair
    motions: list[float]  # motion_t of every pair (pixels at ``size``)

    @property
    def static(self) -> bool:
        return self.pairs == 0

    def as_dict(self) -> dict:
        return {
            "mawe": self.mawe,
            "flow": self.flow,
            "size": self.size,
            "pairs": self.pairs,
            "static_pairs": self.static_pairs,
            "mean_motion": float(np.mean(self.motions)) if self.motions else 0.0,
        }


def forward_warp(frame: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move every pixel of (H, W, 3) ``frame`` by its rounded flow; -> (warped, known mask)."""
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    tx = xs + np.rint(flow[..., 0]).astype(np.int64)
    ty = ys + np.rint(flow[..., 1]).astype(np.int64)
    inside = (tx >= 0) & (tx < width) & (ty >= 0) & (ty < height)
    warped = np.zeros_like(frame)
    known = np.zeros((height, width), dtype=bool)
    warped[ty[inside], tx[inside]] = frame[ys[inside], xs[inside]]
    known[ty[inside], tx[inside]] = True
    return warped, known


def mawe(video: np.ndarray, flow: str = "dis", size: int = SIZE, c: float = C) -> MaweReport:
    """MAWE of a (F, H, W, 3) uint8 video with F >= 2."""
    if video.ndim != 4 or len(video) < 2:
        raise ValueError(f"MAWE needs a video of at least 2 frames, got shape {video.shape}")
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}; choose one of {sorted(FLOWS)}")
    frames, grays = resized(video, size)
    errors, motions, ratios = [], [], []
    for t in range(len(frames) - 1):
        field = FLOWS[flow](grays[t], grays[t + 1])
        warped, known = forward_warp(frames[t].astype(np.float64), field)
        diff = (warped - frames[t + 1].astype(np.float64))[known]  # (K, 3)
        error = float((diff**2).sum() / max(1, diff.size))
        motion = float(np.linalg.norm(field, axis=-1).mean())
        errors.append(error)
        motions.append(motion)
        if motion >= MIN_MOTION:
            ratios.append(error / (c * motion))
    score = float(np.mean(ratios)) if ratios else float("inf")
    return MaweReport(score, flow, size, len(ratios), len(errors) - len(ratios), errors, motions)
