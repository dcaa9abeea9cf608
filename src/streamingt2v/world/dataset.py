"""Training data from the shapes world: clips of long videos, with a far-earlier anchor.

Every sample is a pure function of (seed, index), so training batches are reproducible and a
resumed run sees exactly the batches it would have seen. ``WorldClips`` is a map-style
PyTorch dataset (for DataLoader / accelerate); ``clip_batch`` stacks samples for a step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import UsageError
from .render import SIZE, STRAIGHT, WorldParams, render, rng_for, sample_params, track


@dataclass
class WorldClip:
    params: WorldParams
    start: int  # index in the long video of the clip's first frame
    frames: np.ndarray  # (F, H, W, 3) uint8
    anchor: np.ndarray  # (H, W, 3) uint8: frame 0 of the same long video


class WorldClips(Dataset):
    """Clips of ``frames`` frames starting anywhere in [0, max_start] of a long video.

    ``turn``: the share of straight-motion clips whose first ``turn_at`` frames move in
    another straight direction (one of the other three, uniformly) and reach the object's
    position continuously, so the clip turns to its caption's direction at frame ``turn_at``.
    Not in the paper: the world's motions never change, so without it the stream stage
    never sees conditioning frames that disagree with the caption and learns to follow the
    frames (benchmarks/research/diagnostics.py continuation). 0, the default, renders the
    world as is.
    """

    def __init__(
        self,
        frames: int = 16,
        size: int = 32,
        max_start: int = 0,
        seed: int = 0,
        length: int = 10**9,
        turn: float = 0.0,
        turn_at: int = 8,
        object_size: float = SIZE,
    ):
        if not 0 <= turn <= 1:
            raise UsageError(f"turn must be in [0, 1], got {turn!r}")
        if turn and not 0 < turn_at < frames:
            raise UsageError(f"turn_at must be in (0, {frames}), got {turn_at!r}")
        self.frames, self.size, self.max_start = frames, size, max_start
        self.seed, self.length = seed, length
        self.turn, self.turn_at = turn, turn_at
        self.object_size = object_size

    def __len__(self) -> int:
        return self.length

    def clip(self, index: int) -> WorldClip:
        rng = rng_for("clip", self.seed, index)
        params = sample_params(rng, self.object_size)
        start = int(rng.integers(0, self.max_start + 1))
        frames = render(params, np.arange(start, start + self.frames), self.size)
        anchor = frames[0].copy() if start == 0 else render(params, np.array([0]), self.size)[0]
        # Drawn after everything else, and only when asked: runs without turns replay exactly.
        if self.turn and params.motion in STRAIGHT and rng.random() < self.turn:
            other = [m for m in STRAIGHT if m != params.motion]
            before = turned_from(params, str(rng.choice(other)), start + self.turn_at)
            head = np.arange(start, start + self.turn_at)
            frames[: self.turn_at] = render(before, head, self.size)
        return WorldClip(params, start, frames, anchor)

    def __getitem__(self, index: int) -> dict:
        clip = self.clip(index)
        return {
            "video": to_model_bcfhw(clip.frames[None])[0],  # (3, F, H, W) in [-1, 1]
            "anchor": to_model_bcfhw(clip.anchor[None, None])[0, :, 0],  # (3, H, W)
            "caption": clip.params.caption,
        }


def turned_from(params: WorldParams, motion: str, at: int) -> WorldParams:
    """``params`` moving by the straight ``motion`` instead, placed so that one step after
    frame ``at - 1`` it would be where ``params`` is at frame ``at``."""
    ((x, y),) = track(params, np.array([at]))[0]
    dx, dy = STRAIGHT[motion]
    x0, y0 = (x - dx * params.speed * at) % 1.0, (y - dy * params.speed * at) % 1.0
    return replace(params, motion=motion, x0=float(x0), y0=float(y0))


def to_model_bcfhw(videos_bfhwc: np.ndarray) -> torch.Tensor:
    """(B, F, H, W, 3) uint8 -> (B, 3, F, H, W) float in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(videos_bfhwc)).float() / 127.5 - 1
    return x.permute(0, 4, 1, 2, 3)


def clip_batch(dataset: WorldClips, step: int, batch: int) -> dict:
    """The batch of training step ``step``: samples step * batch ... + batch - 1."""
    items = [dataset[step * batch + i] for i in range(batch)]
    return {
        "video": torch.stack([it["video"] for it in items]),  # (B, 3, F, H, W)
        "anchor": torch.stack([it["anchor"] for it in items]),  # (B, 3, H, W)
        "caption": [it["caption"] for it in items],
    }
