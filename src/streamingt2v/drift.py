"""The drift guard: re-sample a streaming chunk that drifts from the anchor or cuts.

After each streaming chunk the guard measures two things the models give cheaply:

- ``anchor_distance``: the cosine distance between the anchor frame's image embedding (the
  APM's image encoder) and the mean embedding of the chunk's new frames;
- ``jump``: how much the picture changes across the chunk boundary (mean absolute pixel
  change from the last frame before the chunk to its first new frame) over how much it
  changes between the chunk's own consecutive frames (their median): about 1 for a chunk
  that continues the motion, large for a cut.

A chunk over either limit is made again from the same conditioning frames with the next seed
of its chunk (``streaming.chunk_seed(seed, k, attempt)``), up to ``tries`` samples in all;
the first within both limits is kept, else the one least over them. Every try and its
measurements go to the manifest. Deterministic: a resumed run makes the same choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .config import UsageError

if TYPE_CHECKING:  # torch is imported on use: the CLI's settings load without it
    import torch


@dataclass(frozen=True)
class DriftGuard:
    tries: int = 3  # samples of a chunk at most (1: measure only)
    # The defaults: the 80th percentiles of the embedded default's streaming chunks on
    # calibration prompts (``benchmarks/paper/drift_guard.py calibrate``); the distance's
    # scale is the image encoder's, so other models want their own.
    max_anchor_distance: float = 0.4
    max_jump: float = 5.3

    def __post_init__(self) -> None:
        if isinstance(self.tries, bool) or not isinstance(self.tries, int) or self.tries < 1:
            raise UsageError(f"drift guard tries must be an integer >= 1, got {self.tries!r}")
        for name in ("max_anchor_distance", "max_jump"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise UsageError(f"drift guard {name} must be a number > 0, got {value!r}")

    def excess(self, scores: dict[str, float]) -> float:
        """How far over its limits a chunk is (<= 1: within both)."""
        return max(
            scores["anchor_distance"] / self.max_anchor_distance, scores["jump"] / self.max_jump
        )


def chunk_scores(
    new_frames: np.ndarray,
    before: np.ndarray,
    embeddings: torch.Tensor,
    anchor_embedding: torch.Tensor,
) -> dict[str, float]:
    """The guard's measurements of a chunk: ``new_frames`` (F, H, W, 3) uint8, ``before``
    (H, W, 3) uint8 the video's frame before them, ``embeddings`` (F, E) theirs and
    ``anchor_embedding`` (E,) the anchor's."""
    import torch

    mean = embeddings.float().mean(0)
    anchor = anchor_embedding.float()
    cosine = torch.nn.functional.cosine_similarity(mean, anchor, dim=0)
    frames = np.concatenate([before[None], new_frames]).astype(np.float32)
    changes = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # (F,)
    inside = float(np.median(changes[1:])) if len(changes) > 1 else 0.0
    return {
        "anchor_distance": round(float(1 - cosine), 5),
        "jump": round(float(changes[0] / max(inside, 0.5)), 4),
    }
