"""``streamingt2v eval``: the paper's metrics and the world checks of one video.

- MAWE (``metrics/mawe.py``; the report names the optical flow that produced it);
- SCuts (``metrics/scuts.py``, PySceneDetect's AdaptiveDetector);
- CLIP score: mean over frames of 100 x cos(text embedding of the prompt, image embedding of
  the frame), with any CLIP-like pair; by default the embedded default's encoders (its
  image encoder was trained to match MiniLM's sentence embeddings of the world's captions);
- the world checks when the prompt is a shapes-world caption (colour, background, shape,
  direction, speed over time, colour drift against the first frame);
- per-window curves (8 frames): speed, colour drift, and image-embedding drift against frame 0,
  since long-video failures show late.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import ModelLoadError, UsageError
from .layout import fchw_from_fhwc
from .metrics.mawe import FLOWS, mawe
from .metrics.scuts import count_cuts
from .metrics.world_checks import check_video
from .models.encoders import ImageEncoder
from .pipeline import load_text_encoder, read_pipeline_config
from .world.render import parse_caption

WINDOW = 8


@dataclass
class ClipPair:
    """A text encoder with ``sentence(prompts)`` and an image encoder with pooled embeddings
    of frames in [-1, 1], in one embedding space."""

    text: nn.Module
    image: ImageEncoder

    def __post_init__(self) -> None:
        if self.image.dim != self.text.dim:
            raise ModelLoadError(
                f"not a CLIP-like pair: image embeddings are {self.image.dim}-d, "
                f"text embeddings {self.text.dim}-d"
            )

    @classmethod
    def from_pipeline(cls, path: Path) -> ClipPair:
        """The text and image encoders of a pipeline folder (only those are loaded)."""
        path = Path(path)
        if not (path / "image_encoder").is_dir():
            raise ModelLoadError(f"no image_encoder/ in {path}: not a CLIP-like model folder")
        text = load_text_encoder(path, read_pipeline_config(path))
        return cls(text, ImageEncoder.from_folder(path / "image_encoder"))

    @torch.no_grad()
    def image_embeddings(self, video: np.ndarray, batch: int = 64) -> torch.Tensor:
        """(F, E) unit-length embeddings of (F, H, W, 3) uint8 frames."""
        out = []
        for start in range(0, len(video), batch):
            x = fchw_from_fhwc(video[start : start + batch])
            out.append(nn.functional.normalize(self.image(x).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        return nn.functional.normalize(self.text.sentence([prompt]).float(), dim=-1)[0]


def window_means(values: np.ndarray, window: int = WINDOW) -> list[float]:
    return [float(values[i : i + window].mean()) for i in range(0, len(values), window)]


def evaluate_video(
    video: np.ndarray,
    prompt: str | None = None,
    clip: ClipPair | None = None,
    flow: str = "dis",
    mawe_size: int = 720,
    fps: int = 8,
) -> dict[str, Any]:
    """Every metric of a (F, H, W, 3) uint8 video (F >= 2) as a JSON-ready dict."""
    if video.ndim != 4 or video.shape[-1] != 3 or len(video) < 2:
        raise UsageError(f"evaluation needs a video of at least 2 frames, got {video.shape}")
    if flow not in FLOWS:
        raise UsageError(f"unknown flow {flow!r}; choose one of {sorted(FLOWS)}")
    warp = mawe(video, flow=flow, size=mawe_size)
    report: dict[str, Any] = {
        "frames": len(video),
        "prompt": prompt,
        "mawe": warp.as_dict(),
        "scuts": count_cuts(video, fps=fps),
        "curves": {"window": WINDOW, "motion": window_means(np.array(warp.motions))},
    }
    if clip is not None:
        images = clip.image_embeddings(video)
        report["curves"]["embedding_drift"] = window_means((1 - images @ images[0]).numpy())
        if prompt:
            per_frame = (images @ clip.text_embedding(prompt)).numpy() * 100
            report["clip_score"] = float(per_frame.mean())
            report["curves"]["clip_score"] = window_means(per_frame)
    world = None
    if prompt:
        try:
            words = parse_caption(prompt)
        except ValueError:
            words = None
        if words:
            checked = check_video(video, words, window=WINDOW).as_dict()
            report["curves"]["speed"] = checked.pop("speeds")
            report["curves"]["colour_drift"] = checked.pop("colour_drift")
            world = checked
    report["world"] = world
    return report
